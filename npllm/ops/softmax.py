"""Lesson 02 — numerically stable softmax.

softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z)

Subtracting the max changes nothing mathematically but keeps exp() from
overflowing.  A row that is entirely ``-inf`` (every key masked) gives all
zeros instead of NaN; a row with a single finite entry gives a one-hot.
Matches ``torch.softmax`` on every row that has at least one finite entry.
"""

import numpy as np

from .._jit import njit, reference_mode


def softmax_ref(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # all -inf row: keep exp() at 0, not NaN
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(s == 0, 1.0, s)


@njit
def _softmax_kernel(x, out):
    # x, out: [N, V]
    n, v = x.shape
    for i in range(n):
        m = -np.inf
        for j in range(v):
            if x[i, j] > m:
                m = x[i, j]
        if m == -np.inf:
            out[i, :] = 0.0
            continue
        s = 0.0
        for j in range(v):
            e = np.exp(x[i, j] - m)
            out[i, j] = e
            s += e
        inv = 1.0 / s
        for j in range(v):
            out[i, j] *= inv


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax over ``axis`` (default last). Returns a new array."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if reference_mode() or axis not in (-1, x.ndim - 1) or x.ndim == 0:
        return softmax_ref(x, axis)
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    out = np.empty_like(x2)
    _softmax_kernel(x2, out)
    return out.reshape(x.shape)
