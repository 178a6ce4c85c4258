"""Lesson 07 — one jitted call per decoder layer (the decode hot path).

``TransformerBlock.decode`` written op by op makes about ten Python calls per layer,
each costing a few microseconds of interpreter and Numba dispatch.  For SmolLM2's 30
layers that is over a millisecond per token, a sixth of decoding.  ``decode_layer`` does
the same math in one call into Numba.  It calls the very kernels the op-by-op path uses
(``_rms_norm_kernel``, the quantized matrix driver ``_run``, ``_decode_attention_kernel``,
``_glu_fused_kernel``), so the results are the same; only the Python between them is gone.

    x:  [B, D]                 one new token per row
    h = rms_norm(x) -> qkv = h Wqkv^T (+ b) -> [q/k norms] -> RoPE, cache append, attention -> y
    x = x + [norm](y Wo^T)
    h = rms_norm(x) -> [gate | up] = h Wgu^T -> act(gate) * up -> x = x + [norm]((.) Wdown^T)

The bracketed steps are family knobs (lesson 08): q/k norms (Qwen3, Gemma 3) and the norms
on each branch's output (Gemma's sandwich norms); the activation, the attention scale and
softcap, the sliding window and the RoPE table (none for NoPE layers) are arguments.
It serves layers whose four matrices are ``QuantizedWeight`` (q|k|v and gate|up fused, see
``fuse_rows``), with RMSNorms and no o_proj bias; other layers use the op-by-op path.
"""

import numpy as np

from .._jit import njit
from ..quant import kernels as qk
from .attention import _decode_attention_kernel, cache_rows, no_rope
from .half import kernel_view
from .mlp import ACTIVATIONS, _glu_fused_kernel
from .norm import _rms_norm_kernel

_NONE = np.zeros(0, np.float32)  # an absent norm weight


@njit
def _matmul(kind, pl, rows, x, opn):
    # x [B, D] float32 @ W.T -> [B, rows]; W given as (ggml type, plane addresses);
    # opn: the kernel for B > 1 (MATVECN, or MATVECR in batch-invariant mode, see kernels.py)
    out = np.empty((x.shape[0], rows), np.float32)
    op = qk.MATVEC1 if x.shape[0] == 1 else opn
    qk._run(op, kind, pl, x, out, 0, min(rows, qk._CHUNKS))
    return out


@njit
def _matmul_rows(kind, pl, rows, x):
    # x [N, D] @ W.T -> [N, rows], each row as _matmul computes it for one row (MATVEC1)
    out = np.empty((x.shape[0], rows), np.float32)
    qk._run(qk.MATVECR, kind, pl, x, out, 0, min(rows, qk._CHUNKS))
    return out


@njit
def _head_norms(y, start, n_heads, dh, w, eps):
    # RMSNorm of each head in place: y[b, start + h*dh : start + (h+1)*dh] for h < n_heads
    # (the arithmetic of _rms_norm_kernel, so both paths round alike)
    for b in range(y.shape[0]):
        for h in range(n_heads):
            j0 = start + h * dh
            ss = 0.0
            for d in range(dh):
                ss += y[b, j0 + d] * y[b, j0 + d]
            inv = 1.0 / np.sqrt(ss / dh + eps)
            for d in range(dh):
                y[b, j0 + d] = y[b, j0 + d] * inv * w[d]


@njit
def _normed(x, w, eps):
    # RMSNorm of x's rows, or x itself when the norm is absent (w of size 0)
    if w.size == 0:
        return x
    out = np.empty_like(x)
    _rms_norm_kernel(x, w, eps, out)
    return out


@njit
def _qkv(qkv, h, opn):
    # q|k|v: one fused weight (the other two entries have 0 rows), or three of different types
    rows = qkv[0][2] + qkv[1][2] + qkv[2][2]
    if qkv[1][2] == 0:
        return _matmul(qkv[0][0], qkv[0][1], rows, h, opn)
    y = np.empty((h.shape[0], rows), np.float32)
    r0 = 0
    for w in qkv:
        y[:, r0:r0 + w[2]] = _matmul(w[0], w[1], w[2], h, opn)
        r0 += w[2]
    return y


