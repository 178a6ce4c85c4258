"""Lesson 06 — reading HF checkpoint directories (``config.json`` + safetensors).

An HF model directory (what ``save_pretrained`` writes) holds:

- ``config.json``: the architecture -> ``ModelConfig.from_dict``;
- ``model.safetensors``, or ``model.safetensors.index.json`` plus shards
  ``model-00001-of-0000N.safetensors`` (``weight_map``: key -> shard file);
- ``generation_config.json``: the default eos/pad/bos ids for generation.

The weights are read with the ``safetensors`` package's NumPy API.  NumPy
has no bfloat16, so BF16 tensors are read as raw uint16 and widened: a
bfloat16 is the top 16 bits of a float32.

PyTorch ``.bin``/``.pt`` checkpoints are pickles, and unpickling runs code
chosen by whoever wrote the file.  npllm refuses them (this is why the
safetensors format exists) and says how to convert.

Matches ``transformers.PreTrainedModel.from_pretrained`` for safetensors.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError, ModelFormatError, ModelNotFoundError

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

_MAX_JSON_BYTES = 64 << 20  # config / index / safetensors header
_FLOAT_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
_IGNORED_KEYS = re.compile(r".*rotary_emb\.inv_freq")  # buffers some old checkpoints saved


@dataclass
class HFCheckpoint:
    path: str
    config: ModelConfig
    tensors: Dict[str, np.ndarray] = field(repr=False)  # HF key -> float32 array
    generation_config: Dict[str, Any] = field(default_factory=dict)


def pickle_refusal(path: str) -> ModelFormatError:
    return ModelFormatError(
        f"{path}: PyTorch pickle checkpoints are refused (unpickling can run arbitrary code). "
        "Convert the model to safetensors first, e.g. with transformers: "
        "AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst)  (writes model.safetensors)")


def read_hf_directory(path) -> HFCheckpoint:
    """Read ``config.json``, ``generation_config.json`` and the safetensors weights of a directory."""
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(PICKLE_SUFFIXES):
        raise pickle_refusal(path)
    if not os.path.isdir(path):
        raise ModelNotFoundError(f"HF model directory not found: {path}")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ModelNotFoundError(f"{path}: no {CONFIG_FILE} (not an HF model directory)")
    config_dict = read_json(config_path)
    _check_config_types(config_dict, config_path)
    try:
        config = ModelConfig.from_dict(config_dict)
    except (ConfigError, ValueError, TypeError, OverflowError) as e:  # e.g. float("x") on a field
        raise ConfigError(f"{config_path}: {e}") from None
    gen = {}
    gen_path = os.path.join(path, GENERATION_CONFIG_FILE)
    if os.path.isfile(gen_path):
        gen = read_json(gen_path)
        config = _apply_generation_ids(config, gen, gen_path)
    tensors = read_weights(path)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # tied: the head is embed_tokens (HF ignores the copy)
    _check_tensors(tensors, config, path)
    return HFCheckpoint(path=path, config=config, tensors=tensors, generation_config=gen)


_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings")
_FLOAT_FIELDS = ("rms_norm_eps", "rope_theta")
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias")
_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _check_config_types(d: dict, config_path: str) -> None:
    """JSON types of the fields npllm reads (values and ranges are ModelConfig's job)."""
    def bad(name, what):
        raise ConfigError(f"{config_path}: {name} must be {what}, got {d[name]!r:.60}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for name in _INT_FIELDS:
        if d.get(name) is not None and not is_int(d[name]):
            bad(name, "an integer")
    for name in _FLOAT_FIELDS:
        v = d.get(name)
        if v is not None and not (is_int(v) and abs(v) < 2**1000 or isinstance(v, float) and np.isfinite(v)):
            bad(name, "a finite number")
    for name in _BOOL_FIELDS:
        if d.get(name) is not None and not isinstance(d[name], bool):
            bad(name, "true or false")
    for name in _ID_FIELDS:
        v = d.get(name)
        if v is not None and not (is_int(v) or isinstance(v, list) and all(is_int(i) for i in v)):
            bad(name, "a token id or a list of token ids")


def read_json(path: str) -> dict:
    size = os.path.getsize(path)
    if size > _MAX_JSON_BYTES:
        raise ModelFormatError(f"{path}: {size} bytes is too large for a JSON config")
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFormatError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _apply_generation_ids(config: ModelConfig, gen: dict, gen_path: str) -> ModelConfig:
    """``generation_config.json`` holds the eos/pad/bos ids generation uses (they win over config.json)."""
    changes = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = gen.get(name)
        if value is None:
            continue
        ids = value if isinstance(value, list) else [value]
        if not ids or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < config.vocab_size
                          for i in ids):
            raise ConfigError(f"{gen_path}: {name} = {value!r} is not a token id in [0, {config.vocab_size})")
        if name != "eos_token_id" and isinstance(value, list):
            raise ConfigError(f"{gen_path}: {name} must be a single id, got {value!r}")
        changes[name] = value
    return config.replace(**changes) if changes else config


# ------------------------------------------------------------------ weights
def read_weights(path: str) -> Dict[str, np.ndarray]:
    """All tensors of a directory (single file or sharded) as float32 arrays."""
    index_path = os.path.join(path, INDEX_FILE)
    single_path = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(index_path):
        return _read_sharded(path, index_path)
    if os.path.isfile(single_path):
        return read_safetensors(single_path)
    pickles = sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise pickle_refusal(os.path.join(path, pickles[0]))
    raise ModelNotFoundError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")


def _read_sharded(path: str, index_path: str) -> Dict[str, np.ndarray]:
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFormatError(f"{index_path}: 'weight_map' must be a non-empty object")
    tensors: Dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values()), key=str):
        if not isinstance(shard, str) or os.path.basename(shard) != shard or not shard.endswith(".safetensors"):
            raise ModelFormatError(f"{index_path}: shard name {shard!r} must be a .safetensors file in the directory")
        shard_path = os.path.join(path, shard)
        if not os.path.isfile(shard_path):
            raise ModelFormatError(f"{index_path}: shard {shard} is missing")
        for key, value in read_safetensors(shard_path).items():
            if weight_map.get(key) != shard:
                raise ModelFormatError(f"{shard_path}: tensor {key!r} is not listed for this shard in {INDEX_FILE}")
            tensors[key] = value
    missing = [k for k in weight_map if k not in tensors and not _IGNORED_KEYS.fullmatch(k)]
    if missing:
        raise ModelFormatError(f"{index_path}: tensor {missing[0]!r} is listed but not in {weight_map[missing[0]]}")
    return tensors


