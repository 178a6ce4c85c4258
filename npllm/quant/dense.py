"""Lessons 06-07 — F32, F16 and BF16 rows: the types that are not blocks.

A GGUF file stores norms (and sometimes whole models) as plain floats.  The loader turns
such tensors into float32 arrays (``as_array_or_quantized``), so these kernels serve the
uncommon case of a ``QuantizedWeight`` holding a dense row type, e.g. a fused weight or a
test.  Each type: the NumPy reference ``_dequant_*`` and its kernels, ``_dot_dense``
(matvec) and ``_deq_row_dense`` (one row to float32).  Rows keep GGUF's layout in the ``q``
plane.
"""

import numpy as np

from .._jit import njit
from .formats import BF16, F16, F32
from .simd import bf16, f16, f32, fload, fstore, vadd, vbf16, vf16, vf32, vfma, vload, vstore, vsum, vzero

# ---------------------------------------------------------------------------
# References: rows [n, row_bytes] uint8 -> values float32
# ---------------------------------------------------------------------------


def _dequant_f32(blocks):
    return np.ascontiguousarray(blocks).view("<f4")


def _dequant_f16(blocks):
    return np.ascontiguousarray(blocks).view("<f2").astype(np.float32)


def _dequant_bf16(blocks):
    # bf16 = the top 16 bits of an fp32
    return (np.ascontiguousarray(blocks).view("<u2").astype(np.uint32) << 16).view(np.float32)


DEQUANT_REF = {F32: _dequant_f32, F16: _dequant_f16, BF16: _dequant_bf16}

# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@njit
def _dense_vec(kind, p, j):
    # values j..j+7 of a F32 / F16 / BF16 row at p
    if kind == F32:
        return vf32(p, 4 * j)
    if kind == F16:
        return vf16(p, 2 * j)
    return vbf16(p, 2 * j)


@njit
def _dense_at(kind, p, j):
    # value j of a F32 / F16 / BF16 row at p
    if kind == F32:
        return f32(p, 4 * j)
    if kind == F16:
        return f16(p, 2 * j)
    return bf16(p, 2 * j)


@njit
def _dot_dense(kind, pl, r0, r1, xp, cols, outp):
    qp, qn = pl[0], pl[1]
    main = cols - cols % 16
    for r in range(r0, r1):
        p = qp + r * qn
        acc0 = vzero()
        acc1 = vzero()
        for j in range(0, main, 16):
            acc0 = vfma(_dense_vec(kind, p, j), vload(xp, j), acc0)
            acc1 = vfma(_dense_vec(kind, p, j + 8), vload(xp, j + 8), acc1)
        s = vsum(vadd(acc0, acc1))
        for j in range(main, cols):
            s += _dense_at(kind, p, j) * fload(xp, j)
        fstore(outp, r, s)


@njit
def _deq_row_dense(kind, p, op, cols):
    # the row at p -> op[0 : cols]
    main = cols - cols % 8
    for j in range(0, main, 8):
        vstore(op, j, _dense_vec(kind, p, j))
    for j in range(main, cols):
        fstore(op, j, _dense_at(kind, p, j))
