"""Lesson 07 — the driver of the quantized kernels: one parallel entry point for every type.

Decoding one token reads every weight once, so its speed is set by how many bytes are read
and how few instructions turn them into fp32 products.  The kernels of each block family
(``blocks32.py``: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL; ``kquants.py``: Q2_K ... Q6_K, IQ4_XS;
``dense.py``: F32, F16, BF16) read the quantized blocks directly, dequantize 8 values at a time
in registers (the vocabulary is ``simd.py``) and accumulate ``w * x`` in fp32.  This module
dispatches to them (``_dot_rows`` for N = 1, ``_deq_row`` for the rest) and runs them on the
cores (``_run``).  ``npllm.quant.dequantize_ref`` is the readable NumPy reference every kernel
is tested against.

Three habits make them fast, and each is a lesson in how Numba compiles:

1. **An 8-lane vocabulary** (``simd.py``): LLVM's auto-vectoriser does not find the right loop
   in "16 bytes -> 32 nibbles -> dot with x", so the kernels spell out 8-lane steps.
2. **Addresses, not arrays, below the driver.**  Passing a NumPy array to a helper
   costs reference counting (atomic increments) and a dozen call arguments; on a
   576-wide row that costs as much as the arithmetic.  ``_run`` takes each array's
   address once (``addr``); the helpers receive plain integers.
3. **One parallel driver.**  ``prange`` splits the rows into a few chunks per
   thread.  A parallel function takes seconds to compile, so there is one (cached on
   disk) for every type and operation.

Weight layout (``QuantizedWeight`` repacks at load; same bytes as the file): the 32-value
block types are split into three byte "planes" per row (``blocks32.to_planes``); K-quants and
F32/F16/BF16 keep GGUF's row layout in the first.  A plane is passed as ``(address, row stride
in bytes)``; ``pl = (q, q_stride, s1, s1_stride, s2, s2_stride)``, so the read-only
memory-mapped planes of a GGUF file and writable copies share one compiled kernel.

Shape legend: R output rows (out features), D columns (in features), N inputs.
"""

import contextlib
import threading

import numba
import numpy as np

from .._jit import njit, njit_parallel, prange
from .blocks32 import (_dot_q4_1_x4, _dot_q4_1_x8, _dot_q8_0_x4, _deq_row_iq4_nl, _deq_row_q4_0, _deq_row_q4_1, _deq_row_q5_0, _deq_row_q5_1,
                       _deq_row_q8_0, _dot_iq4_nl, _dot_q4_0, _dot_q4_1, _dot_q5_0, _dot_q5_1, _dot_q8_0)
from .dense import _deq_row_dense, _dot_dense
from .formats import IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0  # type ids
from .kquants import (_deq_row_iq4_xs, _deq_row_q2_k, _deq_row_q3_k, _deq_row_q4_k, _deq_row_q5_k,
                      _deq_row_q6_k, _dot_iq4_xs, _dot_q2_k, _dot_q3_k, _dot_q4_k, _dot_q5_k, _dot_q6_k)
from .simd import addr, fload, fstore, swfma, swsum, wload, wzero

# ---------------------------------------------------------------------------
# Dispatch by type
# ---------------------------------------------------------------------------


@njit
def _dot_rows(kind, pl, r0, r1, x, xs, dt, out):
    """out[0, r] = W[r] . x[0] for r0 <= r < r1.  xs: block sums of x (see _run); dt: scratch of
    >= cols / 32 + 16 floats (a row's block scales, or a super-block's 16 group scales)."""
    # Arrays are passed down to here, one call per chunk: holding them as arguments keeps them
    # alive while their addresses are in use (Numba frees an array right after its last use).
    _dot_rows_at(kind, pl, r0, r1, addr(x), addr(xs), addr(dt), addr(out), x.shape[1])


