"""Lesson 04 — the linear layer, y = x W^T + b, with HF's weight layout W: [out, in].

A weight is either a dense float ndarray (BLAS does the work: ``x @ W.T``) or a
``QuantizedWeight`` from ``npllm.quant`` that keeps GGUF blocks in memory
and multiplies without ever materialising the fp32 matrix.

``fuse_rows`` stacks weights that read the same input (q, k, v; gate, up) into one, so
decoding makes one call where it made three: fewer calls, less per-call overhead.
``split_rows`` goes the other way for checkpoints that store them fused (Phi-3).
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


def fuse_rows(weights, biases=None):
    """Stack weights [R_i, D] that multiply the same input into one [sum R_i, D].

    Returns ``(fused, fused_bias, parts)`` where ``parts`` are row views of ``fused`` equal to
    the inputs (callers keep those and drop the originals: one copy in memory), or None when
    the weights differ in kind, dtype, quantization type or width.  ``linear(x, fused)`` is
    ``concatenate([linear(x, w) for w in weights], -1)``: every output row is computed alike.
    """
    from ..quant import QuantizedWeight

    weights = list(weights)
    biases = list(biases) if biases is not None else [None] * len(weights)
    first = weights[0]
    if isinstance(first, np.ndarray):
        if not all(isinstance(w, np.ndarray) and w.ndim == 2 and w.dtype == first.dtype
                   and w.shape[1] == first.shape[1] for w in weights):
            return None
        fused = np.concatenate(weights)
        cut = lambda r0, r1: fused[r0:r1]                                  # noqa: E731
    elif isinstance(first, QuantizedWeight):
        if not all(isinstance(w, QuantizedWeight) and w.ggml_type == first.ggml_type
                   and w.shape[1] == first.shape[1] for w in weights):
            return None
        fused = QuantizedWeight.concat_rows(weights)
        cut = fused.row_slice
    else:
        return None
    bounds = np.cumsum([0] + [w.shape[0] for w in weights])
    parts = [cut(int(r0), int(r1)) for r0, r1 in zip(bounds[:-1], bounds[1:])]
    fused_bias = None
    if any(b is not None for b in biases):
        dtype = next(b.dtype for b in biases if b is not None)
        fused_bias = np.concatenate([b if b is not None else np.zeros(w.shape[0], dtype)
                                     for w, b in zip(weights, biases)])
    return fused, fused_bias, parts


def split_rows(w, sizes):
    """Row views of a weight [sum sizes, D] stored fused in the checkpoint (Phi-3's qkv_proj and
    gate_up_proj): ``[w[0:s0], w[s0:s0+s1], ...]``, sharing its memory."""
    from ..quant import QuantizedWeight

    bounds = np.cumsum([0] + list(sizes))
    if isinstance(w, QuantizedWeight):
        return [w.row_slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return [w[int(a):int(b)] for a, b in zip(bounds[:-1], bounds[1:])]
