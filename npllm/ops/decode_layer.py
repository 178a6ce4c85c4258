"""Lesson 07 — one jitted call per decoder layer (the decode hot path).

``TransformerBlock.decode`` written op by op makes about ten Python calls per layer,
each costing a few microseconds of interpreter and Numba dispatch.  For SmolLM2's 30
layers that is over a millisecond per token, a sixth of decoding.  ``decode_layer`` does
the same math in one call into Numba.  It calls the very kernels the op-by-op path uses
(``_rms_norm_kernel``, the quantized matrix driver ``_run``, ``_decode_attention_kernel``,
``_swiglu_fused_kernel``), so the results are the same; only the Python between them is gone.

    x:  [B, D]                 one new token per row
    h = rms_norm(x) -> qkv = h Wqkv^T (+ b) -> RoPE, cache append, attention -> y
    x = x + y Wo^T
    h = rms_norm(x) -> [gate | up] = h Wgu^T -> silu(gate) * up -> x = x + (.) Wdown^T

It serves layers whose four matrices are ``QuantizedWeight`` (q|k|v and gate|up fused,
see ``fuse_rows``), with RMSNorm and no o_proj bias; other layers use the op-by-op path.
"""

import numpy as np

from .._jit import njit
from ..quant import kernels as qk
from .attention import _decode_attention_kernel
from .mlp import _swiglu_fused_kernel
from .norm import _rms_norm_kernel


@njit
def _matmul(kind, pl, rows, x):
    # x [B, D] float32 @ W.T -> [B, rows]; W given as (ggml type, plane addresses)
    out = np.empty((x.shape[0], rows), np.float32)
    op = qk.MATVEC1 if x.shape[0] == 1 else qk.MATVECN
    qk._run(op, kind, pl, x, out, 0, min(rows, qk._CHUNKS))
    return out


@njit
def _decode_layer(x, ln1, ln2, eps, qkv, qkv_bias, o, gate_up, down, cos, sin,
                  k_cache, v_cache, length, key_mask):
    # qkv, o, gate_up, down: (ggml type, plane addresses, rows) of each weight
    B, D = x.shape
    Hkv, Dh = k_cache.shape[1], k_cache.shape[3]
    nkv = Hkv * Dh
    nq = qkv[2] - 2 * nkv
    h = np.empty((B, D), np.float32)
    _rms_norm_kernel(x, ln1, eps, h)
    y = _matmul(qkv[0], qkv[1], qkv[2], h)                           # [B, nq + 2 nkv]
    if qkv_bias.size:
        for b in range(B):
            y[b] += qkv_bias
    att = np.empty((B, nq), np.float32)
    _decode_attention_kernel(y[:, :nq], y[:, nq:nq + nkv], y[:, nq + nkv:], cos, sin,
                             k_cache, v_cache, length, key_mask, att)
    x = x + _matmul(o[0], o[1], o[2], att)                           # [B, D]
    _rms_norm_kernel(x, ln2, eps, h)
    gu = _matmul(gate_up[0], gate_up[1], gate_up[2], h)              # [B, 2F]
    act = np.empty((B, gate_up[2] // 2), np.float32)
    _swiglu_fused_kernel(gu, act)
    return x + _matmul(down[0], down[1], down[2], act)


def _weight_args(w):
    return (w.ggml_type, w._addresses(), w.shape[0])


def one_call_args(block):
    """The layer's weights as ``_decode_layer`` takes them, or None if the layer does not qualify
    (its four matrices quantized, q|k|v and gate|up fused, RMSNorms, no o_proj bias, float32).
    Computed once per layer: the weights' addresses do not change while the block holds them."""
    from ..quant import QuantizedWeight

    a, n1, n2 = block.self_attn, block.input_layernorm, block.post_attention_layernorm
    weights = (a.qkv_proj, a.o_proj, block.gate_up_proj, block.down_proj)
    if not (all(isinstance(w, QuantizedWeight) for w in weights) and a.o_bias is None
            and n1.bias is None and n2.bias is None
            and n1.weight.dtype == np.float32 and n2.weight.dtype == np.float32
            and (a.qkv_bias is None or a.qkv_bias.dtype == np.float32)):
        return None
    bias = a.qkv_bias if a.qkv_bias is not None else np.zeros(0, np.float32)
    qkv, o, gate_up, down = (_weight_args(w) for w in weights)
    return (n1.weight, n2.weight, np.float32(n1.eps), qkv, bias, o, gate_up, down)


def decode_layer(args, x, cos, sin, key_mask, k_cache, v_cache, length):
    """One layer's decode step (x: [B, D] float32) in one Numba call; ``args`` from ``one_call_args``."""
    return _decode_layer(x, *args, cos, sin, k_cache, v_cache, length, key_mask)