@njit
def _dot_rows_at(kind, pl, r0, r1, xp, xsp, dtp, outp, cols):
    """_dot_rows on addresses (x: cols floats at xp; xs at xsp; out's row at outp)."""
    if kind == Q4_1:
        _dot_q4_1(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == Q8_0:
        _dot_q8_0(pl, r0, r1, xp, dtp, outp)
    elif kind == Q4_0:
        _dot_q4_0(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == Q5_0:
        _dot_q5_0(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == Q5_1:
        _dot_q5_1(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == IQ4_NL:
        _dot_iq4_nl(pl, r0, r1, xp, dtp, outp)
    elif kind == Q4_K:
        _dot_q4_k(pl, r0, r1, xp, xsp, outp)
    elif kind == Q6_K:
        _dot_q6_k(pl, r0, r1, xp, outp)
    elif kind == Q5_K:
        _dot_q5_k(pl, r0, r1, xp, xsp, outp)
    elif kind == Q3_K:
        _dot_q3_k(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == Q2_K:
        _dot_q2_k(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == IQ4_XS:
        _dot_iq4_xs(pl, r0, r1, xp, outp)
    else:
        _dot_dense(kind, pl, r0, r1, xp, cols, outp)


@njit
def _strips(kind, pl, c0, c1, xrows, xsr, dt, out):
    """MATVECR over rows c0 <= r < c1 (one call per chunk; see _run): 16 weight rows at a time
    stay in L1 while the inputs pass, eight (Q4_1 with D <= 1024: eight wider inputs would crowd
    L1), four (Q4_1, Q8_0) or one at a time, each with the one-input kernel's arithmetic.  The
    strip loop works on addresses: slicing the arrays there would cost two atomic reference
    counts per call, on counters both threads share."""
    n_sep, cols, n_rows = xrows.shape[0], xrows.shape[2], out.shape[1]
    xp, xsp, dtp, outp = addr(xrows), addr(xsr), addr(dt), addr(out)
    xst, xsst, ost = 4 * cols, 4 * xsr.shape[1], 4 * n_rows  # byte strides between the inputs
    wide = kind == Q4_1 or kind == Q8_0
    eight = kind == Q4_1 and cols <= 1024
    for s0 in range(c0, c1, 16):
        s1 = min(c1, s0 + 16)
        n = 0
        while eight and n + 8 <= n_sep:
            _dot_q4_1_x8(pl, s0, s1, xp + n * xst, xst, xsp + n * xsst, xsst, dtp, outp + n * ost, ost)
            n += 8
        while wide and n + 4 <= n_sep:
            if kind == Q4_1:
                _dot_q4_1_x4(pl, s0, s1, xp + n * xst, xst, xsp + n * xsst, xsst, dtp, outp + n * ost, ost)
            else:
                _dot_q8_0_x4(pl, s0, s1, xp + n * xst, xst, dtp, outp + n * ost, ost)
            n += 4
        for n in range(n, n_sep):
            _dot_rows_at(kind, pl, s0, s1, xp + n * xst, xsp + n * xsst, dtp, outp + n * ost, cols)


@njit
def _deq_row(kind, pl, r, op, cols, dtp, mtp):
    """W[r, :cols] -> float32 op[0 : cols].  dtp, mtp: scratch of >= cols / 32 floats."""
    nb = cols // 32  # blocks of 32
    p = pl[0] + r * pl[1]  # the row's bytes (K-quants, dense) or quants (32-value blocks)
    if kind == Q8_0:
        _deq_row_q8_0(pl, r, op, nb, dtp)
    elif kind == Q4_0:
        _deq_row_q4_0(pl, r, op, nb, dtp)
    elif kind == Q4_1:
        _deq_row_q4_1(pl, r, op, nb, dtp, mtp)
    elif kind == Q5_0:
        _deq_row_q5_0(pl, r, op, nb, dtp)
    elif kind == Q5_1:
        _deq_row_q5_1(pl, r, op, nb, dtp, mtp)
    elif kind == IQ4_NL:
        _deq_row_iq4_nl(pl, r, op, nb, dtp)
    elif kind == Q4_K:
        _deq_row_q4_k(p, op, nb // 8)
    elif kind == Q6_K:
        _deq_row_q6_k(p, op, nb // 8)
    elif kind == Q5_K:
        _deq_row_q5_k(p, op, nb // 8)
    elif kind == Q3_K:
        _deq_row_q3_k(p, op, nb // 8)
    elif kind == Q2_K:
        _deq_row_q2_k(p, op, nb // 8)
    elif kind == IQ4_XS:
        _deq_row_iq4_xs(p, op, nb // 8)
    else:
        _deq_row_dense(kind, p, op, cols)


# ---------------------------------------------------------------------------
# N > 1: dequantized rows (fp32) dotted with several inputs at once, so each loaded
# vector is used several times (the accumulators stay in registers).
# ---------------------------------------------------------------------------


@njit
def _tail(wp, xp, start, cols):
    # sum(w[j] * x[j] for start <= j < cols): the last < 16 values of a dense row
    s = np.float32(0.0)
    for j in range(start, cols):
        s += fload(wp, j) * fload(xp, j)
    return s


@njit
def _dot_rows2_inputs4(wp, cols, xp, outp, ostride):
    # two dequantized rows (fp32: w0 at wp, w1 at wp + 4 cols) times four inputs (x[k] at
    # xp + 4 k cols): out[k * ostride + i] = w_i . x[k].  Each loaded 16-lane vector is used 4
    # or 2 times, and the 8 accumulators stay in registers.
    main = cols - cols % 16
    a0 = wzero()
    a1 = wzero()
    a2 = wzero()
    a3 = wzero()
    b0 = wzero()
    b1 = wzero()
    b2 = wzero()
    b3 = wzero()
    for j in range(0, main, 16):
        w0 = wload(wp, j)
        w1 = wload(wp, j + cols)
        x0 = wload(xp, j)
        a0 = swfma(w0, x0, a0)
        b0 = swfma(w1, x0, b0)
        x1 = wload(xp, j + cols)
        a1 = swfma(w0, x1, a1)
        b1 = swfma(w1, x1, b1)
        x2 = wload(xp, j + 2 * cols)
        a2 = swfma(w0, x2, a2)
        b2 = swfma(w1, x2, b2)
        x3 = wload(xp, j + 3 * cols)
        a3 = swfma(w0, x3, a3)
        b3 = swfma(w1, x3, b3)
    w1p = wp + 4 * cols
    fstore(outp, 0, swsum(a0) + _tail(wp, xp, main, cols))
    fstore(outp, 1, swsum(b0) + _tail(w1p, xp, main, cols))
    fstore(outp, ostride, swsum(a1) + _tail(wp, xp + 4 * cols, main, cols))
    fstore(outp, ostride + 1, swsum(b1) + _tail(w1p, xp + 4 * cols, main, cols))
    fstore(outp, 2 * ostride, swsum(a2) + _tail(wp, xp + 8 * cols, main, cols))
    fstore(outp, 2 * ostride + 1, swsum(b2) + _tail(w1p, xp + 8 * cols, main, cols))
    fstore(outp, 3 * ostride, swsum(a3) + _tail(wp, xp + 12 * cols, main, cols))
    fstore(outp, 3 * ostride + 1, swsum(b3) + _tail(w1p, xp + 12 * cols, main, cols))


@njit
def _dot_inputs1(wp, xp, cols, outp):
    # out[0] = w . x with the very arithmetic of one of _dot_rows2_inputs4's eight sums (one
    # 16-lane accumulator, then swsum and the tail): every row and input of a batch is computed
    # alike, so a row's result does not depend on how many rows the batch has or where it sits
    # (batch invariance, lesson 09).
    main = cols - cols % 16
    a0 = wzero()
    for j in range(0, main, 16):
        a0 = swfma(wload(wp, j), wload(xp, j), a0)
    fstore(outp, 0, swsum(a0) + _tail(wp, xp, main, cols))


@njit
def _deq_dot_rows(kind, pl, r0, r1, x, out, buf, dt, mt):
    """out[n, r] = W[r] . x[n] for r0 <= r < r1 and every input n (x [N, D], out [N, R]).
    Rows are dequantized two at a time into buf (fp32, stays in L1), then multiplied with the
    inputs four at a time; the leftover inputs (and an odd last row) one at a time."""
    n_in, cols = x.shape
    n_rows = out.shape[1]
    xp, outp, bufp, dtp, mtp = addr(x), addr(out), addr(buf), addr(dt), addr(mt)
    for r in range(r0, r1, 2):
        pair = r + 1 < r1
        _deq_row(kind, pl, r, bufp, cols, dtp, mtp)
        if pair:
            _deq_row(kind, pl, r + 1, bufp + 4 * cols, cols, dtp, mtp)
        n = 0
        while pair and n + 4 <= n_in:
            _dot_rows2_inputs4(bufp, cols, xp + 4 * n * cols, outp + 4 * (n * n_rows + r), n_rows)
            n += 4
        while n < n_in:
            _dot_inputs1(bufp, xp + 4 * n * cols, cols, outp + 4 * (n * n_rows + r))
            if pair:
                _dot_inputs1(bufp + 4 * cols, xp + 4 * n * cols, cols, outp + 4 * (n * n_rows + r + 1))
            n += 1


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------

MATVEC1, MATVECN, DEQUANT, MATVECR = 0, 1, 2, 3


@njit
def _deq_rows(kind, pl, r0, r1, out, i0, dt, mt):
    """out[i0 + i, :] = W[r0 + i, :] for 0 <= i < r1 - r0 (out [T, D])."""
    cols = out.shape[1]
    outp, dtp, mtp = addr(out), addr(dt), addr(mt)
    for i in range(r1 - r0):
        _deq_row(kind, pl, r0 + i, outp + 4 * (i0 + i) * cols, cols, dtp, mtp)


@njit
def _block_sums(x, width):
    # xs[b] = sum(x[0, width*b : width*(b+1)])
    n = x.shape[1] // width
    xs = np.empty(n + 1, np.float32)
    for b in range(n):
        s = np.float32(0.0)
        for i in range(width * b, width * (b + 1)):
            s += x[0, i]
        xs[b] = s
    return xs


@njit_parallel
def _run(op, kind, pl, x, out, r0, n_chunks):
    """op MATVEC1: out[0, r] = W[r] . x[0]   (x [1, D], out [1, R]; dequantized in registers)
    op MATVECN: out[n, r] = W[r] . x[n]   (x [N, D], out [N, R]; each row dequantized once)
    op DEQUANT: out[i, :] = W[r0 + i, :]   (out [T, D]; x unused)
    op MATVECR: out[n, r] = W[r] . x[n]   (x [N, D], out [N, R]; each input row exactly as MATVEC1
                would compute it alone: speculative decoding's verify pass, npllm.speculative)
    pl: the weight's planes as (address, row stride) pairs (see plane_addresses)."""
    cols = out.shape[1] if op == DEQUANT else x.shape[1]
    n_rows = out.shape[0] if op == DEQUANT else out.shape[1]
    width = 16 if kind == Q2_K or kind == Q3_K else 32
    xs = _block_sums(x, width)  # sums of x[0] over blocks of 32 (16)
    n_sep = x.shape[0] if op == MATVECR else 0
    xrows = np.empty((n_sep, 1, cols), np.float32)  # MATVECR: each input row alone, C-contiguous
    xsr = np.empty((n_sep, xs.shape[0]), np.float32)  # and its block sums
    for n in range(n_sep):
        xrows[n, 0] = x[n]
        xsr[n] = _block_sums(xrows[n], width)
    for c in prange(n_chunks):
        c0 = c * n_rows // n_chunks
        c1 = (c + 1) * n_rows // n_chunks
        dt = np.empty(cols // 32 + 16, np.float32)  # per-chunk scratch (see _dot_rows)
        mt = np.empty(cols // 32 + 1, np.float32)
        if op == MATVEC1:
            _dot_rows(kind, pl, c0, c1, x, xs, dt, out)
        elif op == MATVECN:
            _deq_dot_rows(kind, pl, c0, c1, x, out, np.empty(2 * cols + 8, np.float32), dt, mt)
        elif op == MATVECR:
            _strips(kind, pl, c0, c1, xrows, xsr, dt, out)
        else:
            _deq_rows(kind, pl, r0 + c0, r0 + c1, out, c0, dt, mt)


# a few chunks per thread: a thread that other processes delay holds back less work
_CHUNKS = 4 * numba.config.NUMBA_NUM_THREADS


def _n_chunks(rows: int) -> int:
    return max(1, min(rows, _CHUNKS))


def plane_addresses(planes):
    """(q, s1, s2) uint8 C-contiguous arrays -> (q address, q row bytes, s1 ..., s2 ...).

    The kernels take addresses, so one compiled function serves read-only (memory-mapped) and
    writable planes alike.  The caller must keep the arrays alive (QuantizedWeight does)."""
    pl = []
    for p in planes:
        assert p.dtype == np.uint8 and p.ndim == 2 and p.flags.c_contiguous
        pl += [p.ctypes.data, p.shape[1]]
    return tuple(pl)


# Batch invariance (lesson 09).  MATVEC1 (one input) and MATVECN (several) sum in different
# orders, so a request decoded alone would round differently from the same request decoded
# beside others.  MATVECR computes each of several inputs exactly as MATVEC1 computes it alone
# (speculative decoding's verify pass needs the same).  A server's engine thread therefore runs
# in ``batch_invariant()`` mode: one input takes MATVEC1 and several take MATVECR, so every
# request gets MATVEC1's arithmetic whatever the batch, and a lone request runs at full speed.
_mode = threading.local()


@contextlib.contextmanager
def batch_invariant(on: bool = True):
    """Within this block, on this thread, several inputs take MATVECR (each input as MATVEC1
    computes it alone): results per input are then bitwise the same for any batch size.
    ``on=False`` turns the mode off inside an invariant block (a server's prefill, alone)."""
    before = getattr(_mode, "invariant", False)
    _mode.invariant = on
    try:
        yield
    finally:
        _mode.invariant = before


def op_for_many() -> int:
    """The operation for several inputs on this thread: MATVECN, or MATVECR in ``batch_invariant``."""
    return MATVECR if getattr(_mode, "invariant", False) else MATVECN


def matvec(kind: int, pl, x: np.ndarray, out: np.ndarray) -> None:
    """out [N, R] = x [N, D] @ W.T for small N (trusted: float32, C-contiguous, shapes checked)."""
    rows = out.shape[1]
    _run(MATVEC1 if x.shape[0] == 1 else op_for_many(), kind, pl, x, out, 0, rows if rows < _CHUNKS else _CHUNKS)


def matvec_rows(kind: int, pl, x: np.ndarray, out: np.ndarray) -> None:
    """out [N, R] = x [N, D] @ W.T, each row with MATVEC1's arithmetic (bit-equal to N calls with
    one row each), reading each chunk of W once for all N rows (trusted like ``matvec``)."""
    rows = out.shape[1]
    _run(MATVECR, kind, pl, x, out, 0, rows if rows < _CHUNKS else _CHUNKS)


_NO_X = np.zeros((1, 32), np.float32)


@njit
def _deq_rows_serial(kind, pl, r0, out):
    # the DEQUANT op on the calling thread only (see dequant_rows)
    cols = out.shape[1]
    dt = np.empty(cols // 32 + 1, np.float32)
    mt = np.empty(cols // 32 + 1, np.float32)
    _deq_rows(kind, pl, r0, r0 + out.shape[0], out, 0, dt, mt)


def dequant_rows(kind: int, pl, r0: int, out: np.ndarray, parallel: bool = True) -> None:
    """out [T, D] = W[r0 : r0 + T] as float32 (trusted inputs).

    ``parallel=False`` keeps the work on the calling thread.  Prefill uses it between BLAS
    calls: dequantizing a tile is ~50x cheaper than multiplying by it, and Numba's OpenMP
    workers, once woken, spin for a while and slow the BLAS threads that come next."""
    if parallel:
        _run(DEQUANT, kind, pl, _NO_X, out, r0, _n_chunks(out.shape[0]))
    else:
        _deq_rows_serial(kind, pl, r0, out)
