"""Lesson 07 — the 8-lane vocabulary the quantized kernels are written in.

LLVM's auto-vectoriser does not find the right loop in "for each block: 16 bytes -> 32
nibbles -> dot with x" (it vectorises across blocks, with gathers).  So the kernels
(``blocks32.py``, ``kquants.py``, ``dense.py``) spell out 8-lane steps with the
operations below: Numba intrinsics that emit LLVM ``<8 x float>`` code, about one AVX2
instruction each.  Loops stay ordinary Python loops; only the innermost 8 values are a
vector.

The hottest blocks (Q4_1, Q8_0) also have a 16-lane vocabulary (``f32x16``: ``wzero``,
``wsplat``, ``wload``, ``swadd``, ``swmul``, ``swfma``, ``swsum``, and the loads ``wlo4`` /
``whi4`` / ``wi8``): a 32-value block is exactly two 16-lane halves, so a block costs half the
instructions.  All of them keep a strict order (no fast-math flags), so the one-, four- and
eight-input kernels built on them round alike (batch invariance, speculative verification).

Two kinds of operation:

* arithmetic on ``f32x8`` (``vzero``, ``vsplat``, ``vload``, ``vstore``, ``vadd``, ``vmul``,
  ``vfma``, ``vsum``);
* loads that turn 8 bytes of a block into 8 floats, one per bit layout: ``vlo4`` / ``vhi4``
  (nibbles), ``vi8`` (int8), ``vbits`` (one bit of a 32-bit mask), ``vq2``, ``vq3``, ``vq5``,
  ``vq6`` and ``vq3scales`` (the K-quant bit fields), ``viq4lo`` / ``viq4hi`` (nibbles looked up
  in the IQ4 codebook), ``vf16`` / ``vbf16`` / ``vf32`` (dense rows), plus scalar reads ``u8``,
  ``i8``, ``f16``, ``bf16``, ``f32``.

Arguments called ``p`` are addresses (int64, see ``addr``): passing a NumPy array to a helper
costs reference counting and a dozen call arguments, as much as the arithmetic on a short row.
Float loads/stores (``vload``, ``fload``...) count in floats, byte loads count in bytes.  The
intrinsics need the JIT: with ``NUMBA_DISABLE_JIT=1`` the quantized paths use the NumPy
references instead (``npllm.quant.weight._use_reference``).

The IQ4 lookup is one ``pshufb`` (a 16-entry byte table) on x86 with SSSE3, and 8 scalar
lookups elsewhere; ``NPLLM_PORTABLE_SIMD=1`` forces the portable form (the tests compare them).
"""

import os
import platform

import llvmlite.binding
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .formats import IQ4_VALUES

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


# Exact-order twins (no fast-math flags, a true fused multiply-add): LLVM may not reassociate
# them, so a kernel written with them rounds the same wherever it is inlined.  The 8-lane nibble
# dot (``blocks32._nibble_dot``: Q4_0, Q5_0) uses them; Q4_1 and Q8_0 use the 16-lane twins below,
# where the one-, four- and eight-input versions (decode, speculative decoding's verify pass,
# the server's batch-invariant decode) must give bit-equal results.
def _strict_binop(name):
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])

        return f32x8(f32x8, f32x8), codegen

    return intrinsic(op)


svmul = _strict_binop("fmul")  # a * b


@intrinsic
def svfma(typingctx, a, b, c):
    """a * b + c, fused (one rounding), never reassociated"""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_V8F, [_V8F, _V8F, _V8F])
        fma = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v8f32")
        return builder.call(fma, list(args))

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


# ---------------------------------------------------------------------------
# Sixteen lanes, exact order.  One 32-value block is two 16-lane halves: a nibble block's
# low nibbles and its high nibbles, or a Q8_0 block's first and last 16 bytes.  Q4_1 and
# Q8_0 dot products (decode's hottest loops) use these: half the instructions of the 8-lane
# form, one AVX-512 register each (two AVX2 registers on machines without AVX-512).
# ---------------------------------------------------------------------------


class _F32x16Type(types.Type):
    def __init__(self):
        super().__init__(name="f32x16")


f32x16 = _F32x16Type()
_V16F = ir.VectorType(ir.FloatType(), 16)
_V16I = ir.VectorType(ir.IntType(32), 16)


@register_model(_F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16F)


@intrinsic
def wzero(typingctx):
    """[0.0] * 16"""
    return f32x16(), lambda context, builder, sig, args: ir.Constant(_V16F, [0.0] * 16)


@intrinsic
def wsplat(typingctx, s):
    """[s] * 16 for a scalar s."""

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        v = builder.insert_element(ir.Constant(_V16F, ir.Undefined), v, ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(_V16I, [0] * 16))

    return f32x16(s), codegen


@intrinsic
def wload(typingctx, p, i):
    """float32 p[i : i + 16]"""

    def codegen(context, builder, sig, args):
        return _load(builder, _at(builder, args[0], args[1], ir.FloatType()), _V16F, 4)

    return f32x16(p, i), codegen


