"""Lesson 07 — Numba kernels that multiply by GGUF-quantized weights without unpacking them.

Decoding one token reads every weight once, so its speed is set by how many bytes
are read and how few instructions turn them into fp32 products.  These kernels read
the quantized blocks directly, dequantize 8 values at a time in registers, and
accumulate ``w * x`` in fp32.  ``npllm.quant.dequantize_ref`` is the readable
NumPy reference every kernel is tested against.

Three habits make them fast, and each is a lesson in how Numba compiles:

1. **An 8-lane vocabulary.**  LLVM's auto-vectoriser does not find the right loop in
   "for each block: 16 bytes -> 32 nibbles -> dot with x" (it vectorises across
   blocks with gathers).  So the kernels spell out 8-lane steps with ``vload``,
   ``vfma``, ``vlo4``...: Numba intrinsics that emit LLVM ``<8 x float>`` code, one
   AVX2 instruction each.  Loops stay ordinary Python loops.
2. **Addresses, not arrays, below the driver.**  Passing a NumPy array to a helper
   costs reference counting (atomic increments) and a dozen call arguments; on a
   576-wide row that costs as much as the arithmetic.  ``_run`` takes each array's
   address once (``addr``); the helpers receive plain integers.
3. **One parallel driver.**  ``prange`` splits the rows into a few chunks per
   thread.  A parallel function takes seconds to compile, so there is one (cached on
   disk) for every type and operation.

Weight layout (``QuantizedWeight`` repacks at load; same bytes as the file): the
32-value block types (Q8_0, Q4_0, Q4_1, Q5_0) are split into three byte "planes" per
row — ``q`` the quants, ``s1`` the fp16 scales d, ``s2`` the fp16 mins m (Q4_1) or the
32-bit high-bit masks qh (Q5_0).  A row's scales are then contiguous (converted to
fp32 in one vectorised pass) and its quants 16-byte aligned.  K-quants and
F32/F16/BF16 keep GGUF's row layout in ``q``.  A plane is passed as ``(address, row
stride in bytes)``; ``pl = (q, q_stride, s1, s1_stride, s2, s2_stride)``, so the
read-only memory-mapped planes of a GGUF file and writable copies share one compiled kernel.

Shape legend: R output rows (out features), D columns (in features), N inputs.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

from .._jit import njit, njit_parallel, prange

from .formats import BF16, F16, F32, Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0  # noqa: E402  (type ids)

# ---------------------------------------------------------------------------
# The vocabulary: an 8-lane float32 vector type and the operations the kernels use.
# `p` arguments are addresses (int64); float loads/stores count in floats, byte
# loads count in bytes.
# ---------------------------------------------------------------------------


class _F32x8Type(types.Type):
    def __init__(self):
        super().__init__(name="f32x8")


f32x8 = _F32x8Type()
_V8F = ir.VectorType(ir.FloatType(), 8)
_V8I = ir.VectorType(ir.IntType(32), 8)
_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_FAST = ("fast",)


@register_model(_F32x8Type)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8F)


def _at(builder, p, offset, elem):
    """Pointer to element `offset` (in units of `elem`) after address p."""
    base = builder.inttoptr(p, elem.as_pointer())
    return builder.gep(base, [offset], inbounds=True)


def _load(builder, ptr, typ, align):
    """Load a `typ` from pointer ptr (works with typed and opaque-pointer llvmlite versions)."""
    return builder.load(builder.bitcast(ptr, typ.as_pointer()), align=align)


def _splat_i32(builder, value):
    v = builder.insert_element(ir.Constant(_V8I, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(_V8I, [0] * 8))


def _load_bytes8(builder, p, off):
    """8 bytes at address p + off, zero-extended to <8 x i32>."""
    b = _load(builder, _at(builder, p, off, _I8), ir.VectorType(_I8, 8), 1)
    return builder.zext(b, _V8I)


@intrinsic
def addr(typingctx, arr):
    """The address of a contiguous array's first element (the array must outlive its use)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, _I64)

    return types.int64(arr), codegen


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
def vload(typingctx, p, i):
    """float32 p[i : i + 8]"""

    def codegen(context, builder, sig, args):
        return _load(builder, _at(builder, args[0], args[1], ir.FloatType()), _V8F, 4)

    return f32x8(p, i), codegen


@intrinsic
def vstore(typingctx, p, i, v):
    """float32 p[i : i + 8] = v"""

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_at(builder, args[0], args[1], ir.FloatType()), _V8F.as_pointer())
        builder.store(args[2], ptr, align=4)
        return context.get_dummy_value()

    return types.none(p, i, f32x8), codegen


