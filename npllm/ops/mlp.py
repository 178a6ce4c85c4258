"""Lessons 04 and 08 — the gated MLP of LLaMA (SwiGLU) and Gemma (GeGLU) (HF ``LlamaMLP``).

mlp(x) = down_proj( act(gate_proj(x)) * up_proj(x) )

    act = silu:               silu(z) = z * sigmoid(z)                        (Llama, Qwen, Phi-3)
    act = gelu_pytorch_tanh:  gelu(z) = 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))  (Gemma)

Both are ``z * sigmoid(a(z))``: a(z) = z for silu, and, since 0.5 (1 + tanh(u)) = sigmoid(2u),
a(z) = 2 sqrt(2/pi) (z + 0.044715 z^3) for the tanh GELU.  So one kernel loop serves both,
and the sigmoid form stays exact in both tails (no 1 - 1 cancellation).

x: [..., D] -> gate, up: [..., F] -> [..., D]
"""

import numpy as np

from .._jit import njit, reference_mode
from .fastexp import exp32
from .linear import linear

ACTIVATIONS = {"silu": 0, "swish": 0, "gelu_pytorch_tanh": 1}
_GELU_C = float(2 * np.sqrt(2 / np.pi))   # 2 sqrt(2/pi)
_GELU_K = 0.044715


def silu(z: np.ndarray) -> np.ndarray:
    return z / (1.0 + np.exp(-z))


def gelu_tanh(z: np.ndarray) -> np.ndarray:
    """HF's ``gelu_pytorch_tanh``, written as z * sigmoid(2u) (see the module docstring)."""
    u2 = _GELU_C * (z + _GELU_K * z * z * z)
    with np.errstate(over="ignore"):
        return z / (1.0 + np.exp(-u2))


def glu_ref(gate: np.ndarray, up: np.ndarray, act: str = "silu") -> np.ndarray:
    """act(gate) * up, the readable form."""
    return (silu(gate) if ACTIVATIONS[act] == 0 else gelu_tanh(gate)) * up


def swiglu_ref(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    return silu(gate) * up


@njit
def _glu_cols(a, a0, b, b0, out, act):
    # out[i, j] = act(a[i, a0 + j]) * b[i, b0 + j]  (out: [N, F]); act 0 silu, 1 tanh GELU.
    # Two passes per row and no temporaries; exp32 (lesson 07) lets LLVM vectorise the first;
    # ``one`` keeps float32 math in float32.  The offsets let a fused [gate | up] array be read
    # in place: slicing it into views would give Numba arrays of unknown stride, whose loops
    # do not vectorise.
    n, f = out.shape
    consts = np.empty(3, out.dtype)
    consts[0], consts[1], consts[2] = 1.0, _GELU_C, _GELU_K
    one, c, k = consts[0], consts[1], consts[2]
    for i in range(n):
        if act == 0:
            for j in range(f):
                out[i, j] = exp32(-a[i, a0 + j])
        else:
            for j in range(f):
                z = a[i, a0 + j]
                out[i, j] = exp32(-c * (z + k * z * z * z))
        for j in range(f):
            out[i, j] = a[i, a0 + j] / (one + out[i, j]) * b[i, b0 + j]


@njit
def _glu_kernel(gate, up, out, act):
    # gate, up, out: [N, F]
    _glu_cols(gate, 0, up, 0, out, act)


@njit
def _glu_fused_kernel(gate_up, out, act):
    # gate_up: [N, 2F] (gate | up, as a fused weight produces it); out: [N, F]
    _glu_cols(gate_up, 0, gate_up, out.shape[1], out, act)


def glu(gate: np.ndarray, up: np.ndarray, act: str = "silu") -> np.ndarray:
    """act(gate) * up, elementwise (act: "silu" or "gelu_pytorch_tanh")."""
    if reference_mode():
        return glu_ref(gate, up, act)
    code = ACTIVATIONS[act]
    g2 = gate.reshape(-1, gate.shape[-1])      # views stay views (e.g. halves of a fused gate|up)
    u2 = up.reshape(-1, up.shape[-1])
    out = np.empty(g2.shape, dtype=g2.dtype)
    if g2.shape[0] >= 16:
        # Prefill: NumPy's exp is SIMD-vectorised and Numba's is a scalar call, so a few
        # in-place NumPy passes beat one fused loop once there are many rows.
        if code == 0:
            np.negative(g2, out=out)
        else:
            np.multiply(g2, g2, out=out)
            out *= _GELU_K * g2
            out += g2
            out *= -_GELU_C
        with np.errstate(over="ignore"):      # exp(-a) = inf for very negative a: the result -> -0
            np.exp(out, out=out)
        out += 1.0
        np.divide(g2, out, out=out)
        out *= u2
    else:
        _glu_kernel(g2, u2, out, code)
    return out.reshape(gate.shape)


def glu_fused(gate_up: np.ndarray, act: str = "silu") -> np.ndarray:
    """act(gate) * up for gate_up = [gate | up] along the last axis ([..., 2F] -> [..., F])."""
    F = gate_up.shape[-1] // 2
    if reference_mode() or gate_up.shape[-1] != 2 * F:
        return glu(gate_up[..., :F], gate_up[..., F:], act)
    gu = np.ascontiguousarray(gate_up.reshape(-1, 2 * F))
    if gu.shape[0] >= 16:
        return glu(gu[:, :F], gu[:, F:], act).reshape(*gate_up.shape[:-1], F)
    out = np.empty((gu.shape[0], F), dtype=gu.dtype)
    _glu_fused_kernel(gu, out, ACTIVATIONS[act])
    return out.reshape(*gate_up.shape[:-1], F)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, elementwise (LLaMA's SwiGLU)."""
    return glu(gate, up, "silu")


def swiglu_fused(gate_up: np.ndarray) -> np.ndarray:
    """silu(gate) * up for gate_up = [gate | up] ([..., 2F] -> [..., F])."""
    return glu_fused(gate_up, "silu")


def mlp(x: np.ndarray, gate_proj, up_proj, down_proj, act: str = "silu") -> np.ndarray:
    # x: [..., D] -> [..., F] -> [..., D]
    return linear(glu(linear(x, gate_proj), linear(x, up_proj), act), down_proj)
