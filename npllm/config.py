"""Lessons 05 and 08 — the configuration that drives the whole architecture.

``ModelConfig`` uses the field names of HF ``LlamaConfig`` so that a ``config.json`` maps
onto it one to one.  The families npllm runs (Llama 2/3, Mistral, Qwen2/2.5/3, Gemma 1/2/3,
Phi-3, SmolLM3) differ from Llama 2 only in a handful of *knobs*, which are fields here
too, and which the one ``TransformerBlock`` reads (lesson 08):

    knob                      Llama 2   what else it can be
    hidden_act                silu      gelu_pytorch_tanh (Gemma)
    norm_weight_offset        0         1: norms scale by (1 + w) (Gemma)
    qk_norm                   False     RMSNorm of each q / k head before RoPE (Qwen3, Gemma 3)
    sandwich_norms            False     norms after attention and after the MLP too (Gemma 2/3)
    embed_scale               1         sqrt(hidden_size) (Gemma)
    query_pre_attn_scalar     None      attention scale s**-0.5 instead of head_dim**-0.5 (Gemma)
    attn_logit_softcapping    None      c * tanh(scores / c) before the mask (Gemma 2)
    final_logit_softcapping   None      the same on the logits (Gemma 2)
    sliding_window            None      W: a query sees its last W keys (Mistral, Gemma, Phi-3)
    layer_types               None      per layer "full_attention" / "sliding_attention"
    rope_scaling              None      linear, dynamic, yarn, llama3, longrope, freq_factors
    rope_local_base_freq      None      RoPE base of the sliding layers (Gemma 3)
    no_rope_layers            None      per layer 1 (RoPE) / 0 (NoPE) (SmolLM3)
    fused_qkv, fused_gate_up  False     q|k|v and gate|up stored as one matrix (Phi-3)
    head_dim                  D / H     anything (Qwen3, Gemma)

``ModelConfig.from_dict`` reads the ``config.json`` of every such family (HF field names, HF
defaults), and ``npllm.io.gguf`` fills the same fields from GGUF metadata.  A field that a
checkpoint sets and npllm does not implement is an error naming it, never ignored.

The two presets at the bottom are the seed lesson's ``tiny_config`` and ``llama_7b_config``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                         "phi3", "smollm3")
SUPPORTED_ACTIVATIONS = ("silu", "swish", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None  # None -> MHA (= num_attention_heads)
    head_dim: Optional[int] = None  # None -> hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v (and, for llama, o) projection biases
    o_proj_bias: Optional[bool] = None  # None -> same as attention_bias (llama); qwen2: False
    use_rms_norm: bool = True  # the seed's switch: False -> LayerNorm (with bias)
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Union[int, List[int]]] = None
    pad_token_id: Optional[int] = None
    model_type: str = "llama"
    # ---- family knobs (lesson 08); the defaults are Llama 2's
    norm_weight_offset: float = 0.0  # RMSNorm scales by (offset + w): Gemma's (1 + w)
    qk_norm: bool = False  # self_attn.q_norm / k_norm: RMSNorm over each head, before RoPE
    sandwich_norms: bool = False  # Gemma's four norms per block
    embed_scale: float = 1.0  # the embeddings are multiplied by this (Gemma: sqrt(hidden_size))
    query_pre_attn_scalar: Optional[float] = None  # attention scale: this**-0.5 (None: head_dim**-0.5)
    attn_logit_softcapping: Optional[float] = None  # scores -> c * tanh(scores / c), before the mask
    final_logit_softcapping: Optional[float] = None  # logits -> c * tanh(logits / c)
    sliding_window: Optional[int] = None  # sliding layers: query i sees keys j with i - W < j <= i
    layer_types: Optional[List[str]] = None  # None: every layer sliding if sliding_window, else full
    rope_scaling: Optional[Dict[str, Any]] = None  # {"rope_type": ..., parameters}; None: plain RoPE
    rope_local_base_freq: Optional[float] = None  # RoPE base of sliding layers (None: rope_theta)
    no_rope_layers: Optional[List[int]] = None  # per layer: 1 uses RoPE, 0 does not (NoPE)
    fused_qkv: bool = False  # self_attn.qkv_proj [q; k; v] instead of q/k/v_proj (Phi-3)
    fused_gate_up: bool = False  # mlp.gate_up_proj [gate; up] instead of gate/up_proj (Phi-3)

    def __post_init__(self):
        self._check_types()
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads and self.num_attention_heads > 0:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ConfigError(
                    f"hidden_size ({self.hidden_size}) must be divisible by "
                    f"num_attention_heads ({self.num_attention_heads}) when head_dim is not set"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.o_proj_bias is None:
            self.o_proj_bias = self.attention_bias
        if self.layer_types is not None:
            self.layer_types = list(self.layer_types)
        if self.no_rope_layers is not None:
            self.no_rope_layers = list(self.no_rope_layers)
        self.validate()

    # ------------------------------------------------------------------ checks
    _INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
    _FLOAT_FIELDS = ("rms_norm_eps", "rope_theta", "initializer_range", "norm_weight_offset", "embed_scale")
    _OPTIONAL_FLOAT_FIELDS = ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                              "rope_local_base_freq")
    _BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "o_proj_bias", "use_rms_norm", "qk_norm",
                    "sandwich_norms", "fused_qkv", "fused_gate_up")

    def _check_types(self) -> None:
        """Types first, so later checks can compare numbers (config.json may hold anything)."""
        for name in self._INT_FIELDS:
            value = getattr(self, name)
            if value is None and name in ("num_key_value_heads", "head_dim"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in self._FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        for name in self._OPTIONAL_FLOAT_FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"{name} must be a positive number or null, got {value!r}")
        for name in self._BOOL_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
        for name in ("hidden_act", "model_type"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be an integer token id, got {value!r}")
        eos = self.eos_token_id
        eos_list = eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
        if any(isinstance(e, bool) or not isinstance(e, int) for e in eos_list):
            raise ConfigError(f"eos_token_id must be an integer or a list of integers, got {eos!r}")
        w = self.sliding_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w <= 0):
            raise ConfigError(f"sliding_window must be a positive integer or null, got {w!r}")
        for name in ("layer_types", "no_rope_layers"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (list, tuple)):
                raise ConfigError(f"{name} must be a list (one entry per layer), got {value!r:.80}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ConfigError(f"rope_scaling must be an object or null, got {self.rope_scaling!r:.80}")

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad field."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not (self.rms_norm_eps > 0):
            raise ConfigError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not (self.rope_theta > 0):
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"hidden_act {self.hidden_act!r} is not supported (expected one of {SUPPORTED_ACTIVATIONS})"
            )
        if not (self.initializer_range > 0):
            raise ConfigError(f"initializer_range must be > 0, got {self.initializer_range!r}")
        if not (self.embed_scale > 0):
            raise ConfigError(f"embed_scale must be > 0, got {self.embed_scale!r}")
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < self.vocab_size):
                raise ConfigError(f"{name} ({value}) is outside the vocabulary [0, {self.vocab_size})")
        for value in self.eos_token_ids:
            if not (0 <= value < self.vocab_size):
                raise ConfigError(f"eos_token_id ({value}) is outside the vocabulary [0, {self.vocab_size})")
        L = self.num_hidden_layers
        if self.layer_types is not None:
            if len(self.layer_types) != L or any(t not in LAYER_TYPES for t in self.layer_types):
                raise ConfigError(f"layer_types must list one of {LAYER_TYPES} per layer ({L}), "
                                  f"got {self.layer_types!r:.120}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ConfigError("layer_types has sliding_attention layers but sliding_window is null")
        if self.no_rope_layers is not None:
            if len(self.no_rope_layers) != L or any(v not in (0, 1) for v in self.no_rope_layers):
                raise ConfigError(f"no_rope_layers must hold 0 or 1 per layer ({L}), "
                                  f"got {self.no_rope_layers!r:.120}")
        if self.use_rms_norm is False and (self.norm_weight_offset or self.qk_norm or self.sandwich_norms):
            raise ConfigError("use_rms_norm=False (LayerNorm) cannot be combined with norm_weight_offset, "
                              "qk_norm or sandwich_norms")
        from .ops.rope import check_rope_scaling  # the RoPE knobs are checked where they are computed

        check_rope_scaling(self.rope_scaling, self.head_dim // 2)

    # --------------------------------------------------------------- helpers
    @property
    def eos_token_ids(self) -> List[int]:
        """``eos_token_id`` as a list (HF allows an int or a list)."""
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, (list, tuple)):
            return [int(e) for e in self.eos_token_id]
        return [int(self.eos_token_id)]

    @property
    def num_key_value_groups(self) -> int:
        """How many query heads share one K/V head (1 = MHA, H = MQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def context_length(self) -> int:
        """How many positions generation may use: ``max_position_embeddings``, or for dynamic NTK
        RoPE (whose max_position_embeddings is the trained context it stretches) factor x that."""
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") == "dynamic":
            return int(self.max_position_embeddings * self.rope_scaling["factor"])
        return self.max_position_embeddings

    @property
    def rope_switch_length(self) -> Optional[int]:
        """LongRoPE (Phi-3) switches to its long factors once a sequence passes this many tokens;
        generation then recomputes the cache once, as HF's Phi-3 does.  None for other RoPE."""
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") == "longrope":
            return int(self.rope_scaling["original_max_position_embeddings"])
        return None

    @property
    def attention_scale(self) -> float:
        """What q k^T is multiplied by: 1/sqrt(head_dim), or Gemma's query_pre_attn_scalar**-0.5."""
        s = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.head_dim
        return float(s) ** -0.5

    def layer_window(self, i: int) -> Optional[int]:
        """The sliding window of layer ``i`` (None: it attends to every earlier key)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[i] == "sliding_attention":
            return self.sliding_window
        return None

    def layer_rope(self, i: int) -> Optional[str]:
        """Which RoPE table layer ``i`` uses: "global", "local" (Gemma 3's sliding layers) or None (NoPE)."""
        if self.no_rope_layers is not None and not self.no_rope_layers[i]:
            return None
        if self.rope_local_base_freq is not None and self.layer_window(i) is not None:
            return "local"
        return "global"

    def knobs(self) -> Dict[str, Any]:
        """The family knobs whose values differ from Llama 2's (what ``npllm info`` prints)."""
        base = ModelConfig.__dataclass_fields__
        out: Dict[str, Any] = {}
        for name in _KNOBS:
            value = getattr(self, name)
            if value != base[name].default:
                out[name] = value
        if self.head_dim * self.num_attention_heads != self.hidden_size:
            out["head_dim"] = self.head_dim
        if self.attention_bias:
            out["attention_bias"] = f"q/k/v{' and o' if self.o_proj_bias else ''}"
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build a config from an HF ``config.json`` dict (or from ``ModelConfig.to_dict()``)."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a dict, got {type(d).__name__}")
        if all(name in d for name in _KNOBS):  # npllm's own to_dict(): the knobs are already resolved
            unknown = sorted(set(d) - _field_names())
            if unknown:
                raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
            try:
                return cls(**d)
            except TypeError as e:
                raise ConfigError(f"invalid config: {e}") from None
        try:
            return cls(**_from_hf_dict(d))
        except TypeError as e:  # a field of the wrong type
            raise ConfigError(f"invalid config: {e}") from None


_KNOBS = ("hidden_act", "norm_weight_offset", "qk_norm", "sandwich_norms", "embed_scale",
          "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "sliding_window",
          "layer_types", "rope_scaling", "rope_local_base_freq", "no_rope_layers", "fused_qkv",
          "fused_gate_up")

# HF fields that ask for something npllm does not implement: field -> the value that is harmless.
_UNSUPPORTED_FIELDS = {
    "mlp_bias": False, "use_bidirectional_attention": False, "attention_chunk_size": None,
    "use_qk_norm": False, "qk_layernorm": False, "logits_scaling": 1.0, "embedding_multiplier": 1.0,
    "residual_multiplier": 1.0, "attention_multiplier": None, "num_experts": None, "num_local_experts": None,
    "partial_rotary_factor": 1.0,
}

# The Gemma families share their knobs; (i + 1) % pattern != 0 -> sliding layer.
_GEMMA = dict(hidden_act="gelu_pytorch_tanh", norm_weight_offset=1.0, head_dim=256,
              tie_word_embeddings=True)
# Each family's HF defaults (what the config class assumes when config.json leaves a field out).
_FAMILY_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "llama": {},
    "mistral": dict(sliding_window=4096),
    "qwen2": dict(attention_bias=True, o_proj_bias=False),
    "qwen3": dict(qk_norm=True, head_dim=128),
    "gemma": dict(_GEMMA),
    "gemma2": dict(_GEMMA, sandwich_norms=True, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, sliding_window=4096, max_position_embeddings=8192),
    "gemma3_text": dict(_GEMMA, sandwich_norms=True, qk_norm=True, query_pre_attn_scalar=256,
                        sliding_window=4096, rope_theta=1e6, rope_local_base_freq=1e4,
                        max_position_embeddings=131072),
    "phi3": dict(fused_qkv=True, fused_gate_up=True, sliding_window=None),
    "smollm3": dict(rope_theta=2e6, tie_word_embeddings=True),
}
_FIELD_NAMES = None


