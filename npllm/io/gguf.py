"""Lesson 06 — reading GGUF checkpoints (llama.cpp's single-file format).

A GGUF file is a header, a list of metadata key/values (the config, the
tokenizer vocabulary, the chat template), a list of tensor descriptions, and
then the tensor bytes.  We read it with the ``gguf`` package's ``GGUFReader``,
which memory-maps the file: a tensor's bytes are only read from disk when
something touches them.

This module matches what HF transformers does in
``modeling_gguf_pytorch_utils.load_gguf_checkpoint`` (GGUF -> HF config and
HF state-dict keys), except that quantized tensors are *not* dequantized here:
``read_gguf`` returns them raw (``RawTensor``) and ``npllm.io.quants`` turns
them into ``QuantizedWeight`` objects or float32 arrays.

The one subtle step is the Q/K row permutation (see ``unpermute_qk_rows``).

    ckpt = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    ckpt.config                     # npllm.ModelConfig
    ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]   # RawTensor, shape [out, in]

Shape legend: V vocab, D hidden, H query heads, Hkv key/value heads, Dh head
dim, F MLP width.
"""

from __future__ import annotations

import functools
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError, ModelFormatError, ModelNotFoundError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

# GGML tensor type ids (gguf.GGMLQuantizationType values) that npllm can load,
# with (block size in elements, bytes per block).  Kept here so that reading a
# file does not depend on npllm.io.quants.
GGML_TYPES: Dict[int, Tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144),
    14: ("Q6_K", 256, 210),
    30: ("BF16", 1, 2),
}
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
_BLOCK_KEYS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")


def gguf_to_hf_key(name: str) -> str:
    """``"blk.3.attn_q.weight"`` -> ``"model.layers.3.self_attn.q_proj.weight"``."""
    if name in _GLOBAL_KEYS:
        return _GLOBAL_KEYS[name]
    m = _BLOCK_RE.fullmatch(name)
    if m is None or m.group(2) not in _BLOCK_KEYS:
        raise ModelFormatError(f"unknown GGUF tensor {name!r} (npllm does not know what it is)")
    layer, part, kind = m.groups()
    return f"model.layers.{int(layer)}.{_BLOCK_KEYS[part]}.{kind}"


def hf_to_gguf_key(key: str) -> str:
    """The inverse of ``gguf_to_hf_key`` (used in error messages and tests)."""
    for g, h in _GLOBAL_KEYS.items():
        if h == key:
            return g
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        for g, h in _BLOCK_KEYS.items():
            if h == m.group(2):
                return f"blk.{m.group(1)}.{g}.{m.group(3)}"
    raise KeyError(key)


