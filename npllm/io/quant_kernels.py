"""Lesson 07 — Numba kernels that multiply by GGUF-quantized weights without unpacking them.

Decode streams every weight once per token, so its speed is set by how many bytes
are read and how few instructions turn them into fp32 products.  The kernels here
read the quantized blocks directly, dequantize 8 values at a time in registers,
and accumulate ``w·x`` in fp32.  ``npllm.io.quants`` holds the readable NumPy
references (``dequantize_ref``) that every kernel is tested against.

Why a tiny SIMD vocabulary?  LLVM's auto-vectoriser does not find the right loop
in "for each block: 16 bytes -> 32 nibbles -> dot with x": it vectorises across
blocks (gathers) or keeps per-block scalar reductions.  So the kernels spell the
8-lane operations out with ``vload``, ``vfma``, ``vlo4`` ... (defined below as
Numba intrinsics that emit LLVM ``<8 x float>`` code; on AVX2 one op is one
instruction).  The loops stay plain Python loops; only the innermost 32 values
are written as four 8-lane steps.

Memory layout (``QuantizedWeight`` repacks at load, same bytes as the file):
the 32-element block types (Q8_0, Q4_0, Q4_1, Q5_0) are split into "planes" —
``q`` the packed quants of a row, ``s1`` the row's fp16 scales ``d``, ``s2`` the
row's fp16 mins ``m`` (Q4_1) or 32-bit high-bit masks ``qh`` (Q5_0) — so a row's
scales are contiguous (converted to fp32 in one vectorised pass) and the quants
are 16-byte aligned.  K-quants (Q4_K, Q6_K) and F32/F16/BF16 stay in GGUF's own
row layout (``q`` = the raw row, ``s1``/``s2`` empty).  Every plane is a 2-D
C-contiguous uint8 array, so one compiled driver serves all types.

Drivers (``kind`` is the GGML type id; rows are split into chunks run by ``prange``):
  _matvec1(kind, q, s1, s2, x [D], out [R])           fused dequant+dot, N = 1
  _matvecN(kind, q, s1, s2, x [N,D], out [N,R])       dequant a row once, N dots
  _dequant_rows(kind, q, s1, s2, r0, r1, out [r1-r0, D])  for prefill tiles / lookups
Shape legend: R output rows (out features), D columns (in features), N inputs.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

from .._jit import njit, njit_parallel, prange

F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 8, 12, 14, 30

# ---------------------------------------------------------------------------
# An 8-lane float32 vector type and the few operations the kernels need
# ---------------------------------------------------------------------------


class _F32x8Type(types.Type):
    def __init__(self):
        super().__init__(name="f32x8")


f32x8 = _F32x8Type()
_V8F = ir.VectorType(ir.FloatType(), 8)
_V8I = ir.VectorType(ir.IntType(32), 8)
_I32 = ir.IntType(32)
_FAST = ("fast",)


@register_model(_F32x8Type)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8F)


def _ptr(context, builder, arrty, arr, offset, elem):
    """Address of element ``offset`` (counted in ``elem`` units) of a contiguous array."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [offset], inbounds=True, source_etype=elem)


def _bytes8(context, builder, sig, args):
    """8 bytes at byte offset args[1] of uint8 array args[0], widened to <8 x i32>."""
    p = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
    b = builder.load(p, align=1, typ=ir.VectorType(ir.IntType(8), 8))
    return b


def _splat_i32(builder, value):
    v = builder.insert_element(ir.Constant(_V8I, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(_V8I, [0] * 8))


@intrinsic
def vzero(typingctx):
    """[0.0] * 8"""
    return f32x8(), lambda context, builder, sig, args: ir.Constant(_V8F, [0.0] * 8)


@intrinsic
def vsplat(typingctx, s):
    """[s] * 8 for a scalar s."""

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        v = builder.insert_element(ir.Constant(_V8F, ir.Undefined), v, ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(_V8I, [0] * 8))

    return f32x8(s), codegen


@intrinsic
def vload(typingctx, arr, i):
    """float32 arr[i : i + 8]"""

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], ir.FloatType())
        return builder.load(p, align=4, typ=_V8F)

    return f32x8(arr, i), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """float32 arr[i : i + 8] = v"""

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], ir.FloatType())
        builder.store(args[2], builder.bitcast(p, _V8F.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, i, f32x8), codegen


def _binop(name):
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1], flags=_FAST)

        return f32x8(f32x8, f32x8), codegen

    return intrinsic(op)


