"""Lessons 02–04: the ops a transformer is built from.

Each op comes in three faces, side by side in its module:

* ``<op>_ref``      — vectorised NumPy with shape comments (what the lessons quote);
* ``_<op>_kernel``  — the ``@njit`` loop;
* ``<op>``          — the public entry point, dispatching between the two.

Shape legend used in every comment:
    B batch, T new tokens, S keys (past + new), D hidden, H query heads,
    Hkv key/value heads, G = H // Hkv, Dh head dim, F MLP hidden, V vocab.
"""

from .attention import attention, attention_ref, causal_padding_mask, decode_attention, decode_attention_ref
from .linear import linear
from .mlp import gelu_tanh, glu, glu_ref, mlp, silu, swiglu, swiglu_ref
from .norm import layer_norm, layer_norm_ref, rms_norm, rms_norm_ref
from .rope import apply_rope, apply_rope_ref, rope_cos_sin
from .softmax import softmax, softmax_ref

__all__ = [
    "attention", "attention_ref", "causal_padding_mask", "decode_attention",
    "decode_attention_ref", "gelu_tanh", "glu", "glu_ref", "linear", "mlp", "silu", "swiglu",
    "swiglu_ref", "layer_norm", "layer_norm_ref", "rms_norm", "rms_norm_ref", "apply_rope",
    "apply_rope_ref", "rope_cos_sin", "softmax", "softmax_ref",
]