@intrinsic
def fload(typingctx, p, i):
    """float32 p[i] (a scalar)"""

    def codegen(context, builder, sig, args):
        return builder.load(_at(builder, args[0], args[1], ir.FloatType()), align=4)

    return types.float32(p, i), codegen


@intrinsic
def fstore(typingctx, p, i, s):
    """float32 p[i] = s"""

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.float32)
        builder.store(v, _at(builder, args[0], args[1], ir.FloatType()), align=4)
        return context.get_dummy_value()

    return types.none(p, i, s), codegen


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
    """a * b + c  (one fused multiply-add instruction)"""

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
    def op(typingctx, p, off):
        def codegen(context, builder, sig, args):
            if kind == "i8":  # signed bytes (Q8_0 quants)
                b = _load(builder, _at(builder, args[0], args[1], _I8), ir.VectorType(_I8, 8), 1)
                return builder.sitofp(builder.sext(b, _V8I), _V8F)
            w = _load_bytes8(builder, args[0], args[1])  # widened first: no re-masking after a shift
            if kind == "lo4":
                w = builder.and_(w, ir.Constant(_V8I, [15] * 8))
            elif kind == "hi4":
                w = builder.lshr(w, ir.Constant(_V8I, [4] * 8))
            return builder.uitofp(w, _V8F)

        return f32x8(p, off), codegen

    return intrinsic(op)


vlo4 = _bytes_op("lo4")  # float(b & 15) for the 8 bytes b at p + off
vhi4 = _bytes_op("hi4")  # float(b >> 4)
vi8 = _bytes_op("i8")  # float(int8(b))


@intrinsic
def vbits(typingctx, p, off, first):
    """float((u >> (first + i)) & 1) for lanes i = 0..7; u = the little-endian uint32 at p + off."""

    def codegen(context, builder, sig, args):
        word = _splat_i32(builder, _load(builder, _at(builder, args[0], args[1], _I8), _I32, 1))
        shifts = builder.add(_splat_i32(builder, builder.trunc(args[2], _I32)), ir.Constant(_V8I, list(range(8))))
        bits = builder.and_(builder.lshr(word, shifts), ir.Constant(_V8I, [1] * 8))
        return builder.uitofp(bits, _V8F)

    return f32x8(p, off, first), codegen


@intrinsic
def vq6(typingctx, p, lo_off, lo_shift, hi_off, hi_shift):
    """Q6_K values minus 32, for the 8 bytes lo at p + lo_off and hi at p + hi_off:
    float(((lo >> lo_shift) & 15 | ((hi >> hi_shift) & 3) << 4) - 32)"""

    def codegen(context, builder, sig, args):
        p, lo_off, lo_shift, hi_off, hi_shift = args
        lo = builder.lshr(_load_bytes8(builder, p, lo_off), _splat_i32(builder, builder.trunc(lo_shift, _I32)))
        hi = builder.lshr(_load_bytes8(builder, p, hi_off), _splat_i32(builder, builder.trunc(hi_shift, _I32)))
        lo = builder.and_(lo, ir.Constant(_V8I, [15] * 8))
        hi = builder.and_(hi, ir.Constant(_V8I, [3] * 8))
        q = builder.or_(lo, builder.shl(hi, ir.Constant(_V8I, [4] * 8)))
        return builder.sitofp(builder.sub(q, ir.Constant(_V8I, [32] * 8)), _V8F)

    return f32x8(p, lo_off, lo_shift, hi_off, hi_shift), codegen


@intrinsic
def vf16(typingctx, p, off):
    """8 IEEE halves at p + off -> 8 float lanes (one vcvtph2ps)."""

    def codegen(context, builder, sig, args):
        h = _load(builder, _at(builder, args[0], args[1], _I8), ir.VectorType(ir.HalfType(), 8), 1)
        return builder.fpext(h, _V8F)

    return f32x8(p, off), codegen


@intrinsic
def vbf16(typingctx, p, off):
    """8 bfloat16 at p + off -> 8 float lanes (a bf16 is the top half of an fp32)."""

    def codegen(context, builder, sig, args):
        h = _load(builder, _at(builder, args[0], args[1], _I8), ir.VectorType(_I16, 8), 1)
        return builder.bitcast(builder.shl(builder.zext(h, _V8I), ir.Constant(_V8I, [16] * 8)), _V8F)

    return f32x8(p, off), codegen


