"""Lessons 06-07 — GGUF tensor types: what the bytes of a quantized weight mean.

llama.cpp stores a weight matrix row by row; each row is cut into *blocks* of 32
(or 256) values, and each block is stored as a few small integers plus one or two
fp16 scales.  A 4-bit block of 32 weights takes 18-20 bytes instead of 128, which
is why a 135M-parameter model fits in ~100 MB and decodes fast: decoding a token
reads every weight once, so fewer bytes means more tokens per second.

This module is the public face of the quantized types: ``dequantize`` and
``QuantizedWeight``, the object that keeps a weight quantized in memory and multiplies by
it.  Each type's NumPy reference dequantizer (its block layout drawn in the comment above
each ``_dequant_*``) sits next to its Numba kernels, one file per family: ``blocks32.py``
(the 32-value blocks Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), ``kquants.py`` (the 256-value
super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS) and ``dense.py`` (F32, F16, BF16);
``kernels.py`` runs them (lesson 07).  The references match ``gguf.quants.dequantize``
(the gguf package) value for value, which is what HF transformers' GGUF loader uses.

    w = QuantizedWeight.from_raw(tensor.data, tensor.tensor_type, shape=(rows, cols))
    y = w.matmul(x)          # x [N, cols] -> y [N, rows] = x @ W.T, W never materialised
    W = w.dequantize()       # float32 [rows, cols]

Public names: ``dequantize`` / ``dequantize_ref`` (raw bytes -> float32),
``QuantizedWeight`` (``from_raw``, ``concat_rows``, ``shape``, ``ggml_type``,
``row_slice``, ``type_name``, ``nbytes``, ``raw``, ``dequantize``, ``take_rows``, ``permute_rows``,
``matmul``), ``as_array_or_quantized`` (the loader's helper), ``type_name``,
``BLOCK_LAYOUT``, ``GGML_TYPE_NAMES`` and the type ids ``F32 ... BF16``.

Shape legend: R rows (out features), D columns (in features), N inputs.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .. import _jit
from ..errors import ModelFormatError
from . import blocks32, dense, kernels, kquants
from .formats import (BF16, BLOCK_LAYOUT, DENSE_TYPES, F16, F32, GGML_TYPE_NAMES, IQ4_NL, IQ4_XS,  # noqa: F401
                      Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, check_type as _check_type,
                      type_name)

_JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")

# Batches of at least this many inputs (prefill) go through BLAS on dequantized tiles of at
# most TILE_BYTES of fp32 (a whole 1536x576 matrix is one tile; lm_head is cut in tiles).
# Dequantizing every weight costs the same for any batch, so below this the several-input
# kernels (MATVECN) are faster: a whole forward of the default model over 16 tokens took 23.7
# against 61.5 ms, over 32 tokens 46 against 58 ms, over 64 tokens 84 against 90 ms; at 96
# tokens the tiles win, 125 against 298 ms (this 2-core machine).
PREFILL_MIN_N = 64
TILE_BYTES = 4 << 20


def _as_rows(raw, ggml_type, shape) -> Tuple[np.ndarray, int, int, int]:
    """Validate and view ``raw`` as uint8 [rows, row_bytes]; returns (rows_u8, type, rows, cols)."""
    t = _check_type(ggml_type)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ModelFormatError(f"shape must be a tuple of ints, got {shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ModelFormatError(f"shape must be non-empty with positive sizes, got {shape}")
    cols = shape[-1]
    rows = math.prod(shape[:-1])  # Python ints: a corrupt shape cannot wrap around to a small size
    per_block, block_bytes = BLOCK_LAYOUT[t]
    if cols % per_block:
        raise ModelFormatError(
            f"{type_name(t)} tensor of shape {shape}: the row length {cols} is not a multiple "
            f"of the {type_name(t)} block size {per_block}"
        )
    row_bytes = cols // per_block * block_bytes
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = np.ascontiguousarray(raw).view(np.uint8)
    if raw.ndim == 2 and raw.shape != (rows, row_bytes):
        raise ModelFormatError(
            f"{type_name(t)} tensor of shape {shape} needs {rows} rows of {row_bytes} bytes, "
            f"got raw data of shape {raw.shape} (bytes)"
        )
    if raw.size != rows * row_bytes:
        raise ModelFormatError(
            f"{type_name(t)} tensor of shape {shape} needs {rows * row_bytes} bytes, got {raw.size}"
        )
    return raw.reshape(rows, row_bytes), t, rows, cols


# The NumPy reference dequantizers, one per type (each drawn next to its kernels):
# blocks [n, block_bytes] uint8 -> values [n, per_block] float32
_DEQUANT_REF = {**dense.DEQUANT_REF, **blocks32.DEQUANT_REF, **kquants.DEQUANT_REF}


def dequantize_ref(raw, ggml_type: int, shape: Sequence[int]) -> np.ndarray:
    """NumPy reference: raw GGUF bytes -> float32 array of ``shape`` (HF order [out, in])."""
    rows_u8, t, rows, cols = _as_rows(raw, ggml_type, shape)
    block_bytes = BLOCK_LAYOUT[t][1]
    values = _DEQUANT_REF[t](rows_u8.reshape(-1, block_bytes))
    return values.reshape(tuple(int(s) for s in shape)).astype(np.float32, copy=False)


def dequantize(raw, ggml_type: int, shape: Sequence[int]) -> np.ndarray:
    """Raw GGUF bytes (uint8 [rows, row_bytes] or flat) -> float32 array of ``shape``.

    Raises ModelFormatError naming the type if it is unsupported, or if the bytes do not
    match the shape.
    """
    rows_u8, t, rows, cols = _as_rows(raw, ggml_type, shape)
    if _use_reference() or t in DENSE_TYPES:  # F32/F16/BF16: a NumPy view and cast is all it takes
        return dequantize_ref(rows_u8, t, shape)
    w = QuantizedWeight(t, (rows, cols), _repack(rows_u8, t))
    return w.dequantize().reshape(tuple(int(s) for s in shape))


# ---------------------------------------------------------------------------
# The in-memory layout used by the kernels ("planes", see kernels.py)
# ---------------------------------------------------------------------------


def _repack(rows_u8: np.ndarray, t: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 [R, row_bytes] in GGUF order -> (q, s1, s2) planes, same total bytes."""
    if t in blocks32.DEQUANT_REF:
        return blocks32.to_planes(rows_u8, t)
    empty = np.empty((rows_u8.shape[0], 0), np.uint8)  # dense and K-quant rows are used as they are
    return np.ascontiguousarray(rows_u8), empty, empty


