"""Lessons 06-07 — the 256-value super-block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS.

A 32-value block pays 2 bytes of fp16 scale per 32 weights (0.5 bit each).  The K-quants cut
that overhead: a *super-block* of 256 values has one or two fp16 numbers (d, dmin), and its
8 sub-blocks of 32 (or 16 groups of 16) get small integer scales of 4 or 6 bits, multiplied
by d.  Two scale levels cost ~0.2-0.4 bit per weight, so the bits go to the quants instead.
IQ4_XS keeps the super-block but replaces the uniform 4-bit grid by IQ4_NL's codebook.

Each type has three faces, side by side:

* ``_dequant_<type>``: the NumPy reference (the super-block layout is drawn above it), equal
  to ``gguf.quants.dequantize`` value for value;
* ``_dot_<type>(pl, r0, r1, xp, ..., outp)``: ``out[r] = W[r] . x`` for r0 <= r < r1, reading the
  bytes of the row and dequantizing 8 values at a time in registers (``simd.py``);
* ``_deq_row_<type>(p, op, n_super)``: the row at address p to float32 at op.

Rows keep GGUF's layout (the ``q`` plane; ``pl = (q address, row bytes, ...)``).  The public
face is ``QuantizedWeight`` (``weight.py``); the dispatch is in ``kernels.py``.  ``xs`` is the
sums of x over blocks of 32 (of 16 for Q2_K and Q3_K, whose scales cover 16 values), so an
offset costs one multiply-add per block: ``sum_i (a q_i - m) x_i = a sum_i q_i x_i - m sum_i x_i``.
"""

import numpy as np

from .._jit import njit
from .blocks32 import _IQ4, _deq_iq4_block, _f16, _iq4_block_dot, _nibbles
from .formats import IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
from .simd import (f16, fload, fstore, i8, u8, vadd, vfma, vhi4, vlo4, vload, vmul, vq2, vq3, vq3scales, vq5, vq6,
                   vsplat, vstore, vsum, vzero)

_SHIFTS_2BIT = np.array([0, 2, 4, 6], np.uint8)[:, None]  # [4, 1]: the four 2-bit fields of a byte


def _k4_scales_mins(s):
    # [n, 12] packed bytes -> ([n, 8] scales, [n, 8] mins), 6 bits each (Q4_K, Q5_K):
    # bytes 0-3: scale 0-3, bytes 4-7: min 0-3 (low 6 bits); bytes 8-11: low 4 bits of scale 4-7
    # (low nibble) and min 4-7 (high nibble); the top 2 bits of bytes 0-3 / 4-7 are the high
    # bits of scale / min 4-7
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


@njit
def _k4_scale_min(p, j):
    # the 6-bit (scale, min) pair j of a Q4_K / Q5_K super-block at p (12 packed bytes at p + 4,
    # laid out as in _k4_scales_mins)
    s = p + 4
    if j < 4:
        return u8(s, j) & 63, u8(s, j + 4) & 63
    sc = (u8(s, j + 4) & 15) | ((u8(s, j - 4) >> 6) << 4)
    mn = (u8(s, j + 4) >> 4) | ((u8(s, j) >> 6) << 4)
    return sc, mn


# ---------------------------------------------------------------------------
# Q2_K
# ---------------------------------------------------------------------------


def _dequant_q2_k(blocks):
    # super-block of 256 = 16 groups of 16, each with a 4-bit scale and a 4-bit min:
    # | scales: 16 bytes (low nibble scale, high nibble min) | qs: 64 bytes (4 x 2 bits) | d: f16 | dmin: f16 |
    # w = d * (s_g & 15) * q - dmin * (s_g >> 4) in group g.  Value 128h + 32k + l (h < 2, k < 4,
    # l < 32) is bits 2k, 2k+1 of qs[32h + l]: each byte holds values 32 apart.
    n = blocks.shape[0]
    s = blocks[:, 0:16]
    qs = blocks[:, 16:80].reshape(n, 2, 1, 32)
    d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
    q = ((qs >> _SHIFTS_2BIT) & 3).reshape(n, 16, 16).astype(np.float32)  # [n, h, k, l] -> [n, group, 16]
    scale = (d * (s & 15).astype(np.float32))[:, :, None]
    low = (dmin * (s >> 4).astype(np.float32))[:, :, None]
    return (scale * q - low).reshape(n, 256)


