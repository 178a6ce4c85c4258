"""Lesson 04 — the linear layer, y = x W^T + b, with HF's weight layout W: [out, in].

A weight is either a dense float ndarray (BLAS does the work: ``x @ W.T``) or a
``QuantizedWeight`` from ``npllm.io.quants`` that keeps GGUF blocks in memory
and multiplies without ever materialising the fp32 matrix.
"""

import numpy as np


def linear(x: np.ndarray, w, bias=None) -> np.ndarray:
    # x: [..., in], w: [out, in] -> [..., out]
    if isinstance(w, np.ndarray):
        y = x @ w.T
    else:  # QuantizedWeight
        y = w.matmul(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], w.shape[0])
    if bias is not None:
        y += bias
    return y
