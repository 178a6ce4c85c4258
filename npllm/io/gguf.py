"""Lesson 06 — reading GGUF checkpoints (llama.cpp's single-file format).

A GGUF file is a header, a list of metadata key/values (the config, the
tokenizer vocabulary, the chat template), a list of tensor descriptions, and
then the tensor bytes.  ``_HeaderScan`` reads the header in one pass, checking
every count and length against the bytes that remain, and collects the
metadata: Python scalars and strings, and arrays of numbers as NumPy views of
the file (a crafted file's huge arrays cost nothing until something reads
them).  The file is memory-mapped (``mmap``): each tensor is a NumPy view of
its bytes, read from disk only when something touches it, and
``GGUFCheckpoint.release`` hands a tensor's pages back once a loader has copied
it.  (The ``gguf`` package's ``GGUFReader`` reads the same files; the tests use
it as the reference.)

This module matches what HF transformers does in
``modeling_gguf_pytorch_utils.load_gguf_checkpoint`` (GGUF -> HF config and
HF state-dict keys), except that quantized tensors are *not* dequantized here:
``read_gguf`` returns them raw (``RawTensor``) and ``npllm.quant`` turns
them into ``QuantizedWeight`` objects or float32 arrays.

The one subtle step is the Q/K row permutation (see ``unpermute_qk_rows``).

    ckpt = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    ckpt.config                     # npllm.ModelConfig
    ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]   # RawTensor, shape [out, in]

Shape legend: V vocab, D hidden, H query heads, Hkv key/value heads, Dh head
dim, F MLP width.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..config import ModelConfig, iter_parameter_shapes, parameter_count
from ..quant.formats import BLOCK_LAYOUT, type_name
from ..errors import ConfigError, ModelFormatError, ModelNotFoundError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "smollm3")
# GGUF architecture -> HF model_type (lesson 08: the families differ only in ModelConfig's knobs)
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2",
               "gemma3": "gemma3_text", "phi3": "phi3", "smollm3": "smollm3"}
# llama.cpp's converter permutes Q/K rows for the architectures whose RoPE it applies to
# adjacent pairs ("NORM" rope type); the others store them as HF does ("NEOX").
PERMUTED_QK = ("llama", "smollm3")

# GGML tensor types npllm can load: id -> (name, values per block, bytes per block), from the
# one table of block layouts (``npllm.quant.formats``, which needs no kernels).
GGML_TYPES: Dict[int, Tuple[str, int, int]] = {t: (type_name(t), n, b) for t, (n, b) in BLOCK_LAYOUT.items()}
FLOAT_TYPES = (0, 1)  # F32, F16: the reader hands these out as typed arrays

# Sane upper bounds for numbers read from a file (before they size anything).
_MAX_DIM = 1 << 24  # one tensor dimension
_MAX_LAYERS = 4096
_MAX_HEADS = 4096
_MAX_CONTEXT = 1 << 24
_MAX_VOCAB = 1 << 22

# ----------------------------------------------------------------- key table
# The one GGUF -> HF key table.  llama.cpp names on the left, HF on the right.
_GLOBAL_KEYS = {
    "token_embd.weight": "model.embed_tokens.weight",  # [V, D]
    "output_norm.weight": "model.norm.weight",  # [D]
    "output.weight": "lm_head.weight",  # [V, D]; absent -> tied to token_embd
}
# Tensors that hold RoPE frequencies, not parameters: they become ModelConfig.rope_scaling.
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
_BLOCK_KEYS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",  # Phi-3: [q; k; v]
    "attn_q_norm": "self_attn.q_norm",  # Qwen3, Gemma 3: [Dh]
    "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",  # Llama's pre-MLP norm
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 2/3 name their four norms differently: ffn_norm is the pre-MLP norm there.
_GEMMA_BLOCK_KEYS = dict(_BLOCK_KEYS, ffn_norm="pre_feedforward_layernorm",
                         post_attention_norm="post_attention_layernorm",
                         post_ffw_norm="post_feedforward_layernorm")
_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")


def _block_keys(arch: str, fused_gate_up: bool = False) -> Dict[str, str]:
    keys = _GEMMA_BLOCK_KEYS if arch in ("gemma2", "gemma3") else _BLOCK_KEYS
    if fused_gate_up:  # Phi-3: ffn_up holds [gate; up] (2F rows) and there is no ffn_gate
        keys = dict(keys, ffn_up="mlp.gate_up_proj")
    return keys


def gguf_to_hf_key(name: str, arch: str = "llama", fused_gate_up: bool = False) -> str:
    """``"blk.3.attn_q.weight"`` -> ``"model.layers.3.self_attn.q_proj.weight"``."""
    if name in _GLOBAL_KEYS:
        return _GLOBAL_KEYS[name]
    m = _BLOCK_RE.fullmatch(name)
    keys = _block_keys(arch, fused_gate_up)
    if m is None or m.group(2) not in keys:
        raise ModelFormatError(f"unknown GGUF tensor {name!r} for architecture {arch!r} "
                               "(npllm does not know what it is)")
    layer, part, kind = m.groups()
    return f"model.layers.{int(layer)}.{keys[part]}.{kind}"


def hf_to_gguf_key(key: str, arch: str = "llama", fused_gate_up: bool = False) -> str:
    """The inverse of ``gguf_to_hf_key`` (used in error messages and tests)."""
    for g, h in _GLOBAL_KEYS.items():
        if h == key:
            return g
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        for g, h in _block_keys(arch, fused_gate_up).items():
            if h == m.group(2):
                return f"blk.{m.group(1)}.{g}.{m.group(3)}"
    raise KeyError(key)


def hf_tensor_shapes(config: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """Every HF key a checkpoint of ``config`` must hold, with its shape ([out, in])."""
    return dict(iter_parameter_shapes(config))


def expected_tensor_count(config: ModelConfig) -> int:
    """len(hf_tensor_shapes(config)), without listing them (a corrupt config may claim 10**9 layers)."""
    return parameter_count(config)


def first_missing_tensor(config: ModelConfig, present) -> Optional[str]:
    """The first HF key of ``config`` not in ``present``; stops there (cheap for a huge config)."""
    return next((key for key, _ in iter_parameter_shapes(config) if key not in present), None)


# ----------------------------------------------------------- Q/K permutation
def unpermute_qk_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's Q/K permutation: ``w_hf = w_gguf[perm]``.

    llama.cpp applies RoPE to *adjacent* pairs (x0, x1), (x2, x3), ... of each
    head, while HF (and npllm) rotate the two *halves* (x_j, x_{j+Dh/2})
    ("rotate_half", the NeoX layout).  So for ``llama`` models its converter
    reorders the rows of q_proj/k_proj inside each head, moving HF row
    ``p*Dh/2 + j`` (half p in {0, 1}, j < Dh/2) to row ``2*j + p``:

        gguf = hf.reshape(n_head, 2, Dh/2, in).swapaxes(1, 2).reshape(n_rows, in)

    Undoing it, HF row ``h*Dh + p*Dh/2 + j`` comes from GGUF row
    ``h*Dh + 2*j + p``.  ``n_head`` is H for q_proj and Hkv for k_proj.
    """
    if n_head <= 0 or n_rows % (2 * n_head) != 0:
        raise ModelFormatError(f"cannot unpermute {n_rows} rows into {n_head} heads of even size")
    half = n_rows // n_head // 2  # Dh / 2
    h, p, j = np.meshgrid(np.arange(n_head), np.arange(2), np.arange(half), indexing="ij")
    return (h * 2 * half + 2 * j + p).reshape(-1)  # index in HF order (h, p, j)