def _field_names():
    global _FIELD_NAMES
    if _FIELD_NAMES is None:
        _FIELD_NAMES = {f.name for f in dataclasses.fields(ModelConfig)}
    return _FIELD_NAMES


def _from_hf_dict(d: dict) -> Dict[str, Any]:
    """HF config.json (any supported family) -> ModelConfig keyword arguments."""
    model_type = d.get("model_type", "llama")
    if model_type == "gemma3" and isinstance(d.get("text_config"), dict):
        raise ConfigError("model_type 'gemma3' is the multimodal Gemma 3 (text_config + vision tower); "
                          "npllm runs the text model: save it with Gemma3ForCausalLM (model_type gemma3_text)")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not supported (expected one of {SUPPORTED_MODEL_TYPES})")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if d.get(k) is None]
    if missing:
        raise ConfigError(f"config is missing required field(s): {', '.join(missing)}")
    for name, harmless in _UNSUPPORTED_FIELDS.items():
        value = d.get(name, harmless)
        if value is not None and value != harmless and not (harmless is None and value == 0):
            raise ConfigError(f"{name}={value!r} is not supported by npllm (expected {harmless!r})")

    kw: Dict[str, Any] = dict(_FAMILY_DEFAULTS[model_type])
    for key in _field_names():
        if key in d and (d[key] is not None or key in _NULLABLE):
            kw[key] = d[key]
    for key in ("head_dim", "num_key_value_heads"):
        if d.get(key) is None and key not in _FAMILY_DEFAULTS[model_type]:
            kw.pop(key, None)
    if model_type == "gemma":  # GemmaConfig reads hidden_act; its legacy "gelu" means the tanh form
        kw["hidden_act"] = {"gelu": "gelu_pytorch_tanh"}.get(d.get("hidden_act"), d.get("hidden_act"))
        kw["hidden_act"] = kw["hidden_act"] or "gelu_pytorch_tanh"
    elif model_type.startswith("gemma"):  # Gemma 2 / 3 read hidden_activation, never hidden_act
        kw["hidden_act"] = d.get("hidden_activation") or "gelu_pytorch_tanh"
    if model_type.startswith("gemma"):
        size = d["hidden_size"]
        kw["embed_scale"] = float(size) ** 0.5 if isinstance(size, int) and size > 0 else 1.0
    if model_type == "qwen2":  # Qwen2 always has q/k/v biases and no o_proj bias
        kw["attention_bias"], kw["o_proj_bias"] = True, False
    elif "o_proj_bias" not in d:
        kw["o_proj_bias"] = bool(kw.get("attention_bias", False))
    _rope_from_hf(d, model_type, kw)
    _layers_from_hf(d, model_type, kw)
    kw["model_type"] = model_type
    return kw


