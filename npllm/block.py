"""Lessons 04 and 08 — the pre-norm transformer block (HF ``LlamaDecoderLayer``), for every family.

    x = x + attn(norm1(x))        # attention mixes positions
    x = x + mlp(norm2(x))         # the MLP transforms each position on its own

Gemma 2/3 add a norm on each branch's output ("sandwich" norms, HF ``Gemma2DecoderLayer``):

    x = x + post_attention_layernorm(attn(input_layernorm(x)))
    x = x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))

Every other family difference is a knob of ``ModelConfig`` read here or in the ops (lesson 08):
the norm weight offset (Gemma's ``1 + w``), q/k norms, the activation, the attention scale and
softcap, the layer's sliding window and its RoPE table (global, local, or none).  There is one
forward pass for all of them.

Weights are looked up by HF state-dict names, e.g. ``self_attn.q_proj.weight`` (relative to
``model.layers.{i}.``), and are either float ndarrays or ``QuantizedWeight`` objects; ``linear``
handles both.  q, k, v are one fused weight (and gate, up another), so a layer makes 4 matrix
calls instead of 7.  The fused weights hold the only copy; ``q_proj`` etc. (and the model's
``params``) become row views of them.  Phi-3 checkpoints store them fused already.

``__call__`` is the readable path (any number of tokens).  ``decode`` is the same math for
one new token per row, tuned for speed.
"""

from __future__ import annotations

import numpy as np

from .ops import apply_rope, attention, decode_attention, layer_norm, linear, rms_norm
from .ops.decode_layer import decode_layer, one_call_args
from .ops.linear import fuse_rows, split_rows
from .ops.mlp import glu, glu_fused
from .quant.weight import _use_reference as quants_reference


class Norm:
    """RMSNorm (``weight`` only) or, when the config says ``use_rms_norm=False``, LayerNorm.

    The RMSNorm multiplies by ``offset + weight``: offset 0 for Llama, 1 for Gemma, whose HF
    weights store w in ``x * (1 + w)`` (its GGUF files store 1 + w; the loader subtracts 1).
    """

    def __init__(self, weight, bias, eps, offset: float = 0.0):
        self.weight, self.bias, self.eps = weight, bias, eps
        self.scale = weight + weight.dtype.type(offset) if offset else weight   # [D], computed once

    def __call__(self, x):
        if self.bias is None:
            return rms_norm(x, self.scale, self.eps)
        return layer_norm(x, self.weight, self.bias, self.eps)


class Attention:
    """Multi-head attention with RoPE and GQA (HF ``LlamaAttention`` / ``Gemma3Attention`` / ...)."""

    def __init__(self, config, p: dict, prefix: str, i: int):
        self.H, self.Hkv, self.Dh = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.scale = config.attention_scale              # 1/sqrt(Dh), or query_pre_attn_scalar**-0.5
        self.softcap = config.attn_logit_softcapping     # None, or Gemma 2's c
        self.window = config.layer_window(i)             # None, or this layer's sliding window
        self.rope = config.layer_rope(i)                 # "global", "local" or None (NoPE)
        w = lambda name: p.get(prefix + name)  # noqa: E731  (None when the tensor is absent)
        nq, nkv = self.H * self.Dh, self.Hkv * self.Dh
        if config.fused_qkv:                             # Phi-3: the checkpoint holds [q; k; v]
            self.qkv_proj, self.qkv_bias = w("qkv_proj.weight"), w("qkv_proj.bias")
            self.q_proj, self.k_proj, self.v_proj = split_rows(self.qkv_proj, (nq, nkv, nkv))
            biases = split_rows(self.qkv_bias, (nq, nkv, nkv)) if self.qkv_bias is not None else [None] * 3
            self.q_bias, self.k_bias, self.v_bias = biases
        else:
            self.q_proj, self.q_bias = w("q_proj.weight"), w("q_proj.bias")
            self.k_proj, self.k_bias = w("k_proj.weight"), w("k_proj.bias")
            self.v_proj, self.v_bias = w("v_proj.weight"), w("v_proj.bias")
            self.qkv_proj = self.qkv_bias = None
            fused = fuse_rows([self.q_proj, self.k_proj, self.v_proj], [self.q_bias, self.k_bias, self.v_bias])
            if fused is not None:  # one call for q, k, v; the parts become views of it
                self.qkv_proj, self.qkv_bias, (self.q_proj, self.k_proj, self.v_proj) = fused
                for name, part in zip(("q_proj", "k_proj", "v_proj"), fused[2]):
                    p[prefix + name + ".weight"] = part
        self.o_proj, self.o_bias = w("o_proj.weight"), w("o_proj.bias")
        self.q_norm = self.k_norm = None
        if config.qk_norm:                               # Qwen3, Gemma 3: RMSNorm over each head
            eps, offset = config.rms_norm_eps, config.norm_weight_offset
            self.q_norm = Norm(w("q_norm.weight"), None, eps, offset)
            self.k_norm = Norm(w("k_norm.weight"), None, eps, offset)

    def _qkv(self, x):
        # x: [..., D] -> q [..., H*Dh], k, v [..., Hkv*Dh]
        if self.qkv_proj is None:
            return (linear(x, self.q_proj, self.q_bias), linear(x, self.k_proj, self.k_bias),
                    linear(x, self.v_proj, self.v_bias))
        qkv = linear(x, self.qkv_proj, self.qkv_bias)
        nq, nkv = self.H * self.Dh, self.Hkv * self.Dh
        return qkv[..., :nq], qkv[..., nq:nq + nkv], qkv[..., nq + nkv:]

    def __call__(self, x, ropes, masks, cache, layer_idx):
        B, T, _ = x.shape
        H, Hkv, Dh = self.H, self.Hkv, self.Dh
        q, k, v = self._qkv(x)
        q, k, v = q.reshape(B, T, H, Dh), k.reshape(B, T, Hkv, Dh), v.reshape(B, T, Hkv, Dh)
        if self.q_norm is not None:                      # before RoPE, over Dh
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B,H,T,Dh]
        if self.rope is not None:
            cos, sin = ropes[self.rope]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = cache.update(layer_idx, k, v)                     # [B, Hkv, S, Dh]: past + new
        y = attention(q, k, v, masks[self.window], self.scale, self.softcap)   # [B, H, T, Dh]
        y = y.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)        # merge heads
        return linear(y, self.o_proj, self.o_bias)

    def decode(self, x, ropes, key_mask, cache, layer_idx):
        """The same attention for one new token per row (x: [B, D]), with RoPE, the cache
        append and the attention fused into one kernel call — the decode hot path."""
        B = x.shape[0]
        q, k, v = self._qkv(x)                                   # [B, H*Dh], [B, Hkv*Dh] x 2
        if self.q_norm is not None:
            q = self.q_norm(q.reshape(B, self.H, self.Dh)).reshape(B, -1)
            k = self.k_norm(k.reshape(B, self.Hkv, self.Dh)).reshape(B, -1)
        cos, sin = ropes[self.rope] if self.rope is not None else (None, None)
        y = decode_attention(q, k, v, cos, sin, cache.keys[layer_idx], cache.values[layer_idx],
                             cache.decode_at, key_mask, scale=self.scale, softcap=self.softcap,
                             window=self.window)                 # [B, H*Dh]
        return linear(y, self.o_proj, self.o_bias)


