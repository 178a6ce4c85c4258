"""Lesson 03 — RMSNorm (LLaMA) and LayerNorm (the seed's ``use_rms_norm=False``).

RMSNorm:   y = x / sqrt(mean(x^2) + eps) * w              (HF LlamaRMSNorm)
LayerNorm: y = (x - mean(x)) / sqrt(var(x) + eps) * w + b (torch.nn.LayerNorm)

Both normalise over the last axis (D) and compute in the input's float dtype.
"""

import numpy as np

from .._jit import njit, reference_mode


def rms_norm_ref(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    # x: [..., D], weight: [D]
    ms = np.mean(x * x, axis=-1, keepdims=True)        # [..., 1]
    return (x / np.sqrt(ms + eps)) * weight


def layer_norm_ref(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mu = np.mean(x, axis=-1, keepdims=True)            # [..., 1]
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


@njit
def _rms_norm_kernel(x, weight, eps, out):
    # x, out: [N, D]
    n, d = x.shape
    for i in range(n):
        ss = 0.0
        for j in range(d):
            ss += x[i, j] * x[i, j]
        inv = 1.0 / np.sqrt(ss / d + eps)
        for j in range(d):
            out[i, j] = x[i, j] * inv * weight[j]


@njit
def _layer_norm_kernel(x, weight, bias, eps, out):
    n, d = x.shape
    for i in range(n):
        mu = 0.0
        for j in range(d):
            mu += x[i, j]
        mu /= d
        var = 0.0
        for j in range(d):
            var += (x[i, j] - mu) ** 2
        inv = 1.0 / np.sqrt(var / d + eps)
        for j in range(d):
            out[i, j] = (x[i, j] - mu) * inv * weight[j] + bias[j]


def _rows(x):
    return np.ascontiguousarray(x.reshape(-1, x.shape[-1]))


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis. x: [..., D], weight: [D] -> [..., D]."""
    if reference_mode():
        return rms_norm_ref(x, weight, eps)
    x2 = _rows(x)
    out = np.empty_like(x2)
    _rms_norm_kernel(x2, weight.astype(x2.dtype, copy=False), x2.dtype.type(eps), out)
    return out.reshape(x.shape)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis. x: [..., D], weight, bias: [D] -> [..., D]."""
    if reference_mode():
        return layer_norm_ref(x, weight, bias, eps)
    x2 = _rows(x)
    out = np.empty_like(x2)
    _layer_norm_kernel(x2, weight.astype(x2.dtype, copy=False), bias.astype(x2.dtype, copy=False),
                       x2.dtype.type(eps), out)
    return out.reshape(x.shape)