# Knob fields whose explicit null in config.json means "off" (not "use the family default").
_NULLABLE = ("sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
             "layer_types", "rope_scaling", "rope_local_base_freq", "no_rope_layers")


def _rope_from_hf(d: dict, model_type: str, kw: Dict[str, Any]) -> None:
    """rope_theta / rope_scaling / rope_parameters (old and new HF spellings) -> npllm's knobs."""
    params = d.get("rope_parameters")
    legacy = d.get("rope_scaling")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        full = params.get("full_attention") or {}
        local = params.get("sliding_attention") or {}
        if not isinstance(full, dict) or not isinstance(local, dict):
            raise ConfigError("rope_parameters.full_attention / sliding_attention must be objects")
        if "rope_theta" in full:
            kw["rope_theta"] = full["rope_theta"]
        if "rope_theta" in local:
            kw["rope_local_base_freq"] = local["rope_theta"]
        if local.get("rope_type", local.get("type", "default")) != "default":
            raise ConfigError(f"rope_parameters.sliding_attention.rope_type {local.get('rope_type')!r} is not "
                              "supported (npllm scales only the full-attention layers' RoPE)")
        kw["rope_scaling"] = _scaling(full, d, model_type)
        if isinstance(legacy, dict):  # Gemma3TextConfig: rope_scaling applies to the full layers
            kw["rope_scaling"] = _scaling(legacy, d, model_type)
        return
    if "rope_local_base_freq" in d and d["rope_local_base_freq"] is not None:
        kw["rope_local_base_freq"] = d["rope_local_base_freq"]
    if model_type == "gemma3_text" and kw.get("rope_local_base_freq") is None:
        kw["rope_local_base_freq"] = 1e4
    rope = params if isinstance(params, dict) else legacy
    if rope is not None and not isinstance(rope, dict):
        raise ConfigError(f"rope_parameters / rope_scaling must be an object, got {rope!r:.80}")
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        kw["rope_scaling"] = _scaling(rope, d, model_type)