@intrinsic
def swadd(typingctx, a, b):
    """a + b (16 lanes, never reassociated)"""
    return f32x16(f32x16, f32x16), lambda context, builder, sig, args: builder.fadd(args[0], args[1])


@intrinsic
def swmul(typingctx, a, b):
    """a * b (16 lanes)"""
    return f32x16(f32x16, f32x16), lambda context, builder, sig, args: builder.fmul(args[0], args[1])


@intrinsic
def swfma(typingctx, a, b, c):
    """a * b + c, fused (one rounding), 16 lanes, never reassociated"""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_V16F, [_V16F, _V16F, _V16F])
        fma = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v16f32")
        return builder.call(fma, list(args))

    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def swsum(typingctx, a):
    """a[0] + ... + a[15] in exactly the pairwise order 16 -> 8 -> 4 -> 2 -> 1."""

    def codegen(context, builder, sig, args):
        v = args[0]
        for width in (8, 4, 2):
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
            v = builder.fadd(lo, hi)
        a0 = builder.extract_element(v, ir.Constant(_I32, 0))
        a1 = builder.extract_element(v, ir.Constant(_I32, 1))
        return builder.fadd(a0, a1)

    return types.float32(f32x16), codegen


def _bytes16_op(kind):
    def op(typingctx, p, off):
        def codegen(context, builder, sig, args):
            b = _load(builder, _at(builder, args[0], args[1], _I8), ir.VectorType(_I8, 16), 1)
            if kind == "i8":
                return builder.sitofp(builder.sext(b, _V16I), _V16F)
            w = builder.zext(b, _V16I)
            if kind == "lo4":
                w = builder.and_(w, ir.Constant(_V16I, [15] * 16))
            else:
                w = builder.lshr(w, ir.Constant(_V16I, [4] * 16))
            return builder.uitofp(w, _V16F)

        return f32x16(p, off), codegen

    return intrinsic(op)


wlo4 = _bytes16_op("lo4")  # float(b & 15) for the 16 bytes b at p + off
whi4 = _bytes16_op("hi4")  # float(b >> 4)
wi8 = _bytes16_op("i8")  # float(int8(b))


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


def _shr(builder, v, shift):
    """v >> shift (lanes of <8 x i32>) for an int64 shift, the same for every lane."""
    return builder.lshr(v, _splat_i32(builder, builder.trunc(shift, _I32)))


def _shl(builder, v, bits):
    return builder.shl(v, ir.Constant(_V8I, [bits] * 8))


def _mask(builder, v, bits):
    return builder.and_(v, ir.Constant(_V8I, [bits] * 8))


def _field8(builder, p, off, shift, mask):
    """((b >> shift) & mask) for the 8 bytes b at p + off, as <8 x i32> (shift: an int64 value)."""
    return _mask(builder, _shr(builder, _load_bytes8(builder, p, off), shift), mask)


@intrinsic
def vq2(typingctx, p, off, shift):
    """Q2_K quants: float((b >> shift) & 3) for the 8 bytes b at p + off."""

    def codegen(context, builder, sig, args):
        return builder.uitofp(_field8(builder, args[0], args[1], args[2], 3), _V8F)

    return f32x8(p, off, shift), codegen


@intrinsic
def vq3(typingctx, p, lo_off, lo_shift, hi_off, hi_shift):
    """Q3_K values plus 4, for the 8 bytes lo at p + lo_off and hi (the hmask bytes) at p + hi_off:
    float(((lo >> lo_shift) & 3) | ((hi >> hi_shift) & 1) << 2), i.e. 0..7 (the kernels subtract
    the 4 once per group of 16, with the sums of x)"""

    def codegen(context, builder, sig, args):
        p, lo_off, lo_shift, hi_off, hi_shift = args
        # ((hi << 2) >> hi_shift) & 4: the shift left is shared by the 8 groups that read these bytes
        hi = _mask(builder, _shr(builder, _shl(builder, _load_bytes8(builder, p, hi_off), 2), hi_shift), 4)
        return builder.uitofp(builder.or_(_field8(builder, p, lo_off, lo_shift, 3), hi), _V8F)

    return f32x8(p, lo_off, lo_shift, hi_off, hi_shift), codegen


@intrinsic
def vq3scales(typingctx, p, half):
    """Q3_K scales 8 half .. 8 half + 7, minus 32, from the 12 scale bytes s at p:
    float(((s[j % 8] >> 4 (j // 8)) & 15 | ((s[8 + j % 4] >> 2 (j // 4)) & 3) << 4) - 32)"""

    def codegen(context, builder, sig, args):
        p, half = args
        four_h = builder.mul(half, ir.Constant(_I64, 4))
        lo = _field8(builder, p, ir.Constant(_I64, 0), four_h, 15)  # lanes j % 8 = 0..7: bytes 0-7
        b4 = _load(builder, _at(builder, p, ir.Constant(_I64, 8), _I8), ir.VectorType(_I8, 4), 1)
        b8 = builder.zext(builder.shuffle_vector(b4, b4, ir.Constant(ir.VectorType(_I32, 8), [0, 1, 2, 3] * 2)), _V8I)
        shifts = builder.add(_splat_i32(builder, builder.trunc(four_h, _I32)), ir.Constant(_V8I, [0] * 4 + [2] * 4))
        hi = _mask(builder, builder.lshr(b8, shifts), 3)  # lanes: bytes 8-11 twice, shifted by 4 half, 4 half + 2
        q = builder.or_(lo, _shl(builder, hi, 4))
        return builder.sitofp(builder.sub(q, ir.Constant(_V8I, [32] * 8)), _V8F)

    return f32x8(p, half), codegen