def hf_tensor_shapes(config: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """Every HF key a checkpoint of ``config`` must hold, with its shape ([out, in])."""
    return dict(iter_hf_tensor_shapes(config))


def expected_tensor_count(config: ModelConfig) -> int:
    """len(hf_tensor_shapes(config)), without listing them (a corrupt config may claim 10**9 layers)."""
    c = config
    per_layer = 9 + (3 if c.attention_bias else 0) + (1 if c.o_proj_bias else 0)
    return 2 + (0 if c.tie_word_embeddings else 1) + c.num_hidden_layers * per_layer


def first_missing_tensor(config: ModelConfig, present) -> Optional[str]:
    """The first HF key of ``config`` not in ``present``; stops there (cheap for a huge config)."""
    return next((key for key, _ in iter_hf_tensor_shapes(config) if key not in present), None)


def iter_hf_tensor_shapes(config: ModelConfig):
    """(HF key, shape) pairs in order: embeddings, norm, head, then layer by layer."""
    c = config
    D, F, V = c.hidden_size, c.intermediate_size, c.vocab_size
    q_rows = c.num_attention_heads * c.head_dim  # H * Dh
    kv_rows = c.num_key_value_heads * c.head_dim  # Hkv * Dh
    yield "model.embed_tokens.weight", (V, D)
    yield "model.norm.weight", (D,)
    if not c.tie_word_embeddings:
        yield "lm_head.weight", (V, D)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (D,)
        yield p + "post_attention_layernorm.weight", (D,)
        yield p + "self_attn.q_proj.weight", (q_rows, D)
        yield p + "self_attn.k_proj.weight", (kv_rows, D)
        yield p + "self_attn.v_proj.weight", (kv_rows, D)
        yield p + "self_attn.o_proj.weight", (D, q_rows)
        yield p + "mlp.gate_proj.weight", (F, D)
        yield p + "mlp.up_proj.weight", (F, D)
        yield p + "mlp.down_proj.weight", (D, F)
        if c.attention_bias:
            yield p + "self_attn.q_proj.bias", (q_rows,)
            yield p + "self_attn.k_proj.bias", (kv_rows,)
            yield p + "self_attn.v_proj.bias", (kv_rows,)
        if c.o_proj_bias:
            yield p + "self_attn.o_proj.bias", (D,)


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
    ``data`` is the reader's memory-mapped view: uint8 ``[rows, row_bytes]`` for
    quantized types *and BF16* (NumPy has no bfloat16), float32/float16
    ``shape`` for F32/F16.  Q/K rows of ``llama`` files are already put back in
    HF order (a permuted copy instead of a view): rows are whole quantization
    blocks, so permuting raw rows is exact for every type.
    """

    name: str  # the GGUF name, e.g. "blk.0.attn_q.weight"
    ggml_type: int
    type_name: str
    shape: Tuple[int, ...]
    data: np.ndarray
    unpermuted: bool = False  # True if Q/K rows were reordered on load

    @property
    def is_float(self) -> bool:
        return self.ggml_type in FLOAT_TYPES

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def to_float32(self) -> np.ndarray:
        """The tensor as float32 ``shape`` (F32/F16 here; other types via npllm.io.quants)."""
        if self.is_float:
            return np.asarray(self.data, dtype=np.float32).reshape(self.shape)
        from .quants import dequantize  # lazy: quants is optional for reading

        return dequantize(self.data, self.ggml_type, self.shape)


@dataclass
class GGUFCheckpoint:
    path: str
    architecture: str
    metadata: Dict[str, Any]  # plain Python values (str, int, float, bool, lists)
    config: ModelConfig
    tensors: Dict[str, RawTensor] = field(repr=False)  # HF key -> RawTensor

    @property
    def chat_template(self) -> Optional[str]:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

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
    path, reader, metadata = _open(path)
    try:
        arch = _architecture(metadata)
        raw = _raw_tensors(reader)
        config = config_from_metadata(metadata, arch, raw)
        tensors = _map_tensors(raw, config, arch)
    except (ModelFormatError, ConfigError) as e:
        raise ModelFormatError(f"{path}: {e}") from None
    except _READER_ERRORS as e:
        raise ModelFormatError(f"{path}: malformed GGUF tensor info ({type(e).__name__}: {e})") from None
    return GGUFCheckpoint(path=path, architecture=arch, metadata=metadata, config=config, tensors=tensors)


def read_gguf_metadata(path) -> Dict[str, Any]:
    """Only the metadata (tokenizer, chat template...) as plain Python values."""
    return _open(path)[2]


def _open(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"GGUF file not found: {path}")
    st = os.stat(path)
    _check_header(path, st.st_size)
    if st.st_size >= _CACHE_MIN_BYTES:
        reader = _open_reader(os.path.realpath(path), st.st_size, st.st_mtime_ns)
    else:
        reader = _open_reader.__wrapped__(path, st.st_size, st.st_mtime_ns)
    try:
        metadata = _plain_metadata(reader)
    except ModelFormatError as e:
        raise ModelFormatError(f"{path}: {e}") from None
    except _READER_ERRORS as e:
        raise ModelFormatError(f"{path}: malformed GGUF metadata ({type(e).__name__}: {e})") from None
    return path, reader, metadata


def _check_header(path: str, size: int) -> None:
    """Magic and version, then a bounds-checked walk over the whole header (see ``_HeaderScan``)."""
    if size < 24:  # magic, version, tensor count, kv count
        raise ModelFormatError(f"{path}: file is too small to be GGUF ({size} bytes)")
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:4] != b"GGUF":
            raise ModelFormatError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
        (version,) = struct.unpack("<I", head[4:8])
        if version not in (2, 3):
            raise ModelFormatError(
                f"{path}: unsupported GGUF version {version} (expected 2 or 3, little-endian)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            _HeaderScan(mm, size, path).run()


# GGUF metadata value types -> byte size (scalars); 8 = string, 9 = array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_NAME = 1 << 16  # key / tensor name length
_MAX_ARRAY = 1 << 24  # metadata array items (a vocabulary has ~10**5)


class _HeaderScan:
    """Walk the metadata and tensor-info sections, checking every count and length against the
    bytes that remain, before ``GGUFReader`` trusts them (it would loop over a corrupted array
    count of 2**32 one element at a time, long past the end of the file)."""

    def __init__(self, buf, size: int, path: str):
        self.buf, self.size, self.path, self.pos = buf, size, path, 8
        self.where = "header"

    def fail(self, what: str):
        raise ModelFormatError(f"{self.path}: {what} (at byte {self.pos}, in {self.where})")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            self.fail(f"{what} needs {n} bytes but the file ends (truncated or corrupt)")
        start = self.pos
        self.pos += n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str, max_len: int) -> bytes:
        n = self.u64(what + " length")
        if n > max_len:
            self.fail(f"{what} length {n} exceeds {max_len}")
        start = self.take(n, what)
        return bytes(self.buf[start:start + n])

    def value(self, vtype: int, depth: int = 0) -> None:
        if vtype in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[vtype], "value")
        elif vtype == _STRING:
            self.string("string value", self.size)
        elif vtype == _ARRAY:
            if depth > 2:
                self.fail("arrays nested too deeply")
            itype = self.u32("array type")
            if itype not in _SCALAR_SIZES and itype not in (_STRING, _ARRAY):
                self.fail(f"unknown array item type {itype}")
            count = self.u64("array count")
            if count > _MAX_ARRAY:
                self.fail(f"array count {count} exceeds {_MAX_ARRAY}")
            min_item = _SCALAR_SIZES.get(itype, 8 if itype == _STRING else 12)
            if count * min_item > self.size - self.pos:
                self.fail(f"array count {count} does not fit in the file")
            if itype in _SCALAR_SIZES:
                self.take(count * _SCALAR_SIZES[itype], "array data")
            else:
                for _ in range(count):
                    self.value(itype, depth + 1)
        else:
            self.fail(f"unknown metadata value type {vtype}")

    def name(self, what: str) -> str:
        """A key or tensor name: bounded, UTF-8 (GGUFReader would raise a bare UnicodeDecodeError)."""
        raw = self.string(what, _MAX_NAME)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} {raw[:60]!r} is not valid UTF-8")

    def run(self) -> None:
        n_tensors, n_kv = self.u64("tensor count"), self.u64("metadata count")
        if n_kv * 13 > self.size or n_tensors * 32 > self.size:  # smallest possible entries
            self.fail(f"tensor count {n_tensors} / metadata count {n_kv} do not fit in the file "
                      "(truncated or corrupt)")
        alignment, keys = 32, set()
        for _ in range(n_kv):
            self.where = "metadata"
            key = self.name("metadata key")
            self.where = f"metadata {key[:80]!r}"
            if key in keys:
                self.fail("the key appears twice")
            keys.add(key)
            vtype = self.u32("value type")
            if key == "general.alignment" and vtype == 4:
                alignment = struct.unpack_from("<I", self.buf, self.pos)[0] if self.pos + 4 <= self.size else 0
                if alignment == 0 or alignment & (alignment - 1):
                    self.fail(f"general.alignment {alignment} is not a power of two")
            self.value(vtype)
        extents, names = [], set()
        for _ in range(n_tensors):
            self.where = "tensor infos"
            name = self.name("tensor name")
            self.where = f"tensor info {name[:80]!r}"
            if name in names:
                self.fail("a tensor of this name appears twice")
            names.add(name)
            extents.append(self._tensor_info())
        data_start = -(-self.pos // alignment) * alignment
        end, previous = 0, None
        for where, offset, n in sorted(extents, key=lambda e: e[1]):
            self.where = where
            if offset % alignment:
                self.fail(f"data offset {offset} is not a multiple of the alignment {alignment}")
            if data_start + offset + n > self.size:
                self.fail(f"data (offset {offset}, {n} bytes) lies beyond the end of the file "
                          f"({self.size} bytes; truncated?)")
            if offset < end:
                self.fail(f"data (offset {offset}) overlaps the data of {previous}")
            end, previous = offset + n, where

    def _tensor_info(self):
        """Dims, type and offset of one tensor -> (where, data offset, data bytes)."""
        n_dims = self.u32("dimension count")
        if not 1 <= n_dims <= 4:
            self.fail(f"{n_dims} dimensions (expected 1 to 4)")
        dims = [self.u64("dimension") for _ in range(n_dims)]
        if any(not 1 <= d <= _MAX_DIM for d in dims):
            self.fail(f"dimensions {dims} out of range (each must be in [1, {_MAX_DIM}])")
        ggml_type = self.u32("tensor type")
        offset = self.u64("data offset")
        if ggml_type not in GGML_TYPES:
            from .quants import type_name

            self.fail(f"GGML type {type_name(ggml_type)} (id {ggml_type}) is not supported "
                      f"(supported: {', '.join(n for n, _, _ in GGML_TYPES.values())})")
        type_name_, block, type_size = GGML_TYPES[ggml_type]
        if dims[0] % block:
            self.fail(f"row length {dims[0]} is not a multiple of the {type_name_} block size {block}")
        return self.where, offset, int(np.prod(dims, dtype=object)) // block * type_size


_CACHE_MIN_BYTES = 1 << 20  # small files parse fast; don't let them evict a real model


def clear_reader_cache() -> None:
    """Forget parsed readers: frees their metadata objects and unmaps files no weight still uses."""
    _open_reader.cache_clear()


@functools.lru_cache(maxsize=2)
def _open_reader(real_path: str, size: int, mtime_ns: int):
    """Parse the file once per (path, size, mtime): GGUFReader takes seconds on a large vocabulary."""
    import gguf  # imported lazily: about 0.2 s

    try:
        return gguf.GGUFReader(real_path, "r")
    except _READER_ERRORS as e:
        raise ModelFormatError(f"{real_path}: malformed GGUF file ({type(e).__name__}: {e})") from None
    except RecursionError as e:  # pragma: no cover - deeply nested arrays
        raise ModelFormatError(f"{real_path}: malformed GGUF file ({e})") from None


def _plain_metadata(reader) -> Dict[str, Any]:
    md: Dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            md[key] = f.contents()
        except UnicodeDecodeError:
            raise ModelFormatError(f"metadata {key!r} holds a string that is not UTF-8") from None
    return md


def _architecture(md: Dict[str, Any]) -> str:
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFormatError("metadata 'general.architecture' is missing")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFormatError(
            f"architecture {arch!r} is not supported (expected one of {SUPPORTED_ARCHITECTURES})")
    return arch


def _raw_tensors(reader) -> Dict[str, RawTensor]:
    """GGUF name -> RawTensor (shape in HF order), checking type and byte size."""
    out: Dict[str, RawTensor] = {}
    for t in reader.tensors:
        ggml_type = int(t.tensor_type)
        if ggml_type not in GGML_TYPES:
            raise ModelFormatError(
                f"tensor {t.name!r} has GGML type {t.tensor_type.name} ({ggml_type}), which npllm cannot "
                f"load (supported: {', '.join(n for n, _, _ in GGML_TYPES.values())})")
        type_name, block, type_size = GGML_TYPES[ggml_type]
        dims = [int(d) for d in t.shape]
        if not 1 <= len(dims) <= 2 or any(not 1 <= d <= _MAX_DIM for d in dims):
            raise ModelFormatError(f"tensor {t.name!r} has invalid dims {dims}")
        if dims[0] % block != 0:
            raise ModelFormatError(
                f"tensor {t.name!r}: row length {dims[0]} is not a multiple of the {type_name} block ({block})")
        shape = tuple(reversed(dims))  # HF order: [out, in]
        rows = shape[0] if len(shape) == 2 else 1
        expected = rows * (dims[0] // block) * type_size
        if t.data.nbytes != expected:
            raise ModelFormatError(
                f"tensor {t.name!r}: {t.data.nbytes} bytes of data, expected {expected} (file truncated?)")
        data = t.data
        if ggml_type not in FLOAT_TYPES and data.ndim == 1:
            data = data.reshape(1, -1)  # uniform [rows, row_bytes]
        out[t.name] = RawTensor(t.name, ggml_type, type_name, shape, data)
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


def config_from_metadata(md: Dict[str, Any], arch: str, raw: Dict[str, RawTensor]) -> ModelConfig:
    """Map ``{arch}.*`` metadata to an HF-style config (as transformers' GGUF loader does)."""
    a = arch + "."
    n_head = _get_int(md, a + "attention.head_count", hi=_MAX_HEADS)
    n_kv = _get_int(md, a + "attention.head_count_kv", hi=_MAX_HEADS, default=n_head)
    d_model = _get_int(md, a + "embedding_length")
    head_dim = _get_int(md, a + "attention.key_length", default=d_model // n_head if d_model >= n_head else 0)
    value_dim = _get_int(md, a + "attention.value_length", default=head_dim)
    if value_dim != head_dim:
        raise ModelFormatError(f"metadata {a}attention.value_length ({value_dim}) != key_length ({head_dim})")
    rope_dims = _get_int(md, a + "rope.dimension_count", default=head_dim)
    if rope_dims != head_dim:
        raise ModelFormatError(
            f"metadata {a}rope.dimension_count = {rope_dims}: partial rotary embeddings are not supported "
            f"(expected the head dim {head_dim})")
    scaling = md.get(a + "rope.scaling.type")
    if scaling not in (None, "none"):
        raise ModelFormatError(f"metadata {a}rope.scaling.type = {scaling!r}: RoPE scaling is not supported")

    tokens = md.get("tokenizer.ggml.tokens")
    vocab_default = len(tokens) if isinstance(tokens, list) and tokens else None
    if vocab_default is None and "token_embd.weight" in raw:
        vocab_default = raw["token_embd.weight"].shape[0]
    vocab = _get_int(md, a + "vocab_size", hi=_MAX_VOCAB, default=vocab_default)

    d = {
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": d_model,
        "intermediate_size": _get_int(md, a + "feed_forward_length"),
        "num_hidden_layers": _get_int(md, a + "block_count", hi=_MAX_LAYERS),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": _get_int(md, a + "context_length", hi=_MAX_CONTEXT),
        "rms_norm_eps": _get_float(md, a + "attention.layer_norm_rms_epsilon"),
        "rope_theta": _get_float(md, a + "rope.freq_base", default=10000.0),
        "tie_word_embeddings": "output.weight" not in raw,
        "attention_bias": "blk.0.attn_q.bias" in raw,
        "bos_token_id": _token_id(md, "tokenizer.ggml.bos_token_id", vocab),
        "eos_token_id": _token_id(md, "tokenizer.ggml.eos_token_id", vocab),
        "pad_token_id": _token_id(md, "tokenizer.ggml.padding_token_id", vocab),
    }
    if arch == "llama":
        d["o_proj_bias"] = "blk.0.attn_output.bias" in raw
    return ModelConfig.from_dict(d)


# ------------------------------------------------------------------ tensors
def _map_tensors(raw: Dict[str, RawTensor], config: ModelConfig, arch: str) -> Dict[str, RawTensor]:
    """GGUF names -> HF keys, with shape checks and the Q/K unpermutation."""
    expected = hf_tensor_shapes(config)
    tensors: Dict[str, RawTensor] = {}
    for name, t in raw.items():
        key = gguf_to_hf_key(name)
        if key not in expected:
            raise ModelFormatError(f"unexpected tensor {name!r} ({key}) for this config "
                                   f"({config.num_hidden_layers} layers)")
        if t.shape != expected[key]:
            raise ModelFormatError(
                f"tensor {name!r} ({key}) has shape {list(t.shape)}, expected {list(expected[key])} from the metadata")
        tensors[key] = t
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ModelFormatError(f"tensor {hf_to_gguf_key(missing[0])!r} ({missing[0]}) is missing"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if arch == "llama":  # qwen2 files use NeoX RoPE and are stored unpermuted
        for key, t in tensors.items():
            if ".self_attn.q_proj." in key or ".self_attn.k_proj." in key:
                n_head = config.num_attention_heads if ".q_proj." in key else config.num_key_value_heads
                tensors[key] = _unpermuted(t, n_head)
    return tensors


def _unpermuted(t: RawTensor, n_head: int) -> RawTensor:
    perm = unpermute_qk_rows(t.shape[0], n_head)
    if t.data.shape[0] != t.shape[0]:
        raise ModelFormatError(f"tensor {t.name!r}: cannot reorder the rows of a quantized 1-D tensor")
    data = np.ascontiguousarray(t.data[perm])  # rows are whole blocks: exact for every type
    return RawTensor(t.name, t.ggml_type, t.type_name, t.shape, data, unpermuted=True)