def _scaling(rope: dict, d: dict, model_type: str) -> Optional[Dict[str, Any]]:
    """One HF RoPE parameter dict -> npllm's ``rope_scaling`` (None for plain RoPE)."""
    prf = rope.get("partial_rotary_factor", 1.0)
    if prf not in (None, 1, 1.0):
        raise ConfigError(f"partial_rotary_factor={prf!r} is not supported by npllm (expected 1.0)")
    out = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if model_type == "phi3" and rope_type in ("su", "yarn"):  # Phi-3's old names for longrope
        rope_type = "longrope"
    if rope_type in (None, "default"):
        return None
    out["rope_type"] = rope_type
    if rope_type in ("llama3", "yarn", "longrope"):
        if model_type == "phi3" and d.get("original_max_position_embeddings") is not None:
            out["original_max_position_embeddings"] = d["original_max_position_embeddings"]  # Phi-3's wins
        else:
            out.setdefault("original_max_position_embeddings",
                           d.get("original_max_position_embeddings", d.get("max_position_embeddings")))
    return out


def _layers_from_hf(d: dict, model_type: str, kw: Dict[str, Any]) -> None:
    """The per-layer knobs: which layers slide (and how far) and which use RoPE, with HF's defaults."""
    L = d["num_hidden_layers"]
    if not isinstance(L, int) or isinstance(L, bool) or L <= 0:
        return  # ModelConfig names the bad field
    L = min(L, 1 << 16)  # a corrupt config may claim 10**9 layers: ModelConfig refuses it later
    types = d.get("layer_types")
    window = kw.get("sliding_window")
    if model_type in ("qwen2", "qwen3", "smollm3") and not d.get("use_sliding_window", False):
        window = None  # these read sliding_window only when use_sliding_window is true
    if model_type == "smollm3":
        rope_layers = d.get("no_rope_layers")
        if rope_layers is None:
            step = d.get("no_rope_layer_interval", 4)
            rope_layers = [int((i + 1) % step != 0) for i in range(L)]
        kw["no_rope_layers"] = rope_layers
        if types is None:
            types = ["sliding_attention" if window is not None and not rope_layers[i] else "full_attention"
                     for i in range(L)]
    if model_type in ("qwen2", "qwen3") and types is None:
        first = d.get("max_window_layers", 28)
        types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                 for i in range(L)]
    if model_type in ("gemma2", "gemma3_text") and types is None:
        pattern = 2 if model_type == "gemma2" else d.get("sliding_window_pattern", 6)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(L)]
    if model_type in ("mistral", "phi3", "llama"):
        types = None  # HF's Mistral / Phi-3 slide on every layer when sliding_window is set
    if window is None:
        types = None
    elif types is not None and all(t == "full_attention" for t in types):
        window, types = None, None
    kw["sliding_window"] = window
    kw["layer_types"] = types