def read_safetensors(file_path: str) -> Dict[str, np.ndarray]:
    """One ``.safetensors`` file -> {key: float32 array} (F16/F32/F64/BF16 tensors)."""
    from safetensors import SafetensorError, safe_open

    header = _read_header(file_path)
    out: Dict[str, np.ndarray] = {}
    try:
        with safe_open(file_path, framework="np") as f:
            for key in f.keys():
                if _IGNORED_KEYS.fullmatch(key):
                    continue
                dtype = f.get_slice(key).get_dtype()
                if dtype == "BF16":
                    out[key] = _read_bf16(file_path, header, key)
                elif dtype in _FLOAT_DTYPES:
                    out[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
                else:
                    raise ModelFormatError(f"{file_path}: tensor {key!r} has dtype {dtype}, expected a float type")
    except SafetensorError as e:
        raise ModelFormatError(f"{file_path}: malformed safetensors file ({e})") from None
    except (OSError, ValueError, TypeError, MemoryError) as e:
        if isinstance(e, ModelFormatError):
            raise
        raise ModelFormatError(f"{file_path}: cannot read ({type(e).__name__}: {e})") from None
    return out


def _read_header(file_path: str) -> dict:
    """The JSON header (8-byte little-endian length, then JSON), checked against the file size."""
    size = os.path.getsize(file_path)
    with open(file_path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{file_path}: too small for a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_JSON_BYTES):
            raise ModelFormatError(f"{file_path}: header length {n} exceeds the file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFormatError(f"{file_path}: invalid safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{file_path}: safetensors header is not a JSON object")
    _check_entries(file_path, header, size - 8 - n)
    header["__data_start__"] = 8 + n
    header["__file_size__"] = size
    return header


# Every dtype the safetensors format defines -> bytes per element (npllm loads the float ones).
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
                "F6_E2M3": 1, "F6_E3M2": 1, "F4": 1, "C64": 8}
_LOADABLE = ("F16", "F32", "F64", "BF16")


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_entries(file_path: str, header: dict, data_bytes: int) -> None:
    """Each tensor entry against the format and the file size, before anything is allocated:
    a known float dtype, a shape of counts, ``data_offsets`` [begin, end] holding exactly
    prod(shape) * itemsize bytes, and the tensors tiling the data section without gaps."""
    def fail(key, what):
        raise ModelFormatError(f"{file_path}: tensor {key!r}: {what}")

    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ModelFormatError(f"{file_path}: '__metadata__' must be an object of strings")
            continue
        if not isinstance(info, dict):
            fail(key, f"expected an object with dtype, shape and data_offsets, got {type(info).__name__}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPE_SIZES:
            fail(key, f"unknown dtype {dtype!r} (expected one of {', '.join(_LOADABLE)})")
        if dtype not in _LOADABLE:
            fail(key, f"has dtype {dtype}, expected a float type ({', '.join(_LOADABLE)})")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(d) for d in shape):
            fail(key, f"shape {shape!r:.80} must be a list of at most 8 non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            fail(key, f"data_offsets {offsets!r:.80} must be [begin, end], two non-negative integers")
        begin, end = offsets
        need = int(np.prod(shape, dtype=object)) * _DTYPE_SIZES[dtype]  # Python ints: no overflow
        if end < begin or end - begin != need:
            fail(key, f"data_offsets [{begin}, {end}] hold {end - begin} bytes, but {dtype} {shape} needs {need}")
        if end > data_bytes:
            fail(key, f"data ends at byte {end} of the data section, which holds only {data_bytes} "
                      "bytes (truncated?)")
        spans.append((begin, end, key))
    covered = 0
    for begin, end, key in sorted(spans):
        if begin != covered:
            fail(key, f"data starts at byte {begin}, expected {covered} (tensors overlap or leave a gap)")
        covered = end
    if covered != data_bytes:
        raise ModelFormatError(f"{file_path}: the tensors cover {covered} bytes but the data section "
                               f"holds {data_bytes} (truncated or padded?)")


def _read_bf16(file_path: str, header: dict, key: str) -> np.ndarray:
    info = header.get(key)
    try:
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
    except (TypeError, KeyError, ValueError):
        raise ModelFormatError(f"{file_path}: tensor {key!r} has a malformed header entry") from None
    start = header["__data_start__"] + begin
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if min(shape, default=1) < 0 or end - begin != 2 * n or start + 2 * n > header["__file_size__"]:
        raise ModelFormatError(f"{file_path}: tensor {key!r} (BF16 {shape}) has offsets out of range")
    if n == 0:
        return np.zeros(shape, dtype=np.float32)
    bits = np.memmap(file_path, dtype="<u2", mode="r", offset=start, shape=(n,))
    # bfloat16 = the high half of a float32: shift into place and reinterpret.
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def _check_tensors(tensors: Dict[str, np.ndarray], config: ModelConfig, path: str) -> None:
    from .gguf import expected_tensor_count, first_missing_tensor, hf_tensor_shapes

    n_expected = expected_tensor_count(config)
    if len(tensors) < n_expected:  # don't list every key of a config that claims 10**6 layers
        missing = first_missing_tensor(config, tensors)
        raise ModelFormatError(f"{path}: tensor {missing!r} is missing ({CONFIG_FILE} describes "
                               f"{n_expected} tensors, the weights hold {len(tensors)})")
    expected = hf_tensor_shapes(config)
    for key, value in tensors.items():
        if key not in expected:
            raise ModelFormatError(f"{path}: unexpected tensor {key!r} for a {config.model_type} config")
        if tuple(value.shape) != expected[key]:
            raise ModelFormatError(
                f"{path}: tensor {key!r} has shape {list(value.shape)}, expected {list(expected[key])}")
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ModelFormatError(f"{path}: tensor {missing[0]!r} is missing"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