# ------------------------------------------------------------------ records
@dataclass
class RawTensor:
    """One tensor as stored in the file (not dequantized).

    ``shape`` is in HF order ([out, in] for matrices; GGUF lists dims reversed).
    ``data`` is a read-only view of the memory-mapped file: uint8 ``[rows, row_bytes]`` for
    quantized types *and BF16* (NumPy has no bfloat16), float32/float16
    ``shape`` for F32/F16.  Q/K rows of ``llama`` files are already put back in
    HF order (a permuted copy instead of a view): rows are whole quantization
    blocks, so permuting raw rows is exact for every type.  Gemma's norm weights are
    float32 copies holding HF's w (the file stores 1 + w).
    """

    name: str  # the GGUF name, e.g. "blk.0.attn_q.weight"
    ggml_type: int
    type_name: str
    shape: Tuple[int, ...]
    data: np.ndarray
    unpermuted: bool = False  # True if Q/K rows were reordered on load
    file_offset: int = -1  # where the bytes start in the file (-1: not read from a file)
    shifted: bool = False  # True for Gemma norms: the file's 1 + w became HF's w (a float32 copy)

    @property
    def is_float(self) -> bool:
        return self.ggml_type in FLOAT_TYPES

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def to_float32(self) -> np.ndarray:
        """The tensor as float32 ``shape`` (F32/F16 here; other types via npllm.quant)."""
        if self.is_float:
            return np.asarray(self.data, dtype=np.float32).reshape(self.shape)
        from ..quant import dequantize  # lazy: the kernels load only when needed

        return dequantize(self.data, self.ggml_type, self.shape)