@intrinsic
def vf32(typingctx, p, off):
    """8 float32 at byte offset off (F32 rows are stored as bytes)."""

    def codegen(context, builder, sig, args):
        return _load(builder, _at(builder, args[0], args[1], _I8), _V8F, 1)

    return f32x8(p, off), codegen


def _scalar_op(kind):
    def op(typingctx, p, off):
        def codegen(context, builder, sig, args):
            ptr = _at(builder, args[0], args[1], _I8)
            if kind == "u8":
                return builder.zext(_load(builder, ptr, _I8, 1), _I64)
            if kind == "i8":
                return builder.sext(_load(builder, ptr, _I8, 1), _I64)
            if kind == "f16":
                return builder.fpext(_load(builder, ptr, ir.HalfType(), 1), ir.FloatType())
            if kind == "bf16":
                w = builder.zext(_load(builder, ptr, _I16, 1), _I32)
                return builder.bitcast(builder.shl(w, ir.Constant(_I32, 16)), ir.FloatType())
            return _load(builder, ptr, ir.FloatType(), 1)  # f32

        restype = types.int64 if kind in ("u8", "i8") else types.float32
        return restype(p, off), codegen

    return intrinsic(op)


u8 = _scalar_op("u8")  # the byte at p + off as an int 0..255
i8 = _scalar_op("i8")  # ... as a signed int -128..127
f16 = _scalar_op("f16")  # the IEEE half at p + off as float32
bf16 = _scalar_op("bf16")  # the bfloat16 at p + off as float32
f32 = _scalar_op("f32")  # the float32 at byte offset off


# ---------------------------------------------------------------------------
# Row dot products, N = 1.  `_dot_<type>(pl, r0, r1, xp, xsp, dtp, outp)` sets
# out[r] = sum_j W[r, j] * x[j] for r0 <= r < r1 (each function loops over its rows
# itself).  xsp -> xs[b] = sum of x over block b of 32 values; dtp -> scratch floats.
# ---------------------------------------------------------------------------


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
    # sum_b f16(p)[b] * xs[b]: the Q4_1 mins times the block sums of x
    main = nb - nb % 8
    acc = vzero()
    for b in range(0, main, 8):
        acc = vfma(vf16(p, 2 * b), vload(xsp, b), acc)
    s = vsum(acc)
    for b in range(main, nb):
        s += f16(p, 2 * b) * fload(xsp, b)
    return s


@njit
def _nibble_dot(p, xp, j):
    # sum_i q_i x[j + i] over one block: the 16 bytes at p hold q_i (low nibble) and q_{i+16} (high)
    s = vmul(vlo4(p, 0), vload(xp, j))
    s = vfma(vlo4(p, 8), vload(xp, j + 8), s)
    s = vfma(vhi4(p, 0), vload(xp, j + 16), s)
    return vfma(vhi4(p, 8), vload(xp, j + 24), s)


@njit
def _q8_block_dot(p, xp, j):
    # sum_i q_i x[j + i] over one block of 32 int8 at p
    s = vmul(vi8(p, 0), vload(xp, j))
    s = vfma(vi8(p, 8), vload(xp, j + 8), s)
    s = vfma(vi8(p, 16), vload(xp, j + 16), s)
    return vfma(vi8(p, 24), vload(xp, j + 24), s)


@njit
def _dot_q8_0(pl, r0, r1, xp, dtp, outp):
    # block: d (fp16, plane s1) and 32 int8 q (plane q).   w = d * q
    qp, qn, dp, dn = pl[0], pl[1], pl[2], pl[3]
    nb = dn // 2
    for r in range(r0, r1):
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        acc0 = vzero()  # even / odd blocks (see _dot_q4_1)
        acc1 = vzero()
        for b in range(0, nb - 1, 2):
            acc0 = vfma(vsplat(fload(dtp, b)), _q8_block_dot(p + 32 * b, xp, 32 * b), acc0)
            acc1 = vfma(vsplat(fload(dtp, b + 1)), _q8_block_dot(p + 32 * b + 32, xp, 32 * b + 32), acc1)
        if nb % 2:
            acc0 = vfma(vsplat(fload(dtp, nb - 1)), _q8_block_dot(p + 32 * nb - 32, xp, 32 * nb - 32), acc0)
        fstore(outp, r, vsum(vadd(acc0, acc1)))