class TransformerBlock:
    def __init__(self, config, p: dict, i: int):
        prefix = f"model.layers.{i}."
        eps, offset = config.rms_norm_eps, config.norm_weight_offset
        self.idx = i
        self.act = config.hidden_act
        self.sandwich = config.sandwich_norms

        def norm(name):
            return Norm(p[prefix + name + ".weight"], p.get(prefix + name + ".bias"), eps, offset)

        self.input_layernorm = norm("input_layernorm")
        self.self_attn = Attention(config, p, prefix + "self_attn.", i)
        self.post_attention_layernorm = norm("post_attention_layernorm")
        if self.sandwich:   # Gemma: post_attention_layernorm is the attention branch's output norm
            self.pre_feedforward_layernorm = norm("pre_feedforward_layernorm")
            self.post_feedforward_layernorm = norm("post_feedforward_layernorm")
            self.mlp_norm = self.pre_feedforward_layernorm
        else:               # Llama: post_attention_layernorm is the MLP's input norm
            self.mlp_norm = self.post_attention_layernorm
        F = config.intermediate_size
        if config.fused_gate_up:                         # Phi-3: the checkpoint holds [gate; up]
            self.gate_up_proj = p[prefix + "mlp.gate_up_proj.weight"]
            self.gate_proj, self.up_proj = split_rows(self.gate_up_proj, (F, F))
        else:
            self.gate_proj = p[prefix + "mlp.gate_proj.weight"]
            self.up_proj = p[prefix + "mlp.up_proj.weight"]
            self.gate_up_proj = None
            fused = fuse_rows([self.gate_proj, self.up_proj])
            if fused is not None:  # one call for gate and up
                self.gate_up_proj, _, (self.gate_proj, self.up_proj) = fused
                p[prefix + "mlp.gate_proj.weight"], p[prefix + "mlp.up_proj.weight"] = fused[2]
        self.down_proj = p[prefix + "mlp.down_proj.weight"]
        # The whole decode step of this layer can run as one Numba call (ops/decode_layer.py)
        # when its matrices are quantized; None otherwise.
        self.one_call = one_call_args(self)

    def mlp(self, h):
        # h: [..., D] -> act(gate) * up: [..., F] -> [..., D]
        if self.gate_up_proj is None:
            gated = glu(linear(h, self.gate_proj), linear(h, self.up_proj), self.act)
        else:
            gated = glu_fused(linear(h, self.gate_up_proj), self.act)   # [..., 2F] = [gate | up]
        return linear(gated, self.down_proj)

    def __call__(self, x, ropes, masks, cache):
        # x: [B, T, D]; ropes: table name -> (cos, sin); masks: sliding window -> allowed [B, T, S]
        h = self.self_attn(self.input_layernorm(x), ropes, masks, cache, self.idx)
        return self._residuals(x, h)

    def _residuals(self, x, h):
        # x + [norm](attention output h), then + [norm](mlp(norm(.))): [norm] only for Gemma
        if self.sandwich:
            h = self.post_attention_layernorm(h)
        x = x + h
        h = self.mlp(self.mlp_norm(x))
        if self.sandwich:
            h = self.post_feedforward_layernorm(h)
        return x + h

    def decode(self, x, ropes, key_mask, cache):
        # x: [B, D], one new token per row; cache: a preallocated KVCache
        if self.one_call is not None and x.dtype == np.float32 and not quants_reference():
            cos, sin = ropes[self.self_attn.rope] if self.self_attn.rope is not None else (None, None)
            return decode_layer(self.one_call, x, cos, sin, key_mask,
                                cache.keys[self.idx], cache.values[self.idx], cache.decode_at)
        h = self.self_attn.decode(self.input_layernorm(x), ropes, key_mask, cache, self.idx)
        return self._residuals(x, h)
