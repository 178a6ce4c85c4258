"""Lessons 06-07 — the 32-value block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and IQ4_NL.

A row is cut into blocks of 32 values; a block is one or two fp16 numbers (the scale d, the
offset m) and 32 small integers.  Each type below has three faces, side by side:

* ``_dequant_<type>``: the NumPy reference (the block layout is drawn above it), equal to
  ``gguf.quants.dequantize`` value for value;
* ``_dot_<type>``: the matvec kernel, ``out[r] = W[r] . x`` for a range of rows, which reads the
  blocks and dequantizes 8 values at a time in registers (the vocabulary is in ``simd.py``);
* ``_deq_row_<type>``: one row to float32 (prefill tiles, embedding lookups, N > 1 decode).

The public face is ``QuantizedWeight`` (``weight.py``); the dispatch is in ``kernels.py``.

**Planes.**  ``QuantizedWeight`` keeps these types as three byte "planes" per row (same bytes
as the file, regrouped at load by ``to_planes``): ``q`` the quants, ``s1`` the fp16 scales d,
``s2`` the rest (Q4_1: the mins m; Q5_0: the 32-bit high-bit masks qh; Q5_1: all the m, then
all the qh).  A row's scales are then contiguous (converted to fp32 8 at a time) and its quants
16-byte aligned.

**One algebraic trick.**  ``sum_i (d q_i + m) x_i = d * sum_i q_i x_i + m * sum_i x_i``: the
block sums of x (``xs``, computed once per input for all rows) turn offsets into one scalar
correction per block, so the inner loop only multiplies integers by x.
"""

import numpy as np

from .._jit import njit
from .formats import BLOCK_LAYOUT, IQ4_NL, IQ4_VALUES, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
from .simd import (f16, fload, fstore, vadd, vbits, vf16, vfma, vhi4, vi8, viq4hi, viq4lo, vlo4, vload,
                   vmul, vsplat, vstore, vsum, vzero)
from .simd import svfma, svmul, swadd, swfma, swmul, swsum, whi4, wi8, wlo4, wload, wsplat, wzero

# ---------------------------------------------------------------------------
# Shared pieces: reference helpers, planes, kernel helpers
# ---------------------------------------------------------------------------