@njit
def _dot_q4_0(pl, r0, r1, xp, xsp, dtp, outp):
    # block: d, 16 bytes of nibbles.  w = d * (q - 8)  =>  sum_b d_b * (sum q x - 8 * xs_b)
    qp, qn, dp, dn = pl[0], pl[1], pl[2], pl[3]
    nb = dn // 2
    for r in range(r0, r1):
        _scales(dp + r * dn, dtp, nb)
        corr = np.float32(0.0)
        for b in range(nb):
            corr += fload(dtp, b) * fload(xsp, b)
        p = qp + r * qn
        acc = vzero()
        for b in range(nb):
            acc = vfma(vsplat(fload(dtp, b)), _nibble_dot(p + 16 * b, xp, 32 * b), acc)
        fstore(outp, r, vsum(acc) - np.float32(8.0) * corr)


@njit
def _dot_q4_1(pl, r0, r1, xp, xsp, dtp, outp):
    # block: d, m, 16 bytes of nibbles.  w = d * q + m  =>  sum_b d_b * (sum q x) + m_b * xs_b
    qp, qn, dp, dn, mp, mn = pl
    nb = dn // 2
    for r in range(r0, r1):
        mx = _f16_dot(mp + r * mn, xsp, nb)
        _scales(dp + r * dn, dtp, nb)
        p = qp + r * qn
        acc0 = vzero()  # two accumulators (even / odd blocks): with one, each block's FMA
        acc1 = vzero()  # would wait 4 cycles for the previous one
        for b in range(0, nb - 1, 2):
            acc0 = vfma(vsplat(fload(dtp, b)), _nibble_dot(p + 16 * b, xp, 32 * b), acc0)
            acc1 = vfma(vsplat(fload(dtp, b + 1)), _nibble_dot(p + 16 * b + 16, xp, 32 * b + 32), acc1)
        if nb % 2:
            acc0 = vfma(vsplat(fload(dtp, nb - 1)), _nibble_dot(p + 16 * nb - 16, xp, 32 * nb - 32), acc0)
        fstore(outp, r, vsum(vadd(acc0, acc1)) + mx)


@njit
def _dot_q5_0(pl, r0, r1, xp, xsp, dtp, outp):
    # block: d, qh (bit i = 5th bit of value i), 16 bytes of nibbles.  w = d * (q4 + 16 hbit - 16)
    # =>  sum_b d_b * (sum q4 x + 16 sum hbit x - 16 xs_b)
    qp, qn, dp, dn, hp, hn = pl
    nb = dn // 2
    sixteen = vsplat(np.float32(16.0))
    for r in range(r0, r1):
        _scales(dp + r * dn, dtp, nb)
        corr = np.float32(0.0)
        for b in range(nb):
            corr += fload(dtp, b) * fload(xsp, b)
        p = qp + r * qn
        h = hp + r * hn
        acc = vzero()
        for b in range(nb):
            j = 32 * b
            hx = vmul(vbits(h, 4 * b, 0), vload(xp, j))
            hx = vfma(vbits(h, 4 * b, 8), vload(xp, j + 8), hx)
            hx = vfma(vbits(h, 4 * b, 16), vload(xp, j + 16), hx)
            hx = vfma(vbits(h, 4 * b, 24), vload(xp, j + 24), hx)
            s = vfma(sixteen, hx, _nibble_dot(p + 16 * b, xp, j))
            acc = vfma(vsplat(fload(dtp, b)), s, acc)
        fstore(outp, r, vsum(acc) - np.float32(16.0) * corr)