@intrinsic
def vq5(typingctx, p, lo_off, lo_shift, hi_off, hi_shift):
    """Q5_K quants, for the 8 bytes lo at p + lo_off and hi (the qh bytes) at p + hi_off:
    float(((lo >> lo_shift) & 15) | ((hi >> hi_shift) & 1) << 4), i.e. 0..31"""

    def codegen(context, builder, sig, args):
        p, lo_off, lo_shift, hi_off, hi_shift = args
        # the 5th bit as ((hi << 4) >> hi_shift) & 16: the shift left does not depend on hi_shift,
        # so LLVM computes it once for the 8 sub-blocks that share the qh bytes
        hi = _mask(builder, _shr(builder, _shl(builder, _load_bytes8(builder, p, hi_off), 4), hi_shift), 16)
        return builder.uitofp(builder.or_(_field8(builder, p, lo_off, lo_shift, 15), hi), _V8F)

    return f32x8(p, lo_off, lo_shift, hi_off, hi_shift), codegen


@intrinsic
def vq6(typingctx, p, lo_off, lo_shift, hi_off, hi_shift):
    """Q6_K values minus 32, for the 8 bytes lo at p + lo_off and hi at p + hi_off:
    float(((lo >> lo_shift) & 15 | ((hi >> hi_shift) & 3) << 4) - 32)"""

    def codegen(context, builder, sig, args):
        p, lo_off, lo_shift, hi_off, hi_shift = args
        hi = _field8(builder, p, hi_off, hi_shift, 3)
        q = builder.or_(_field8(builder, p, lo_off, lo_shift, 15), _shl(builder, hi, 4))
        return builder.sitofp(builder.sub(q, ir.Constant(_V8I, [32] * 8)), _V8F)

    return f32x8(p, lo_off, lo_shift, hi_off, hi_shift), codegen


# -- the IQ4 codebook lookup: 16 int8 entries, indexed by a nibble ----------------------------


def _use_pshufb() -> bool:
    # pshufb (SSSE3) looks up 16 bytes in a 16-byte table in one instruction.  Numba compiles for
    # the host CPU unless NUMBA_CPU_NAME says otherwise; then only an explicit +ssse3 allows it.
    if os.environ.get("NPLLM_PORTABLE_SIMD", "0") not in ("", "0"):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if numba.config.CPU_NAME not in (None, "host"):
        return "+ssse3" in (numba.config.CPU_FEATURES or "")
    return bool(llvmlite.binding.get_host_cpu_features().get("ssse3", False))


_PSHUFB = _use_pshufb()
_V16B = ir.VectorType(_I8, 16)
_IQ4_TABLE = ir.Constant(_V16B, [v & 255 for v in IQ4_VALUES])


def _iq4_lookup(builder, idx):
    """<8 x i8> nibbles -> <8 x i8> IQ4_VALUES[nibble]."""
    if _PSHUFB:
        wide = builder.shuffle_vector(idx, ir.Constant(ir.VectorType(_I8, 8), ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, 16), list(range(16))))
        fnty = ir.FunctionType(_V16B, [_V16B, _V16B])
        pshufb = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.ssse3.pshuf.b.128")
        out = builder.call(pshufb, [_IQ4_TABLE, wide])
        return builder.shuffle_vector(out, out, ir.Constant(ir.VectorType(_I32, 8), list(range(8))))
    out = ir.Constant(ir.VectorType(_I8, 8), ir.Undefined)
    for i in range(8):  # a variable-index extractelement: LLVM's portable table lookup
        lane = ir.Constant(_I32, i)
        out = builder.insert_element(out, builder.extract_element(_IQ4_TABLE, builder.extract_element(idx, lane)), lane)
    return out


def _iq4_op(high):
    def op(typingctx, p, off):
        def codegen(context, builder, sig, args):
            b = _load(builder, _at(builder, args[0], args[1], _I8), ir.VectorType(_I8, 8), 1)
            if high:
                idx = builder.lshr(b, ir.Constant(ir.VectorType(_I8, 8), [4] * 8))
            else:
                idx = builder.and_(b, ir.Constant(ir.VectorType(_I8, 8), [15] * 8))
            return builder.sitofp(builder.sext(_iq4_lookup(builder, idx), _V8I), _V8F)

        return f32x8(p, off), codegen

    return intrinsic(op)


viq4lo = _iq4_op(False)  # float(IQ4_VALUES[b & 15]) for the 8 bytes b at p + off
viq4hi = _iq4_op(True)  # float(IQ4_VALUES[b >> 4])


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

