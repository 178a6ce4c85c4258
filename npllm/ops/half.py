"""Lessons 05 and 07 — fp16 storage for the KV cache: two conversions the kernels can use.

A KV cache in float16 holds half the bytes of a float32 one (llama.cpp's default, ``-ctk f16``):
at 2,048 positions SmolLM2-135M's cache is 47 MB instead of 94, and a decode step at a long
context reads half as much.  Only the storage is fp16; every product and sum stays in fp32.

Numba has no float16 type on the CPU, so a kernel sees the cache as its raw 16-bit patterns
(``kernel_view``: a ``uint16`` view of the same memory) and converts each value as it moves:

    h2f(u)          the float32 whose fp16 bit pattern is the uint16 u (exact: fp16 is in fp32)
    to_elem(a, x)   x as array a stores it: for a uint16 view, the bit pattern of x rounded to
                    fp16, round-half-to-even (NumPy's astype); for float arrays, x itself

They compile to LLVM's ``fpext half`` / ``fptrunc ... to half``, which a vectorised loop turns
into the F16C/AVX-512 instructions ``vcvtph2ps`` / ``vcvtps2ph``.  On float32 or float64 values
both are the identity, so one kernel source serves a cache of any dtype (Numba compiles one
version per dtype).  Plain Python (``NUMBA_DISABLE_JIT=1``) passes the float16 arrays themselves
(``kernel_view`` leaves them), where NumPy rounds on assignment and ``h2f`` only casts.

The NumPy reference is ``x.astype(np.float16)`` and back: ``tests/test_ops.py`` checks both
conversions against it on all 65,536 bit patterns and on random floats.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import config
from numba.extending import intrinsic, overload

from .._jit import njit

_I16, _HALF = ir.IntType(16), ir.HalfType()


def h2f(u):
    """float32 of a cache value (an fp16 bit pattern in a kernel; plain Python: NumPy's cast)."""
    return np.float32(u)


def to_elem(a, x):
    """x as it is stored into array a: fp16 bits when a is a ``kernel_view`` (plain Python: x,
    and NumPy rounds on assignment)."""
    return x


@intrinsic
def _h2f_bits(typingctx, u):
    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], _HALF), ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def _f2h_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], _HALF), _I16)

    return types.uint16(x), codegen


@overload(h2f)
def _h2f_overload(u):
    if isinstance(u, types.Integer) and u.bitwidth == 16:
        return lambda u: _h2f_bits(u)
    return lambda u: u


@overload(to_elem)
def _to_elem_overload(a, x):
    if isinstance(a, types.Array) and a.dtype == types.uint16:
        return lambda a, x: _f2h_bits(np.float32(x))
    return lambda a, x: x


def kernel_view(a: np.ndarray) -> np.ndarray:
    """The array a kernel takes for a cache buffer: fp16 as ``uint16`` bits (same memory)."""
    if a.dtype == np.float16 and not config.DISABLE_JIT:
        return a.view(np.uint16)
    return a


# ---------------------------------------------------------------------------------------------
# Whole blocks of a cache: NumPy's float16 casts go one value at a time (~2.5 ns per value to
# fp16, ~1.4 ns back on this machine); these loops vectorise (vcvtps2ph / vcvtph2ps) because the
# cache buffer they index is C-contiguous (on a strided view LLVM cannot, and they are no faster).

@njit
def _narrow_at(src, dst, t0):
    # dst[:, :, t0 : t0 + T] = src rounded to fp16 bits; src float [A, B, T, D], dst uint16 [A, B, S, D]
    A, B, T, D = src.shape
    for a in range(A):
        for b in range(B):
            for t in range(T):
                for d in range(D):
                    dst[a, b, t0 + t, d] = to_elem(dst, src[a, b, t, d])


@njit
def _widen_to(src, t1, out):
    # out = float32 of src[:, :, :t1]; src uint16 [A, B, S, D] (fp16 bits), out float32 [A, B, t1, D]
    A, B, _, D = src.shape
    for a in range(A):
        for b in range(B):
            for t in range(t1):
                for d in range(D):
                    out[a, b, t, d] = h2f(src[a, b, t, d])


def store(buf: np.ndarray, t0: int, src: np.ndarray) -> None:
    """``buf[:, :, t0 : t0 + T] = src`` for a cache buffer [A, B, S, D] (fp16: rounded as NumPy does)."""
    if buf.dtype == np.float16 and buf.flags.c_contiguous and not config.DISABLE_JIT:
        _narrow_at(np.asarray(src, np.float32), buf.view(np.uint16), t0)
    else:
        buf[:, :, t0:t0 + src.shape[2]] = src


def widen(buf: np.ndarray, t1: int, dtype) -> np.ndarray:
    """The first ``t1`` positions of a cache buffer [A, B, S, D] in ``dtype`` (float32 math on an
    fp16 cache: a new array; a buffer already in ``dtype``: a view)."""
    if buf.dtype == dtype:
        return buf[:, :, :t1]
    if buf.dtype == np.float16 and np.dtype(dtype) == np.float32 and buf.flags.c_contiguous \
            and not config.DISABLE_JIT:
        out = np.empty(buf.shape[:2] + (t1,) + buf.shape[3:], np.float32)
        _widen_to(buf.view(np.uint16), t1, out)
        return out
    return buf[:, :, :t1].astype(dtype)