def _f16(b: np.ndarray) -> np.ndarray:
    # [n, 2] little-endian bytes -> [n, 1] float32
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    # [n, 16] bytes -> [n, 32] values: low nibbles are values 0..15, high nibbles 16..31
    return np.concatenate([qs & 15, qs >> 4], axis=1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    # [n, 4] bytes (a little-endian u32) -> [n, 32] uint8: bit i is the 5th bit of value i
    word = np.ascontiguousarray(qh).view("<u4")  # [n, 1]
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


# Where the fields of a block go, as byte ranges of the block: (q plane, s1 plane, s2 fields).
# s2 holds every block's first field, then every block's second (Q5_1: all m, then all qh).
_PLANES = {
    Q8_0: ((2, 34), (0, 2), ()),
    Q4_0: ((2, 18), (0, 2), ()),
    Q4_1: ((4, 20), (0, 2), ((2, 4),)),
    Q5_0: ((6, 22), (0, 2), ((2, 6),)),
    Q5_1: ((8, 24), (0, 2), ((2, 4), (4, 8))),
    IQ4_NL: ((2, 18), (0, 2), ()),
}


def _field(blocks: np.ndarray, start: int, stop: int) -> np.ndarray:
    # blocks [R, nb, block_bytes] -> bytes start:stop of every block, as [R, nb * (stop - start)]
    rows, nb, bb = blocks.shape
    w = stop - start
    if blocks.strides[1:] == (bb, 1):
        # Each block as one record whose field is the w bytes: NumPy then copies w bytes per
        # block in one step (2-5x faster at load than copying a [R, nb, w] uint8 slice).
        rec = np.dtype({"names": ["f"], "formats": [f"V{w}"], "offsets": [start], "itemsize": bb})
        field = np.lib.stride_tricks.as_strided(blocks, (rows, nb * bb), (blocks.strides[0], 1)).view(rec)["f"]
        return np.ascontiguousarray(field).view(np.uint8).reshape(rows, nb * w)
    out = np.empty((rows, nb, w), np.uint8)
    out[...] = blocks[:, :, start:stop]
    return out.reshape(rows, -1)


def to_planes(rows_u8: np.ndarray, t: int):
    """uint8 [R, row_bytes] in GGUF order -> (q, s1, s2) planes, same total bytes."""
    rows = rows_u8.shape[0]
    blocks = rows_u8.reshape(rows, -1, BLOCK_LAYOUT[t][1])
    q, s1, s2 = _PLANES[t]
    rest = [_field(blocks, *f) for f in s2]
    return (_field(blocks, *q), _field(blocks, *s1),
            np.concatenate(rest, axis=1) if rest else np.empty((rows, 0), np.uint8))


def from_planes(planes, t: int) -> np.ndarray:
    """Inverse of to_planes: planes -> uint8 [R, row_bytes] in GGUF order."""
    q, s1, s2 = planes
    rows, nb = q.shape[0], s1.shape[1] // 2
    out = np.empty((rows, nb, BLOCK_LAYOUT[t][1]), np.uint8)
    (q0, q1), (s0, s1_end), rest = _PLANES[t]
    out[:, :, q0:q1] = q.reshape(rows, nb, q1 - q0)
    out[:, :, s0:s1_end] = s1.reshape(rows, nb, s1_end - s0)
    at = 0
    for a, b in rest:
        out[:, :, a:b] = s2[:, at:at + nb * (b - a)].reshape(rows, nb, b - a)
        at += nb * (b - a)
    return out.reshape(rows, -1)


# Kernel helpers.  `_dot_<type>(pl, r0, r1, xp, xsp, dtp, outp)` sets out[r] = W[r] . x for
# r0 <= r < r1; pl = (q, q row bytes, s1, ..., s2, ...) (addresses); xsp -> xs[b], the sum of x
# over block b; dtp -> scratch floats (a row's scales as fp32).


@njit
def _scales(p, dtp, nb):
    # nb fp16 scales at p -> fp32 at dtp, 8 at a time (vcvtph2ps)
    main = nb - nb % 8
    for b in range(0, main, 8):
        vstore(dtp, b, vf16(p, 2 * b))
    for b in range(main, nb):
        fstore(dtp, b, f16(p, 2 * b))


@njit
def _f16_dot(p, xsp, nb):
    # sum_b f16(p)[b] * xs[b]: the mins m times the block sums of x (Q4_1, Q5_1)
    main = nb - nb % 8
    acc = vzero()
    for b in range(0, main, 8):
        acc = vfma(vf16(p, 2 * b), vload(xsp, b), acc)
    s = vsum(acc)
    for b in range(main, nb):
        s += f16(p, 2 * b) * fload(xsp, b)
    return s


@njit
def _scaled_dot_xs(dtp, xsp, nb):
    # sum_b d_b * xs_b (the correction of Q4_0's "- 8" and Q5_0's "- 16")
    s = np.float32(0.0)
    for b in range(nb):
        s += fload(dtp, b) * fload(xsp, b)
    return s


@njit
def _halves_dot(lo, hi, xp, j):
    # lo . x[j : j + 16] + hi . x[j + 16 : j + 32]: one 32-value block as two 16-lane halves
    # (lo: a nibble block's low nibbles or a Q8_0 block's first 16 quants; hi: the others)
    return swfma(hi, wload(xp, j + 16), swmul(lo, wload(xp, j)))


@njit
def _nibble_dot16(p, xp, j):
    # _nibble_dot's sum in 16 lanes: the low nibbles are values 0..15, the high ones 16..31
    return _halves_dot(wlo4(p, 0), whi4(p, 0), xp, j)


@njit
def _nibble_dot(p, xp, j):
    # sum_i q_i x[j + i] over one block: the 16 bytes at p hold q_i (low nibble) and q_{i+16} (high)
    s = svmul(vlo4(p, 0), vload(xp, j))
    s = svfma(vlo4(p, 8), vload(xp, j + 8), s)
    s = svfma(vhi4(p, 0), vload(xp, j + 16), s)
    return svfma(vhi4(p, 8), vload(xp, j + 24), s)


@njit
def _deq_nibbles(p, d, m, op):
    # one block of 16 nibble bytes at p -> op[0:32] = d * q + m
    vd = vsplat(d)
    vm = vsplat(m)
    vstore(op, 0, vfma(vd, vlo4(p, 0), vm))
    vstore(op, 8, vfma(vd, vlo4(p, 8), vm))
    vstore(op, 16, vfma(vd, vhi4(p, 0), vm))
    vstore(op, 24, vfma(vd, vhi4(p, 8), vm))


# ---------------------------------------------------------------------------
# Q8_0
# ---------------------------------------------------------------------------


def _dequant_q8_0(blocks):
    # | d: f16 | q: int8 x 32 |              w = d * q
    d = _f16(blocks[:, 0:2])
    return d * blocks[:, 2:].view(np.int8).astype(np.float32)


@njit
def _q8_block_dot(p, xp, j):
    # sum_i q_i x[j + i] over one block of 32 int8 at p, as two 16-lane halves
    return _halves_dot(wi8(p, 0), wi8(p, 16), xp, j)


@njit
def _dot_q8_0(pl, r0, r1, xp, dtp, outp):
    # block: d (fp16, plane s1) and 32 int8 q (plane q).   w = d * q
    qp, qn, dp, dn = pl[0], pl[1], pl[2], pl[3]
    nb = dn // 2
    for r in range(r0, r1):
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        acc0 = wzero()  # even / odd blocks (see _dot_q4_1)
        acc1 = wzero()
        for b in range(0, nb - 1, 2):
            acc0 = swfma(wsplat(fload(dtp, b)), _q8_block_dot(p + 32 * b, xp, 32 * b), acc0)
            acc1 = swfma(wsplat(fload(dtp, b + 1)), _q8_block_dot(p + 32 * b + 32, xp, 32 * b + 32), acc1)
        if nb % 2:
            acc0 = swfma(wsplat(fload(dtp, nb - 1)), _q8_block_dot(p + 32 * nb - 32, xp, 32 * nb - 32), acc0)
        fstore(outp, r, swsum(swadd(acc0, acc1)))


@njit
def _deq_row_q8_0(pl, r, op, nb, dtp):
    # W[r] -> op[0 : 32 nb]
    _scales(pl[2] + r * pl[3], dtp, nb)
    p = pl[0] + r * pl[1]
    for b in range(nb):
        vd = vsplat(fload(dtp, b))
        for k in range(4):
            vstore(op, 32 * b + 8 * k, vmul(vd, vi8(p + 32 * b, 8 * k)))


# ---------------------------------------------------------------------------
# Q4_0
# ---------------------------------------------------------------------------


def _dequant_q4_0(blocks):
    # | d: f16 | qs: 16 bytes (2 x 4 bits) |  w = d * (q - 8)
    d = _f16(blocks[:, 0:2])
    return d * (_nibbles(blocks[:, 2:]).astype(np.float32) - 8)


@njit
def _dot_q4_0(pl, r0, r1, xp, xsp, dtp, outp):
    # block: d, 16 bytes of nibbles.  w = d * (q - 8)  =>  sum_b d_b * (sum q x - 8 * xs_b)
    qp, qn, dp, dn = pl[0], pl[1], pl[2], pl[3]
    nb = dn // 2
    for r in range(r0, r1):
        _scales(dp + r * dn, dtp, nb)
        corr = _scaled_dot_xs(dtp, xsp, nb)
        p = qp + r * qn
        acc = vzero()
        for b in range(nb):
            acc = vfma(vsplat(fload(dtp, b)), _nibble_dot(p + 16 * b, xp, 32 * b), acc)
        fstore(outp, r, vsum(acc) - np.float32(8.0) * corr)


@njit
def _deq_row_q4_0(pl, r, op, nb, dtp):
    _scales(pl[2] + r * pl[3], dtp, nb)
    p = pl[0] + r * pl[1]
    for b in range(nb):
        d = fload(dtp, b)
        _deq_nibbles(p + 16 * b, d, np.float32(-8.0) * d, op + 128 * b)  # 32 floats = 128 bytes a block


# ---------------------------------------------------------------------------
# Q4_1
# ---------------------------------------------------------------------------


def _dequant_q4_1(blocks):
    # | d: f16 | m: f16 | qs: 16 bytes |     w = d * q + m
    d, m = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    return d * _nibbles(blocks[:, 4:]).astype(np.float32) + m


@njit
def _dot_q4_1(pl, r0, r1, xp, xsp, dtp, outp):
    # block: d, m, 16 bytes of nibbles.  w = d * q + m  =>  sum_b d_b * (sum q x) + m_b * xs_b
    qp, qn, dp, dn, mp, mn = pl
    nb = dn // 2
    for r in range(r0, r1):
        mx = _f16_dot(mp + r * mn, xsp, nb)
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        acc0 = wzero()  # two accumulators (even / odd blocks): with one, each block's FMA
        acc1 = wzero()  # would wait 4 cycles for the previous one
        for b in range(0, nb - 1, 2):
            acc0 = swfma(wsplat(fload(dtp, b)), _nibble_dot16(p + 16 * b, xp, 32 * b), acc0)
            acc1 = swfma(wsplat(fload(dtp, b + 1)), _nibble_dot16(p + 16 * b + 16, xp, 32 * b + 32), acc1)
        if nb % 2:
            acc0 = swfma(wsplat(fload(dtp, nb - 1)), _nibble_dot16(p + 16 * nb - 16, xp, 32 * nb - 32), acc0)
        fstore(outp, r, swsum(swadd(acc0, acc1)) + mx)


@njit
def _deq_row_q4_1(pl, r, op, nb, dtp, mtp):
    _scales(pl[2] + r * pl[3], dtp, nb)
    _scales(pl[4] + r * pl[5], mtp, nb)
    p = pl[0] + r * pl[1]
    for b in range(nb):
        _deq_nibbles(p + 16 * b, fload(dtp, b), fload(mtp, b), op + 128 * b)


# ---------------------------------------------------------------------------
# Q5_0 and Q5_1: a 4-bit nibble plus a 5th bit from a 32-bit mask
# ---------------------------------------------------------------------------


def _dequant_q5_0(blocks):
    # | d: f16 | qh: u32 (bit i = 5th bit of value i) | qs: 16 bytes |   w = d * (q - 16)
    d = _f16(blocks[:, 0:2])
    q = _nibbles(blocks[:, 6:]) | (_high_bits(blocks[:, 2:6]) << 4)
    return d * (q.astype(np.float32) - 16)


def _dequant_q5_1(blocks):
    # | d: f16 | m: f16 | qh: u32 (bit i = 5th bit of value i) | qs: 16 bytes |   w = d * q + m
    d, m = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    q = _nibbles(blocks[:, 8:]) | (_high_bits(blocks[:, 4:8]) << 4)
    return d * q.astype(np.float32) + m


@njit
def _q5_block_dot(p, h, xp, j):
    # sum_i q_i x[j + i] over one block, q_i = nibble_i + 16 * bit i of the u32 at h
    hx = vmul(vbits(h, 0, 0), vload(xp, j))
    hx = vfma(vbits(h, 0, 8), vload(xp, j + 8), hx)
    hx = vfma(vbits(h, 0, 16), vload(xp, j + 16), hx)
    hx = vfma(vbits(h, 0, 24), vload(xp, j + 24), hx)
    return vfma(vsplat(np.float32(16.0)), hx, _nibble_dot(p, xp, j))


@njit
def _dot_q5_0(pl, r0, r1, xp, xsp, dtp, outp):
    # block: d, qh, 16 bytes of nibbles.  w = d * (q - 16)  =>  sum_b d_b * (sum q x - 16 xs_b)
    qp, qn, dp, dn, hp, hn = pl
    nb = dn // 2
    for r in range(r0, r1):
        _scales(dp + r * dn, dtp, nb)
        corr = _scaled_dot_xs(dtp, xsp, nb)
        p = qp + r * qn
        h = hp + r * hn
        acc = vzero()
        for b in range(nb):
            acc = vfma(vsplat(fload(dtp, b)), _q5_block_dot(p + 16 * b, h + 4 * b, xp, 32 * b), acc)
        fstore(outp, r, vsum(acc) - np.float32(16.0) * corr)


@njit
def _dot_q5_1(pl, r0, r1, xp, xsp, dtp, outp):
    # block: d, m, qh, 16 bytes of nibbles.  w = d * q + m  =>  sum_b d_b * (sum q x) + m_b * xs_b.
    # Plane s2 holds the row's nb mins (fp16), then its nb masks qh (u32).
    qp, qn, dp, dn, sp, sn = pl
    nb = dn // 2
    for r in range(r0, r1):
        mx = _f16_dot(sp + r * sn, xsp, nb)
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        h = sp + r * sn + 2 * nb
        acc = vzero()
        for b in range(nb):
            acc = vfma(vsplat(fload(dtp, b)), _q5_block_dot(p + 16 * b, h + 4 * b, xp, 32 * b), acc)
        fstore(outp, r, vsum(acc) + mx)


@njit
def _deq_q5_block(p, h, d, m, op):
    # one block -> op[0:32] = d * (nibble + 16 hbit) + m
    _deq_nibbles(p, d, m, op)
    vd16 = vsplat(np.float32(16.0) * d)
    for k in range(4):
        vstore(op, 8 * k, vfma(vd16, vbits(h, 0, 8 * k), vload(op, 8 * k)))


@njit
def _deq_row_q5_0(pl, r, op, nb, dtp):
    _scales(pl[2] + r * pl[3], dtp, nb)
    p = pl[0] + r * pl[1]
    h = pl[4] + r * pl[5]
    for b in range(nb):
        d = fload(dtp, b)
        _deq_q5_block(p + 16 * b, h + 4 * b, d, np.float32(-16.0) * d, op + 128 * b)


@njit
def _deq_row_q5_1(pl, r, op, nb, dtp, mtp):
    _scales(pl[2] + r * pl[3], dtp, nb)
    _scales(pl[4] + r * pl[5], mtp, nb)
    p = pl[0] + r * pl[1]
    h = pl[4] + r * pl[5] + 2 * nb
    for b in range(nb):
        _deq_q5_block(p + 16 * b, h + 4 * b, fload(dtp, b), fload(mtp, b), op + 128 * b)


# ---------------------------------------------------------------------------
# IQ4_NL: 4-bit indices into a 16-entry codebook instead of a uniform grid
# ---------------------------------------------------------------------------

_IQ4 = np.array(IQ4_VALUES, np.float32)


def _dequant_iq4_nl(blocks):
    # | d: f16 | qs: 16 bytes (2 x 4-bit indices, low nibbles values 0..15) |   w = d * IQ4_VALUES[q]
    return _f16(blocks[:, 0:2]) * _IQ4[_nibbles(blocks[:, 2:])]


@njit
def _iq4_block_dot(p, xp, j):
    # sum_i K[q_i] x[j + i] over one block of 16 index bytes at p (K = IQ4_VALUES)
    s = vmul(viq4lo(p, 0), vload(xp, j))
    s = vfma(viq4lo(p, 8), vload(xp, j + 8), s)
    s = vfma(viq4hi(p, 0), vload(xp, j + 16), s)
    return vfma(viq4hi(p, 8), vload(xp, j + 24), s)


@njit
def _dot_iq4_nl(pl, r0, r1, xp, dtp, outp):
    # block: d (plane s1), 16 bytes of indices (plane q).   w = d * K[q]
    qp, qn, dp, dn = pl[0], pl[1], pl[2], pl[3]
    nb = dn // 2
    for r in range(r0, r1):
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        acc0 = vzero()  # even / odd blocks (see _dot_q4_1)
        acc1 = vzero()
        for b in range(0, nb - 1, 2):
            acc0 = vfma(vsplat(fload(dtp, b)), _iq4_block_dot(p + 16 * b, xp, 32 * b), acc0)
            acc1 = vfma(vsplat(fload(dtp, b + 1)), _iq4_block_dot(p + 16 * b + 16, xp, 32 * b + 32), acc1)
        if nb % 2:
            acc0 = vfma(vsplat(fload(dtp, nb - 1)), _iq4_block_dot(p + 16 * nb - 16, xp, 32 * nb - 32), acc0)
        fstore(outp, r, vsum(vadd(acc0, acc1)))


@njit
def _deq_iq4_block(p, d, op):
    # 16 index bytes at p -> op[0:32] = d * K[q]
    vd = vsplat(d)
    vstore(op, 0, vmul(vd, viq4lo(p, 0)))
    vstore(op, 8, vmul(vd, viq4lo(p, 8)))
    vstore(op, 16, vmul(vd, viq4hi(p, 0)))
    vstore(op, 24, vmul(vd, viq4hi(p, 8)))


@njit
def _deq_row_iq4_nl(pl, r, op, nb, dtp):
    _scales(pl[2] + r * pl[3], dtp, nb)
    p = pl[0] + r * pl[1]
    for b in range(nb):
        _deq_iq4_block(p + 16 * b, fload(dtp, b), op + 128 * b)


DEQUANT_REF = {Q8_0: _dequant_q8_0, Q4_0: _dequant_q4_0, Q4_1: _dequant_q4_1, Q5_0: _dequant_q5_0,
               Q5_1: _dequant_q5_1, IQ4_NL: _dequant_iq4_nl}


# ---------------------------------------------------------------------------
# Four inputs at once with the one-input arithmetic (speculative decoding's verify pass, and
# the server's batch-invariant decode): each block's quants are unpacked once and used for four
# inputs, and every input goes through exactly the operations of _dot_q4_1 / _dot_q8_0 in the
# same order, so each output is bit-equal to the one-input kernel's.  xs, xss, os: the byte
# strides between the inputs.
# ---------------------------------------------------------------------------


@njit
def _dot_q4_1_x4(pl, r0, r1, xp, xs, xsp, xss, dtp, outp, os):
    qp, qn, dp, dn, mp, mn = pl
    nb = dn // 2
    for r in range(r0, r1):
        m0 = _f16_dot(mp + r * mn, xsp, nb)
        m1 = _f16_dot(mp + r * mn, xsp + xss, nb)
        m2 = _f16_dot(mp + r * mn, xsp + 2 * xss, nb)
        m3 = _f16_dot(mp + r * mn, xsp + 3 * xss, nb)
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        a0 = wzero()
        b0 = wzero()
        a1 = wzero()
        b1 = wzero()
        a2 = wzero()
        b2 = wzero()
        a3 = wzero()
        b3 = wzero()
        for b in range(0, nb - 1, 2):
            d = wsplat(fload(dtp, b))
            pb, j = p + 16 * b, 32 * b
            lo, hi = wlo4(pb, 0), whi4(pb, 0)
            a0 = swfma(d, _halves_dot(lo, hi, xp, j), a0)
            a1 = swfma(d, _halves_dot(lo, hi, xp + xs, j), a1)
            a2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), a2)
            a3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), a3)
            d = wsplat(fload(dtp, b + 1))
            pb, j = pb + 16, j + 32
            lo, hi = wlo4(pb, 0), whi4(pb, 0)
            b0 = swfma(d, _halves_dot(lo, hi, xp, j), b0)
            b1 = swfma(d, _halves_dot(lo, hi, xp + xs, j), b1)
            b2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), b2)
            b3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), b3)
        if nb % 2:
            d = wsplat(fload(dtp, nb - 1))
            pb, j = p + 16 * nb - 16, 32 * nb - 32
            lo, hi = wlo4(pb, 0), whi4(pb, 0)
            a0 = swfma(d, _halves_dot(lo, hi, xp, j), a0)
            a1 = swfma(d, _halves_dot(lo, hi, xp + xs, j), a1)
            a2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), a2)
            a3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), a3)
        fstore(outp, r, swsum(swadd(a0, b0)) + m0)
        fstore(outp + os, r, swsum(swadd(a1, b1)) + m1)
        fstore(outp + 2 * os, r, swsum(swadd(a2, b2)) + m2)
        fstore(outp + 3 * os, r, swsum(swadd(a3, b3)) + m3)