vadd = _binop("fadd")  # a + b
vmul = _binop("fmul")  # a * b


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c  (fused by LLVM into one FMA instruction)"""

    def codegen(context, builder, sig, args):
        return builder.fadd(builder.fmul(args[0], args[1], flags=_FAST), args[2], flags=_FAST)

    return f32x8(f32x8, f32x8, f32x8), codegen


@intrinsic
def vsum(typingctx, a):
    """a[0] + ... + a[7] as a float32 (pairwise: 8 -> 4 -> 2 -> 1)."""

    def codegen(context, builder, sig, args):
        v = args[0]
        for width in (4, 2):
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
            v = builder.fadd(lo, hi, flags=_FAST)
        a0 = builder.extract_element(v, ir.Constant(_I32, 0))
        a1 = builder.extract_element(v, ir.Constant(_I32, 1))
        return builder.fadd(a0, a1, flags=_FAST)

    return types.float32(f32x8), codegen


def _bytes_op(kind):
    """Loaders: 8 bytes at a byte offset of a uint8 array -> 8 float lanes."""

    def op(typingctx, arr, off):
        def codegen(context, builder, sig, args):
            b = _bytes8(context, builder, sig, args)
            if kind == "i8":  # signed bytes (Q8_0 quants)
                return builder.sitofp(builder.sext(b, _V8I), _V8F)
            w = builder.zext(b, _V8I)  # widen first: 32-bit lanes need no re-masking after a shift
            if kind == "lo4":
                w = builder.and_(w, ir.Constant(_V8I, [15] * 8))
            elif kind == "hi4":
                w = builder.lshr(w, ir.Constant(_V8I, [4] * 8))
            return builder.uitofp(w, _V8F)

        return f32x8(arr, off), codegen

    return intrinsic(op)


vlo4 = _bytes_op("lo4")  # float(b & 15) for 8 bytes b
vhi4 = _bytes_op("hi4")  # float(b >> 4)
vi8 = _bytes_op("i8")  # float(int8(b))


@intrinsic
def vbits(typingctx, arr, off, first):
    """float((u32 >> (first + i)) & 1) for lanes i = 0..7; u32 = little-endian uint32 at byte offset off."""

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
        word = _splat_i32(builder, builder.load(p, align=1, typ=_I32))
        first = builder.trunc(args[2], _I32)
        shifts = builder.add(_splat_i32(builder, first), ir.Constant(_V8I, list(range(8))))
        bits = builder.and_(builder.lshr(word, shifts), ir.Constant(_V8I, [1] * 8))
        return builder.uitofp(bits, _V8F)

    return f32x8(arr, off, first), codegen


@intrinsic
def vq6(typingctx, arr, lo_off, lo_shift, hi_off, hi_shift):
    """Q6_K values minus 32: float(((lo >> lo_shift) & 15 | ((hi >> hi_shift) & 3) << 4) - 32)
    for 8 bytes lo at byte offset lo_off and 8 bytes hi at hi_off."""

    def codegen(context, builder, sig, args):
        arr, lo_off, lo_shift, hi_off, hi_shift = args
        lo = builder.zext(_bytes8(context, builder, sig, (arr, lo_off)), _V8I)
        hi = builder.zext(_bytes8(context, builder, sig, (arr, hi_off)), _V8I)
        lo = builder.and_(builder.lshr(lo, _splat_i32(builder, builder.trunc(lo_shift, _I32))),
                          ir.Constant(_V8I, [15] * 8))
        hi = builder.and_(builder.lshr(hi, _splat_i32(builder, builder.trunc(hi_shift, _I32))),
                          ir.Constant(_V8I, [3] * 8))
        q = builder.or_(lo, builder.shl(hi, ir.Constant(_V8I, [4] * 8)))
        q = builder.sub(q, ir.Constant(_V8I, [32] * 8))
        return builder.sitofp(q, _V8F)

    return f32x8(arr, lo_off, lo_shift, hi_off, hi_shift), codegen


@intrinsic
def vf16(typingctx, arr, off):
    """8 IEEE halves at byte offset off -> 8 float lanes (one vcvtph2ps)."""

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
        h = builder.load(p, align=1, typ=ir.VectorType(ir.HalfType(), 8))
        return builder.fpext(h, _V8F)

    return f32x8(arr, off), codegen


@intrinsic
def vbf16(typingctx, arr, off):
    """8 bfloat16 at byte offset off -> 8 float lanes (bf16 is the top half of an fp32)."""

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
        h = builder.load(p, align=1, typ=ir.VectorType(ir.IntType(16), 8))
        w = builder.shl(builder.zext(h, _V8I), ir.Constant(_V8I, [16] * 8))
        return builder.bitcast(w, _V8F)

    return f32x8(arr, off), codegen


@intrinsic
def f16(typingctx, arr, off):
    """The IEEE half at byte offset off of a uint8 array, as float32."""

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
        return builder.fpext(builder.load(p, align=1, typ=ir.HalfType()), ir.FloatType())

    return types.float32(arr, off), codegen


@intrinsic
def bf16(typingctx, arr, off):
    """The bfloat16 at byte offset off of a uint8 array, as float32."""

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
        w = builder.zext(builder.load(p, align=1, typ=ir.IntType(16)), _I32)
        return builder.bitcast(builder.shl(w, ir.Constant(_I32, 16)), ir.FloatType())

    return types.float32(arr, off), codegen


# ---------------------------------------------------------------------------
# Per-row helpers.  `dot_*` returns sum_j w[r, j] * x[j]; `deq_*` writes w[r, :] to buf.
# xs[b] is the sum of x over block b (32 values; for Q6_K not used).
# dt is a scratch of >= D/32 floats for the row's scales.
# ---------------------------------------------------------------------------


@njit
def _scales(srow, dt, nb):
    # fp16 plane row -> fp32 (LLVM turns this loop into vcvtph2ps)
    for b in range(nb):
        dt[b] = f16(srow, 2 * b)


@njit
def _dot_q8_0(q, s1, r, x, dt):
    # q[r]: 32 int8 per block; s1[r]: fp16 d per block.  w = d * q
    nb = s1.shape[1] // 2
    _scales(s1[r], dt, nb)
    qr = q[r]
    acc = vzero()
    for b in range(nb):
        o = 32 * b
        s = vmul(vi8(qr, o), vload(x, o))
        s = vfma(vi8(qr, o + 8), vload(x, o + 8), s)
        s = vfma(vi8(qr, o + 16), vload(x, o + 16), s)
        s = vfma(vi8(qr, o + 24), vload(x, o + 24), s)
        acc = vfma(vsplat(dt[b]), s, acc)
    return vsum(acc)


@njit
def _nibble_dot(qr, b, x):
    # sum_i q_i x_i over block b: bytes 16b..16b+15 hold values i (low nibble) and i+16 (high)
    o = 16 * b
    xo = 32 * b
    s = vmul(vlo4(qr, o), vload(x, xo))
    s = vfma(vlo4(qr, o + 8), vload(x, xo + 8), s)
    s = vfma(vhi4(qr, o), vload(x, xo + 16), s)
    return vfma(vhi4(qr, o + 8), vload(x, xo + 24), s)


@njit
def _dot_q4_0(q, s1, r, x, xs, dt):
    # w = d * (q - 8)  =>  sum w x = sum_b d_b * (sum q x - 8 * xs_b)
    nb = s1.shape[1] // 2
    _scales(s1[r], dt, nb)
    corr = np.float32(0.0)
    for b in range(nb):
        corr += dt[b] * xs[b]
    qr = q[r]
    acc = vzero()
    for b in range(nb):
        acc = vfma(vsplat(dt[b]), _nibble_dot(qr, b, x), acc)
    return vsum(acc) - np.float32(8.0) * corr


@njit
def _dot_q4_1(q, s1, s2, r, x, xs, dt):
    # w = d * q + m  =>  sum w x = sum_b d_b * (sum q x) + m_b * xs_b
    nb = s1.shape[1] // 2
    srow = s2[r]
    mx = np.float32(0.0)
    for b in range(nb):
        mx += f16(srow, 2 * b) * xs[b]
    _scales(s1[r], dt, nb)
    qr = q[r]
    acc = vzero()
    for b in range(nb):
        acc = vfma(vsplat(dt[b]), _nibble_dot(qr, b, x), acc)
    return vsum(acc) + mx


@njit
def _dot_q5_0(q, s1, s2, r, x, xs, dt):
    # w = d * (q4 + 16 * hbit - 16)  =>  sum_b d_b * (sum q4 x + 16 sum hbit x - 16 xs_b)
    nb = s1.shape[1] // 2
    _scales(s1[r], dt, nb)
    corr = np.float32(0.0)
    for b in range(nb):
        corr += dt[b] * xs[b]
    qr = q[r]
    hr = s2[r]
    sixteen = vsplat(np.float32(16.0))
    acc = vzero()
    for b in range(nb):
        xo = 32 * b
        h = vmul(vbits(hr, 4 * b, 0), vload(x, xo))
        h = vfma(vbits(hr, 4 * b, 8), vload(x, xo + 8), h)
        h = vfma(vbits(hr, 4 * b, 16), vload(x, xo + 16), h)
        h = vfma(vbits(hr, 4 * b, 24), vload(x, xo + 24), h)
        s = vfma(sixteen, h, _nibble_dot(qr, b, x))
        acc = vfma(vsplat(dt[b]), s, acc)
    return vsum(acc) - np.float32(16.0) * corr


@njit
def _k4_scale_min(qr, o, j):
    # the 6-bit (scale, min) pair j of the Q4_K super-block at byte offset o (12 packed bytes at o+4)
    s = o + 4
    if j < 4:
        return qr[s + j] & 63, qr[s + j + 4] & 63
    sc = (qr[s + j + 4] & 15) | ((qr[s + j - 4] >> 6) << 4)
    mn = (qr[s + j + 4] >> 4) | ((qr[s + j] >> 6) << 4)
    return sc, mn


@njit
def _dot_q4_k(q, r, x, xs):
    # super-block (144 B): d, dmin, 12 B scales, 128 B quants; sub-block j of 32 values:
    # w = d * sc_j * q - dmin * mn_j; bytes 32g..32g+31 hold sub-blocks 2g (low) and 2g+1 (high)
    qr = q[r]
    nsb = qr.shape[0] // 144
    acc = vzero()
    mins = np.float32(0.0)
    for sb in range(nsb):
        o = 144 * sb
        d = f16(qr, o)
        dmin = f16(qr, o + 2)
        for j in range(8):
            sc, mn = _k4_scale_min(qr, o, j)
            qo = o + 16 + 32 * (j // 2)
            xo = 256 * sb + 32 * j
            if j % 2 == 0:
                s = vmul(vlo4(qr, qo), vload(x, xo))
                s = vfma(vlo4(qr, qo + 8), vload(x, xo + 8), s)
                s = vfma(vlo4(qr, qo + 16), vload(x, xo + 16), s)
                s = vfma(vlo4(qr, qo + 24), vload(x, xo + 24), s)
            else:
                s = vmul(vhi4(qr, qo), vload(x, xo))
                s = vfma(vhi4(qr, qo + 8), vload(x, xo + 8), s)
                s = vfma(vhi4(qr, qo + 16), vload(x, xo + 16), s)
                s = vfma(vhi4(qr, qo + 24), vload(x, xo + 24), s)
            acc = vfma(vsplat(d * np.float32(sc)), s, acc)
            mins += dmin * np.float32(mn) * xs[8 * sb + j]
    return vsum(acc) - mins


@njit
def _dot_q6_k(q, r, x):
    # super-block (210 B): ql 128 B, qh 64 B, 16 int8 scales, fp16 d; value = d * sc[e // 16] * (q6 - 32)
    # half h (128 values): ql[64h + l] low/high nibbles -> values l / l + 64, ql[64h + 32 + l] -> l + 32 / l + 96,
    # qh[32h + l] bits 0-1, 2-3, 4-5, 6-7 -> the high 2 bits of values l, l + 32, l + 64, l + 96
    qr = q[r]
    nsb = qr.shape[0] // 210
    acc = vzero()
    for sb in range(nsb):
        o = 210 * sb
        d = f16(qr, o + 208)
        for h in range(2):
            for l in range(0, 32, 8):
                a = o + 64 * h + l
                c = o + 128 + 32 * h + l
                e = 256 * sb + 128 * h + l
                si = o + 192 + 8 * h + l // 16
                for k in range(4):  # value groups l, l + 32, l + 64, l + 96
                    sc = np.float32(np.int8(qr[si + 2 * k]))
                    w = vq6(qr, a + 32 * (k % 2), 4 * (k // 2), c, 2 * k)
                    acc = vfma(vsplat(d * sc), vmul(w, vload(x, e + 32 * k)), acc)
    return vsum(acc)


@njit
def _dense_vec(kind, qr, j):
    # 8 values j..j+7 of a F32 / F16 / BF16 row (raw bytes)
    if kind == F32:
        return vload(qr.view(np.float32), j)
    if kind == F16:
        return vf16(qr, 2 * j)
    return vbf16(qr, 2 * j)


@njit
def _dense_at(kind, qr, j):
    # value j of a F32 / F16 / BF16 row
    if kind == F32:
        return qr.view(np.float32)[j]
    if kind == F16:
        return f16(qr, 2 * j)
    return bf16(qr, 2 * j)


@njit
def _dot_dense(kind, q, r, x):
    qr = q[r]
    cols = x.shape[0]
    main = cols - cols % 16
    acc0 = vzero()
    acc1 = vzero()
    for j in range(0, main, 16):
        acc0 = vfma(_dense_vec(kind, qr, j), vload(x, j), acc0)
        acc1 = vfma(_dense_vec(kind, qr, j + 8), vload(x, j + 8), acc1)
    s = vsum(vadd(acc0, acc1))
    for j in range(main, cols):
        s += _dense_at(kind, qr, j) * x[j]
    return s


@njit
def _dot_row(kind, q, s1, s2, r, x, xs, dt):
    if kind == Q4_1:
        return _dot_q4_1(q, s1, s2, r, x, xs, dt)
    if kind == Q8_0:
        return _dot_q8_0(q, s1, r, x, dt)
    if kind == Q4_0:
        return _dot_q4_0(q, s1, r, x, xs, dt)
    if kind == Q5_0:
        return _dot_q5_0(q, s1, s2, r, x, xs, dt)
    if kind == Q4_K:
        return _dot_q4_k(q, r, x, xs)
    if kind == Q6_K:
        return _dot_q6_k(q, r, x)
    return _dot_dense(kind, q, r, x)


@njit
def _deq_nibbles(qr, b, d, m, buf):
    # block b of 16 nibble bytes -> buf[32b : 32b + 32] = d * q + m
    o = 16 * b
    xo = 32 * b
    vd = vsplat(d)
    vm = vsplat(m)
    vstore(buf, xo, vfma(vd, vlo4(qr, o), vm))
    vstore(buf, xo + 8, vfma(vd, vlo4(qr, o + 8), vm))
    vstore(buf, xo + 16, vfma(vd, vhi4(qr, o), vm))
    vstore(buf, xo + 24, vfma(vd, vhi4(qr, o + 8), vm))


@njit
def _deq_row(kind, q, s1, s2, r, buf):
    """Dequantize row r into buf[:D] (fp32)."""
    qr = q[r]
    cols = buf.shape[0]
    if kind == Q8_0 or kind == Q4_0 or kind == Q4_1 or kind == Q5_0:
        sr = s1[r]
        for b in range(cols // 32):
            d = f16(sr, 2 * b)
            if kind == Q8_0:
                o = 32 * b
                vd = vsplat(d)
                for k in range(4):
                    vstore(buf, o + 8 * k, vmul(vd, vi8(qr, o + 8 * k)))
            elif kind == Q4_0:
                _deq_nibbles(qr, b, d, np.float32(-8.0) * d, buf)
            elif kind == Q4_1:
                _deq_nibbles(qr, b, d, f16(s2[r], 2 * b), buf)
            else:  # Q5_0: d * (q4 - 16) + 16 d * hbit
                _deq_nibbles(qr, b, d, np.float32(-16.0) * d, buf)
                vd16 = vsplat(np.float32(16.0) * d)
                for k in range(4):
                    i = 32 * b + 8 * k
                    vstore(buf, i, vfma(vd16, vbits(s2[r], 4 * b, 8 * k), vload(buf, i)))
    elif kind == Q4_K:
        for sb in range(cols // 256):
            o = 144 * sb
            d = f16(qr, o)
            dmin = f16(qr, o + 2)
            for j in range(8):
                sc, mn = _k4_scale_min(qr, o, j)
                vd = vsplat(d * np.float32(sc))
                vm = vsplat(-dmin * np.float32(mn))
                qo = o + 16 + 32 * (j // 2)
                e = 256 * sb + 32 * j
                for k in range(4):
                    v = vlo4(qr, qo + 8 * k) if j % 2 == 0 else vhi4(qr, qo + 8 * k)
                    vstore(buf, e + 8 * k, vfma(vd, v, vm))
    elif kind == Q6_K:
        for sb in range(cols // 256):
            o = 210 * sb
            d = f16(qr, o + 208)
            for h in range(2):
                for l in range(0, 32, 8):
                    a = o + 64 * h + l
                    c = o + 128 + 32 * h + l
                    e = 256 * sb + 128 * h + l
                    si = o + 192 + 8 * h + l // 16
                    for k in range(4):
                        sc = np.float32(np.int8(qr[si + 2 * k]))
                        w = vq6(qr, a + 32 * (k % 2), 4 * (k // 2), c, 2 * k)
                        vstore(buf, e + 32 * k, vmul(vsplat(d * sc), w))
    else:
        main = cols - cols % 8
        for j in range(0, main, 8):
            vstore(buf, j, _dense_vec(kind, qr, j))
        for j in range(main, cols):
            buf[j] = _dense_at(kind, qr, j)


# ---------------------------------------------------------------------------
# The driver: one parallel function for every type and operation (Numba compiles
# it once, and caches it on disk; each parallel function costs seconds to compile).
# Rows are split into a few chunks per thread, each chunk with its own scratch.
# ---------------------------------------------------------------------------

MATVEC1, MATVECN, DEQUANT = 0, 1, 2


@njit
def _block_sums(x, width):
    # xs[b] = sum(x[width*b : width*(b+1)])
    n = x.shape[0] // width
    xs = np.empty(n, np.float32)
    for b in range(n):
        s = np.float32(0.0)
        for i in range(width * b, width * (b + 1)):
            s += x[i]
        xs[b] = s
    return xs


@njit
def _dot_f32(w, x, n):
    # sum(w[:n] * x[:n]) for n a multiple of 32, four independent accumulators
    a0 = vzero()
    a1 = vzero()
    a2 = vzero()
    a3 = vzero()
    for j in range(0, n, 32):
        a0 = vfma(vload(w, j), vload(x, j), a0)
        a1 = vfma(vload(w, j + 8), vload(x, j + 8), a1)
        a2 = vfma(vload(w, j + 16), vload(x, j + 16), a2)
        a3 = vfma(vload(w, j + 24), vload(x, j + 24), a3)
    return vsum(vadd(vadd(a0, a1), vadd(a2, a3)))


@njit_parallel
def _run(op, kind, q, s1, s2, x, out, r0, n_chunks):
    """op MATVEC1: out[0, r] = W[r] . x[0]          (x [1, D], out [1, R]; fused dequant + dot)
    op MATVECN: out[n, r] = W[r] . x[n]          (x [N, D], out [N, R]; row r dequantized once)
    op DEQUANT: out[i, :] = W[r0 + i, :]          (out [T, D]; x unused)"""
    cols = out.shape[1] if op == DEQUANT else x.shape[1]
    n_rows = out.shape[0] if op == DEQUANT else out.shape[1]
    main = cols - cols % 32  # only dense rows have a tail
    xs = _block_sums(x[0], 32)
    for c in prange(n_chunks):
        dt = np.empty(cols // 32 + 1, np.float32)
        buf = np.empty(cols if op == MATVECN else 0, np.float32)
        for i in range(c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks):
            if op == MATVEC1:
                out[0, i] = _dot_row(kind, q, s1, s2, i, x[0], xs, dt)
            elif op == MATVECN:
                _deq_row(kind, q, s1, s2, i, buf)
                for n in range(x.shape[0]):
                    s = _dot_f32(buf, x[n], main)
                    for j in range(main, cols):
                        s += buf[j] * x[n, j]
                    out[n, i] = s
            else:
                _deq_row(kind, q, s1, s2, r0 + i, out[i])


def _n_chunks(rows: int) -> int:
    return max(1, min(rows, 4 * numba.get_num_threads()))


def matvec(kind: int, planes, x: np.ndarray, out: np.ndarray) -> None:
    """out [N, R] = x [N, D] @ W.T for small N (trusted inputs: float32, C-contiguous)."""
    op = MATVEC1 if x.shape[0] == 1 else MATVECN
    _run(op, kind, planes[0], planes[1], planes[2], x, out, 0, _n_chunks(out.shape[1]))


_NO_X = np.zeros((1, 32), np.float32)


def dequant_rows(kind: int, planes, r0: int, out: np.ndarray) -> None:
    """out [T, D] = W[r0 : r0 + T] as float32."""
    _run(DEQUANT, kind, planes[0], planes[1], planes[2], _NO_X, out, r0, _n_chunks(out.shape[0]))
