"""Fuzzing the file readers: malformed GGUF and safetensors files fail clearly, never crash.

Each test writes a small valid model (a 2-layer llama GGUF with Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL/Q4_K/Q6_K/
F16/BF16/F32 tensors and a tokenizer; an HF directory with config.json and model.safetensors),
mutates it, and loads every mutant through ``npllm.load`` (``read_checkpoint``,
``CausalLM.from_tensors`` and the tokenizer) and a forward pass, in ONE long-lived worker subprocess (tests/_fuzz_worker.py) with
its address space capped at 4 GiB.  A case passes if it loads (finite logits, or non-finite
logits that generation reports) or raises an ``npllm.errors`` error that is a ``ValueError``
whose message names the file; a raw ``struct.error``/``KeyError``/``MemoryError``..., a crash
or a hang (more than ``CASE_TIMEOUT`` seconds) fails it, and the worker is restarted.

The model families' GGUFs (gemma2/gemma3/phi3/qwen3/smollm3/gemma, and llama with Llama 3's
``rope_freqs``) are fuzzed too: their new metadata keys (windows and patterns, softcaps, the local
RoPE base, RoPE scaling keys) and tensors (q/k norms, Gemma's extra norms, ``attn_qkv``, the RoPE
factor tensors) made wrong, and truncations and bit flips of a Gemma 3 and a Phi-3 file.

Mutation types: truncation at every structural boundary, bit flips in the header, metadata and
tensor-info regions, huge counts, lengths and dims, offsets out of range or misaligned, unknown
GGML types and metadata value types, odd metadata values, missing keys and tensors, safetensors
header-length lies, bad JSON, dtype/shape/offset mismatches, bad config.json — plus Hypothesis
strategies over the same fields.  The file layout the mutations aim at is read by a small
walker written from the GGUF spec and checked against ``gguf.GGUFReader``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from _helpers_io import CHAT_TEMPLATE, MERGES, gguf_name, llama_cpp_permute, tiny_hf_weights, tiny_vocab

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_fuzz_worker.py")
CASE_TIMEOUT = 20.0  # seconds per case
WARMUP_TIMEOUT = 300.0  # first load in a fresh worker: imports + Numba cache (or compilation)
MEMORY_LIMIT = 4 << 30  # RLIMIT_AS of the worker
MIN_CASES = 300

HUGE_U64 = [2**31, 2**32 - 1, 2**63, 2**64 - 1]
T = gguf.GGMLQuantizationType


# =================================================================== the worker
class FuzzWorker:
    """One worker process; ``run(path)`` -> its JSON report, or a synthetic 'crash'/'hang' report."""

    def __init__(self, tmpdir: str, env_extra: Optional[Dict[str, str]] = None):
        self.tmpdir = tmpdir
        self.env_extra = env_extra or {}
        self.proc = None
        self.restarts = -1
        self.warm = False

    def _start(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   NUMBA_NUM_THREADS="1", NPLLM_FUZZ_MEMORY_LIMIT=str(MEMORY_LIMIT), **self.env_extra)
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
        self.stderr = open(os.path.join(self.tmpdir, "worker_stderr.txt"), "w+")
        self.proc = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env, cwd=self.tmpdir,
                                     start_new_session=True)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        self.restarts += 1
        self.warm = False

    @staticmethod
    def _read(proc, lines):
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _stderr_tail(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()[-1500:]

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # the worker we started, by its own handle
            self.proc.wait()
        self.proc = None

    def run(self, path: str, timeout: float = CASE_TIMEOUT) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        if not self.warm:
            timeout = max(timeout, WARMUP_TIMEOUT)
        try:
            self.proc.stdin.write(path + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return {"case": path, "outcome": "hang", "error": f"no answer within {timeout:.0f} s"}
        if line is None:  # the process died on this case
            code = self.proc.wait()
            tail = self._stderr_tail()
            self.proc = None
            return {"case": path, "outcome": "crash", "error": f"worker died (exit code {code})",
                    "message": tail}
        self.warm = True
        return json.loads(line)


@dataclass
class Case:
    name: str  # unique; the file or directory is called after it
    write: Callable[[str], None]  # writes the case at the given path
    expect: str = "any"  # "any": load or npllm error; "error": must not load
    is_dir: bool = False


def _check(result: dict, case: Case, path: str) -> Optional[str]:
    """None if the case passed, otherwise a one-line description of the failure."""
    outcome = result.get("outcome")
    where = f"[{case.name}] stage={result.get('stage')}"
    if outcome in ("crash", "hang", "bad"):
        detail = result.get("traceback") or result.get("message") or ""
        return f"{where}: {outcome}: {result.get('error')}: {detail.strip()[-800:]}"
    if outcome == "loaded" and case.expect == "error":
        return f"{where}: loaded, but this file is broken and must be refused"
    if outcome == "npllm_error" and result.get("stage") == "load" \
            and result.get("error") in ("ModelFormatError", "ConfigError") \
            and os.path.basename(path) not in result.get("message", ""):
        return f"{where}: the message does not name the file: {result.get('message')!r}"
    return None


class FuzzRunner:
    def __init__(self, root: str):
        self.root = root
        self.worker = FuzzWorker(root)
        self.count = 0
        self.outcomes: Dict[str, int] = {}

    def run(self, case: Case) -> Optional[str]:
        path = os.path.join(self.root, f"{self.count:04d}_" + re.sub(r"[^A-Za-z0-9_.+-]", "", case.name)
                            + ("" if case.is_dir else ".gguf"))
        if case.is_dir:
            os.makedirs(path)
        case.write(path)
        result = self.worker.run(path)
        self.count += 1
        self.outcomes[result.get("outcome")] = self.outcomes.get(result.get("outcome"), 0) + 1
        if os.environ.get("NPLLM_FUZZ_LOG"):  # one JSON line per case, for inspecting a run
            with open(os.environ["NPLLM_FUZZ_LOG"], "a") as f:
                f.write(json.dumps(dict(result, name=case.name, expect=case.expect)) + "\n")
        failure = _check(result, case, path)
        if failure is None and not os.environ.get("NPLLM_FUZZ_KEEP"):  # keep the disk small; failing cases stay for inspection
            shutil.rmtree(path) if case.is_dir else os.remove(path)
        return failure

    def run_all(self, cases: List[Case]) -> List[str]:
        return [f for f in (self.run(c) for c in cases) if f is not None]


@pytest.fixture(scope="module")
def fuzz_root():
    root = tempfile.mkdtemp(prefix="npllm_fuzz_")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def runner(fuzz_root):
    r = FuzzRunner(fuzz_root)
    yield r
    r.worker.kill()


def _assert_no_failures(failures: List[str], n: int):
    assert not failures, f"{len(failures)} of {n} cases failed:\n" + "\n".join(failures[:15])


# ============================================================= the GGUF model
# Mixed tensor types, so that every supported block layout is parsed and run.
GGUF_TYPES = {
    "token_embd.weight": T.Q8_0, "output.weight": T.Q4_0,
    "blk.0.attn_q.weight": T.Q4_1, "blk.0.attn_k.weight": T.Q5_0, "blk.0.attn_v.weight": T.F16,
    "blk.0.attn_output.weight": T.BF16, "blk.0.ffn_down.weight": T.Q4_K, "blk.1.ffn_down.weight": T.Q6_K,
    "blk.1.attn_q.weight": T.Q8_0, "blk.1.ffn_gate.weight": T.Q4_0,
    "blk.1.ffn_up.weight": T.Q5_1, "blk.1.attn_v.weight": T.IQ4_NL,
}
N_LAYERS, D, F, N_HEAD, N_KV = 2, 32, 256, 2, 1  # F = 256: ffn_down rows fit one K-quant super-block


def _k_quant_blocks(rows: int, cols: int, ggml_type, rng) -> np.ndarray:
    """Random K-quant blocks with small finite fp16 scales (gguf cannot quantize K types)."""
    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    for at in {T.Q4_K: (0, 2), T.Q6_K: (208,), T.IQ4_NL: (0,)}.get(ggml_type, ()):  # d (and dmin) of each block
        raw[:, :, at:at + 2] = scale
    return raw.reshape(rows, -1)


def write_tiny_gguf(path: str, metadata: Optional[dict] = None, skip: tuple = (), drop: tuple = (),
                    types: Optional[dict] = None, arch: str = "llama", extra_tensors: Optional[dict] = None):
    """A valid tiny llama GGUF (written with gguf's own writer), with optional changes."""
    tokens, token_types = tiny_vocab()
    rng = np.random.default_rng(1)
    weights = tiny_hf_weights("llama", N_LAYERS, D, F, N_HEAD, N_KV, len(tokens))
    writer = gguf.GGUFWriter(path, arch)
    writer.add_custom_alignment(64)
    a = arch + "."
    md = {a + "block_count": ("uint32", N_LAYERS), a + "context_length": ("uint32", 128),
          a + "embedding_length": ("uint32", D), a + "feed_forward_length": ("uint32", F),
          a + "attention.head_count": ("uint32", N_HEAD), a + "attention.head_count_kv": ("uint32", N_KV),
          a + "rope.freq_base": ("float32", 10000.0), a + "attention.layer_norm_rms_epsilon": ("float32", 1e-5),
          a + "rope.dimension_count": ("uint32", D // N_HEAD),
          "tokenizer.ggml.model": ("string", "gpt2"), "tokenizer.ggml.pre": ("string", "smollm"),
          "tokenizer.ggml.bos_token_id": ("uint32", 1), "tokenizer.ggml.eos_token_id": ("uint32", 2),
          "tokenizer.ggml.padding_token_id": ("uint32", 2), "tokenizer.ggml.add_bos_token": ("bool", False),
          "tokenizer.chat_template": ("string", CHAT_TEMPLATE)}
    md.update(metadata or {})
    for key, (kind, value) in md.items():
        if key not in skip:
            getattr(writer, "add_" + kind)(key, value)
    if "tokenizer.ggml.tokens" not in skip:
        writer.add_token_list(tokens)
    if "tokenizer.ggml.token_type" not in skip:
        writer.add_token_types(token_types)
    if "tokenizer.ggml.merges" not in skip:
        writer.add_token_merges(MERGES)
    all_types = dict(GGUF_TYPES, **(types or {}))
    tensors = {gguf_name(k): v for k, v in weights.items()}
    tensors.update(extra_tensors or {})
    for name, value in tensors.items():
        if name in drop:
            continue
        if ".attn_q." in name or ".attn_k." in name:
            value = llama_cpp_permute(value, N_HEAD if ".attn_q." in name else N_KV)
        qtype = all_types.get(name, T.F32)
        if qtype in (T.Q4_K, T.Q6_K, T.Q2_K, T.IQ4_NL):
            raw = _k_quant_blocks(*value.shape, qtype, rng)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        elif qtype == T.F16:
            writer.add_tensor(name, value.astype(np.float16))
        elif qtype != T.F32:
            raw = gguf.quants.quantize(value, qtype)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ------------------------------------------------------------ the GGUF layout
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_UINT32, _FLOAT32, _BOOL, _STRING, _ARRAY = 4, 6, 7, 8, 9


@dataclass
class KV:
    key: str
    start: int  # key length (u64)
    type_pos: int  # value type (u32)
    value_pos: int  # the value (for arrays: item type u32, count u64, items)
    end: int
    vtype: int
    itype: int = -1  # arrays only
    count: int = 0

    @property
    def items_pos(self) -> int:
        return self.value_pos + 12


@dataclass
class TensorInfo:
    name: str
    start: int  # name length (u64)
    ndims_pos: int
    dims: tuple  # GGUF order (row length first)
    type_pos: int
    offset_pos: int
    end: int
    ggml_type: int
    offset: int  # relative to the data section

    @property
    def dims_pos(self) -> int:
        return self.ndims_pos + 4

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[T(self.ggml_type)]
        return int(np.prod(self.dims)) // block * size


@dataclass
class Layout:
    size: int
    n_tensors: int
    n_kv: int
    kvs: List[KV]
    tensors: List[TensorInfo]
    infos_end: int
    alignment: int

    @property
    def data_start(self) -> int:
        return -(-self.infos_end // self.alignment) * self.alignment

    def kv(self, key: str) -> KV:
        return next(kv for kv in self.kvs if kv.key == key)


def gguf_layout(data: bytes) -> Layout:
    """Where every field of a (valid) GGUF v3 file is, from the spec."""
    u32 = lambda p: struct.unpack_from("<I", data, p)[0]  # noqa: E731
    u64 = lambda p: struct.unpack_from("<Q", data, p)[0]  # noqa: E731

    def skip(vtype, pos):
        if vtype == _STRING:
            return pos + 8 + u64(pos)
        return pos + _SCALAR_SIZE[vtype]

    n_tensors, n_kv = u64(8), u64(16)
    pos, kvs, alignment = 24, [], 32
    for _ in range(n_kv):
        start, n = pos, u64(pos)
        key = data[pos + 8:pos + 8 + n].decode()
        type_pos = pos + 8 + n
        vtype = u32(type_pos)
        value_pos = pos = type_pos + 4
        kv = KV(key, start, type_pos, value_pos, 0, vtype)
        if vtype == _ARRAY:
            kv.itype, kv.count = u32(pos), u64(pos + 4)
            pos += 12
            for _ in range(kv.count):
                pos = skip(kv.itype, pos)
        else:
            pos = skip(vtype, pos)
        kv.end = pos
        if key == "general.alignment":
            alignment = u32(value_pos)
        kvs.append(kv)
    tensors = []
    for _ in range(n_tensors):
        start, n = pos, u64(pos)
        name = data[pos + 8:pos + 8 + n].decode()
        ndims_pos = pos + 8 + n
        nd = u32(ndims_pos)
        dims = struct.unpack_from(f"<{nd}Q", data, ndims_pos + 4)
        type_pos = ndims_pos + 4 + 8 * nd
        offset_pos = type_pos + 4
        pos = offset_pos + 8
        tensors.append(TensorInfo(name, start, ndims_pos, dims, type_pos, offset_pos, pos, u32(type_pos),
                                  u64(offset_pos)))
    return Layout(len(data), n_tensors, n_kv, kvs, tensors, pos, alignment)


@pytest.fixture(scope="module")
def base_gguf(fuzz_root):
    path = os.path.join(fuzz_root, "base.gguf")
    write_tiny_gguf(path)
    with open(path, "rb") as f:
        data = f.read()
    return data, gguf_layout(data)


def test_layout_walker_agrees_with_gguf_reader(base_gguf):
    """The offsets the mutations aim at are the ones gguf's own reader finds."""
    data, layout = base_gguf
    path = os.path.join(tempfile.mkdtemp(), "x.gguf")
    with open(path, "wb") as f:
        f.write(data)
    reader = gguf.GGUFReader(path)
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert keys == [kv.key for kv in layout.kvs]
    assert [t.name for t in reader.tensors] == [t.name for t in layout.tensors]
    assert [int(t.data_offset) for t in reader.tensors] == [layout.data_start + t.offset for t in layout.tensors]
    assert [int(t.n_bytes) for t in reader.tensors] == [t.nbytes for t in layout.tensors]
    assert {int(t.tensor_type) for t in reader.tensors} >= {int(v) for v in GGUF_TYPES.values()}
    assert layout.alignment == 64 and layout.data_start + sum(t.nbytes for t in layout.tensors) <= len(data)


# ------------------------------------------------------------ GGUF mutations
def _patched(data: bytes, *edits) -> bytes:
    """edits: (pos, struct format, value) or (pos, raw bytes)."""
    out = bytearray(data)
    for edit in edits:
        if len(edit) == 2:
            pos, raw = edit
            out[pos:pos + len(raw)] = raw
        else:
            pos, fmt, value = edit
            struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def _bytes_case(name: str, data: bytes, expect: str = "any") -> Case:
    def write(path):
        with open(path, "wb") as f:
            f.write(data)
    return Case(name, write, expect)


def gguf_truncations(data: bytes, lay: Layout) -> List[Case]:
    """Cut the file at every structural boundary: header fields, each KV's key/type/value (and an
    array's item type/count/items), each tensor info's fields, the alignment padding, each
    tensor's data.  Every cut must be refused."""
    cuts = {"magic": 0, "version": 4, "tensor_count": 8, "kv_count": 16, "first_kv": 24}
    for i, kv in enumerate(lay.kvs):
        cuts[f"kv{i}_keylen"] = kv.start + 4
        cuts[f"kv{i}_key"] = kv.start + 8
        cuts[f"kv{i}_type"] = kv.type_pos
        cuts[f"kv{i}_value"] = kv.value_pos
        cuts[f"kv{i}_mid"] = (kv.value_pos + kv.end) // 2
        cuts[f"kv{i}_last"] = kv.end - 1
        if kv.vtype == _ARRAY:
            cuts[f"kv{i}_count"] = kv.value_pos + 4
            cuts[f"kv{i}_items"] = kv.items_pos
    for i, t in enumerate(lay.tensors):
        cuts[f"t{i}_name"] = t.start + 8
        cuts[f"t{i}_ndims"] = t.ndims_pos
        cuts[f"t{i}_dims"] = t.dims_pos
        cuts[f"t{i}_dim1"] = t.dims_pos + 8 * (len(t.dims) - 1) + 3
        cuts[f"t{i}_type"] = t.type_pos
        cuts[f"t{i}_offset"] = t.offset_pos
        cuts[f"t{i}_last"] = t.end - 1
        start = lay.data_start + t.offset
        cuts[f"t{i}_data"] = start
        cuts[f"t{i}_data_mid"] = start + t.nbytes // 2
        cuts[f"t{i}_data_last"] = start + t.nbytes - 1
    cuts["padding"] = lay.infos_end
    cuts["padding_last"] = lay.data_start - 1
    cuts["data_start"] = lay.data_start
    cuts["last_byte"] = lay.size - 1
    seen, cases = set(), []
    for name, at in cuts.items():
        if at not in seen and 0 <= at < lay.size:
            seen.add(at)
            cases.append(_bytes_case(f"g_cut_{name}", data[:at], "error"))
    return cases


def _cycle(values, i, n=1):
    return [values[(i + k) % len(values)] for k in range(n)]


def gguf_header_mutations(data: bytes, lay: Layout) -> List[Case]:
    """Lies in counts, lengths, dims, types and offsets; odd metadata values."""
    cases = []

    def add(name, expect, *edits):
        cases.append(_bytes_case("g_" + name, _patched(data, *edits), expect))

    add("magic", "error", (0, b"GGUG"))
    add("magic_swapped", "error", (0, b"FUGG"))
    for v in (0, 1, 4, 2**31, 0x03000000):  # 0x03000000: a big-endian file
        add(f"version_{v}", "error", (4, "<I", v))
    for name, pos, n in (("tensor_count", 8, lay.n_tensors), ("kv_count", 16, lay.n_kv)):
        for v in [0, n - 1, n + 1] + HUGE_U64:
            add(f"{name}_{v}", "error" if v > n + 1 else "any", (pos, "<Q", v))

    for i, kv in enumerate(lay.kvs):
        n = kv.type_pos - kv.start - 8
        for v in _cycle([0, n + 1, n - 1] + HUGE_U64, i, 2):
            add(f"kv{i}_keylen_{v}", "any", (kv.start, "<Q", v))
        for v in _cycle([99, 13, 2**31, _STRING, _ARRAY, _UINT32, _BOOL], i, 2):
            add(f"kv{i}_vtype_{v}", "any", (kv.type_pos, "<I", v))
        if kv.vtype == _STRING:
            n = struct.unpack_from("<Q", data, kv.value_pos)[0]
            for v in [0, n + 1, lay.size] + HUGE_U64:
                add(f"kv{i}_strlen_{v}", "any", (kv.value_pos, "<Q", v))
            add(f"kv{i}_str_not_utf8", "any", (kv.value_pos + 8, b"\xff\xfe"))
        if kv.vtype == _ARRAY:
            for v in [0, kv.count - 1, kv.count + 1, 2**62] + HUGE_U64:
                add(f"kv{i}_count_{v}", "any", (kv.value_pos + 4, "<Q", v))
            for v in (99, 13, _ARRAY, _STRING, 0, _FLOAT32, 12):
                add(f"kv{i}_itype_{v}", "any", (kv.value_pos, "<I", v))
        if kv.vtype == _UINT32:
            v0 = struct.unpack_from("<I", data, kv.value_pos)[0]
            for v in sorted({0, 1, 3, v0 + 1, 2 * v0, 2**24 + 1, 2**31, 2**32 - 1}):
                add(f"kv{i}_u32_{v}", "any", (kv.value_pos, "<I", v))
        if kv.vtype == _FLOAT32:
            for v in (float("nan"), float("inf"), -1.0, 0.0, 1e30):
                add(f"kv{i}_f32_{v}", "any", (kv.value_pos, "<f", v))
        if kv.vtype == _BOOL:
            for v in (2, 255):
                add(f"kv{i}_bool_{v}", "any", (kv.value_pos, "<B", v))

    out_of_range_types = [99, 16, 34, 2**31, 4, 5, 0, 1, 8, 12, 30]  # 4/5: removed Q4_2/Q4_3; 16/34: IQ2_XXS/TQ1_0
    for i, t in enumerate(lay.tensors):
        full = t.name in ("token_embd.weight", "blk.0.ffn_down.weight")  # every value for two tensors
        k = 99 if full else 1
        for v in _cycle([0, 3, 5, 2**32 - 1], i, min(k, 4)):
            add(f"t{i}_ndims_{v}", "error" if v in (0, 5, 2**32 - 1) else "any", (t.ndims_pos, "<I", v))
        dim_values = [0, t.dims[0] + 1, 2 * t.dims[0], t.dims[0] // 2, 2**24 + 32, *HUGE_U64]
        for v in _cycle(dim_values, i, min(k, len(dim_values))):
            add(f"t{i}_dim0_{v}", "error", (t.dims_pos, "<Q", v))
        if len(t.dims) == 2:
            for v in _cycle(dim_values, i + 3, min(k, len(dim_values))):
                add(f"t{i}_dim1_{v}", "error", (t.dims_pos + 8, "<Q", v))
        for v in _cycle([x for x in out_of_range_types if x != t.ggml_type], i, min(k, 10)):
            expect = "error" if v in (99, 16, 34, 2**31, 4, 5) else "any"
            add(f"t{i}_type_{v}", expect, (t.type_pos, "<I", v))
        other = lay.tensors[(i + 1) % len(lay.tensors)].offset
        offsets = [("end", lay.size - lay.data_start, "error"), ("huge", 2**63, "error"),
                   ("max", 2**64 - 1, "error"), ("plus1", t.offset + 1, "error"),  # misaligned
                   ("plus_align", t.offset + lay.alignment, "error"), ("other", other, "error"),  # overlaps
                   ("zero", 0, "error"), ("minus_align", t.offset - lay.alignment, "error")]
        for label, v, expect in _cycle(offsets, i, min(k, len(offsets))):
            if v >= 0 and v != t.offset:
                add(f"t{i}_offset_{label}", expect, (t.offset_pos, "<Q", v))

    by_name = {t.name: t for t in lay.tensors}
    dup, src = by_name["blk.1.ffn_up.weight"], "blk.0.ffn_up.weight"
    add("tensor_duplicate_name", "error", (dup.start + 8, src.encode()))
    add("tensor_unknown_name", "error", (dup.start + 8, b"blk.1.ffn_xx.weight"))
    add("tensor_layer_out_of_range", "error", (dup.start + 8, b"blk.7.ffn_up.weight"))
    add("tensor_name_not_utf8", "error", (dup.start + 8, b"\xff\xfe"))
    add("key_not_utf8", "any", (lay.kvs[3].start + 8, b"\xc3\x28"))
    eos = lay.kv("tokenizer.ggml.eos_token_id")
    add("key_duplicate", "error", (eos.start + 8, b"tokenizer.ggml.bos_token_id"))
    al = lay.kv("general.alignment")
    for v in (0, 3, 1, 2**31, 2**20):
        add(f"alignment_{v}", "error" if v != 1 else "any", (al.value_pos, "<I", v))
    return cases


def gguf_writer_variants() -> List[Case]:
    """Files gguf's writer produces but npllm must refuse or handle: missing keys and tensors,
    wrong metadata types and values, unsupported architectures and tensor types."""
    variants = {
        "arch_gpt2": dict(arch="gpt2"),
        "arch_qwen2_llama_keys": dict(arch="qwen2"),
        "tensor_type_q5_1": dict(types={"blk.0.ffn_up.weight": T.Q5_1}),
        "tensor_type_q2_k": dict(types={"blk.1.ffn_down.weight": T.Q2_K}),
        "extra_unknown_tensor": dict(extra_tensors={"blk.0.mystery.weight": np.zeros((4, 32), np.float32)}),
        "extra_layer_tensor": dict(extra_tensors={"blk.2.ffn_up.weight": np.zeros((F, D), np.float32)}),
        "shape_mismatch": dict(extra_tensors={"blk.0.ffn_up.weight": np.zeros((F - 32, D), np.float32)}),
        "no_output_tied": dict(drop=("output.weight",)),
        "block_count_string": dict(metadata={"llama.block_count": ("string", "2")}),
        "block_count_float": dict(metadata={"llama.block_count": ("float32", 2.0)}),
        "block_count_negative": dict(metadata={"llama.block_count": ("int32", -2)}),
        "block_count_huge": dict(metadata={"llama.block_count": ("uint64", 2**40)}),
        "block_count_bool": dict(metadata={"llama.block_count": ("bool", True)}),
        "context_huge": dict(metadata={"llama.context_length": ("uint64", 2**62)}),
        "eps_negative": dict(metadata={"llama.attention.layer_norm_rms_epsilon": ("float32", -1.0)}),
        "rope_theta_nan": dict(metadata={"llama.rope.freq_base": ("float32", float("nan"))}),
        "rope_scaling": dict(metadata={"llama.rope.scaling.type": ("string", "yarn")}),
        "heads_not_divisor": dict(metadata={"llama.attention.head_count": ("uint32", 3)}),
        "kv_heads_zero": dict(metadata={"llama.attention.head_count_kv": ("uint32", 0)}),
        "kv_heads_3": dict(metadata={"llama.attention.head_count_kv": ("uint32", 3)}),
        "key_length_odd": dict(metadata={"llama.attention.key_length": ("uint32", 15)}),
        "vocab_size_larger": dict(metadata={"llama.vocab_size": ("uint32", 1000)}),
        "eos_out_of_vocab": dict(metadata={"tokenizer.ggml.eos_token_id": ("uint32", 100000)}),
        "bos_negative": dict(metadata={"tokenizer.ggml.bos_token_id": ("int32", -1)}),
        "tokenizer_llama": dict(metadata={"tokenizer.ggml.model": ("string", "llama")}),
        "tokenizer_pre_unknown": dict(metadata={"tokenizer.ggml.pre": ("string", "klingon")}),
        "chat_template_hostile": dict(metadata={"tokenizer.chat_template":
                                                ("string", "{{ ''.__class__.__mro__[1].__subclasses__() }}")}),
        "chat_template_endless": dict(metadata={"tokenizer.chat_template": (
            "string", "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}")}),
        "chat_template_syntax": dict(metadata={"tokenizer.chat_template": ("string", "{% for %}")}),
        # the two: sum() of shared lists (a minute in the old sandbox) and a width from an argument (6 GB)
        "chat_template_sum_bomb": dict(metadata={"tokenizer.chat_template": (
            "string", "{{ ([[1] * 1000] * 5000) | sum(start=[]) }}")}),
        "chat_template_format_width": dict(metadata={"tokenizer.chat_template": (
            "string", "{{ '{:>{w}}'.format('a', w=6e9) }}")}),
        "add_bos_true": dict(metadata={"tokenizer.ggml.add_bos_token": ("bool", True)}),
    }
    for key in ("llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model",
                "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                "tokenizer.chat_template", "tokenizer.ggml.eos_token_id"):
        variants["missing_" + key.replace(".", "_")] = dict(skip=(key,))
    for name in ("token_embd.weight", "output_norm.weight", "blk.1.ffn_down.weight", "blk.0.attn_q.weight"):
        variants["missing_tensor_" + name.replace(".", "_")] = dict(drop=(name,))
    return [Case("g_w_" + name, lambda p, kw=kw: write_tiny_gguf(p, **kw)) for name, kw in variants.items()
            if kw is not None]


# ----------------------------------------------- the model families' GGUFs (lesson 08)
FAM_D, FAM_F, FAM_H, FAM_KV, FAM_DH = 32, 64, 2, 1, 16


def write_family_gguf(path: str, arch: str, metadata: Optional[dict] = None, skip: tuple = (), drop: tuple = (),
                      extra_tensors: Optional[dict] = None, quant=T.Q8_0):
    """A valid tiny GGUF of a non-Llama family in llama.cpp's layout: gemma3 (q/k norms, four norms,
    a sliding window, a local RoPE base), gemma2 (softcaps), phi3 (attn_qkv, 2F-row ffn_up, LongRoPE
    factors), qwen3 (head_dim != D/H), llama with Llama 3's rope_freqs, smollm3."""
    tokens, token_types = tiny_vocab()
    rng = np.random.default_rng(3)
    a = arch + "."
    dh = 24 if arch == "qwen3" else FAM_DH
    q_rows, kv_rows = FAM_H * dh, FAM_KV * dh
    md = {a + "block_count": ("uint32", 2), a + "context_length": ("uint32", 64),
          a + "embedding_length": ("uint32", FAM_D), a + "feed_forward_length": ("uint32", FAM_F),
          a + "attention.head_count": ("uint32", FAM_H), a + "attention.head_count_kv": ("uint32", FAM_KV),
          a + "attention.key_length": ("uint32", dh), a + "attention.value_length": ("uint32", dh),
          a + "rope.freq_base": ("float32", 10000.0), a + "attention.layer_norm_rms_epsilon": ("float32", 1e-6),
          "tokenizer.ggml.model": ("string", "gpt2"), "tokenizer.ggml.pre": ("string", "gpt2"),
          "tokenizer.ggml.bos_token_id": ("uint32", 1), "tokenizer.ggml.eos_token_id": ("uint32", 2)}
    if arch in ("gemma2", "gemma3"):
        md[a + "attention.sliding_window"] = ("uint32", 3)
    if arch == "gemma3":
        md[a + "rope.freq_base_swa"] = ("float32", 100.0)
    if arch == "gemma2":
        md[a + "attn_logit_softcapping"] = ("float32", 50.0)
        md[a + "final_logit_softcapping"] = ("float32", 30.0)
    if arch == "phi3":
        md[a + "rope.scaling.original_context_length"] = ("uint32", 16)
        md[a + "rope.scaling.attn_factor"] = ("float32", 1.2)
        md[a + "attention.sliding_window"] = ("uint32", 5)
    md.update(metadata or {})
    writer = gguf.GGUFWriter(path, arch)
    for key, (kind, value) in md.items():
        if key not in skip:
            getattr(writer, "add_" + kind)(key, value)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(MERGES)
    V = len(tokens)
    t = {"token_embd.weight": rng.standard_normal((V, FAM_D)), "output_norm.weight": 1 + rng.random(FAM_D)}
    for i in range(2):
        b = f"blk.{i}."
        t[b + "attn_norm.weight"] = 1 + rng.random(FAM_D)
        if arch == "phi3":
            t[b + "attn_qkv.weight"] = rng.standard_normal((q_rows + 2 * kv_rows, FAM_D))
            t[b + "ffn_up.weight"] = rng.standard_normal((2 * FAM_F, FAM_D))
        else:
            t[b + "attn_q.weight"] = rng.standard_normal((q_rows, FAM_D))
            t[b + "attn_k.weight"] = rng.standard_normal((kv_rows, FAM_D))
            t[b + "attn_v.weight"] = rng.standard_normal((kv_rows, FAM_D))
            t[b + "ffn_gate.weight"] = rng.standard_normal((FAM_F, FAM_D))
            t[b + "ffn_up.weight"] = rng.standard_normal((FAM_F, FAM_D))
        t[b + "attn_output.weight"] = rng.standard_normal((FAM_D, q_rows))
        t[b + "ffn_down.weight"] = rng.standard_normal((FAM_D, FAM_F))
        t[b + "ffn_norm.weight"] = 1 + rng.random(FAM_D)
        if arch in ("gemma3", "qwen3"):
            t[b + "attn_q_norm.weight"] = 1 + rng.random(dh)
            t[b + "attn_k_norm.weight"] = 1 + rng.random(dh)
        if arch in ("gemma2", "gemma3"):
            t[b + "post_attention_norm.weight"] = 1 + rng.random(FAM_D)
            t[b + "post_ffw_norm.weight"] = 1 + rng.random(FAM_D)
    if arch == "llama":
        t["rope_freqs.weight"] = np.linspace(1, 8, dh // 2)
    if arch == "phi3":
        t["rope_factors_long.weight"] = np.linspace(1, 4, dh // 2)
        t["rope_factors_short.weight"] = np.linspace(1, 1.5, dh // 2)
    t.update(extra_tensors or {})
    for name, value in t.items():
        if name in drop:
            continue
        value = np.ascontiguousarray(value, np.float32) * (0.2 if value.ndim == 2 else 1)
        if quant is not None and value.ndim == 2 and value.shape[1] % 32 == 0:
            raw = gguf.quants.quantize(value, quant)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=quant)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


FAMILY_ARCHS = ("gemma3", "gemma2", "phi3", "qwen3", "llama", "smollm3", "gemma")


def family_variants() -> List[Case]:
    """The new metadata keys and tensors of the families, each made wrong in the ways a file can be."""
    v = {}
    for key in ("attention.sliding_window",):
        for kind, value in (("uint32", 0), ("uint64", 2**40), ("string", "3"), ("int32", -3), ("float32", 3.0),
                            ("bool", True)):
            v[f"gemma3_window_{kind}_{value}"] = ("gemma3", dict(metadata={"gemma3." + key: (kind, value)}))
    for name, value in (("list_short", [True]), ("ints", [1, 0]), ("ok", [True, False])):
        v[f"gemma3_pattern_{name}"] = ("gemma3", dict(metadata={"gemma3.attention.sliding_window_pattern":
                                                                ("array", value)}))
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        for kind, value in (("float32", 0.0), ("float32", -5.0), ("float32", float("nan")), ("string", "x"),
                            ("float32", float("inf"))):
            v[f"gemma2_{key}_{kind}_{value}"] = ("gemma2", dict(metadata={"gemma2." + key: (kind, value)}))
    v["gemma3_attn_softcap"] = ("gemma3", dict(metadata={"gemma3.attn_logit_softcapping": ("float32", 50.0)}))
    for kind, value in (("float32", float("nan")), ("float32", -1.0), ("string", "1e4")):
        v[f"gemma3_swa_base_{kind}_{value}"] = ("gemma3", dict(metadata={"gemma3.rope.freq_base_swa": (kind, value)}))
    half = FAM_DH // 2
    for name, value in (("short", np.ones(half - 1)), ("zeros", np.zeros(half)), ("negative", -np.ones(half)),
                        ("nan", np.full(half, np.nan)), ("2d", np.ones((2, half))), ("huge", np.full(half, 1e38))):
        v[f"llama_rope_freqs_{name}"] = ("llama", dict(extra_tensors={"rope_freqs.weight": value}))
        v[f"phi3_rope_factors_long_{name}"] = ("phi3", dict(extra_tensors={"rope_factors_long.weight": value}))
    v["llama_rope_freqs_with_yarn"] = ("llama", dict(metadata={"llama.rope.scaling.type": ("string", "yarn")}))
    v["phi3_only_long_factors"] = ("phi3", dict(drop=("rope_factors_short.weight",)))
    v["phi3_no_original_context"] = ("phi3", dict(skip=("phi3.rope.scaling.original_context_length",)))
    v["phi3_attn_factor_nan"] = ("phi3", dict(metadata={"phi3.rope.scaling.attn_factor": ("float32", float("nan"))}))
    v["phi3_qkv_wrong_rows"] = ("phi3", dict(extra_tensors={"blk.0.attn_qkv.weight": np.ones((40, FAM_D))}))
    v["phi3_with_ffn_gate"] = ("phi3", dict(extra_tensors={"blk.0.ffn_gate.weight": np.ones((FAM_F, FAM_D))}))
    v["phi3_qkv_missing_layer1"] = ("phi3", dict(drop=("blk.1.attn_qkv.weight",)))
    for arch in ("gemma3", "qwen3"):
        v[f"{arch}_q_norm_missing"] = (arch, dict(drop=("blk.1.attn_q_norm.weight",)))
        v[f"{arch}_q_norm_wrong_size"] = (arch, dict(extra_tensors={"blk.0.attn_q_norm.weight": np.ones(7)}))
    v["gemma2_post_ffw_missing"] = ("gemma2", dict(drop=("blk.0.post_ffw_norm.weight",)))
    v["gemma2_extra_post_norm_on_llama"] = ("llama", dict(extra_tensors={"blk.0.post_ffw_norm.weight": np.ones(FAM_D)}))
    v["qwen3_key_length_mismatch"] = ("qwen3", dict(metadata={"qwen3.attention.key_length": ("uint32", 16),
                                                              "qwen3.attention.value_length": ("uint32", 16)}))
    for kind in ("linear", "yarn", "longrope", "dynamic"):
        v[f"llama_scaling_{kind}_no_factor"] = ("llama", dict(drop=("rope_freqs.weight",), metadata={
            "llama.rope.scaling.type": ("string", kind)}))
    v["llama_yarn_ok"] = ("llama", dict(drop=("rope_freqs.weight",), metadata={
        "llama.rope.scaling.type": ("string", "yarn"), "llama.rope.scaling.factor": ("float32", 4.0),
        "llama.rope.scaling.original_context_length": ("uint32", 16)}))
    v["llama_linear_factor_zero"] = ("llama", dict(drop=("rope_freqs.weight",), metadata={
        "llama.rope.scaling.type": ("string", "linear"), "llama.rope.scaling.factor": ("float32", 0.0)}))
    v["gemma3_window_pattern_bools_wrong_type"] = ("gemma3", dict(metadata={
        "gemma3.attention.sliding_window_pattern": ("uint32", 7)}))
    v["arch_gemma4"] = ("gemma3", dict(metadata={"general.architecture": ("string", "gemma4")}))
    return [Case(f"g_f_{name}", lambda p, arch=arch, kw=kw: write_family_gguf(p, arch, **kw))
            for name, (arch, kw) in v.items()]


def gguf_bit_flips(data: bytes, lay: Layout, n: int = 120, seed: int = 0) -> List[Case]:
    """Single bit flips, stratified over the header + scalar metadata, the token arrays, the
    key/type bytes, and the tensor infos."""
    rng = np.random.default_rng(seed)
    arrays = [kv for kv in lay.kvs if kv.vtype == _ARRAY]
    first_array = min(kv.start for kv in arrays)
    last_array = max(kv.end for kv in arrays)
    key_bytes = [p for kv in lay.kvs for p in range(kv.start, kv.value_pos)]
    regions = [("meta", lambda: int(rng.integers(0, first_array))),
               ("arrays", lambda: int(rng.integers(first_array, last_array))),
               ("keys", lambda: int(rng.choice(key_bytes))),
               ("infos", lambda: int(rng.integers(lay.tensors[0].start, lay.infos_end)))]
    cases = []
    for i in range(n):
        label, draw = regions[i % len(regions)]
        pos, bit = draw(), int(rng.integers(0, 8))
        out = bytearray(data)
        out[pos] ^= 1 << bit
        cases.append(_bytes_case(f"g_flip_{label}_{i}_{pos}_{bit}", bytes(out)))
    return cases


# ====================================================== the safetensors model
HF_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 32,
             "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
             "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
             "bos_token_id": 1, "eos_token_id": 2}


def hf_base_tensors() -> Dict[str, np.ndarray]:
    w = tiny_hf_weights("llama", n_layers=1, d=32, f=64, n_head=2, n_kv=1, vocab=64, seed=2)
    w["model.layers.0.mlp.up_proj.weight"] = w["model.layers.0.mlp.up_proj.weight"].astype(np.float16)
    return w


def safetensors_parts(path: str):
    """(header dict, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def safetensors_bytes(header, body: bytes, length: Optional[int] = None) -> bytes:
    """Serialize (possibly lying about the header length)."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length % 2**64) + head + body


@pytest.fixture(scope="module")
def base_safetensors(fuzz_root):
    path = os.path.join(fuzz_root, "base.safetensors")
    safetensors_numpy.save_file(hf_base_tensors(), path)
    with open(path, "rb") as f:
        raw = f.read()
    header, body = safetensors_parts(path)
    return raw, header, body


def _hf_case(name, st_bytes: Optional[bytes], expect="any", config=None, files: Optional[dict] = None) -> Case:
    """An HF directory: config.json (``config`` dict, or raw bytes), model.safetensors, extra files."""
    def write(path):
        cfg = HF_CONFIG if config is None else config
        with open(os.path.join(path, "config.json"), "wb") as f:
            f.write(cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode())
        if st_bytes is not None:
            with open(os.path.join(path, "model.safetensors"), "wb") as f:
                f.write(st_bytes)
        for fname, content in (files or {}).items():
            with open(os.path.join(path, fname), "wb") as f:
                f.write(content)
    return Case("s_" + name, write, expect, is_dir=True)


def safetensors_mutations(raw: bytes, header: dict, body: bytes) -> List[Case]:
    cases = []
    n = struct.unpack_from("<Q", raw, 0)[0]
    keys = [k for k in header if k != "__metadata__"]
    # ---- truncation at every boundary
    cuts = {"empty": 0, "len_half": 4, "len_last": 7, "header_start": 8, "header_first": 9,
            "header_mid": 8 + n // 2, "header_last": 8 + n - 1, "data_start": 8 + n}
    for i, k in enumerate(keys):
        b, e = header[k]["data_offsets"]
        cuts.update({f"t{i}_start": 8 + n + b, f"t{i}_mid": 8 + n + (b + e) // 2, f"t{i}_last": 8 + n + e - 1})
    cuts["last_byte"] = len(raw) - 1
    seen = set()
    for name, at in cuts.items():
        if at not in seen and at < len(raw):
            seen.add(at)
            cases.append(_hf_case(f"cut_{name}", raw[:at], "error"))
    # ---- the header length lies
    for v in [0, 1, 2, n - 1, n + 1, len(raw) - 8, len(raw) - 7, len(raw), 2**32] + HUGE_U64:
        cases.append(_hf_case(f"len_{v}", safetensors_bytes(raw[8:8 + n], body, v),
                              "any" if v == n - 1 else "error"))
    # ---- bad JSON
    head = raw[8:8 + n]
    bad_json = {"garbage": b"{" * n, "not_utf8": b"\xff" + head[1:], "list": b"[]", "null": b"null",
                "string": b'"x"', "number": b"1e999", "deep": b"[" * 100000, "trailing": head + b"}",
                "nul": head[:-1] + b"\x00", "empty": b"", "entry_not_dict": json.dumps({keys[0]: 1}).encode(),
                "metadata_not_dict": json.dumps(dict(header, __metadata__=[1])).encode(),
                "dup_keys": head.rstrip()[:-1] + b"," + json.dumps(keys[0]).encode() + b":"
                + json.dumps(header[keys[0]]).encode() + b"}"}
    for name, h in bad_json.items():
        cases.append(_hf_case(f"json_{name}", safetensors_bytes(h, body), "any" if name == "dup_keys" else "error"))
    # ---- dtype / shape / offset mismatches on a few tensors
    targets = [keys[0], "model.layers.0.mlp.up_proj.weight", "model.norm.weight", keys[-1]]
    for j, k in enumerate(dict.fromkeys(targets)):
        info = header[k]
        shape, (b, e) = info["shape"], info["data_offsets"]

        def mutated(field, value, k=k):
            h = json.loads(json.dumps(header))
            if value is _DELETE:
                del h[k][field]
            else:
                h[k][field] = value
            return safetensors_bytes(h, body)

        for dt in ("I32", "I64", "BOOL", "U8", "F64", "BF16", "F16", "F32", "F8_E4M3", "XYZ", "", 3, None):
            if dt != info["dtype"]:
                same_size = {dt, info["dtype"]} == {"F16", "BF16"}  # reinterpreted bits: loads
                cases.append(_hf_case(f"dtype{j}_{dt}", mutated("dtype", dt), "any" if same_size else "error"))
        numel = int(np.prod(shape))
        for label, s in (("transposed", shape[::-1]), ("flat", [numel]), ("extra1", shape + [1]), ("zero", [0] + shape[1:]),
                         ("double", [2 * shape[0]] + shape[1:]), ("huge", [2**31, 2**31]), ("neg", [-1] + shape[1:]),
                         ("float", [float(shape[0])] + shape[1:]), ("str", "32"), ("none", _DELETE), ("overflow", [2**64, 2])):
            expect = "any" if label == "flat" and len(shape) == 1 else "error"
            if label == "transposed" and shape == shape[::-1]:
                continue
            cases.append(_hf_case(f"shape{j}_{label}", mutated("shape", s), expect))
        other = header[keys[(keys.index(k) + 1) % len(keys)]]["data_offsets"]
        for label, o in (("reversed", [e, b]), ("beyond", [b, len(body) + 4]), ("both_beyond", [len(body) + 8, len(body) + 8 + e - b]),
                         ("other", other), ("neg", [-4, e - b - 4]), ("huge", [2**63, 2**63 + e - b]),
                         ("max", [2**64 - 1, 2**64 - 1]), ("short", [b, e - 2]), ("three", [b, e, e]),
                         ("floats", [float(b), float(e)]), ("none", _DELETE)):
            expect = "any" if label == "other" and other[1] - other[0] == e - b else "error"
            cases.append(_hf_case(f"offsets{j}_{label}", mutated("data_offsets", o), expect))
    # ---- bit flips in the header
    rng = np.random.default_rng(1)
    for i in range(40):
        pos, bit = int(rng.integers(0, 8 + n)), int(rng.integers(0, 8))
        out = bytearray(raw)
        out[pos] ^= 1 << bit
        cases.append(_hf_case(f"flip_{i}_{pos}_{bit}", bytes(out)))
    return cases


_DELETE = object()


def hf_config_mutations(raw: bytes) -> List[Case]:
    """config.json / generation_config.json / sharding / pickle cases around a valid safetensors file."""
    cases = []
    for name, cfg in (("garbage", b"{\"model_type\": "), ("list", b"[]"), ("not_utf8", b"\xff\xfe{}"),
                      ("deep", b"[" * 100000), ("empty", b"")):
        cases.append(_hf_case(f"config_{name}", raw, "error", config=cfg))
    changes = {"hidden_size": [-1, 0, "32", 2**40, 1.5, None, 33], "vocab_size": [0, 2**40, 63, "64"],
               "num_hidden_layers": [0, 10**6, -1, 2], "num_attention_heads": [0, 3, 64, 2**40],
               "num_key_value_heads": [0, 3, 2], "intermediate_size": [0, 2**40, 65],
               "max_position_embeddings": [0, -1, 2**40, 2**62], "rms_norm_eps": [-1, 0, "nan", 1e308, float("nan")],
               "rope_theta": [0, -1, "x", 1e308, 10**400, float("inf")], "model_type": ["gpt2", 7, None], "head_dim": [0, 15, 2**40],
               "tie_word_embeddings": ["yes", 2], "hidden_act": ["gelu", None], "eos_token_id": [10**9, -1, "x", [2, 99]],
               "rope_scaling": [{"type": "yarn", "factor": 4.0}, "x"], "attention_bias": ["x", True]}
    for field, values in changes.items():
        for v in values:
            cfg = dict(HF_CONFIG)
            cfg[field] = v
            cases.append(_hf_case(f"config_{field}_{v!s:.12}".replace(" ", ""), raw, config=cfg))
    for field in ("hidden_size", "vocab_size", "num_hidden_layers", "model_type", "intermediate_size"):
        cases.append(_hf_case(f"config_missing_{field}", raw, config={k: v for k, v in HF_CONFIG.items() if k != field}))
    for name, gen in (("eos_huge", b'{"eos_token_id": 1000000000}'), ("eos_strings", b'{"eos_token_id": ["a"]}'),
                      ("garbage", b"{"), ("list", b"[1]"), ("pad_list", b'{"pad_token_id": [1, 2]}')):
        cases.append(_hf_case(f"genconfig_{name}", raw, files={"generation_config.json": gen}))
    index = lambda wm: json.dumps({"metadata": {}, "weight_map": wm}).encode()  # noqa: E731
    header, _ = json.loads(raw[8:8 + struct.unpack_from("<Q", raw)[0]]), None
    keys = [k for k in header if k != "__metadata__"]
    all_in = {k: "model.safetensors" for k in keys}
    for name, content in (("outside", index({keys[0]: "../model.safetensors"})),
                          ("missing_shard", index({k: "model-2.safetensors" for k in keys})),
                          ("empty_map", index({})), ("map_list", index([1])),
                          ("unlisted_tensor", index({keys[0]: "model.safetensors"})),
                          ("listed_not_there", index(dict(all_in, extra="model.safetensors"))),
                          ("shard_not_str", index({keys[0]: 3})), ("garbage", b"{")):
        cases.append(_hf_case(f"index_{name}", raw, "error", files={"model.safetensors.index.json": content}))
    cases.append(_hf_case("no_weights", None, "error"))
    cases.append(_hf_case("pickle_only", None, "error", files={"pytorch_model.bin": b"\x80\x04K\x01."}))
    return cases


# ===================================================================== tests
def test_pristine_files_load_in_the_worker(runner, base_gguf, base_safetensors):
    """The unmutated files load with finite logits (else the mutants would test nothing);
    this also warms the worker (imports, Numba cache)."""
    data, _ = base_gguf
    raw, _, _ = base_safetensors
    for case in (_bytes_case("g_pristine", data), _hf_case("pristine", raw),
                 Case("g_w_pristine", lambda p: write_tiny_gguf(p))):
        path = os.path.join(runner.root, case.name + ("" if case.is_dir else ".gguf"))
        if case.is_dir:
            os.makedirs(path)
        case.write(path)
        result = runner.worker.run(path)
        assert result["outcome"] == "loaded" and result["finite"], result


def test_at_least_300_mutants_per_run(base_gguf, base_safetensors):
    data, lay = base_gguf
    raw, header, body = base_safetensors
    n = (len(gguf_truncations(data, lay)) + len(gguf_header_mutations(data, lay)) + len(gguf_writer_variants())
         + len(gguf_bit_flips(data, lay)) + len(safetensors_mutations(raw, header, body))
         + len(hf_config_mutations(raw)))
    assert n >= MIN_CASES, n


def test_gguf_truncated_at_every_boundary_is_refused(runner, base_gguf):
    cases = gguf_truncations(*base_gguf)
    _assert_no_failures(runner.run_all(cases), len(cases))


def test_gguf_counts_lengths_dims_types_offsets(runner, base_gguf):
    cases = gguf_header_mutations(*base_gguf)
    _assert_no_failures(runner.run_all(cases), len(cases))


def test_gguf_writer_variants(runner):
    cases = gguf_writer_variants()
    _assert_no_failures(runner.run_all(cases), len(cases))


def test_gguf_bit_flips(runner, base_gguf):
    cases = gguf_bit_flips(*base_gguf)
    _assert_no_failures(runner.run_all(cases), len(cases))


@pytest.mark.parametrize("arch", FAMILY_ARCHS)
def test_family_gguf_pristine_file_loads_in_the_worker(runner, arch):
    path = os.path.join(runner.root, f"family_pristine_{arch}.gguf")
    write_family_gguf(path, arch)
    result = runner.worker.run(path)
    assert result["outcome"] == "loaded" and result["finite"], result


def test_family_gguf_metadata_and_tensor_variants(runner):
    cases = family_variants()
    _assert_no_failures(runner.run_all(cases), len(cases))


@pytest.mark.parametrize("arch", ["gemma3", "phi3"])
def test_family_gguf_truncations_and_bit_flips(runner, fuzz_root, arch):
    path = os.path.join(fuzz_root, f"family_base_{arch}.gguf")
    write_family_gguf(path, arch)
    with open(path, "rb") as f:
        data = f.read()
    lay = gguf_layout(data)
    cases = gguf_truncations(data, lay)[::3] + gguf_bit_flips(data, lay, n=40, seed=7)
    cases = [Case(f"{arch}_{c.name}", c.write, c.expect) for c in cases]
    _assert_no_failures(runner.run_all(cases), len(cases))


def test_safetensors_mutations(runner, base_safetensors):
    cases = safetensors_mutations(*base_safetensors)
    _assert_no_failures(runner.run_all(cases), len(cases))


def test_hf_config_index_and_pickle_mutations(runner, base_safetensors):
    cases = hf_config_mutations(base_safetensors[0])
    _assert_no_failures(runner.run_all(cases), len(cases))


_INTERESTING = [0, 1, 2, 3, 31, 32, 33, 255, 256, 2**16, 2**24 + 1] + HUGE_U64
_NO_SHRINK = dict(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate], derandomize=True)


@settings(max_examples=50, **_NO_SHRINK)
@given(data=st.data())
def test_gguf_hypothesis_field_writes(runner, base_gguf, data):
    """Hypothesis: 1-3 writes of interesting integers at field positions or random bytes anywhere
    before the tensor data, optionally followed by a truncation."""
    raw, lay = base_gguf
    fields = ([(8, "<Q"), (16, "<Q")] + [(kv.start, "<Q") for kv in lay.kvs] + [(kv.type_pos, "<I") for kv in lay.kvs]
              + [(kv.value_pos + 4, "<Q") for kv in lay.kvs if kv.vtype == _ARRAY]
              + [(p, f) for t in lay.tensors for p, f in ((t.ndims_pos, "<I"), (t.dims_pos, "<Q"),
                                                          (t.type_pos, "<I"), (t.offset_pos, "<Q"))])
    edits = []
    for _ in range(data.draw(st.integers(1, 3), label="n_edits")):
        if data.draw(st.booleans(), label="field"):
            pos, fmt = data.draw(st.sampled_from(fields), label="field pos")
            v = data.draw(st.sampled_from(_INTERESTING) | st.integers(0, 2**32 - 1), label="value")
            edits.append((pos, fmt, v % (2**32 if fmt == "<I" else 2**64)))
        else:
            pos = data.draw(st.integers(0, lay.data_start - 1), label="byte pos")
            edits.append((pos, bytes([data.draw(st.integers(0, 255), label="byte")])))
    out = _patched(raw, *edits)
    cut = data.draw(st.none() | st.integers(0, len(out) - 1), label="truncate")
    out = out if cut is None else out[:cut]
    name = f"g_hyp_{runner.count}"
    failure = runner.run(_bytes_case(name, out))
    assert failure is None, failure


@settings(max_examples=40, **_NO_SHRINK)
@given(data=st.data())
def test_safetensors_hypothesis_header_edits(runner, base_safetensors, data):
    """Hypothesis: change one tensor's dtype, shape or offsets to arbitrary JSON-able values,
    and maybe lie about the header length."""
    raw, header, body = base_safetensors
    h = json.loads(json.dumps(header))
    key = data.draw(st.sampled_from([k for k in header if k != "__metadata__"]), label="tensor")
    ints = st.integers(-2**65, 2**65) | st.sampled_from(_INTERESTING)
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]), label="field")
    value = data.draw({"dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "U16", "F8_E5M2", "bf16"]) | st.text(max_size=4),
                       "shape": st.lists(ints, max_size=3) | st.lists(st.integers(0, 300), max_size=3),
                       "data_offsets": st.lists(ints, min_size=0, max_size=3)
                       | st.tuples(st.integers(0, len(body)), st.integers(0, len(body))).map(list)}[field],
                      label="value")
    h[key][field] = value
    head = json.dumps(h).encode()
    length = data.draw(st.none() | st.sampled_from([len(head) - 1, len(head) + 1, 2**63]), label="length")
    failure = runner.run(_hf_case(f"hyp_{runner.count}", safetensors_bytes(head, body, length)))
    assert failure is None, failure


from npllm.quant import BLOCK_LAYOUT  # noqa: E402

_SUPPORTED = sorted(BLOCK_LAYOUT)  # every type npllm loads, the six added for the families included


@settings(max_examples=60, **_NO_SHRINK)
@given(api=st.sampled_from(["dequantize", "from_raw", "as_array_or_quantized"]),
       ggml_type=st.sampled_from(_SUPPORTED) | st.sampled_from([16, 34, 99, -1, 2**31, 2**63]),
       shape=st.lists(st.sampled_from([1, 3, 256, 512]), min_size=2, max_size=2)
       | st.lists(st.sampled_from([1, 2, 32, 64, 256, 0, -32, 31, 2**31, 2**32, 2**62]), min_size=1, max_size=3),
       size=st.sampled_from(["exact", "exact", "exact", "minus1", "plus1", "zero", "small"]), seed=st.integers(0, 2**16))
def test_quantized_tensor_api_fuzz(runner, api, ggml_type, shape, size, seed):
    """Raw bytes, a type id and a shape as a corrupt file could give them: the dequantizers and
    QuantizedWeight either produce float32 of that shape or raise ModelFormatError — in the
    worker, so that a kernel reading out of bounds would fail this case, not the run.
    ``size="exact"``: the byte count gguf's table gives for (type, shape), where that is small."""
    block, type_size = gguf.GGML_QUANT_SIZES[T(ggml_type)] if ggml_type in _SUPPORTED else (1, 1)
    n_elems = int(np.prod(shape, dtype=object))
    exact = n_elems // block * type_size if 0 < n_elems <= 2**16 else 7
    n_bytes = {"exact": exact, "minus1": max(exact - 1, 0), "plus1": exact + 1, "zero": 0, "small": 34}[size]
    raw = np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes().hex()
    spec = {"raw": raw, "ggml_type": ggml_type, "shape": shape, "api": api}
    result = runner.worker.run(json.dumps(spec))
    runner.count += 1
    runner.outcomes["quant_" + result["outcome"]] = runner.outcomes.get("quant_" + result["outcome"], 0) + 1
    assert result["outcome"] in ("loaded", "npllm_error"), (spec["api"], ggml_type, shape, n_bytes, result)


def test_quantized_api_fuzz_reached_both_outcomes(runner):
    """Guard against a vacuous fuzz: some quantized cases load and some are refused."""
    if not runner.outcomes.get("quant_loaded") and not runner.outcomes.get("quant_npllm_error"):
        pytest.skip("run together with test_quantized_tensor_api_fuzz")
    assert runner.outcomes.get("quant_loaded", 0) >= 5 and runner.outcomes.get("quant_npllm_error", 0) >= 5, \
        runner.outcomes


@pytest.mark.parametrize("kind", ["gguf_truncated", "safetensors_length_lie"])
def test_cli_reports_a_corrupt_file_in_one_line(tmp_path, base_gguf, base_safetensors, kind):
    """``npllm generate --model <corrupt>``: one line naming the file on stderr, exit 2, no traceback."""
    if kind == "gguf_truncated":
        data, lay = base_gguf
        target = tmp_path / "cut.gguf"
        target.write_bytes(data[:lay.tensors[3].start + 5])
    else:
        raw, _, body = base_safetensors
        target = tmp_path / "model_dir"
        target.mkdir()
        _hf_case("x", safetensors_bytes(raw[8:8 + struct.unpack_from("<Q", raw)[0]], body, 2**63)).write(str(target))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "npllm", "generate", "--model", str(target), "hi"],
                          env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(lines) == 1 and "Traceback" not in proc.stderr and str(target) in lines[0], proc.stderr


def test_harness_reports_crash_hang_and_huge_allocation(tmp_path):
    """The harness itself: a worker that segfaults, hangs or allocates 8 GiB fails that case
    (it does not kill the run), and the next case runs in a restarted worker."""
    fake = tmp_path / "fake_worker.py"
    fake.write_text(
        "import os, resource, sys, json, time, ctypes\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
        "for line in sys.stdin:\n"
        "    p = line.strip()\n"
        "    if p == 'segv': ctypes.string_at(0)\n"
        "    if p == 'hang': time.sleep(60)\n"
        "    if p == 'alloc':\n"
        "        try:\n"
        "            b = bytearray(8 << 30)\n"
        "        except MemoryError:\n"
        "            print(json.dumps({'outcome': 'bad', 'error': 'MemoryError'}), flush=True); continue\n"
        "    print(json.dumps({'outcome': 'loaded', 'case': p}), flush=True)\n")
    global WORKER
    saved = WORKER
    WORKER = str(fake)
    try:
        w = FuzzWorker(str(tmp_path))
        assert w.run("ok")["outcome"] == "loaded"
        assert w.run("segv")["outcome"] == "crash"
        assert w.run("ok")["outcome"] == "loaded"
        assert w.run("hang", timeout=2)["outcome"] == "hang"
        assert w.run("alloc")["error"] == "MemoryError"
        assert w.run("ok")["outcome"] == "loaded" and w.restarts == 2
        w.kill()
    finally:
        WORKER = saved