@njit
def _dot_q8_0_x4(pl, r0, r1, xp, xs, dtp, outp, os):
    qp, qn, dp, dn = pl[0], pl[1], pl[2], pl[3]
    nb = dn // 2
    for r in range(r0, r1):
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        a0 = wzero()
        b0 = wzero()
        a1 = wzero()
        b1 = wzero()
        a2 = wzero()
        b2 = wzero()
        a3 = wzero()
        b3 = wzero()
        for b in range(0, nb - 1, 2):
            d = wsplat(fload(dtp, b))
            pb, j = p + 32 * b, 32 * b
            lo, hi = wi8(pb, 0), wi8(pb, 16)
            a0 = swfma(d, _halves_dot(lo, hi, xp, j), a0)
            a1 = swfma(d, _halves_dot(lo, hi, xp + xs, j), a1)
            a2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), a2)
            a3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), a3)
            d = wsplat(fload(dtp, b + 1))
            pb, j = pb + 32, j + 32
            lo, hi = wi8(pb, 0), wi8(pb, 16)
            b0 = swfma(d, _halves_dot(lo, hi, xp, j), b0)
            b1 = swfma(d, _halves_dot(lo, hi, xp + xs, j), b1)
            b2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), b2)
            b3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), b3)
        if nb % 2:
            d = wsplat(fload(dtp, nb - 1))
            pb, j = p + 32 * nb - 32, 32 * nb - 32
            lo, hi = wi8(pb, 0), wi8(pb, 16)
            a0 = swfma(d, _halves_dot(lo, hi, xp, j), a0)
            a1 = swfma(d, _halves_dot(lo, hi, xp + xs, j), a1)
            a2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), a2)
            a3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), a3)
        fstore(outp, r, swsum(swadd(a0, b0)))
        fstore(outp + os, r, swsum(swadd(a1, b1)))
        fstore(outp + 2 * os, r, swsum(swadd(a2, b2)))
        fstore(outp + 3 * os, r, swsum(swadd(a3, b3)))


