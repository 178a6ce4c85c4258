"""Lesson 07 — an exp() that LLVM can vectorise, for float32 kernels.

``np.exp`` inside a Numba loop compiles to a call of the C library's ``expf``, one value
at a time, so a loop around it never becomes SIMD code: SwiGLU over a batch spent most of
its time there.  ``exp32(x)`` computes the same function with arithmetic only:

    exp(x) = 2**k * exp(r),   k = round(x / ln 2),   r = x - k ln 2   (|r| <= ln2 / 2)

``exp(r)`` is its Taylor polynomial to degree 7 (truncation below 1e-8, relative), and
``2**k`` is built directly from float bits (exponent field j + 127, mantissa 0) as
``2**(k//2) * 2**(k - k//2)``, two factors that stay normal floats for every k in range.  ``ln 2``
is split in two parts (hi has few bits, so k * hi is exact) to keep r accurate.  The result
is within a few float32 ulps of ``np.exp`` (``tests/test_ops.py``); above 88.72283 it is inf
and below -103.9 it is 0, as ``expf`` gives (between -103.9 and -87.3 the result is a
denormal, rounded the same way); NaN stays NaN.

For float64 arguments (and with ``NUMBA_DISABLE_JIT=1``) ``exp32`` is simply ``np.exp``.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

# No "reassoc" here: it would let the compiler turn p * 2**a * 2**b into p * (2**a * 2**b),
# which overflows for results near the float32 maximum.
njit_strict = numba.njit(cache=True, fastmath={"nsz", "arcp", "contract"}, nogil=True)

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)       # ln 2 rounded to 16 significant bits
_LN2_LO = np.float32(1.4286068203094173e-06)   # ln 2 - _LN2_HI
_LO, _HI = np.float32(-103.9), np.float32(88.72283)  # exp(_LO) rounds to 0, exp(_HI) is finite


def exp32(x):
    """exp(x); see the module docstring (plain Python: NumPy's exp)."""
    return np.exp(x)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits``."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)) if args[0].type.width > 32 else args[0],
                               ir.FloatType())

    return types.float32(bits), codegen


@njit_strict
def _exp_f32(x):
    xc = x
    if xc < _LO:                          # (comparisons are False for NaN, so NaN flows through)
        xc = _LO
    if xc > _HI:
        xc = _HI
    k = np.floor(xc * _LOG2E + np.float32(0.5))
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    p = np.float32(1 / 5040)              # exp(r) = sum r**n / n!, in Horner form
    p = p * r + np.float32(1 / 720)
    p = p * r + np.float32(1 / 120)
    p = p * r + np.float32(1 / 24)
    p = p * r + np.float32(1 / 6)
    p = p * r + np.float32(1 / 2)
    p = p * r + np.float32(1)
    p = p * r + np.float32(1)
    half = np.int32(k) >> np.int32(1)
    y = (p * _f32_from_bits((half + np.int32(127)) << np.int32(23))) \
        * _f32_from_bits((np.int32(k) - half + np.int32(127)) << np.int32(23))
    if x < _LO:
        y = np.float32(0.0)
    if x > _HI:
        y = np.float32(np.inf)
    return y


@overload(exp32)
def _exp32_overload(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: np.exp(x)