@njit
def _dot_q2_k(pl, r0, r1, xp, xsp, dtp, outp):
    # super-block (84 B): scales[16] at 0, qs[64] at 16, d at 80, dmin at 82 (see _dequant_q2_k).
    # xs: sums of x over groups of 16.  Per super-block, the 16 group scales d * (s & 15) go to the
    # scratch dtp 8 at a time, and the mins term dmin * sum_g (s_g >> 4) xs_g is two FMAs.
    qp, qn = pl[0], pl[1]
    for r in range(r0, r1):
        acc0 = vzero()  # even / odd groups: two dependency chains
        acc1 = vzero()
        mins = vzero()
        for sb in range(qn // 84):
            p = qp + r * qn + 84 * sb
            vd = vsplat(f16(p, 80))
            vstore(dtp, 0, vmul(vd, vlo4(p, 0)))
            vstore(dtp, 8, vmul(vd, vlo4(p, 8)))
            m = vfma(vhi4(p, 8), vload(xsp, 16 * sb + 8), vmul(vhi4(p, 0), vload(xsp, 16 * sb)))
            mins = vfma(vsplat(f16(p, 82)), m, mins)
            for h in range(2):
                for k in range(4):  # groups g, g + 1: values 16g .. 16g + 31, bits 2k of qs[32h ..]
                    g = 8 * h + 2 * k
                    q = p + 16 + 32 * h
                    e = 256 * sb + 16 * g
                    t0 = vmul(vq2(q, 0, 2 * k), vload(xp, e))
                    t0 = vfma(vq2(q, 8, 2 * k), vload(xp, e + 8), t0)
                    t1 = vmul(vq2(q, 16, 2 * k), vload(xp, e + 16))
                    t1 = vfma(vq2(q, 24, 2 * k), vload(xp, e + 24), t1)
                    acc0 = vfma(vsplat(fload(dtp, g)), t0, acc0)
                    acc1 = vfma(vsplat(fload(dtp, g + 1)), t1, acc1)
        fstore(outp, r, vsum(vadd(acc0, acc1)) - vsum(mins))


@njit
def _deq_row_q2_k(p, op, n_super):
    for sb in range(n_super):
        ps = p + 84 * sb
        d = f16(ps, 80)
        dmin = f16(ps, 82)
        for h in range(2):
            for k in range(4):
                for half in range(2):
                    g = 8 * h + 2 * k + half
                    s = u8(ps, g)
                    vd = vsplat(d * np.float32(s & 15))
                    vm = vsplat(-dmin * np.float32(s >> 4))
                    q = ps + 16 + 32 * h + 16 * half
                    e = 256 * sb + 16 * g
                    vstore(op, e, vfma(vd, vq2(q, 0, 2 * k), vm))
                    vstore(op, e + 8, vfma(vd, vq2(q, 8, 2 * k), vm))


# ---------------------------------------------------------------------------
# Q3_K
# ---------------------------------------------------------------------------


def _dequant_q3_k(blocks):
    # super-block of 256 = 16 groups of 16, each with a 6-bit scale:
    # | hmask: 32 bytes | qs: 64 bytes (4 x 2 bits) | scales: 12 bytes (16 x 6 bits) | d: f16 |
    # w = d * (sc_g - 32) * q, q = low - 4 + 4 * high in -4..3.  Value 128h + 32k + l (h < 2, k < 4,
    # l < 32): low = bits 2k, 2k+1 of qs[32h + l] (as Q2_K), high = bit 4h + k of hmask[l].
    # Scale j: low 4 bits in byte j % 8 (low nibble for j < 8, high nibble for j >= 8), high
    # 2 bits in byte 8 + j % 4, at bit 2 (j // 4).
    n = blocks.shape[0]
    hmask = blocks[:, 0:32].reshape(n, 1, 1, 32)
    qs = blocks[:, 32:96].reshape(n, 2, 1, 32)
    s = blocks[:, 96:108]
    d = _f16(blocks[:, 108:110])
    lo = np.concatenate([s[:, 0:8] & 15, s[:, 0:8] >> 4], axis=1)  # [n, 16]
    hi = ((s[:, 8:12].reshape(n, 1, 4) >> _SHIFTS_2BIT) & 3).reshape(n, 16)  # [n, j // 4, j % 4]
    sc = (lo | (hi << 4)).astype(np.float32) - 32
    low = (qs >> _SHIFTS_2BIT) & 3  # [n, h, k, l]
    high = (hmask >> np.arange(8, dtype=np.uint8).reshape(2, 4, 1)) & 1  # [n, h, k, l]: bit 4h + k
    q = (low.astype(np.float32) - 4 + 4 * high).reshape(n, 16, 16)
    return ((d * sc)[:, :, None] * q).reshape(n, 256)


@njit
def _k3_scale(p, j):
    # scale j of a Q3_K super-block at p (12 bytes at p + 96, see _dequant_q3_k), minus 32
    s = p + 96
    lo = (u8(s, j % 8) >> (4 * (j // 8))) & 15
    hi = (u8(s, 8 + j % 4) >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)) - 32


@njit
def _dot_q3_k(pl, r0, r1, xp, xsp, dtp, outp):
    # super-block (110 B): hmask[32] at 0, qs[64] at 32, scales at 96, d at 108 (see _dequant_q3_k).
    # Per super-block, the 16 group scales a_g = d * (sc_g - 32) go to the scratch dtp 8 at a time.
    # vq3 gives q + 4, so sum a_g q x = sum a_g (q + 4) x - 4 sum_g a_g xs_g (xs: sums over 16).
    qp, qn = pl[0], pl[1]
    for r in range(r0, r1):
        acc0 = vzero()  # even / odd groups: two dependency chains
        acc1 = vzero()
        corr = vzero()
        for sb in range(qn // 110):
            p = qp + r * qn + 110 * sb
            vd = vsplat(f16(p, 108))
            a0 = vmul(vd, vq3scales(p + 96, 0))
            a1 = vmul(vd, vq3scales(p + 96, 1))
            vstore(dtp, 0, a0)
            vstore(dtp, 8, a1)
            corr = vfma(a1, vload(xsp, 16 * sb + 8), vfma(a0, vload(xsp, 16 * sb), corr))
            for h in range(2):
                for k in range(4):  # groups g, g + 1: values 16g .. 16g + 31
                    g = 8 * h + 2 * k
                    e = 256 * sb + 16 * g
                    lo = 32 + 32 * h
                    bit = 4 * h + k
                    t0 = vmul(vq3(p, lo, 2 * k, 0, bit), vload(xp, e))
                    t0 = vfma(vq3(p, lo + 8, 2 * k, 8, bit), vload(xp, e + 8), t0)
                    t1 = vmul(vq3(p, lo + 16, 2 * k, 16, bit), vload(xp, e + 16))
                    t1 = vfma(vq3(p, lo + 24, 2 * k, 24, bit), vload(xp, e + 24), t1)
                    acc0 = vfma(vsplat(fload(dtp, g)), t0, acc0)
                    acc1 = vfma(vsplat(fload(dtp, g + 1)), t1, acc1)
        fstore(outp, r, vsum(vadd(acc0, acc1)) - np.float32(4.0) * vsum(corr))


@njit
def _deq_row_q3_k(p, op, n_super):
    for sb in range(n_super):
        ps = p + 110 * sb
        d = f16(ps, 108)
        for h in range(2):
            for k in range(4):
                for half in range(2):
                    g = 8 * h + 2 * k + half
                    l = 16 * half
                    a = d * np.float32(_k3_scale(ps, g))
                    va = vsplat(a)
                    vm = vsplat(np.float32(-4.0) * a)  # vq3 gives q + 4
                    e = 256 * sb + 16 * g
                    vstore(op, e, vfma(va, vq3(ps, 32 + 32 * h + l, 2 * k, l, 4 * h + k), vm))
                    vstore(op, e + 8, vfma(va, vq3(ps, 40 + 32 * h + l, 2 * k, l + 8, 4 * h + k), vm))


# ---------------------------------------------------------------------------
# Q4_K
# ---------------------------------------------------------------------------


def _dequant_q4_k(blocks):
    # super-block of 256 = 8 sub-blocks of 32:
    # | d: f16 | dmin: f16 | scales: 12 bytes (8 x 6-bit scale, 8 x 6-bit min) | qs: 128 bytes |
    # w = d * scale_j * q - dmin * min_j; qs bytes 32g..32g+31 hold sub-block 2g (low) and 2g+1 (high)
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = _k4_scales_mins(blocks[:, 4:16])
    qs = blocks[:, 16:].reshape(n, 4, 32)
    q = np.stack([qs & 15, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(n, 256)


@njit
def _dot_q4_k(pl, r0, r1, xp, xsp, outp):
    # super-block (144 B, 256 values): d, dmin, 12 B of scales, 128 B of nibbles; sub-block j of 32:
    # w = d * sc_j * q - dmin * mn_j; bytes 32g..32g+31 hold sub-blocks 2g (low) and 2g+1 (high)
    qp, qn = pl[0], pl[1]
    for r in range(r0, r1):
        acc = vzero()
        mins = np.float32(0.0)
        for sb in range(qn // 144):
            p = qp + r * qn + 144 * sb
            d = f16(p, 0)
            dmin = f16(p, 2)
            for j in range(8):
                sc, mn = _k4_scale_min(p, j)
                g = p + 16 + 32 * (j // 2)
                e = 256 * sb + 32 * j
                if j % 2 == 0:
                    s = vmul(vlo4(g, 0), vload(xp, e))
                    s = vfma(vlo4(g, 8), vload(xp, e + 8), s)
                    s = vfma(vlo4(g, 16), vload(xp, e + 16), s)
                    s = vfma(vlo4(g, 24), vload(xp, e + 24), s)
                else:
                    s = vmul(vhi4(g, 0), vload(xp, e))
                    s = vfma(vhi4(g, 8), vload(xp, e + 8), s)
                    s = vfma(vhi4(g, 16), vload(xp, e + 16), s)
                    s = vfma(vhi4(g, 24), vload(xp, e + 24), s)
                acc = vfma(vsplat(d * np.float32(sc)), s, acc)
                mins += dmin * np.float32(mn) * fload(xsp, 8 * sb + j)
        fstore(outp, r, vsum(acc) - mins)


@njit
def _deq_row_q4_k(p, op, n_super):
    for sb in range(n_super):
        ps = p + 144 * sb
        d = f16(ps, 0)
        dmin = f16(ps, 2)
        for j in range(8):
            sc, mn = _k4_scale_min(ps, j)
            vd = vsplat(d * np.float32(sc))
            vm = vsplat(-dmin * np.float32(mn))
            g = ps + 16 + 32 * (j // 2)
            e = 256 * sb + 32 * j
            for k in range(4):
                v = vlo4(g, 8 * k) if j % 2 == 0 else vhi4(g, 8 * k)
                vstore(op, e + 8 * k, vfma(vd, v, vm))


# ---------------------------------------------------------------------------
# Q5_K: Q4_K plus a fifth bit per value
# ---------------------------------------------------------------------------


def _dequant_q5_k(blocks):
    # super-block of 256 = 8 sub-blocks of 32, scales and mins packed as Q4_K's:
    # | d: f16 | dmin: f16 | scales: 12 bytes | qh: 32 bytes | qs: 128 bytes |
    # w = d * scale_j * q - dmin * min_j, q = nibble + 16 * (bit j of qh[l]) for value l of
    # sub-block j; the nibbles are ordered as Q4_K's (qs bytes 32g.. hold sub-blocks 2g, 2g+1)
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = _k4_scales_mins(blocks[:, 4:16])
    qh = blocks[:, 16:48].reshape(n, 1, 32)
    qs = blocks[:, 48:].reshape(n, 4, 32)
    low = np.stack([qs & 15, qs >> 4], axis=2).reshape(n, 8, 32)
    high = (qh >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # [n, 8, 32]
    q = (low | (high << 4)).astype(np.float32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(n, 256)


@njit
def _dot_q5_k(pl, r0, r1, xp, xsp, outp):
    # super-block (176 B): d, dmin, 12 B of scales at 4, qh[32] at 16, qs[128] at 48 (see _dequant_q5_k)
    qp, qn = pl[0], pl[1]
    for r in range(r0, r1):
        acc = vzero()
        mins = np.float32(0.0)
        for sb in range(qn // 176):
            p = qp + r * qn + 176 * sb
            d = f16(p, 0)
            dmin = f16(p, 2)
            for j in range(8):
                sc, mn = _k4_scale_min(p, j)
                lo = 48 + 32 * (j // 2)
                shift = 4 * (j % 2)
                e = 256 * sb + 32 * j
                s = vmul(vq5(p, lo, shift, 16, j), vload(xp, e))
                s = vfma(vq5(p, lo + 8, shift, 24, j), vload(xp, e + 8), s)
                s = vfma(vq5(p, lo + 16, shift, 32, j), vload(xp, e + 16), s)
                s = vfma(vq5(p, lo + 24, shift, 40, j), vload(xp, e + 24), s)
                acc = vfma(vsplat(d * np.float32(sc)), s, acc)
                mins += dmin * np.float32(mn) * fload(xsp, 8 * sb + j)
        fstore(outp, r, vsum(acc) - mins)


@njit
def _deq_row_q5_k(p, op, n_super):
    for sb in range(n_super):
        ps = p + 176 * sb
        d = f16(ps, 0)
        dmin = f16(ps, 2)
        for j in range(8):
            sc, mn = _k4_scale_min(ps, j)
            vd = vsplat(d * np.float32(sc))
            vm = vsplat(-dmin * np.float32(mn))
            e = 256 * sb + 32 * j
            for k in range(4):
                vstore(op, e + 8 * k, vfma(vd, vq5(ps, 48 + 32 * (j // 2) + 8 * k, 4 * (j % 2), 16 + 8 * k, j), vm))


# ---------------------------------------------------------------------------
# Q6_K
# ---------------------------------------------------------------------------


def _dequant_q6_k(blocks):
    # super-block of 256 = 16 groups of 16 sharing an int8 scale:
    # | ql: 128 bytes (low 4 bits) | qh: 64 bytes (high 2 bits) | scales: int8 x 16 | d: f16 |
    # w = d * scale[i // 16] * (q - 32).  In each half h of 128 values: ql[64h + l] holds values
    # l (low nibble) and l + 64 (high), ql[64h + 32 + l] values l + 32 and l + 96, and
    # qh[32h + l] bits 0-1 / 2-3 / 4-5 / 6-7 are the high bits of values l / l+32 / l+64 / l+96.
    n = blocks.shape[0]
    ql = blocks[:, 0:128].reshape(n, 2, 64)
    qh = blocks[:, 128:192].reshape(n, 2, 32)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(blocks[:, 208:210])
    low = np.concatenate([ql & 15, ql >> 4], axis=2)  # [n, 2, 128]
    high = np.concatenate([(qh >> shift) & 3 for shift in (0, 2, 4, 6)], axis=2)  # [n, 2, 128]
    q = (low | (high << 4)).astype(np.float32).reshape(n, 16, 16) - 32
    return ((d * sc)[:, :, None] * q).reshape(n, 256)


@njit
def _dot_q6_k(pl, r0, r1, xp, outp):
    # super-block (210 B, 256 values): ql 128 B, qh 64 B, 16 int8 scales, fp16 d.
    # value e = d * sc[e // 16] * (q6 - 32).  In half h: ql[64h + l] low/high nibbles -> values
    # l / l + 64, ql[64h + 32 + l] -> l + 32 / l + 96; qh[32h + l] bits 0-1, 2-3, 4-5, 6-7 are the
    # high 2 bits of values l, l + 32, l + 64, l + 96 (all relative to 128h)
    qp, qn = pl[0], pl[1]
    for r in range(r0, r1):
        acc = vzero()
        for sb in range(qn // 210):
            p = qp + r * qn + 210 * sb
            d = f16(p, 208)
            for h in range(2):
                for l in range(0, 32, 8):
                    e = 256 * sb + 128 * h + l
                    for k in range(4):  # value groups l, l + 32, l + 64, l + 96
                        sc = np.float32(i8(p, 192 + 8 * h + l // 16 + 2 * k))
                        w = vq6(p, 64 * h + l + 32 * (k % 2), 4 * (k // 2), 128 + 32 * h + l, 2 * k)
                        acc = vfma(vsplat(d * sc), vmul(w, vload(xp, e + 32 * k)), acc)
        fstore(outp, r, vsum(acc))


@njit
def _deq_row_q6_k(p, op, n_super):
    for sb in range(n_super):
        ps = p + 210 * sb
        d = f16(ps, 208)
        for h in range(2):
            for l in range(0, 32, 8):
                e = 256 * sb + 128 * h + l
                for k in range(4):
                    sc = np.float32(i8(ps, 192 + 8 * h + l // 16 + 2 * k))
                    w = vq6(ps, 64 * h + l + 32 * (k % 2), 4 * (k // 2), 128 + 32 * h + l, 2 * k)
                    vstore(op, e + 32 * k, vmul(vsplat(d * sc), w))


# ---------------------------------------------------------------------------
# IQ4_XS: IQ4_NL's codebook in a super-block with 6-bit sub-block scales
# ---------------------------------------------------------------------------


def _dequant_iq4_xs(blocks):
    # super-block of 256 = 8 sub-blocks of 32, each with a 6-bit scale ls_j:
    # | d: f16 | scales_h: u16 (2 high bits per sub-block) | scales_l: 4 bytes (4 low bits) | qs: 128 bytes |
    # w = d * (ls_j - 32) * IQ4_VALUES[q].  ls_j: nibble j % 2 of scales_l[j // 2], plus bits
    # 2j, 2j+1 of scales_h as bits 4-5.  Sub-block j: qs[16j : 16j + 16] as in IQ4_NL (low nibbles first).
    n = blocks.shape[0]
    d = _f16(blocks[:, 0:2])
    sh = np.ascontiguousarray(blocks[:, 2:4]).view("<u2")  # [n, 1]
    sl = blocks[:, 4:8]
    lo = np.stack([sl & 15, sl >> 4], axis=2).reshape(n, 8)
    hi = ((sh >> (2 * np.arange(8, dtype=np.uint16))) & 3).astype(np.uint8)  # [n, 8]
    ls = (lo | (hi << 4)).astype(np.float32) - 32
    k = _IQ4[_nibbles(blocks[:, 8:].reshape(n * 8, 16))].reshape(n, 8, 32)
    return ((d * ls)[:, :, None] * k).reshape(n, 256)


@njit
def _iq4xs_scale(p, j):
    # scale j of an IQ4_XS super-block at p, minus 32 (see _dequant_iq4_xs)
    lo = (u8(p, 4 + j // 2) >> (4 * (j % 2))) & 15
    hi = (u8(p, 2 + j // 4) >> (2 * (j % 4))) & 3  # bits 2j, 2j+1 of the little-endian u16 at p + 2
    return (lo | (hi << 4)) - 32


@njit
def _dot_iq4_xs(pl, r0, r1, xp, outp):
    # super-block (136 B): d, scales_h, scales_l at 4, qs[128] at 8 (see _dequant_iq4_xs)
    qp, qn = pl[0], pl[1]
    for r in range(r0, r1):
        acc = vzero()
        for sb in range(qn // 136):
            p = qp + r * qn + 136 * sb
            d = f16(p, 0)
            for j in range(8):
                dl = d * np.float32(_iq4xs_scale(p, j))
                acc = vfma(vsplat(dl), _iq4_block_dot(p + 8 + 16 * j, xp, 256 * sb + 32 * j), acc)
        fstore(outp, r, vsum(acc))


@njit
def _deq_row_iq4_xs(p, op, n_super):
    for sb in range(n_super):
        ps = p + 136 * sb
        d = f16(ps, 0)
        for j in range(8):
            _deq_iq4_block(ps + 8 + 16 * j, d * np.float32(_iq4xs_scale(ps, j)), op + 4 * (256 * sb + 32 * j))


DEQUANT_REF = {Q2_K: _dequant_q2_k, Q3_K: _dequant_q3_k, Q4_K: _dequant_q4_k, Q5_K: _dequant_q5_k,
               Q6_K: _dequant_q6_k, IQ4_XS: _dequant_iq4_xs}