# The seed lesson's presets (section 1.3).
tiny_config = ModelConfig(
    vocab_size=32000,
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=512,
    max_position_embeddings=2048,
)

llama_7b_config = ModelConfig(
    vocab_size=32000,
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,  # MHA; set 8 for GQA
    intermediate_size=11008,
    max_position_embeddings=4096,
)


def iter_parameter_shapes(config: ModelConfig) -> Iterator[Tuple[str, Tuple[int, ...]]]:
    """(HF name, shape) of every parameter, in order: embeddings, final norm, head, then each layer.

    The single source of truth for init, ``load_state_dict`` and the checkpoint readers.  A
    generator, so a corrupt config that claims 10**9 layers costs nothing until it is read.
    """
    c = config
    D, F, V = c.hidden_size, c.intermediate_size, c.vocab_size
    q_out = c.num_attention_heads * c.head_dim  # H * Dh
    kv_out = c.num_key_value_heads * c.head_dim  # Hkv * Dh
    yield "model.embed_tokens.weight", (V, D)
    yield "model.norm.weight", (D,)
    if not c.use_rms_norm:
        yield "model.norm.bias", (D,)
    if not c.tie_word_embeddings:
        yield "lm_head.weight", (V, D)
    norms = ["input_layernorm", "post_attention_layernorm"]
    if c.sandwich_norms:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for norm in norms:
            yield p + norm + ".weight", (D,)
            if not c.use_rms_norm:
                yield p + norm + ".bias", (D,)
        if c.fused_qkv:
            yield p + "self_attn.qkv_proj.weight", (q_out + 2 * kv_out, D)
        else:
            yield p + "self_attn.q_proj.weight", (q_out, D)
            yield p + "self_attn.k_proj.weight", (kv_out, D)
            yield p + "self_attn.v_proj.weight", (kv_out, D)
        yield p + "self_attn.o_proj.weight", (D, q_out)
        if c.attention_bias:
            if c.fused_qkv:
                yield p + "self_attn.qkv_proj.bias", (q_out + 2 * kv_out,)
            else:
                yield p + "self_attn.q_proj.bias", (q_out,)
                yield p + "self_attn.k_proj.bias", (kv_out,)
                yield p + "self_attn.v_proj.bias", (kv_out,)
        if c.o_proj_bias:
            yield p + "self_attn.o_proj.bias", (D,)
        if c.qk_norm:
            yield p + "self_attn.q_norm.weight", (c.head_dim,)
            yield p + "self_attn.k_norm.weight", (c.head_dim,)
        if c.fused_gate_up:
            yield p + "mlp.gate_up_proj.weight", (2 * F, D)
        else:
            yield p + "mlp.gate_proj.weight", (F, D)
            yield p + "mlp.up_proj.weight", (F, D)
        yield p + "mlp.down_proj.weight", (D, F)


def parameter_count(config: ModelConfig) -> int:
    """How many tensors ``iter_parameter_shapes`` lists, without listing them."""
    c = config
    norms = 4 if c.sandwich_norms else 2
    per_layer = (norms * (1 if c.use_rms_norm else 2) + (2 if c.fused_qkv else 4)
                 + ((1 if c.fused_qkv else 3) if c.attention_bias else 0) + (1 if c.o_proj_bias else 0)
                 + (2 if c.qk_norm else 0) + (2 if c.fused_gate_up else 3))
    return (2 + (0 if c.use_rms_norm else 1) + (0 if c.tie_word_embeddings else 1)
            + c.num_hidden_layers * per_layer)