def _unpack(planes, t: int) -> np.ndarray:
    """Inverse of _repack: planes -> uint8 [R, row_bytes] in GGUF order."""
    return blocks32.from_planes(planes, t) if t in blocks32.DEQUANT_REF else planes[0]


def _use_reference() -> bool:
    # NPLLM_REFERENCE / use_reference(True), or NUMBA_DISABLE_JIT=1 (the intrinsics need the JIT)
    return _jit.reference_mode() or _JIT_DISABLED


_scratch = threading.local()


def _tile_buffer(rows: int, cols: int) -> np.ndarray:
    """A reusable float32 [rows, cols] buffer (one per thread) for prefill tiles."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < rows * cols:
        buf = _scratch.buf = np.empty(rows * cols, np.float32)
    return buf[: rows * cols].reshape(rows, cols)


class QuantizedWeight:
    """A weight matrix W [R, D] (HF order: out features x in features) kept in GGUF blocks.

    ``matmul(x)`` computes ``x @ W.T`` without materialising W: for a few inputs (decode)
    Numba kernels dequantize 8 values at a time in registers; for many inputs (prefill) W is
    dequantized tile by tile into a reusable buffer and multiplied with BLAS.
    """

    def __init__(self, ggml_type: int, shape: Tuple[int, int], planes):
        self.ggml_type = int(ggml_type)
        self.shape = (int(shape[0]), int(shape[1]))
        self._planes = planes  # (q, s1, s2) uint8 [R, bytes]: see kernels.py
        self._pl = None  # their addresses, for the kernels (valid while _planes lives)

    def _addresses(self):
        if self._pl is None:
            self._pl = kernels.plane_addresses(self._planes)
        return self._pl

    # -- construction -----------------------------------------------------
    @classmethod
    def from_raw(cls, raw, ggml_type: int, shape: Optional[Sequence[int]] = None) -> "QuantizedWeight":
        """From GGUF bytes: uint8 [R, row_bytes] (as GGUFReader's ``tensor.data``) or flat bytes."""
        t = _check_type(ggml_type)
        if shape is None:
            raw_arr = np.asarray(raw)
            if raw_arr.dtype != np.uint8 or raw_arr.ndim != 2:
                raise ModelFormatError("shape is required unless raw is uint8 [rows, row_bytes]")
            per_block, block_bytes = BLOCK_LAYOUT[t]
            shape = (raw_arr.shape[0], raw_arr.shape[1] // block_bytes * per_block)
        if len(tuple(shape)) != 2:
            raise ModelFormatError(f"a QuantizedWeight is 2-D [out, in], got shape {tuple(shape)}")
        rows_u8, t, rows, cols = _as_rows(raw, t, shape)
        return cls(t, (rows, cols), _repack(rows_u8, t))

    @classmethod
    def concat_rows(cls, weights: Sequence["QuantizedWeight"]) -> "QuantizedWeight":
        """Stack weights of one type and width along rows (e.g. q, k, v -> one [Rq+Rk+Rv, D]).

        One matmul on the result replaces several calls (less per-call overhead in decode)."""
        weights = list(weights)
        if not weights:
            raise ValueError("concat_rows needs at least one weight")
        t, cols = weights[0].ggml_type, weights[0].shape[1]
        for w in weights:
            if w.ggml_type != t or w.shape[1] != cols:
                raise ValueError(
                    f"concat_rows needs one type and width: got {w.type_name} {w.shape} "
                    f"and {type_name(t)} {weights[0].shape}"
                )
        planes = tuple(np.concatenate([w._planes[i] for w in weights]) for i in range(3))
        return cls(t, (sum(w.shape[0] for w in weights), cols), planes)

    def row_slice(self, r0: int, r1: int) -> "QuantizedWeight":
        """Rows r0:r1 as a weight that shares this one's memory (no copy)."""
        if not 0 <= r0 < r1 <= self.shape[0]:
            raise ValueError(f"row_slice: need 0 <= r0 < r1 <= {self.shape[0]}, got {r0}:{r1}")
        return QuantizedWeight(self.ggml_type, (r1 - r0, self.shape[1]), tuple(p[r0:r1] for p in self._planes))

    # -- properties -------------------------------------------------------
    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def nbytes(self) -> int:
        return int(sum(p.nbytes for p in self._planes))

    @property
    def dtype(self):
        return np.dtype(np.float32)  # the dtype of what matmul/dequantize produce

    def __repr__(self) -> str:
        return f"QuantizedWeight({self.type_name}, shape={self.shape}, nbytes={self.nbytes})"

    def raw(self) -> np.ndarray:
        """The GGUF bytes, uint8 [R, row_bytes]."""
        return _unpack(self._planes, self.ggml_type)

    # -- dequantization ---------------------------------------------------
    def dequantize(self) -> np.ndarray:
        """float32 [R, D]."""
        return self._dequant_rows(0, self.shape[0])

    def dequantize_ref(self) -> np.ndarray:
        return dequantize_ref(self.raw(), self.ggml_type, self.shape)

    def _dequant_rows(self, r0: int, r1: int, out: Optional[np.ndarray] = None,
                      parallel: bool = True) -> np.ndarray:
        if out is None:
            out = np.empty((r1 - r0, self.shape[1]), np.float32)
        if _use_reference():
            raw = self.raw()[r0:r1]
            out[...] = dequantize_ref(raw, self.ggml_type, (r1 - r0, self.shape[1]))
        else:
            kernels.dequant_rows(self.ggml_type, self._addresses(), r0, out, parallel)
        return out

    def take_rows(self, ids) -> np.ndarray:
        """Rows ``ids`` dequantized: float32 [len(ids), D] (embedding lookup)."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"take_rows: ids must be integers, got dtype {ids.dtype}")
        flat = ids.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise ValueError(f"take_rows: ids must be in [0, {self.shape[0]}), got {flat.min()}..{flat.max()}")
        sub = QuantizedWeight(self.ggml_type, (flat.size, self.shape[1]), tuple(p[flat] for p in self._planes))
        return sub.dequantize().reshape(*ids.shape, self.shape[1])

    def permute_rows(self, perm) -> "QuantizedWeight":
        """A new weight with rows W[perm] (rows are whole blocks, so this is exact)."""
        perm = np.asarray(perm, dtype=np.int64).reshape(-1)
        if perm.size != self.shape[0] or not np.array_equal(np.sort(perm), np.arange(self.shape[0])):
            raise ValueError(f"permute_rows: perm must be a permutation of range({self.shape[0]})")
        return QuantizedWeight(self.ggml_type, self.shape, tuple(np.ascontiguousarray(p[perm]) for p in self._planes))

    # -- multiplication ---------------------------------------------------
    def matmul(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """x [N, D] (or [D]) float32 -> x @ W.T: [N, R] (or [R]) float32.

        ``out`` (float32 [N, R], C-contiguous) avoids an allocation per call.  Decode calls
        this ~200 times per token, so the checks below are kept cheap."""
        rows, cols = self.shape
        vector = x.ndim == 1
        x2 = x.reshape(1, -1) if vector else x
        if x2.ndim != 2 or x2.shape[1] != cols:
            raise ValueError(f"matmul: x must be [N, {cols}] for a weight of shape {self.shape}, got {x.shape}")
        if x2.dtype != np.float32 or not x2.flags.c_contiguous:
            x2 = np.ascontiguousarray(x2, dtype=np.float32)
        n = x2.shape[0]
        if out is None:
            out = np.empty((n, rows), np.float32)
        elif out.shape != (n, rows) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"matmul: out must be C-contiguous float32 [{n}, {rows}], got {out.dtype} {out.shape}")
        if n == 0:
            pass
        elif _use_reference():
            out[...] = x2 @ self.dequantize_ref().T
        elif n >= PREFILL_MIN_N:
            self._matmul_tiles(x2, out)
        else:
            kernels.matvec(self.ggml_type, self._addresses(), x2, out)
        return out[0] if vector else out

    def _matmul_tiles(self, x: np.ndarray, out: np.ndarray) -> None:
        # prefill: W tile [T, D] dequantized into a reusable buffer, then BLAS x @ tile.T.
        # The dequantization runs on this thread only (parallel=False): see dequant_rows.
        rows, cols = self.shape
        tile = min(rows, max(8, TILE_BYTES // (4 * cols)))
        buf = _tile_buffer(tile, cols)
        if tile == rows:  # one tile: BLAS writes straight into out
            np.matmul(x, self._dequant_rows(0, rows, buf, parallel=False).T, out=out)
            return
        tmp = np.empty((x.shape[0], tile), np.float32)
        for r0 in range(0, rows, tile):
            r1 = min(rows, r0 + tile)
            w = self._dequant_rows(r0, r1, buf[: r1 - r0], parallel=False)
            np.matmul(x, w.T, out=tmp[:, : r1 - r0])
            out[:, r0:r1] = tmp[:, : r1 - r0]


def as_array_or_quantized(raw, ggml_type: int, shape: Sequence[int]):
    """Loader helper: float32 ndarray for F32/F16/BF16 tensors, QuantizedWeight otherwise
    (1-D quantized tensors are returned dequantized)."""
    t = _check_type(ggml_type)
    if t in DENSE_TYPES or len(tuple(shape)) != 2:
        return dequantize(raw, t, shape)
    return QuantizedWeight.from_raw(raw, t, shape)
