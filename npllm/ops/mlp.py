"""Lesson 04 — SiLU and the SwiGLU MLP of LLaMA (HF ``LlamaMLP``).

mlp(x) = down_proj( silu(gate_proj(x)) * up_proj(x) ),   silu(z) = z * sigmoid(z)

x: [..., D] -> gate, up: [..., F] -> [..., D]
"""

import numpy as np

from .._jit import njit, reference_mode
from .fastexp import exp32
from .linear import linear


def silu(z: np.ndarray) -> np.ndarray:
    return z / (1.0 + np.exp(-z))


def swiglu_ref(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    return silu(gate) * up


@njit
def _swiglu_cols(a, a0, b, b0, out):
    # out[i, j] = silu(a[i, a0 + j]) * b[i, b0 + j]  (out: [N, F]).  Two passes per row and no
    # temporaries; exp32 (lesson 07) lets LLVM vectorise the first; ``one`` keeps float32 math
    # in float32.  The offsets let a fused [gate | up] array be read in place: slicing it into
    # views would give Numba arrays of unknown stride, whose loops do not vectorise.
    n, f = out.shape
    one = np.ones(1, out.dtype)[0]
    for i in range(n):
        for j in range(f):
            out[i, j] = exp32(-a[i, a0 + j])
        for j in range(f):
            out[i, j] = a[i, a0 + j] / (one + out[i, j]) * b[i, b0 + j]


@njit
def _swiglu_kernel(gate, up, out):
    # gate, up, out: [N, F]
    _swiglu_cols(gate, 0, up, 0, out)


@njit
def _swiglu_fused_kernel(gate_up, out):
    # gate_up: [N, 2F] (gate | up, as a fused weight produces it); out: [N, F]
    _swiglu_cols(gate_up, 0, gate_up, out.shape[1], out)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, elementwise."""
    if reference_mode():
        return swiglu_ref(gate, up)
    g2 = gate.reshape(-1, gate.shape[-1])      # views stay views (e.g. halves of a fused gate|up)
    u2 = up.reshape(-1, up.shape[-1])
    out = np.empty(g2.shape, dtype=g2.dtype)
    if g2.shape[0] >= 16:
        # Prefill: NumPy's exp is SIMD-vectorised and Numba's is a scalar call, so five
        # in-place NumPy passes beat one fused loop once there are many rows.
        np.negative(g2, out=out)
        with np.errstate(over="ignore"):      # exp(-g) = inf for very negative g: silu -> -0
            np.exp(out, out=out)
        out += 1.0
        np.divide(g2, out, out=out)
        out *= u2
    else:
        _swiglu_kernel(g2, u2, out)
    return out.reshape(gate.shape)


def swiglu_fused(gate_up: np.ndarray) -> np.ndarray:
    """silu(gate) * up for gate_up = [gate | up] along the last axis ([..., 2F] -> [..., F])."""
    F = gate_up.shape[-1] // 2
    if reference_mode() or gate_up.shape[-1] != 2 * F:
        return swiglu(gate_up[..., :F], gate_up[..., F:])
    gu = np.ascontiguousarray(gate_up.reshape(-1, 2 * F))
    if gu.shape[0] >= 16:
        return swiglu(gu[:, :F], gu[:, F:]).reshape(*gate_up.shape[:-1], F)
    out = np.empty((gu.shape[0], F), dtype=gu.dtype)
    _swiglu_fused_kernel(gu, out)
    return out.reshape(*gate_up.shape[:-1], F)


def mlp(x: np.ndarray, gate_proj, up_proj, down_proj) -> np.ndarray:
    # x: [..., D] -> [..., F] -> [..., D]
    return linear(swiglu(linear(x, gate_proj), linear(x, up_proj)), down_proj)
