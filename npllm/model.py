"""Lesson 05 — the complete causal language model (seed sections 1 and 4.1).

    input_ids [B, T]
      -> embed_tokens                       x: [B, T, D]
      -> num_hidden_layers x TransformerBlock
      -> final norm
      -> lm_head (tied: the embedding matrix itself)     logits: [B, T, V]

The model returns logits only: sampling lives in ``npllm.sampling`` and the
decode loop in ``npllm.generation``.  Parameter names are HF's, so an HF
``state_dict`` (or safetensors file) loads without a key map.
Matches HF ``LlamaForCausalLM`` and the other families' ``*ForCausalLM`` (lesson 08: their knobs
are fields of ``ModelConfig``; the embedding scale and the final softcap are applied here).
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .block import Norm, TransformerBlock
from .cache import ConcatCache, KVCache, cache_length
from .config import ModelConfig, iter_parameter_shapes
from .errors import ConfigError, GenerationParameterError, ModelFormatError
from .ops import causal_padding_mask, linear, rope_cos_sin
from .threads import governor_for


def parameter_shapes(config: ModelConfig) -> Dict[str, tuple]:
    """Every parameter's HF name and shape — the single source of truth for init and loading."""
    return dict(iter_parameter_shapes(config))


def _to_numpy(value):
    """Accept ndarrays, QuantizedWeights, and (for tests) torch tensors without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return value


class CausalLM:
    """A LLaMA-family decoder-only language model in NumPy."""

    def __init__(self, config: ModelConfig, seed: int = 0, dtype=np.float32, init: bool = True):
        if not isinstance(config, ModelConfig):
            raise ConfigError(f"config must be an npllm.ModelConfig, got {type(config).__name__}")
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params: Dict[str, object] = {}
        self._kv_dtype = None
        if init:
            self._init_weights(seed)

    # ---------------------------------------------------------------- weights
    def _init_weights(self, seed: int) -> None:
        """Normal(0, initializer_range) for matrices, the identity for norms (weight 1, or 0 when
        the norm scales by 1 + w), zeros for biases."""
        rng = np.random.default_rng(seed)
        std = self.config.initializer_range
        params = {}
        norm_init = 1.0 - self.config.norm_weight_offset
        for name, shape in parameter_shapes(self.config).items():
            if name.endswith(("layernorm.weight", "_norm.weight")) or name == "model.norm.weight":
                params[name] = np.full(shape, norm_init, self.dtype)
            elif name.endswith(".bias"):
                params[name] = np.zeros(shape, self.dtype)
            else:
                params[name] = (rng.standard_normal(shape) * std).astype(self.dtype)
        self.params = params
        self._build()

    def _build(self) -> None:
        """(Re)wire the blocks to the arrays in ``self.params``."""
        p, c = self.params, self.config
        self.embed_tokens = p["model.embed_tokens.weight"]                 # [V, D]
        self.layers = [TransformerBlock(c, p, i) for i in range(c.num_hidden_layers)]
        self.norm = Norm(p["model.norm.weight"], p.get("model.norm.bias"), c.rms_norm_eps, c.norm_weight_offset)
        # Weight tying (seed 1.2): the LM head *is* the embedding matrix, not a copy.
        self.lm_head = self.embed_tokens if c.tie_word_embeddings else p["lm_head.weight"]

    def state_dict(self) -> Dict[str, object]:
        """HF-named parameters (references, not copies). Tied models omit ``lm_head.weight``."""
        return dict(self.params)

    def load_state_dict(self, state_dict: Dict[str, object], strict: bool = True) -> None:
        """Load HF-named weights; report every missing, unexpected and mis-shaped key at once."""
        expected = parameter_shapes(self.config)
        given = {k: _to_numpy(v) for k, v in state_dict.items()
                 if not k.endswith("rotary_emb.inv_freq")}
        if self.config.tie_word_embeddings:
            given.pop("lm_head.weight", None)  # tied: the embedding serves as the head
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        bad_shape = [f"{k}: expected {expected[k]}, got {tuple(given[k].shape)}"
                     for k in expected if k in given and tuple(given[k].shape) != expected[k]]
        problems = []
        if missing:
            problems.append("missing keys: " + ", ".join(missing))
        if unexpected and strict:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if bad_shape:
            problems.append("shape mismatches: " + "; ".join(bad_shape))
        if problems:
            raise ModelFormatError("load_state_dict failed — " + " | ".join(problems))
        params = {}
        for k in expected:
            v = given[k]
            if isinstance(v, np.ndarray):
                v = np.ascontiguousarray(v, dtype=self.dtype)
            params[k] = v
        self.params = params
        self._build()

    def num_parameters(self) -> int:
        """Parameter count; a tied head shares the embedding, saving V x D (seed 1.2)."""
        return int(sum(np.prod(s) for s in parameter_shapes(self.config).values()))

    def astype(self, dtype) -> "CausalLM":
        """A copy of the model computing in ``dtype`` (float64 for tight parity tests)."""
        other = CausalLM(self.config, dtype=dtype, init=False)
        other.load_state_dict({k: (v.astype(dtype) if isinstance(v, np.ndarray) else v)
                               for k, v in self.params.items()})
        return other

    @classmethod
    def from_pretrained(cls, source=None, dtype=np.float32, dequantize: bool = False,
                        progress: bool = False) -> "CausalLM":
        """Load an alias (default ``"smollm2-135m-instruct"``), a ``.gguf`` file or an HF directory."""
        from .io.checkpoint import read_checkpoint
        from .models import resolve_model

        path = resolve_model(source)
        config, tensors, _ = read_checkpoint(path, dequantize=dequantize, progress=progress)
        return cls.from_tensors(config, tensors, dtype=dtype, source=path)

    @classmethod
    def from_tensors(cls, config: ModelConfig, tensors: Dict[str, object], dtype=np.float32,
                     source: Optional[str] = None) -> "CausalLM":
        """A model holding ``tensors`` (HF names; consumed: the dict is emptied)."""
        from .io.checkpoint import return_freed_memory

        model = cls(config, dtype=dtype, init=False)
        model.load_state_dict(tensors)
        model.source = source
        tensors.clear()
        return_freed_memory(collect=False)
        return model

    @property
    def kv_dtype(self) -> np.dtype:
        """The dtype the KV cache stores (``new_cache``; llama.cpp's ``-ctk``/``-ctv``).

        By default float16 when the model is float32 and its layers hold block-quantized weights
        (a quantized GGUF: the weights are approximations already, and llama.cpp stores its
        cache so), else the model's dtype (HF's).  Set it to override, or to None for the
        default.  Only the storage changes: attention reads the values back into float32.
        """
        if self._kv_dtype is not None:
            return self._kv_dtype
        from .quant import QuantizedWeight
        from .quant.formats import DENSE_TYPES

        layers = getattr(self, "layers", [])
        quantized = any(isinstance(w, QuantizedWeight) and w.ggml_type not in DENSE_TYPES
                        for layer in layers for w in (layer.self_attn.o_proj, layer.down_proj))
        return np.dtype(np.float16) if quantized and self.dtype == np.float32 else self.dtype

    @kv_dtype.setter
    def kv_dtype(self, value) -> None:
        if value is not None:
            try:
                dt = np.dtype(value)
            except TypeError:
                dt = None
            if dt not in (np.float16, np.float32, np.float64):
                raise ConfigError(f"kv_dtype must be float16, float32, float64 or None, got {value!r}")
            value = dt
        self._kv_dtype = value

    def new_cache(self, batch_size: int, max_seq_len: int, dtype=None) -> KVCache:
        """A preallocated KV cache for ``generate`` (seed pitfall 1: one buffer per layer),
        storing ``dtype`` (default ``kv_dtype``)."""
        return KVCache(self.config, batch_size, max_seq_len, dtype=self.kv_dtype if dtype is None else dtype)

    # ---------------------------------------------------------------- forward
    def _embed(self, input_ids: np.ndarray) -> np.ndarray:
        if isinstance(self.embed_tokens, np.ndarray):
            x = self.embed_tokens[input_ids].astype(self.dtype, copy=False)        # [B, T, D]
        else:
            rows = self.embed_tokens.take_rows(input_ids.reshape(-1))              # quantized
            x = rows.reshape(*input_ids.shape, -1).astype(self.dtype, copy=False)
        if self.config.embed_scale != 1.0:                                         # Gemma: x sqrt(D)
            x = x * self.dtype.type(self.config.embed_scale)
        return x

    def _ropes(self, position_ids: np.ndarray) -> Dict[str, tuple]:
        """(cos, sin) [B, T, Dh] per RoPE table the layers use: "global", and Gemma 3's "local"."""
        c = self.config
        ropes = {}
        for kind in {c.layer_rope(i) for i in range(c.num_hidden_layers)} - {None}:
            theta, scaling = (c.rope_local_base_freq, None) if kind == "local" else (c.rope_theta, c.rope_scaling)
            ropes[kind] = rope_cos_sin(position_ids, c.head_dim, theta, self.dtype, scaling,
                                       c.max_position_embeddings)
        return ropes

    def _check_inputs(self, input_ids, attention_mask, past_len):
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[1] == 0 or not np.issubdtype(input_ids.dtype, np.integer):
            raise GenerationParameterError(
                f"input_ids must be a non-empty integer array [batch, seq_len], got shape "
                f"{input_ids.shape} dtype {input_ids.dtype}")
        V = self.config.vocab_size
        if input_ids.min() < 0 or input_ids.max() >= V:
            raise GenerationParameterError(
                f"input_ids contain token ids outside the vocabulary [0, {V}): "
                f"min {input_ids.min()}, max {input_ids.max()}")
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = np.ones((B, past_len + T), dtype=np.int64)
        attention_mask = np.asarray(attention_mask)
        if attention_mask.shape != (B, past_len + T):
            raise GenerationParameterError(
                f"attention_mask must have shape {(B, past_len + T)} (batch, past + new tokens), "
                f"got {attention_mask.shape}")
        return input_ids, attention_mask

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False,
                position_ids=None, logits_to_keep: int = 0):
        """Logits for every new position, and the updated cache.

        input_ids:       [B, T] new tokens (only the new ones when a cache is passed, pitfall 2)
        attention_mask:  [B, past + T], 1 for real tokens and 0 for (left) padding
        past_key_values: None, the seed's list of per-layer (k, v), or a ``KVCache``
        position_ids:    [B, T]; default cumsum(attention_mask) - 1, as HF generate does
        logits_to_keep:  0 -> all positions, n -> only the last n (saves the V x D head)
        returns (logits [B, T', V], past_key_values or None)
        """
        past_len = cache_length(past_key_values)
        input_ids, attention_mask = self._check_inputs(input_ids, attention_mask, past_len)
        B, T = input_ids.shape
        if position_ids is None:
            pos = np.cumsum(attention_mask, axis=1) - 1
            position_ids = np.where(attention_mask == 0, 1, pos)[:, -T:]          # [B, T]
        ropes = self._ropes(np.asarray(position_ids))
        static = isinstance(past_key_values, KVCache)
        cache = past_key_values if static else ConcatCache(past_key_values)

        x = self._embed(input_ids)                                               # [B, T, D]
        gov = None
        if static and T == 1:
            # Decode hot path: the same math with RoPE + cache write + attention fused per layer.
            if past_len + 1 > cache.max_seq_len:
                raise ConfigError(f"KV cache is full: max_seq_len={cache.max_seq_len}")
            x = x[:, 0]                                                          # [B, D]
            gov = governor_for(self)         # the thread count, measured per step (npllm/threads.py)
            t0 = gov.begin(B) if gov is not None else 0.0
            for layer in self.layers:
                x = layer.decode(x, ropes, attention_mask, cache)
            x = x[:, None]
        else:
            # One mask per distinct sliding window (None: plain causal): [B, T, S]
            windows = {layer.self_attn.window for layer in self.layers}
            masks = {w: causal_padding_mask(attention_mask, past_len, T, w) for w in windows}
            for layer in self.layers:
                x = layer(x, ropes, masks, cache)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = linear(self.norm(x), self.lm_head)                              # [B, T', V]
        cap = self.config.final_logit_softcapping
        if cap:                                                                  # Gemma 2
            logits = np.tanh(logits / cap, out=logits) * logits.dtype.type(cap)
        if gov is not None:
            gov.end(t0)

        if static:
            cache.advance(T)
            return logits, (cache if use_cache else None)
        return logits, (cache.present if use_cache else None)

    __call__ = forward

    # ------------------------------------------------------------- generation
    def generate(self, input_ids, max_new_tokens: int = 100, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, eos_token_id=None,
                 pad_token_id=None, **kwargs):
        """Autoregressive generation (seed 4.1); see ``npllm.generation.generate`` for every option."""
        from .generation import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                        eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    def _apply_repetition_penalty(self, logits, input_ids, penalty):
        """The seed's helper; the implementation lives in ``npllm.sampling``."""
        from .sampling import apply_repetition_penalty

        return apply_repetition_penalty(logits, input_ids, penalty)
