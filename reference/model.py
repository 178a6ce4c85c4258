"""The seed's PyTorch ``CausalLM`` (section 4.1), filled in.  Tests only.

Plain torch, concat KV cache, HF parameter names (model.layers.{i}.self_attn.q_proj.weight, ...).
"""

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope(position_ids, head_dim, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = position_ids.to(torch.float64)[..., None] * inv_freq
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.H, self.Hkv, self.Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.H * self.Dh, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.Hkv * self.Dh, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.Hkv * self.Dh, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.H * self.Dh, c.hidden_size, bias=c.o_proj_bias)

    def forward(self, x, cos, sin, mask, past_key_value=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.Dh).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.Hkv, self.Dh).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.Hkv, self.Dh).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if past_key_value is not None:          # the seed's concat cache (section 2.3)
            k = torch.cat([past_key_value[0], k], dim=2)
            v = torch.cat([past_key_value[1], v], dim=2)
        present = (k, v)
        G = self.H // self.Hkv
        kk = k.repeat_interleave(G, dim=1)
        vv = v.repeat_interleave(G, dim=1)
        scores = q @ kk.transpose(-1, -2) / self.Dh ** 0.5
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        att = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        y = (att @ vv).transpose(1, 2).reshape(B, T, self.H * self.Dh)
        return self.o_proj(y), present


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def make_norm(c):
    if c.use_rms_norm:
        return RMSNorm(c.hidden_size, c.rms_norm_eps)
    return nn.LayerNorm(c.hidden_size, eps=c.rms_norm_eps)


class TransformerBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = make_norm(c)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = make_norm(c)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask, past_key_value=None):
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_key_value)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([TransformerBlock(c) for _ in range(c.num_hidden_layers)])
        self.norm = make_norm(c)


class CausalLM(nn.Module):
    """Takes an ``npllm.ModelConfig`` (plain dataclass, no npllm code runs in forward)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, attention_mask=None, past_key_values: Optional[List[Tuple]] = None,
                use_cache=False, position_ids=None):
        B, T = input_ids.shape
        past = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long)
        if position_ids is None:
            pos = attention_mask.long().cumsum(-1) - 1
            position_ids = pos.masked_fill(attention_mask == 0, 1)[:, -T:]
        S = past + T
        causal = torch.arange(S)[None, :] <= (past + torch.arange(T))[:, None]
        mask = causal[None] & attention_mask[:, None, :].bool()
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        next_cache = []
        for i, layer in enumerate(self.model.layers):
            x, present = layer(x, cos, sin, mask, past_key_values[i] if past_key_values else None)
            next_cache.append(present)
        logits = self.lm_head(self.model.norm(x))
        return logits, (next_cache if use_cache else None)
