"""Lesson 04 — SiLU and the SwiGLU MLP of LLaMA (HF ``LlamaMLP``).

mlp(x) = down_proj( silu(gate_proj(x)) * up_proj(x) ),   silu(z) = z * sigmoid(z)

x: [..., D] -> gate, up: [..., F] -> [..., D]
"""

import numpy as np

from .._jit import njit, reference_mode
from .linear import linear


def silu(z: np.ndarray) -> np.ndarray:
    return z / (1.0 + np.exp(-z))


def swiglu_ref(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    return silu(gate) * up


@njit
def _swiglu_kernel(gate, up, out):
    # gate, up, out: [N, F]; one fused pass instead of three temporaries
    n, f = gate.shape
    for i in range(n):
        for j in range(f):
            g = gate[i, j]
            out[i, j] = g / (1.0 + np.exp(-g)) * up[i, j]


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


def mlp(x: np.ndarray, gate_proj, up_proj, down_proj) -> np.ndarray:
    # x: [..., D] -> [..., F] -> [..., D]
    return linear(swiglu(linear(x, gate_proj), linear(x, up_proj)), down_proj)
