"""Lesson 05 — the configuration that drives the whole architecture.

``ModelConfig`` uses the field names of HF ``LlamaConfig`` so that a
``config.json`` maps onto it one to one.  ``ModelConfig.from_dict`` reads the
dicts of llama, mistral and qwen2 checkpoints.

The two presets at the bottom are the seed lesson's ``tiny_config`` and
``llama_7b_config``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

from .errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ACTIVATIONS = ("silu", "swish")


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
        self.validate()

    # ------------------------------------------------------------------ checks
    _INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
    _FLOAT_FIELDS = ("rms_norm_eps", "rope_theta", "initializer_range")
    _BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "o_proj_bias", "use_rms_norm")

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
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < self.vocab_size):
                raise ConfigError(f"{name} ({value}) is outside the vocabulary [0, {self.vocab_size})")
        for value in self.eos_token_ids:
            if not (0 <= value < self.vocab_size):
                raise ConfigError(f"eos_token_id ({value}) is outside the vocabulary [0, {self.vocab_size})")

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build a config from an HF ``config.json`` dict (llama, mistral, qwen2)."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a dict, got {type(d).__name__}")
        model_type = d.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type {model_type!r} is not supported (expected one of {SUPPORTED_MODEL_TYPES})"
            )
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        missing = [k for k in required if d.get(k) is None]
        if missing:
            raise ConfigError(f"config is missing required field(s): {', '.join(missing)}")

        kw: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key in names:
            if key in d and d[key] is not None:
                kw[key] = d[key]
        if d.get("head_dim") is None:
            kw.pop("head_dim", None)
        if d.get("num_key_value_heads") is None:
            kw.pop("num_key_value_heads", None)

        # RoPE: older configs have rope_theta (+ rope_scaling), newer ones rope_parameters.
        rope = d.get("rope_parameters") or d.get("rope_scaling")
        if isinstance(rope, dict):
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type not in (None, "default"):
                raise ConfigError(f"rope_scaling/rope_parameters type {rope_type!r} is not supported "
                                  "(only the default RoPE is implemented)")
            if "rope_theta" in rope:
                kw["rope_theta"] = rope["rope_theta"]

        if model_type == "qwen2":
            # Qwen2 always has q/k/v biases and no o_proj bias.
            kw["attention_bias"] = True
            kw["o_proj_bias"] = False
        elif "o_proj_bias" not in d:
            kw["o_proj_bias"] = bool(d.get("attention_bias", False))
        if d.get("mlp_bias"):
            raise ConfigError("mlp_bias=True is not supported")
        kw["model_type"] = model_type
        try:
            return cls(**kw)
        except TypeError as e:  # a field of the wrong type
            raise ConfigError(f"invalid config: {e}") from None


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
