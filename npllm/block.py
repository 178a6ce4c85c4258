"""Lesson 04 — the pre-norm transformer block (HF ``LlamaDecoderLayer``).

    x = x + attn(norm1(x))        # attention mixes positions
    x = x + mlp(norm2(x))         # the MLP transforms each position on its own

Weights are looked up by HF state-dict names, e.g. ``self_attn.q_proj.weight``
(relative to ``model.layers.{i}.``), and are either float ndarrays or
``QuantizedWeight`` objects; ``linear`` handles both.

``__call__`` is the readable path (any number of tokens).  ``decode`` is the same math for
one new token per row, tuned for speed: q, k, v are one fused weight (and gate, up
another), so a layer makes 4 matrix calls instead of 7.  The fused weights hold the only
copy; ``q_proj`` etc. (and the model's ``params``) become row views of them.
"""

from __future__ import annotations

import numpy as np

from .ops import apply_rope, attention, decode_attention, layer_norm, linear, mlp, rms_norm
from .quant.weight import _use_reference as quants_reference
from .ops.decode_layer import decode_layer, one_call_args
from .ops.linear import fuse_rows
from .ops.mlp import swiglu_fused


class Norm:
    """RMSNorm (``weight`` only) or, when the config says ``use_rms_norm=False``, LayerNorm."""

    def __init__(self, weight, bias, eps):
        self.weight, self.bias, self.eps = weight, bias, eps

    def __call__(self, x):
        if self.bias is None:
            return rms_norm(x, self.weight, self.eps)
        return layer_norm(x, self.weight, self.bias, self.eps)


class Attention:
    """Multi-head attention with RoPE and GQA (HF ``LlamaAttention`` / ``Qwen2Attention``)."""

    def __init__(self, config, p: dict, prefix: str):
        self.H, self.Hkv, self.Dh = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        w = lambda name: p.get(prefix + name)  # noqa: E731  (None when the bias is absent)
        self.q_proj, self.q_bias = w("q_proj.weight"), w("q_proj.bias")
        self.k_proj, self.k_bias = w("k_proj.weight"), w("k_proj.bias")
        self.v_proj, self.v_bias = w("v_proj.weight"), w("v_proj.bias")
        self.o_proj, self.o_bias = w("o_proj.weight"), w("o_proj.bias")
        self.qkv_proj = self.qkv_bias = None
        fused = fuse_rows([self.q_proj, self.k_proj, self.v_proj], [self.q_bias, self.k_bias, self.v_bias])
        if fused is not None:  # decode's one call for q, k, v; the parts become views of it
            self.qkv_proj, self.qkv_bias, (self.q_proj, self.k_proj, self.v_proj) = fused
            for name, part in zip(("q_proj", "k_proj", "v_proj"), fused[2]):
                p[prefix + name + ".weight"] = part

    def __call__(self, x, cos, sin, allowed, cache, layer_idx):
        B, T, _ = x.shape
        H, Hkv, Dh = self.H, self.Hkv, self.Dh
        q = linear(x, self.q_proj, self.q_bias).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)    # [B,H,T,Dh]
        k = linear(x, self.k_proj, self.k_bias).reshape(B, T, Hkv, Dh).transpose(0, 2, 1, 3)  # [B,Hkv,T,Dh]
        v = linear(x, self.v_proj, self.v_bias).reshape(B, T, Hkv, Dh).transpose(0, 2, 1, 3)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = cache.update(layer_idx, k, v)                     # [B, Hkv, S, Dh]: past + new
        y = attention(q, k, v, allowed)                          # [B, H, T, Dh]
        y = y.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)        # merge heads
        return linear(y, self.o_proj, self.o_bias)

    def decode(self, x, cos, sin, key_mask, cache, layer_idx):
        """The same attention for one new token per row (x: [B, D]), with RoPE, the cache
        append and the attention fused into one kernel call — the decode hot path."""
        if self.qkv_proj is not None:
            qkv = linear(x, self.qkv_proj, self.qkv_bias)        # [B, (H + 2 Hkv) * Dh]
            nq, nkv = self.H * self.Dh, self.Hkv * self.Dh
            q, k, v = qkv[:, :nq], qkv[:, nq:nq + nkv], qkv[:, nq + nkv:]
        else:
            q = linear(x, self.q_proj, self.q_bias)              # [B, H*Dh]
            k = linear(x, self.k_proj, self.k_bias)              # [B, Hkv*Dh]
            v = linear(x, self.v_proj, self.v_bias)
        y = decode_attention(q, k, v, cos, sin, cache.keys[layer_idx], cache.values[layer_idx],
                             cache.length, key_mask)             # [B, H*Dh]
        return linear(y, self.o_proj, self.o_bias)


class TransformerBlock:
    def __init__(self, config, p: dict, i: int):
        prefix = f"model.layers.{i}."
        eps = config.rms_norm_eps
        self.idx = i
        self.input_layernorm = Norm(p[prefix + "input_layernorm.weight"],
                                    p.get(prefix + "input_layernorm.bias"), eps)
        self.self_attn = Attention(config, p, prefix + "self_attn.")
        self.post_attention_layernorm = Norm(p[prefix + "post_attention_layernorm.weight"],
                                             p.get(prefix + "post_attention_layernorm.bias"), eps)
        self.gate_proj = p[prefix + "mlp.gate_proj.weight"]
        self.up_proj = p[prefix + "mlp.up_proj.weight"]
        self.down_proj = p[prefix + "mlp.down_proj.weight"]
        self.gate_up_proj = None
        fused = fuse_rows([self.gate_proj, self.up_proj])
        if fused is not None:  # decode's one call for gate and up
            self.gate_up_proj, _, (self.gate_proj, self.up_proj) = fused
            p[prefix + "mlp.gate_proj.weight"], p[prefix + "mlp.up_proj.weight"] = fused[2]
        # The whole decode step of this layer can run as one Numba call (ops/decode_layer.py)
        # when its matrices are quantized; None otherwise.
        self.one_call = one_call_args(self)

    def __call__(self, x, cos, sin, allowed, cache):
        # x: [B, T, D]
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed, cache, self.idx)
        x = x + mlp(self.post_attention_layernorm(x), self.gate_proj, self.up_proj, self.down_proj)
        return x

    def decode(self, x, cos, sin, key_mask, cache):
        # x: [B, D], one new token per row; cache: a preallocated KVCache
        if self.one_call is not None and x.dtype == np.float32 and not quants_reference():
            return decode_layer(self.one_call, x, cos, sin, key_mask,
                                cache.keys[self.idx], cache.values[self.idx], cache.length)
        x = x + self.self_attn.decode(self.input_layernorm(x), cos, sin, key_mask, cache, self.idx)
        h = self.post_attention_layernorm(x)
        if self.gate_up_proj is None:
            return x + mlp(h, self.gate_proj, self.up_proj, self.down_proj)
        gate_up = linear(h, self.gate_up_proj)                   # [B, 2F] = [gate | up]
        return x + linear(swiglu_fused(gate_up), self.down_proj)
