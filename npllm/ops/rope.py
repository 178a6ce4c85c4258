"""Lesson 03 — rotary position embeddings (RoPE), the rotate_half (NeoX / HF) layout.

For a head vector x of size Dh, split it into halves x1 = x[:Dh/2], x2 = x[Dh/2:].
Pair i (x1[i], x2[i]) is rotated by the angle  pos * theta^(-2i/Dh):

    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half(x) = [-x2, x1]

GGUF ``llama`` files store Q/K rows permuted for the *interleaved* layout
(pairs (x[2i], x[2i+1])); npllm undoes that permutation at load time
(``npllm.io.gguf``), so one layout serves every checkpoint.
Matches HF ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb``.
"""

import numpy as np

from .._jit import njit, reference_mode


def rope_cos_sin(position_ids: np.ndarray, head_dim: int, theta: float, dtype=np.float32):
    """position_ids: [B, T] -> cos, sin: [B, T, Dh] (the half-size table repeated twice)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))  # [Dh/2]
    angles = position_ids.astype(np.float64)[..., None] * inv_freq                    # [B, T, Dh/2]
    angles = np.concatenate([angles, angles], axis=-1)                                # [B, T, Dh]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def apply_rope_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    # x: [B, H, T, Dh], cos/sin: [B, T, Dh] (broadcast over heads)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # rotate_half(x)
    return x * cos[:, None] + rotated * sin[:, None]


@njit
def _apply_rope_kernel(x, cos, sin, out):
    # x, out: [B, H, T, Dh]; cos, sin: [B, T, Dh]
    B, H, T, Dh = x.shape
    half = Dh // 2
    for bh in range(B * H):
        b = bh // H
        h = bh % H
        for t in range(T):
            for i in range(half):
                x1 = x[b, h, t, i]
                x2 = x[b, h, t, i + half]
                out[b, h, t, i] = x1 * cos[b, t, i] - x2 * sin[b, t, i]
                out[b, h, t, i + half] = x2 * cos[b, t, i + half] + x1 * sin[b, t, i + half]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate the heads of x: [B, H, T, Dh] by the angles in cos/sin: [B, T, Dh]."""
    if reference_mode():
        return apply_rope_ref(x, cos, sin)
    out = np.empty(x.shape, dtype=x.dtype)
    _apply_rope_kernel(np.ascontiguousarray(x), cos.astype(x.dtype, copy=False),
                       sin.astype(x.dtype, copy=False), out)
    return out