@njit
def _decode_layer(x, ln1, ln2, ln_attn_out, ln_mlp_out, eps, qkv, qkv_bias, q_norm, k_norm, o, gate_up, down,
                  cos, sin, k_cache, v_cache, rows, lengths, key_mask, scale, softcap, window, act, opn):
    # qkv: three (ggml type, plane addresses, rows); o, gate_up, down: one each; absent norms: size 0
    # rows, lengths: int64 [B], each batch row's cache row and its stored positions
    B, D = x.shape
    Hkv, Dh = k_cache.shape[1], k_cache.shape[3]
    nkv = Hkv * Dh
    h = np.empty((B, D), np.float32)
    _rms_norm_kernel(x, ln1, eps, h)
    y = _qkv(qkv, h, opn)                                               # [B, nq + 2 nkv]
    nq = y.shape[1] - 2 * nkv
    if qkv_bias.size:
        for b in range(B):
            y[b] += qkv_bias
    if q_norm.size:                                                  # before RoPE (Qwen3, Gemma 3)
        _head_norms(y, 0, nq // Dh, Dh, q_norm, eps)
        _head_norms(y, nq, Hkv, Dh, k_norm, eps)
    att = np.empty((B, nq), np.float32)
    _decode_attention_kernel(y[:, :nq], y[:, nq:nq + nkv], y[:, nq + nkv:], cos, sin,
                             k_cache, v_cache, rows, lengths, key_mask, att, scale, softcap, window)
    x = x + _normed(_matmul(o[0], o[1], o[2], att, opn), ln_attn_out, eps)   # [B, D]
    _rms_norm_kernel(x, ln2, eps, h)
    gu = _matmul(gate_up[0], gate_up[1], gate_up[2], h, opn)              # [B, 2F]
    a = np.empty((B, gate_up[2] // 2), np.float32)
    _glu_fused_kernel(gu, a, act)
    return x + _normed(_matmul(down[0], down[1], down[2], a, opn), ln_mlp_out, eps)


@njit
def _qkv_rows(qkv, h):
    # _qkv for several tokens of one sequence, each row computed as _qkv computes it alone
    rows = qkv[0][2] + qkv[1][2] + qkv[2][2]
    if qkv[1][2] == 0:
        return _matmul_rows(qkv[0][0], qkv[0][1], rows, h)
    y = np.empty((h.shape[0], rows), np.float32)
    r0 = 0
    for w in qkv:
        y[:, r0:r0 + w[2]] = _matmul_rows(w[0], w[1], w[2], h)
        r0 += w[2]
    return y


@njit
def _verify_layer(x, ln1, ln2, ln_attn_out, ln_mlp_out, eps, qkv, qkv_bias, q_norm, k_norm, o, gate_up, down,
                  cos, sin, k_cache, v_cache, length, key_mask, scale, softcap, window, act):
    # _decode_layer for T new tokens of ONE sequence (x [T, D], cache row 0, cos/sin [T, 1, Dh]):
    # token t is appended at length + t and attends over the cache up to it, exactly as the t-th
    # of T decode steps would.  Every row goes through the same kernels with the same operand
    # layouts as in _decode_layer (matrices: MATVECR = MATVEC1 per row), so the logits are
    # bit-equal to T decode steps; only the weights are read once instead of T times.
    T, D = x.shape
    Hkv, Dh = k_cache.shape[1], k_cache.shape[3]
    nkv = Hkv * Dh
    h = np.empty((T, D), np.float32)
    _rms_norm_kernel(x, ln1, eps, h)
    y = _qkv_rows(qkv, h)                                            # [T, nq + 2 nkv]
    nq = y.shape[1] - 2 * nkv
    if qkv_bias.size:
        for b in range(T):
            y[b] += qkv_bias
    if q_norm.size:
        _head_norms(y, 0, nq // Dh, Dh, q_norm, eps)
        _head_norms(y, nq, Hkv, Dh, k_norm, eps)
    att = np.empty((T, nq), np.float32)
    # All T attentions in one call: batch row t is token t, in cache row 0 at position length + t.
    # The kernel first appends every row's k, v, then each row attends over its own first
    # length + t + 1 positions only, so each sees exactly what its decode step would.
    rows = np.zeros(T, np.int64)
    lengths = length + np.arange(T)
    masks = np.empty((T, key_mask.shape[1]), key_mask.dtype)
    for t in range(T):
        masks[t] = key_mask[0]
    _decode_attention_kernel(y[:, :nq], y[:, nq:nq + nkv], y[:, nq + nkv:], cos, sin, k_cache, v_cache, rows,
                             lengths, masks, att, scale, softcap, window)
    x = x + _normed(_matmul_rows(o[0], o[1], o[2], att), ln_attn_out, eps)
    _rms_norm_kernel(x, ln2, eps, h)
    gu = _matmul_rows(gate_up[0], gate_up[1], gate_up[2], h)
    a = np.empty((T, gate_up[2] // 2), np.float32)
    _glu_fused_kernel(gu, a, act)
    return x + _normed(_matmul_rows(down[0], down[1], down[2], a), ln_mlp_out, eps)


def _weight_args(w):
    return (w.ggml_type, w._addresses(), w.shape[0])


def one_call_args(block):
    """The layer's weights and knobs as ``_decode_layer`` takes them, or None if the layer does
    not qualify (its matrices quantized, gate|up fused, RMSNorms, no o_proj bias, float32; q, k
    and v fused, or three weights when their types differ, as in Gemma-3-270M's Q4_K_M file).
    Computed once per layer: the weights' addresses do not change while the block holds them."""
    from ..quant import QuantizedWeight

    a = block.self_attn
    norms = [block.input_layernorm, block.mlp_norm]
    if block.sandwich:
        norms += [block.post_attention_layernorm, block.post_feedforward_layernorm]
    if a.q_norm is not None:
        norms += [a.q_norm, a.k_norm]
    projections = (a.qkv_proj,) if a.qkv_proj is not None else (a.q_proj, a.k_proj, a.v_proj)
    weights = (*projections, a.o_proj, block.gate_up_proj, block.down_proj)
    if not (all(isinstance(w, QuantizedWeight) for w in weights) and a.o_bias is None
            and all(n.bias is None and n.scale.dtype == np.float32 for n in norms)):
        return None
    biases = (a.q_bias, a.k_bias, a.v_bias)
    if a.qkv_bias is not None:
        bias = a.qkv_bias
    elif any(b is not None for b in biases):
        bias = np.concatenate([b if b is not None else np.zeros(w.shape[0], np.float32)
                               for b, w in zip(biases, projections)]).astype(np.float32)
    else:
        bias = _NONE
    if bias.dtype != np.float32:
        return None
    if len(projections) == 1:
        fused = _weight_args(projections[0])
        empty = (fused[0], fused[1], 0)
        qkv = (fused, empty, empty)
    else:
        qkv = tuple(_weight_args(w) for w in projections)
    o, gate_up, down = (_weight_args(w) for w in weights[-3:])
    sandwich = (block.post_attention_layernorm.scale, block.post_feedforward_layernorm.scale) \
        if block.sandwich else (_NONE, _NONE)
    qk_norms = (a.q_norm.scale, a.k_norm.scale) if a.q_norm is not None else (_NONE, _NONE)
    f32 = np.float32
    return ((block.input_layernorm.scale, block.mlp_norm.scale, *sandwich, f32(block.input_layernorm.eps),
             qkv, bias, *qk_norms, o, gate_up, down),
            (f32(a.scale), f32(a.softcap or 0), a.window or 0, ACTIVATIONS[block.act]))


def decode_layer(args, x, cos, sin, key_mask, k_cache, v_cache, length):
    """One layer's decode step (x: [B, D] float32) in one Numba call; ``args`` from ``one_call_args``.
    ``cos``/``sin`` None: a layer without RoPE.  ``length``: one int, or ``(rows, lengths)``
    (see ``decode_attention``)."""
    weights, (scale, softcap, window, act) = args
    if cos is None:
        cos, sin = no_rope(x.shape[0], np.float32)
    rows, lengths = cache_rows(x.shape[0], length)
    return _decode_layer(x, *weights, cos, sin, kernel_view(k_cache), kernel_view(v_cache), rows, lengths, key_mask,
                         scale, softcap, window, act, qk.op_for_many())


def verify_layer(args, x, cos, sin, key_mask, k_cache, v_cache, length):
    """T decode steps of one sequence in one call (x: [T, D] float32, cos/sin [T, 1, Dh] or None),
    bit-equal to T calls of ``decode_layer``; used by speculative decoding to verify drafts."""
    weights, (scale, softcap, window, act) = args
    if cos is None:
        cos, sin = no_rope(x.shape[0], np.float32)
    return _verify_layer(x, *weights, cos, sin, kernel_view(k_cache), kernel_view(v_cache), length, key_mask, scale,
                         softcap, window, act)