@njit
def _k4_scale_min(p, j):
    # the 6-bit (scale, min) pair j of a Q4_K super-block at p (12 packed bytes at p + 4):
    # bytes 0-3: scale 0-3, bytes 4-7: min 0-3 (low 6 bits); bytes 8-11: low 4 bits of scale 4-7
    # and min 4-7; the top 2 bits of bytes 0-3 / 4-7 are the high bits of scale / min 4-7
    s = p + 4
    if j < 4:
        return u8(s, j) & 63, u8(s, j + 4) & 63
    sc = (u8(s, j + 4) & 15) | ((u8(s, j - 4) >> 6) << 4)
    mn = (u8(s, j + 4) >> 4) | ((u8(s, j) >> 6) << 4)
    return sc, mn


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
def _dot_rows(kind, pl, r0, r1, x, xs, dt, out):
    # Arrays are passed down to here, one call per chunk: holding them as arguments keeps them
    # alive while their addresses are in use (Numba frees an array right after its last use).
    xp, xsp, dtp, outp, cols = addr(x), addr(xs), addr(dt), addr(out), x.shape[1]
    if kind == Q4_1:
        _dot_q4_1(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == Q8_0:
        _dot_q8_0(pl, r0, r1, xp, dtp, outp)
    elif kind == Q4_0:
        _dot_q4_0(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == Q5_0:
        _dot_q5_0(pl, r0, r1, xp, xsp, dtp, outp)
    elif kind == Q4_K:
        _dot_q4_k(pl, r0, r1, xp, xsp, outp)
    elif kind == Q6_K:
        _dot_q6_k(pl, r0, r1, xp, outp)
    else:
        _dot_dense(kind, pl, r0, r1, xp, cols, outp)


# ---------------------------------------------------------------------------
# Dequantization of a row (prefill tiles, embedding lookups, and N > 1 decode)
# ---------------------------------------------------------------------------


@njit
def _deq_nibbles(p, d, m, op):
    # one block of 16 nibble bytes at p -> op[0:32] = d * q + m
    vd = vsplat(d)
    vm = vsplat(m)
    vstore(op, 0, vfma(vd, vlo4(p, 0), vm))
    vstore(op, 8, vfma(vd, vlo4(p, 8), vm))
    vstore(op, 16, vfma(vd, vhi4(p, 0), vm))
    vstore(op, 24, vfma(vd, vhi4(p, 8), vm))


@njit
def _deq_row(kind, pl, r, op, cols, dtp, mtp):
    """W[r, :cols] -> float32 op[0 : cols].  dtp, mtp: scratch of >= cols / 32 floats."""
    qp, qn, s1p, s1n, s2p, s2n = pl
    p = qp + r * qn
    nb = cols // 32
    if kind == Q8_0 or kind == Q4_0 or kind == Q4_1 or kind == Q5_0:
        _scales(s1p + r * s1n, dtp, nb)
        if kind == Q4_1:
            _scales(s2p + r * s2n, mtp, nb)
        for b in range(nb):
            d = fload(dtp, b)
            ob = op + 128 * b  # 32 floats per block
            if kind == Q8_0:
                vd = vsplat(d)
                for k in range(4):
                    vstore(ob, 8 * k, vmul(vd, vi8(p + 32 * b, 8 * k)))
            elif kind == Q4_0:
                _deq_nibbles(p + 16 * b, d, np.float32(-8.0) * d, ob)
            elif kind == Q4_1:
                _deq_nibbles(p + 16 * b, d, fload(mtp, b), ob)
            else:  # Q5_0: d * (q4 - 16) + 16 d * hbit
                _deq_nibbles(p + 16 * b, d, np.float32(-16.0) * d, ob)
                vd16 = vsplat(np.float32(16.0) * d)
                h = s2p + r * s2n + 4 * b
                for k in range(4):
                    vstore(ob, 8 * k, vfma(vd16, vbits(h, 0, 8 * k), vload(ob, 8 * k)))
    elif kind == Q4_K:
        for sb in range(nb // 8):
            ps = p + 144 * sb
            d = f16(ps, 0)
            dmin = f16(ps, 2)
            for j in range(8):
                sc, mn = _k4_scale_min(ps, j)
                vd = vsplat(d * np.float32(sc))
                vm = vsplat(-dmin * np.float32(mn))
                g = ps + 16 + 32 * (j // 2)
                oj = op + 4 * (256 * sb + 32 * j)
                for k in range(4):
                    v = vlo4(g, 8 * k) if j % 2 == 0 else vhi4(g, 8 * k)
                    vstore(oj, 8 * k, vfma(vd, v, vm))
    elif kind == Q6_K:
        for sb in range(nb // 8):
            ps = p + 210 * sb
            d = f16(ps, 208)
            for h in range(2):
                for l in range(0, 32, 8):
                    e = 256 * sb + 128 * h + l
                    for k in range(4):
                        sc = np.float32(i8(ps, 192 + 8 * h + l // 16 + 2 * k))
                        w = vq6(ps, 64 * h + l + 32 * (k % 2), 4 * (k // 2), 128 + 32 * h + l, 2 * k)
                        vstore(op, e + 32 * k, vmul(vsplat(d * sc), w))
    else:
        main = cols - cols % 8
        for j in range(0, main, 8):
            vstore(op, j, _dense_vec(kind, p, j))
        for j in range(main, cols):
            fstore(op, j, _dense_at(kind, p, j))


# ---------------------------------------------------------------------------
# N > 1: dequantized rows (fp32) dotted with several inputs at once, so each loaded
# vector is used several times (the accumulators stay in registers).
# ---------------------------------------------------------------------------


@njit
def _tail(wp, xp, start, cols):
    # sum(w[j] * x[j] for start <= j < cols): the last < 8 values of a dense row
    s = np.float32(0.0)
    for j in range(start, cols):
        s += fload(wp, j) * fload(xp, j)
    return s


@njit
def _dot_rows2_inputs4(wp, cols, xp, outp, ostride):
    # two dequantized rows (fp32: w0 at wp, w1 at wp + 4 cols) times four inputs (x[k] at
    # xp + 4 k cols): out[k * ostride + i] = w_i . x[k].  Each loaded vector is used 4 or 2
    # times, and the 8 accumulators stay in registers.
    main = cols - cols % 8
    a0 = vzero()
    a1 = vzero()
    a2 = vzero()
    a3 = vzero()
    b0 = vzero()
    b1 = vzero()
    b2 = vzero()
    b3 = vzero()
    for j in range(0, main, 8):
        w0 = vload(wp, j)
        w1 = vload(wp, j + cols)
        x0 = vload(xp, j)
        a0 = vfma(w0, x0, a0)
        b0 = vfma(w1, x0, b0)
        x1 = vload(xp, j + cols)
        a1 = vfma(w0, x1, a1)
        b1 = vfma(w1, x1, b1)
        x2 = vload(xp, j + 2 * cols)
        a2 = vfma(w0, x2, a2)
        b2 = vfma(w1, x2, b2)
        x3 = vload(xp, j + 3 * cols)
        a3 = vfma(w0, x3, a3)
        b3 = vfma(w1, x3, b3)
    w1p = wp + 4 * cols
    fstore(outp, 0, vsum(a0) + _tail(wp, xp, main, cols))
    fstore(outp, 1, vsum(b0) + _tail(w1p, xp, main, cols))
    fstore(outp, ostride, vsum(a1) + _tail(wp, xp + 4 * cols, main, cols))
    fstore(outp, ostride + 1, vsum(b1) + _tail(w1p, xp + 4 * cols, main, cols))
    fstore(outp, 2 * ostride, vsum(a2) + _tail(wp, xp + 8 * cols, main, cols))
    fstore(outp, 2 * ostride + 1, vsum(b2) + _tail(w1p, xp + 8 * cols, main, cols))
    fstore(outp, 3 * ostride, vsum(a3) + _tail(wp, xp + 12 * cols, main, cols))
    fstore(outp, 3 * ostride + 1, vsum(b3) + _tail(w1p, xp + 12 * cols, main, cols))


@njit
def _dot_inputs1(wp, xp, cols, outp):
    # out[0] = w . x (two accumulators)
    main = cols - cols % 16
    a0 = vzero()
    a1 = vzero()
    for j in range(0, main, 16):
        a0 = vfma(vload(wp, j), vload(xp, j), a0)
        a1 = vfma(vload(wp, j + 8), vload(xp, j + 8), a1)
    fstore(outp, 0, vsum(vadd(a0, a1)) + _tail(wp, xp, main, cols))


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

MATVEC1, MATVECN, DEQUANT = 0, 1, 2


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
    pl: the weight's planes as (address, row stride) pairs (see plane_addresses)."""
    cols = out.shape[1] if op == DEQUANT else x.shape[1]
    n_rows = out.shape[0] if op == DEQUANT else out.shape[1]
    xs = _block_sums(x, 32)  # sums of x[0] over blocks of 32
    for c in prange(n_chunks):
        c0 = c * n_rows // n_chunks
        c1 = (c + 1) * n_rows // n_chunks
        dt = np.empty(cols // 32 + 1, np.float32)  # per-chunk scratch
        mt = np.empty(cols // 32 + 1, np.float32)
        if op == MATVEC1:
            _dot_rows(kind, pl, c0, c1, x, xs, dt, out)
        elif op == MATVECN:
            _deq_dot_rows(kind, pl, c0, c1, x, out, np.empty(2 * cols + 8, np.float32), dt, mt)
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


def matvec(kind: int, pl, x: np.ndarray, out: np.ndarray) -> None:
    """out [N, R] = x [N, D] @ W.T for small N (trusted: float32, C-contiguous, shapes checked)."""
    rows = out.shape[1]
    _run(MATVEC1 if x.shape[0] == 1 else MATVECN, kind, pl, x, out, 0, rows if rows < _CHUNKS else _CHUNKS)


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