@njit
def _dot_q4_1_x8(pl, r0, r1, xp, xs, xsp, xss, dtp, outp, os):
    # eight inputs per unpacked block (_dot_q4_1's arithmetic for each; AVX-512 has the 32
    # registers that 16 accumulators, the two halves and the scale need)
    qp, qn, dp, dn = pl[0], pl[1], pl[2], pl[3]
    mp, mn = pl[4], pl[5]
    nb = dn // 2
    for r in range(r0, r1):
        m0 = _f16_dot(mp + r * mn, xsp + 0 * xss, nb)
        m1 = _f16_dot(mp + r * mn, xsp + 1 * xss, nb)
        m2 = _f16_dot(mp + r * mn, xsp + 2 * xss, nb)
        m3 = _f16_dot(mp + r * mn, xsp + 3 * xss, nb)
        m4 = _f16_dot(mp + r * mn, xsp + 4 * xss, nb)
        m5 = _f16_dot(mp + r * mn, xsp + 5 * xss, nb)
        m6 = _f16_dot(mp + r * mn, xsp + 6 * xss, nb)
        m7 = _f16_dot(mp + r * mn, xsp + 7 * xss, nb)
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        a0 = wzero()
        b0 = wzero()
        a1 = wzero()
        b1 = wzero()
        a2 = wzero()
        b2 = wzero()
        a3 = wzero()
        b3 = wzero()
        a4 = wzero()
        b4 = wzero()
        a5 = wzero()
        b5 = wzero()
        a6 = wzero()
        b6 = wzero()
        a7 = wzero()
        b7 = wzero()
        for b in range(0, nb - 1, 2):
            d = wsplat(fload(dtp, b))
            pb, j = p + 16 * b, 32 * b
            lo, hi = wlo4(pb, 0), whi4(pb, 0)
            a0 = swfma(d, _halves_dot(lo, hi, xp + 0 * xs, j), a0)
            a1 = swfma(d, _halves_dot(lo, hi, xp + 1 * xs, j), a1)
            a2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), a2)
            a3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), a3)
            a4 = swfma(d, _halves_dot(lo, hi, xp + 4 * xs, j), a4)
            a5 = swfma(d, _halves_dot(lo, hi, xp + 5 * xs, j), a5)
            a6 = swfma(d, _halves_dot(lo, hi, xp + 6 * xs, j), a6)
            a7 = swfma(d, _halves_dot(lo, hi, xp + 7 * xs, j), a7)
            d = wsplat(fload(dtp, b + 1))
            pb, j = pb + 16, j + 32
            lo, hi = wlo4(pb, 0), whi4(pb, 0)
            b0 = swfma(d, _halves_dot(lo, hi, xp + 0 * xs, j), b0)
            b1 = swfma(d, _halves_dot(lo, hi, xp + 1 * xs, j), b1)
            b2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), b2)
            b3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), b3)
            b4 = swfma(d, _halves_dot(lo, hi, xp + 4 * xs, j), b4)
            b5 = swfma(d, _halves_dot(lo, hi, xp + 5 * xs, j), b5)
            b6 = swfma(d, _halves_dot(lo, hi, xp + 6 * xs, j), b6)
            b7 = swfma(d, _halves_dot(lo, hi, xp + 7 * xs, j), b7)
        if nb % 2:
            d = wsplat(fload(dtp, nb - 1))
            pb, j = p + 16 * nb - 16, 32 * nb - 32
            lo, hi = wlo4(pb, 0), whi4(pb, 0)
            a0 = swfma(d, _halves_dot(lo, hi, xp + 0 * xs, j), a0)
            a1 = swfma(d, _halves_dot(lo, hi, xp + 1 * xs, j), a1)
            a2 = swfma(d, _halves_dot(lo, hi, xp + 2 * xs, j), a2)
            a3 = swfma(d, _halves_dot(lo, hi, xp + 3 * xs, j), a3)
            a4 = swfma(d, _halves_dot(lo, hi, xp + 4 * xs, j), a4)
            a5 = swfma(d, _halves_dot(lo, hi, xp + 5 * xs, j), a5)
            a6 = swfma(d, _halves_dot(lo, hi, xp + 6 * xs, j), a6)
            a7 = swfma(d, _halves_dot(lo, hi, xp + 7 * xs, j), a7)
        fstore(outp, r, swsum(swadd(a0, b0)) + m0)
        fstore(outp + 1 * os, r, swsum(swadd(a1, b1)) + m1)
        fstore(outp + 2 * os, r, swsum(swadd(a2, b2)) + m2)
        fstore(outp + 3 * os, r, swsum(swadd(a3, b3)) + m3)
        fstore(outp + 4 * os, r, swsum(swadd(a4, b4)) + m4)
        fstore(outp + 5 * os, r, swsum(swadd(a5, b5)) + m5)
        fstore(outp + 6 * os, r, swsum(swadd(a6, b6)) + m6)
        fstore(outp + 7 * os, r, swsum(swadd(a7, b7)) + m7)