@dataclass
class GGUFCheckpoint:
    path: str
    architecture: str
    metadata: Dict[str, Any]  # str, int, float, bool, lists of str, NumPy arrays of numbers
    config: ModelConfig
    tensors: Dict[str, RawTensor] = field(repr=False)  # HF key -> RawTensor
    file_map: Optional[mmap.mmap] = field(default=None, repr=False, compare=False)  # the views' memory

    @property
    def chat_template(self) -> Optional[str]:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def release(self, tensor: RawTensor) -> None:
        """Drop the file pages under ``tensor`` from this process's resident memory.

        Call it once the tensor's bytes have been copied (into quantized planes or a float32
        array).  The pages stay in the kernel's page cache, and ``tensor.data`` stays valid: a
        view read again simply faults them back in.  Neighbouring tensors that share a page
        lose it too, and fault it back the same way.
        """
        if tensor.file_offset >= 0:
            self.release_bytes(tensor.file_offset, tensor.nbytes)

    def release_bytes(self, start: int, length: int) -> None:
        """``madvise(MADV_DONTNEED)`` on the pages holding file bytes [start, start + length)."""
        fm = self.file_map
        if fm is None or fm.closed or length <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        lo = start // page * page  # madvise wants a page-aligned start
        hi = min(-(-(start + length) // page) * page, len(fm))
        if lo < hi:
            try:
                fm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except OSError:  # advice only: a kernel that refuses it costs memory, not correctness
                pass

    def type_counts(self) -> Dict[str, int]:
        """How many tensors of each GGML type, e.g. {"Q4_1": 210, "F32": 61}."""
        counts: Dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return counts


# ------------------------------------------------------------------ reading
_READER_ERRORS = (ValueError, struct.error, IndexError, KeyError, OverflowError, TypeError,
                  AttributeError, EOFError, MemoryError, OSError)


def read_gguf(path) -> GGUFCheckpoint:
    """Open a GGUF file (memory-mapped) and check it against its own config.

    Raises ``ModelNotFoundError`` if the file does not exist and
    ``ModelFormatError`` (naming the file, and the key or tensor) for anything
    malformed or unsupported.
    """
    path, file_map, header = _open(path)
    try:
        arch = _architecture(header.metadata)
        raw = _raw_tensors(header, np.frombuffer(file_map, np.uint8))
        config = config_from_metadata(header.metadata, arch, raw)
        tensors = _map_tensors(raw, config, arch)
    except (ModelFormatError, ConfigError) as e:
        raise ModelFormatError(f"{path}: {e}") from None
    except _READER_ERRORS as e:
        raise ModelFormatError(f"{path}: malformed GGUF tensor info ({type(e).__name__}: {e})") from None
    ckpt = GGUFCheckpoint(path=path, architecture=arch, metadata=header.metadata, config=config,
                          tensors=tensors, file_map=file_map)
    ckpt.release_bytes(0, header.data_start)  # the header is parsed: its pages can go
    for t in tensors.values():
        if t.unpermuted or t.shifted:  # copied: the file's bytes are not needed any more
            ckpt.release(t)
    return ckpt


def read_gguf_metadata(path) -> Dict[str, Any]:
    """Only the metadata (tokenizer, chat template...): Python scalars and strings, lists of
    strings, and arrays of numbers as read-only NumPy arrays (see ``_HeaderScan``)."""
    _, file_map, header = _open(path)
    _close(file_map)
    return header.metadata


def _open(path):
    """-> (path, read-only memory map of the whole file, its parsed ``_Header``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:  # magic, version, tensor count, kv count
            raise ModelFormatError(f"{path}: file is too small to be GGUF ({size} bytes)")
        file_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after close
        on_disk = _bytes_on_disk(size, f.fileno())
    try:
        _check_header(path, file_map)
        header = _HeaderScan(file_map, len(file_map), path, on_disk).run()
    except MemoryError:  # the budget should prevent it; never a raw traceback
        _close(file_map)
        raise ModelFormatError(f"{path}: out of memory reading the GGUF metadata") from None
    except BaseException:
        _close(file_map)
        raise
    return path, file_map, header


def _close(file_map) -> None:
    try:
        file_map.close()
    except BufferError:  # a view still uses it: it is unmapped when the last view goes
        pass


def _check_header(path: str, buf) -> None:
    """Magic and version: a file that is not GGUF gets a clear error before anything is parsed."""
    if buf[:4] != b"GGUF":
        raise ModelFormatError(f"{path}: not a GGUF file (magic {buf[:4]!r}, expected b'GGUF')")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: unsupported GGUF version {version} (expected 2 or 3, little-endian)")


# GGUF metadata value types -> NumPy dtype (scalars, all little-endian); 8 = string, 9 = array.
_SCALAR_DTYPES = {0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
                  4: np.dtype("<u4"), 5: np.dtype("<i4"), 6: np.dtype("<f4"), 7: np.dtype(np.bool_),
                  10: np.dtype("<u8"), 11: np.dtype("<i8"), 12: np.dtype("<f8")}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MAX_NAME = 1 << 16  # key / tensor name length
_MAX_ARRAY = 1 << 24  # items of any metadata array
# A crafted file can claim arrays far larger than any model needs, and a sparse file holds
# their bytes as a hole: 1 GiB long, a few KB on disk, all zeros, which are valid values.
# So counts are also checked against what real tokenizers need (Gemma's 262,144 tokens, Gemma
# 4's ~515k merges), with room to spare, and the Python objects the scan builds are charged
# against a budget proportional to the bytes the file really holds on disk.
_MAX_ITEMS = {"tokenizer.ggml.tokens": 1 << 20, "tokenizer.ggml.scores": 1 << 20,
              "tokenizer.ggml.token_type": 1 << 20, "tokenizer.ggml.merges": 1 << 21}
_MAX_STRING = 1 << 26  # one string value (a chat template is ~10 KB; a stored tokenizer.json tens of MB)
_MAX_ARRAY_STRING = 1 << 16  # one string inside an array (a token, a merge)
_MAX_INNER_ARRAYS = 1 << 16  # arrays inside arrays, in the whole file (real files have none)
_BUDGET_FLOOR, _BUDGET_PER_BYTE = 16 << 20, 16  # bytes of Python objects: floor + 16 x bytes on disk
_STR_COST, _NUMBER_COST, _ARRAY_COST = 84, 40, 128  # bytes (CPython: str header, list slot, ndarray)
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass
class _TensorInfo:
    name: str
    dims: Tuple[int, ...]  # GGUF order: row length first
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int
    where: str  # for error messages


@dataclass
class _Header:
    metadata: Dict[str, Any]  # see _HeaderScan
    tensors: list  # _TensorInfo, in file order
    data_start: int  # end of the tensor infos, rounded up to general.alignment


def _bytes_on_disk(size: int, fileno: int) -> int:
    """What the file really holds: its allocated blocks (a sparse file's holes hold nothing)."""
    blocks = getattr(os.fstat(fileno), "st_blocks", 0)
    return min(size, blocks * 512) if blocks else size  # 0: a filesystem that does not say


class _HeaderScan:
    """One pass over the metadata and tensor-info sections: every count and length is checked
    against the bytes that remain before it sizes anything (a corrupted array count of 2**32
    must fail at once, not loop far past the end of the file), and what is read is collected.

    Metadata values: ``str``; ``int``/``float``/``bool`` scalars (a float32 becomes the Python
    float of that float32); arrays of numbers as read-only 1-D NumPy arrays of the file's item
    type (views of the file, read from disk only when touched; bools as a ``bool`` copy);
    arrays of strings as lists of ``str``; nested arrays flattened into one list of their
    items (as ``gguf.GGUFReader``'s ``field.contents()`` returns them).  Memory therefore grows
    with the strings a file really holds, not with the counts it claims (see ``charge``).
    """

    def __init__(self, buf, size: int, path: str, on_disk: Optional[int] = None):
        self.buf, self.size, self.path, self.pos = buf, size, path, 8
        self.where = "header"
        self.on_disk = size if on_disk is None else on_disk
        self.limit = self.budget = _BUDGET_FLOOR + _BUDGET_PER_BYTE * self.on_disk
        self.inner_arrays = 0

    def fail(self, what: str, at: Optional[int] = None):
        at = self.pos if at is None else at
        raise ModelFormatError(f"{self.path}: {what} (at byte {at}, in {self.where})")

    def charge(self, n_bytes: int, what: str) -> None:
        """Spend from the budget of Python objects *before* building them."""
        self.budget -= n_bytes
        if self.budget < 0:
            self.fail(f"{what} would need more memory than the file can justify (the metadata may build "
                      f"{self.limit >> 20} MB of Python objects for a file holding {self.on_disk:,} bytes "
                      "on disk; sparse or corrupt?)")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            self.fail(f"{what} needs {n} bytes but the file ends (truncated or corrupt)")
        start = self.pos
        self.pos += n
        return start

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buf, self.take(8, what))[0]

    def string(self, what: str, max_len: int) -> str:
        """A length-prefixed UTF-8 string."""
        n = self.u64(what + " length")
        if n > max_len:
            self.fail(f"{what} length {n} exceeds {max_len}")
        self.charge(_STR_COST + n, what)
        start = self.take(n, what)
        return self.text(memoryview(self.buf)[start:start + n], what, start)  # decoded in place, not copied

    def text(self, raw, what: str, at: int) -> str:
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} {bytes(raw[:60])!r} is not valid UTF-8", at)

    # ------------------------------------------------------------ metadata
    def value(self, vtype: int, key: str):
        """One metadata value (its type already read)."""
        if vtype in _SCALAR_DTYPES:
            start = self.take(_SCALAR_DTYPES[vtype].itemsize, "value")
            return np.frombuffer(self.buf, _SCALAR_DTYPES[vtype], 1, start)[0].item()
        if vtype == _STRING:
            return self.string("string value", _MAX_STRING)
        if vtype == _ARRAY:
            return self.array(_MAX_ITEMS.get(key, _MAX_ARRAY), depth=0)
        self.fail(f"unknown metadata value type {vtype}")

    def array(self, max_count: int, depth: int):
        """Item type, count, items.  Items of a nested array are arrays without a value type."""
        if depth > 2:
            self.fail("arrays nested too deeply")
        itype = self.u32("array type")
        if itype not in _SCALAR_DTYPES and itype not in (_STRING, _ARRAY):
            self.fail(f"unknown array item type {itype}")
        count = self.u64("array count")
        if count > max_count:
            self.fail(f"array count {count} exceeds {max_count}"
                      + (" (no real tokenizer needs that many)" if max_count < _MAX_ARRAY else ""))
        min_item = _SCALAR_DTYPES[itype].itemsize if itype in _SCALAR_DTYPES else 8 if itype == _STRING else 12
        if count * min_item > self.size - self.pos:
            self.fail(f"array count {count} does not fit in the file")
        if itype in _SCALAR_DTYPES:
            return self.numbers(itype, count, as_list=depth > 0)
        if itype == _STRING:
            return self.strings(count)
        self.inner_arrays += count
        if self.inner_arrays > _MAX_INNER_ARRAYS:
            self.fail(f"{self.inner_arrays} arrays nested in arrays exceed {_MAX_INNER_ARRAYS}")
        self.charge(count * _ARRAY_COST, f"{count} nested arrays")
        items: list = []
        for _ in range(count):  # flattened, as GGUFReader's contents() returns nested arrays
            items.extend(self.array(max_count, depth + 1))
        return items

    def numbers(self, itype: int, count: int, as_list: bool):
        """``count`` numbers of one type: a read-only view of the file (bools: a bool copy), or,
        inside a nested array, Python numbers."""
        dtype = _SCALAR_DTYPES[itype]
        start = self.take(count * dtype.itemsize, "array data")
        if itype == 7:  # a GGUF bool is a byte; NumPy's bool must be 0 or 1
            self.charge(_ARRAY_COST + count * (_NUMBER_COST if as_list else 1), f"{count} bools")
            values = np.frombuffer(self.buf, np.uint8, count, start) != 0
            values.setflags(write=False)
        else:
            self.charge(_ARRAY_COST + (count * _NUMBER_COST if as_list else 0), f"{count} numbers")
            values = np.frombuffer(self.buf, dtype, count, start)
        return values.tolist() if as_list else values

    def strings(self, count: int) -> list:
        """``count`` strings (a vocabulary or a merge list: ~10**5 of them, so a tight loop)."""
        self.charge(count * _STR_COST, f"{count} strings")
        buf, size, pos, items = self.buf, self.size, self.pos, []
        start, budget = pos, self.budget  # the strings' bytes are charged as they come
        for _ in range(count):
            if pos + 8 > size:
                self.fail("string length needs 8 bytes but the file ends (truncated or corrupt)", pos)
            (n,) = _U64.unpack_from(buf, pos)
            if n > size - pos - 8:
                self.fail(f"string length {n} does not fit in the file (truncated or corrupt)", pos)
            if n > _MAX_ARRAY_STRING:
                self.fail(f"string length {n} exceeds {_MAX_ARRAY_STRING}", pos)
            if pos - start > budget:
                self.charge(pos - start, f"{count} strings")
            items.append(self.text(buf[pos + 8:pos + 8 + n], "string", pos + 8))
            pos += 8 + n
        self.charge(pos - start, f"{count} strings")
        self.pos = pos
        return items

    def key_value(self, metadata: Dict[str, Any]) -> None:
        self.where = "metadata"
        key = self.string("metadata key", _MAX_NAME)
        self.where = f"metadata {key[:80]!r}"
        if key in metadata:
            self.fail("the key appears twice")
        vtype = self.u32("value type")
        if key == "general.alignment" and vtype != _UINT32:
            self.fail(f"general.alignment has value type {vtype} (expected uint32, type {_UINT32})")
        value = self.value(vtype, key)
        if key == "general.alignment" and (value == 0 or value & (value - 1)):
            self.fail(f"general.alignment {value} is not a power of two")
        metadata[key] = value

    # -------------------------------------------------------- tensor infos
    def tensor_info(self, seen: set) -> _TensorInfo:
        """Name, dims, type and data offset of one tensor."""
        self.where = "tensor infos"
        name = self.string("tensor name", _MAX_NAME)
        self.where = f"tensor info {name[:80]!r}"
        if name in seen:
            self.fail("a tensor of this name appears twice")
        seen.add(name)
        n_dims = self.u32("dimension count")
        if not 1 <= n_dims <= 4:
            self.fail(f"{n_dims} dimensions (expected 1 to 4)")
        dims = tuple(self.u64("dimension") for _ in range(n_dims))
        if any(not 1 <= d <= _MAX_DIM for d in dims):
            self.fail(f"dimensions {list(dims)} out of range (each must be in [1, {_MAX_DIM}])")
        ggml_type = self.u32("tensor type")
        offset = self.u64("data offset")
        if ggml_type not in GGML_TYPES:
            self.fail(f"GGML type {type_name(ggml_type)} (id {ggml_type}) is not supported "
                      f"(supported: {', '.join(n for n, _, _ in GGML_TYPES.values())})")
        type_name_, block, type_size = GGML_TYPES[ggml_type]
        if dims[0] % block:
            self.fail(f"row length {dims[0]} is not a multiple of the {type_name_} block size {block}")
        nbytes = int(np.prod(dims, dtype=object)) // block * type_size
        return _TensorInfo(name, dims, ggml_type, offset, nbytes, self.where)

    def check_extents(self, infos, data_start: int, alignment: int) -> None:
        """Every tensor's bytes lie inside the file, aligned, and no two overlap."""
        end, previous = 0, None
        for t in sorted(infos, key=lambda t: t.offset):
            self.where = t.where
            if t.offset % alignment:
                self.fail(f"data offset {t.offset} is not a multiple of the alignment {alignment}")
            if data_start + t.offset + t.nbytes > self.size:
                self.fail(f"data (offset {t.offset}, {t.nbytes} bytes) lies beyond the end of the file "
                          f"({self.size} bytes; truncated?)")
            if t.offset < end:
                self.fail(f"data (offset {t.offset}) overlaps the data of {previous}")
            end, previous = t.offset + t.nbytes, t.where

    def run(self) -> _Header:
        n_tensors, n_kv = self.u64("tensor count"), self.u64("metadata count")
        if n_kv * 13 > self.size or n_tensors * 32 > self.size:  # smallest possible entries
            self.fail(f"tensor count {n_tensors} / metadata count {n_kv} do not fit in the file "
                      "(truncated or corrupt)")
        metadata: Dict[str, Any] = {}
        for _ in range(n_kv):
            self.key_value(metadata)
        seen: set = set()
        infos = [self.tensor_info(seen) for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", 32)
        data_start = -(-self.pos // alignment) * alignment
        self.check_extents(infos, data_start, alignment)
        return _Header(metadata, infos, data_start)


def _architecture(md: Dict[str, Any]) -> str:
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFormatError("metadata 'general.architecture' is missing")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFormatError(
            f"architecture {arch!r} is not supported (expected one of {SUPPORTED_ARCHITECTURES})")
    return arch


def _raw_tensors(header: _Header, file_bytes: np.ndarray) -> Dict[str, RawTensor]:
    """GGUF name -> RawTensor: a read-only view of the mapped file (``file_bytes``, uint8).

    The views have the dtype and shape ``gguf.GGUFReader`` gives ``tensor.data``: float32 or
    float16 ``shape`` for F32/F16, uint8 ``[rows, row_bytes]`` for quantized types and BF16.
    """
    out: Dict[str, RawTensor] = {}
    for t in header.tensors:
        if len(t.dims) > 2:
            raise ModelFormatError(f"tensor {t.name!r} has {len(t.dims)} dims {list(t.dims)} "
                                   "(npllm loads 1-D and 2-D tensors)")
        type_name, block, type_size = GGML_TYPES[t.ggml_type]
        shape = tuple(reversed(t.dims))  # HF order: [out, in]
        start = header.data_start + t.offset
        data = file_bytes[start:start + t.nbytes]
        if t.ggml_type in FLOAT_TYPES:
            data = data.view(np.float32 if t.ggml_type == 0 else np.float16).reshape(shape)
        else:
            data = data.reshape(-1, t.dims[0] // block * type_size)  # [rows, row_bytes]
        out[t.name] = RawTensor(t.name, t.ggml_type, type_name, shape, data, file_offset=start)
    return out


# ------------------------------------------------------------------- config
def _get_int(md, key, lo=1, hi=_MAX_DIM, default=None):
    value = md.get(key, default)
    if value is None:
        raise ModelFormatError(f"metadata {key!r} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ModelFormatError(f"metadata {key!r} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _get_float(md, key, default=None):
    value = md.get(key, default)
    if value is None:
        raise ModelFormatError(f"metadata {key!r} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ModelFormatError(f"metadata {key!r} must be a positive number, got {value!r}")
    return float(value)


def _token_id(md, key, vocab_size):
    value = md.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ModelFormatError(f"metadata {key!r} = {value!r} is not a token id in [0, {vocab_size})")
    return value


def _get_optional_float(md, key):
    value = md.get(key)
    return None if value is None else _get_float(md, key)


def _rope_scaling(md, a: str, raw: Dict[str, RawTensor], head_dim: int, n_ctx: int):
    """RoPE scaling from ``{arch}.rope.scaling.*`` keys and the frequency tensors.

    llama.cpp stores Llama 3's scaling as the tensor ``rope_freqs.weight`` (one divisor per
    frequency, no scaling keys) and Phi-3's LongRoPE as ``rope_factors_long/short.weight``."""
    n = head_dim // 2

    def factors(name):
        t = raw[name]
        if t.shape != (n,):
            raise ModelFormatError(f"tensor {name!r} has shape {list(t.shape)}, expected [{n}] (head_dim / 2)")
        values = t.to_float32().astype(np.float64)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ModelFormatError(f"tensor {name!r} must hold positive finite factors")
        return [float(v) for v in values]

    kind = md.get(a + "rope.scaling.type")
    if kind is not None and not isinstance(kind, str):
        raise ModelFormatError(f"metadata {a}rope.scaling.type must be a string, got {kind!r}")
    if "rope_factors_long.weight" in raw or "rope_factors_short.weight" in raw:
        if "rope_factors_long.weight" not in raw or "rope_factors_short.weight" not in raw:
            raise ModelFormatError("LongRoPE needs both rope_factors_long.weight and rope_factors_short.weight")
        orig = _get_int(md, a + "rope.scaling.original_context_length", hi=_MAX_CONTEXT)
        scaling = {"rope_type": "longrope", "long_factor": factors("rope_factors_long.weight"),
                   "short_factor": factors("rope_factors_short.weight"), "original_max_position_embeddings": orig}
        attn = _get_optional_float(md, a + "rope.scaling.attn_factor")
        if attn is not None:
            scaling["attention_factor"] = attn
        return scaling
    if "rope_freqs.weight" in raw:
        if kind not in (None, "none", "llama3"):
            raise ModelFormatError(f"metadata {a}rope.scaling.type = {kind!r} together with rope_freqs.weight")
        return {"rope_type": "freq_factors", "factors": factors("rope_freqs.weight")}
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": _get_float(md, a + "rope.scaling.factor")}
    if kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": _get_float(md, a + "rope.scaling.factor"),
                   "original_max_position_embeddings": _get_int(md, a + "rope.scaling.original_context_length",
                                                                hi=_MAX_CONTEXT)}
        for key, field_ in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = _get_optional_float(md, a + "rope.scaling." + key)
            if value is not None:
                scaling[field_] = value
        # The attention factor stays YaRN's default, 0.1 ln(factor) + 1 (as llama.cpp computes it);
        # the keys that change it have llama.cpp-version-specific meanings: refused, not guessed.
        for key, neutral in (("yarn_ext_factor", (-1.0, 1.0)), ("yarn_log_multiplier", (0.0,)),
                             ("yarn_attn_factor", (1.0,)), ("attn_factor", (1.0,))):
            value = md.get(a + "rope.scaling." + key)
            if value is not None and value not in neutral:
                raise ModelFormatError(f"metadata {a}rope.scaling.{key} = {value!r} is not supported for YaRN")
        return scaling
    raise ModelFormatError(f"metadata {a}rope.scaling.type = {kind!r}: npllm implements none, linear, yarn "
                           "(and llama3 / LongRoPE through the rope_freqs / rope_factors tensors)")


def _window_layers(md, a: str, arch: str, n_layers: int):
    """(sliding_window, layer_types) as llama.cpp reads them: the window from the metadata, the
    pattern hard-coded per architecture (Gemma 2: every other layer, Gemma 3: 5 of every 6)."""
    window = md.get(a + "attention.sliding_window")
    if window is None or window == 0:  # llama.cpp's converters write 0 for "no window"
        return None, None
    window = _get_int(md, a + "attention.sliding_window", hi=_MAX_CONTEXT)
    pattern = md.get(a + "attention.sliding_window_pattern")
    if isinstance(pattern, (list, np.ndarray)):  # newer converters: one bool per layer
        bools = pattern.dtype == np.bool_ if isinstance(pattern, np.ndarray) else \
            all(isinstance(p, bool) for p in pattern)
        if len(pattern) != n_layers or not bools:
            raise ModelFormatError(f"metadata {a}attention.sliding_window_pattern must hold one bool per layer")
        types = ["sliding_attention" if p else "full_attention" for p in pattern]
    elif arch in ("gemma2", "gemma3"):
        step = pattern if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0 \
            else (2 if arch == "gemma2" else 6)
        types = ["sliding_attention" if (i + 1) % step else "full_attention" for i in range(n_layers)]
    else:
        types = None  # every layer (Mistral, Phi-3)
    return window, types


def config_from_metadata(md: Dict[str, Any], arch: str, raw: Dict[str, RawTensor]) -> ModelConfig:
    """Map ``{arch}.*`` metadata (and the tensors present) to a ``ModelConfig`` with the family's knobs.

    Where a GGUF carries no key for a knob, the value is the one llama.cpp hard-codes for the
    architecture (Gemma's sqrt(D) embedding scale and norm offset, its window patterns and its
    local RoPE base, SmolLM3's NoPE layers)."""
    a = arch + "."
    n_head = _get_int(md, a + "attention.head_count", hi=_MAX_HEADS)
    n_kv = _get_int(md, a + "attention.head_count_kv", hi=_MAX_HEADS, default=n_head)
    d_model = _get_int(md, a + "embedding_length")
    n_layers = _get_int(md, a + "block_count", hi=_MAX_LAYERS)
    head_dim = _get_int(md, a + "attention.key_length", default=d_model // n_head if d_model >= n_head else 0)
    value_dim = _get_int(md, a + "attention.value_length", default=head_dim)
    if value_dim != head_dim:
        raise ModelFormatError(f"metadata {a}attention.value_length ({value_dim}) != key_length ({head_dim})")
    rope_dims = _get_int(md, a + "rope.dimension_count", default=head_dim)
    if rope_dims != head_dim:
        raise ModelFormatError(
            f"metadata {a}rope.dimension_count = {rope_dims}: partial rotary embeddings are not supported "
            f"(expected the head dim {head_dim})")
    n_ctx = _get_int(md, a + "context_length", hi=_MAX_CONTEXT)

    tokens = md.get("tokenizer.ggml.tokens")
    vocab_default = len(tokens) if isinstance(tokens, list) and tokens else None
    if vocab_default is None and "token_embd.weight" in raw:
        vocab_default = raw["token_embd.weight"].shape[0]
    vocab = _get_int(md, a + "vocab_size", hi=_MAX_VOCAB, default=vocab_default)
    window, layer_types = _window_layers(md, a, arch, n_layers)

    c = dict(
        model_type=MODEL_TYPES[arch], vocab_size=vocab, hidden_size=d_model,
        intermediate_size=_get_int(md, a + "feed_forward_length"), num_hidden_layers=n_layers,
        num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=head_dim, max_position_embeddings=n_ctx,
        rms_norm_eps=_get_float(md, a + "attention.layer_norm_rms_epsilon"),
        rope_theta=_get_float(md, a + "rope.freq_base", default=10000.0),
        rope_scaling=_rope_scaling(md, a, raw, head_dim, n_ctx),
        tie_word_embeddings="output.weight" not in raw,
        attention_bias="blk.0.attn_q.bias" in raw or "blk.0.attn_qkv.bias" in raw,
        o_proj_bias="blk.0.attn_output.bias" in raw,
        qk_norm="blk.0.attn_q_norm.weight" in raw,
        fused_qkv="blk.0.attn_qkv.weight" in raw,
        fused_gate_up=arch == "phi3" and "blk.0.ffn_gate.weight" not in raw,
        sliding_window=window, layer_types=layer_types,
        bos_token_id=_token_id(md, "tokenizer.ggml.bos_token_id", vocab),
        eos_token_id=_token_id(md, "tokenizer.ggml.eos_token_id", vocab),
        pad_token_id=_token_id(md, "tokenizer.ggml.padding_token_id", vocab),
    )
    if arch in ("gemma", "gemma2", "gemma3"):
        # llama.cpp hard-codes these for Gemma: GELU (tanh), x sqrt(D) embeddings, and norms whose
        # file weights are 1 + w (the loader subtracts 1: ModelConfig holds HF's w).
        c.update(hidden_act="gelu_pytorch_tanh", norm_weight_offset=1.0, embed_scale=float(d_model) ** 0.5)
    if arch in ("gemma2", "gemma3"):
        # attention scale: 1/sqrt(head_dim), except the 27B models (46 / 62 layers): 1/sqrt(D/H)
        big = n_layers == (46 if arch == "gemma2" else 62)
        c.update(sandwich_norms=True, query_pre_attn_scalar=float(d_model // n_head if big else head_dim))
        caps = (50.0, 30.0) if arch == "gemma2" else (None, None)  # llama.cpp's defaults for gemma2
        c["attn_logit_softcapping"] = _get_optional_float(md, a + "attn_logit_softcapping") or caps[0]
        c["final_logit_softcapping"] = _get_optional_float(md, a + "final_logit_softcapping") or caps[1]
        if arch == "gemma3":
            if c["attn_logit_softcapping"] is not None:
                raise ModelFormatError(f"metadata {a}attn_logit_softcapping: Gemma 3 has no attention softcap")
            c["rope_local_base_freq"] = _get_float(md, a + "rope.freq_base_swa", default=10000.0)
    if arch == "smollm3":  # llama.cpp: every 4th layer has no RoPE
        c["no_rope_layers"] = [int((i + 1) % 4 != 0) for i in range(n_layers)]
    return ModelConfig(**c)


# ------------------------------------------------------------------ tensors
def _map_tensors(raw: Dict[str, RawTensor], config: ModelConfig, arch: str) -> Dict[str, RawTensor]:
    """GGUF names -> HF keys, with shape checks, the Q/K unpermutation and Gemma's norm shift."""
    expected = hf_tensor_shapes(config)
    tensors: Dict[str, RawTensor] = {}
    for name, t in raw.items():
        if name in ROPE_TENSORS:  # read into config.rope_scaling
            continue
        key = gguf_to_hf_key(name, arch, config.fused_gate_up)
        if key not in expected:
            raise ModelFormatError(f"unexpected tensor {name!r} ({key}) for this config "
                                   f"({config.num_hidden_layers} layers, architecture {arch!r})")
        if t.shape != expected[key]:
            raise ModelFormatError(
                f"tensor {name!r} ({key}) has shape {list(t.shape)}, expected {list(expected[key])} from the metadata")
        tensors[key] = t
    missing = [k for k in expected if k not in tensors]
    if missing:
        name = hf_to_gguf_key(missing[0], arch, config.fused_gate_up)
        raise ModelFormatError(f"tensor {name!r} ({missing[0]}) is missing"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if arch in PERMUTED_QK:  # the others use NeoX RoPE and are stored unpermuted
        for key, t in tensors.items():
            if ".self_attn.q_proj." in key or ".self_attn.k_proj." in key:
                n_head = config.num_attention_heads if ".q_proj." in key else config.num_key_value_heads
                tensors[key] = _unpermuted(t, n_head)
    if config.norm_weight_offset:
        for key, t in tensors.items():
            if key.endswith("norm.weight"):
                tensors[key] = _shifted(t, config.norm_weight_offset)
    return tensors


def _shifted(t: RawTensor, offset: float) -> RawTensor:
    """Gemma: the file holds 1 + w; HF's Gemma*RMSNorm (and npllm's config) hold w."""
    data = t.to_float32() - np.float32(offset)
    return RawTensor(t.name, 0, "F32", t.shape, data, file_offset=t.file_offset, shifted=True)


def _unpermuted(t: RawTensor, n_head: int) -> RawTensor:
    perm = unpermute_qk_rows(t.shape[0], n_head)
    if t.data.shape[0] != t.shape[0]:
        raise ModelFormatError(f"tensor {t.name!r}: cannot reorder the rows of a quantized 1-D tensor")
    data = np.ascontiguousarray(t.data[perm])  # rows are whole blocks: exact for every type
    return RawTensor(t.name, t.ggml_type, t.type_name, t.shape, data, unpermuted=True,
                     file_offset=t.file_offset)
