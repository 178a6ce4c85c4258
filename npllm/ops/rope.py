"""Lessons 03 and 08 — rotary position embeddings (RoPE), the rotate_half (NeoX / HF) layout.

For a head vector x of size Dh, split it into halves x1 = x[:Dh/2], x2 = x[Dh/2:].
Pair i (x1[i], x2[i]) is rotated by the angle  pos * theta^(-2i/Dh):

    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half(x) = [-x2, x1]

GGUF ``llama`` files store Q/K rows permuted for the *interleaved* layout
(pairs (x[2i], x[2i+1])); npllm undoes that permutation at load time
(``npllm.io.gguf``), so one layout serves every checkpoint.
Matches HF ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb``.
"""

import math

import numpy as np

from .._jit import njit, reference_mode


def rope_cos_sin(position_ids: np.ndarray, head_dim: int, theta: float, dtype=np.float32,
                 scaling=None, max_position_embeddings=None):
    """position_ids: [B, T] -> cos, sin: [B, T, Dh] (the half-size table repeated twice).

    ``scaling`` is a config's ``rope_scaling`` (None: plain RoPE); the types whose
    frequencies depend on the sequence (dynamic, longrope) read max(position_ids) + 1.
    """
    position_ids = np.asarray(position_ids)
    seq_len = int(position_ids.max()) + 1 if position_ids.size else 0
    inv_freq, factor = rope_inv_freq(head_dim, theta, scaling, seq_len, max_position_embeddings)  # [Dh/2]
    angles = position_ids.astype(np.float64)[..., None] * inv_freq                    # [B, T, Dh/2]
    angles = np.concatenate([angles, angles], axis=-1)                                # [B, T, Dh]
    cos, sin = np.cos(angles), np.sin(angles)
    if factor != 1.0:  # YaRN / LongRoPE scale q and k (so the scores by factor**2)
        cos, sin = cos * factor, sin * factor
    return cos.astype(dtype), sin.astype(dtype)


# ---------------------------------------------------------------------------------------------
# RoPE scaling (lesson 08): longer contexts than the model was trained on, by changing the
# frequencies.  Each type returns (inv_freq [Dh/2], attention_factor), as HF's
# ``modeling_rope_utils`` does; ``i`` runs over the Dh/2 frequency pairs, d = Dh.

ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3", "longrope", "freq_factors")
_ROPE_FIELDS = {  # rope type -> (required fields, optional fields)
    "linear": ({"factor"}, {"original_max_position_embeddings"}),   # (the trained context: informative)
    "dynamic": ({"factor"}, {"original_max_position_embeddings"}),
    "yarn": ({"factor", "original_max_position_embeddings"},
             {"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"}),
    "llama3": ({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}, set()),
    "longrope": ({"short_factor", "long_factor", "original_max_position_embeddings"}, {"factor", "attention_factor"}),
    "freq_factors": ({"factors"}, set()),  # GGUF: llama.cpp's rope_freqs tensor (how it stores llama3)
}


def check_rope_scaling(scaling, n_freq: int) -> None:
    """Raise ``ConfigError`` naming the field if ``scaling`` is not a RoPE scaling npllm implements."""
    from ..errors import ConfigError

    if scaling is None:
        return
    rope_type = scaling.get("rope_type")
    if rope_type not in _ROPE_FIELDS:
        raise ConfigError(f"rope_scaling.rope_type {rope_type!r} is not supported (npllm implements "
                          f"{', '.join(ROPE_TYPES)})")
    required, optional = _ROPE_FIELDS[rope_type]
    for key in scaling:
        if key != "rope_type" and key not in required | optional:
            raise ConfigError(f"rope_scaling.{key} is not a {rope_type} RoPE parameter npllm implements")
    for key in sorted(required):
        if scaling.get(key) is None and not (rope_type == "yarn" and key == "factor"):
            raise ConfigError(f"rope_scaling ({rope_type}) is missing {key}")
    for key, value in scaling.items():
        if key in ("rope_type", "truncate") or value is None:
            continue
        if key in ("short_factor", "long_factor", "factors"):
            if not isinstance(value, (list, tuple)) or len(value) != n_freq or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                    for v in value):
                raise ConfigError(f"rope_scaling.{key} must list {n_freq} positive numbers (head_dim / 2)")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise ConfigError(f"rope_scaling.{key} must be a positive number, got {value!r}")
    if rope_type == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ConfigError("rope_scaling.high_freq_factor must exceed low_freq_factor")


def rope_inv_freq(head_dim: int, theta: float, scaling=None, seq_len: int = 0, max_position_embeddings=None):
    """(inv_freq float64 [Dh/2], attention_factor) for plain RoPE or one of ``ROPE_TYPES``."""
    d = head_dim
    exponent = np.arange(0, d, 2, dtype=np.float64) / d          # 2i / d
    inv = 1.0 / theta ** exponent                                # plain RoPE: theta^(-2i/d)
    if scaling is None:
        return inv, 1.0
    kind = scaling["rope_type"]
    if kind == "linear":                                         # positions / factor
        return inv / scaling["factor"], 1.0
    if kind == "freq_factors":                                   # llama.cpp: theta_i / rope_freqs[i]
        return inv / np.asarray(scaling["factors"], np.float64), 1.0
    if kind == "dynamic":                                        # NTK: a larger base past the context
        f, L0 = scaling["factor"], max_position_embeddings
        L = max(seq_len, L0)
        base = theta * (f * L / L0 - (f - 1)) ** (d / (d - 2))
        return 1.0 / base ** exponent, 1.0
    if kind == "llama3":
        return _llama3_inv_freq(inv, scaling), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(inv, d, theta, scaling, max_position_embeddings)
    # longrope (Phi-3): per-frequency divisors, long ones once the sequence passes the original context
    orig = scaling["original_max_position_embeddings"]
    ext = scaling["long_factor"] if seq_len > orig else scaling["short_factor"]
    factor = scaling.get("factor") or (max_position_embeddings or orig) / orig
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    return inv / np.asarray(ext, np.float64), float(attention)


def _llama3_inv_freq(inv, s):
    # wavelengths shorter than orig / high_freq_factor keep their frequency, longer than
    # orig / low_freq_factor are divided by factor, and the band between is interpolated.
    f, lo, hi, orig = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (orig / wavelen - lo) / (hi - lo)
    out = np.where(wavelen > orig / lo, inv / f, inv)
    medium = (wavelen >= orig / hi) & (wavelen <= orig / lo)
    return np.where(medium, (1 - smooth) * inv / f + smooth * inv, out)


def _yarn_inv_freq(inv, d, theta, s, max_position_embeddings):
    # YaRN: high frequencies (many turns within the original context) keep theirs, low ones are
    # divided by factor, a linear ramp between dims low..high; scores scaled by attention_factor**2.
    orig = s["original_max_position_embeddings"]
    factor = s.get("factor") or max_position_embeddings / orig

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention = mscale(factor)

    def dim_of(turns):  # the dim whose wavelength fits `turns` times into the original context
        return d * math.log(orig / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(s.get("beta_fast") or 32), dim_of(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    keep = 1 - ramp                                              # 1: extrapolate (keep), 0: interpolate
    return inv / factor * (1 - keep) + inv * keep, float(attention)


def apply_rope_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    # x: [B, H, T, Dh], cos/sin: [B, T, Dh] (broadcast over heads)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # rotate_half(x)
    return x * cos[:, None] + rotated * sin[:, None]


@njit
def _apply_rope_kernel(x, cos, sin, out):
    # x, out: [B, H, T, Dh]; cos, sin: [B, T, Dh]
    B, H, T, Dh = x.shape
    half = Dh // 2
    for bh in range(B * H):
        b = bh // H
        h = bh % H
        for t in range(T):
            for i in range(half):
                x1 = x[b, h, t, i]
                x2 = x[b, h, t, i + half]
                out[b, h, t, i] = x1 * cos[b, t, i] - x2 * sin[b, t, i]
                out[b, h, t, i + half] = x2 * cos[b, t, i + half] + x1 * sin[b, t, i + half]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate the heads of x: [B, H, T, Dh] by the angles in cos/sin: [B, T, Dh]."""
    if reference_mode():
        return apply_rope_ref(x, cos, sin)
    out = np.empty(x.shape, dtype=x.dtype)
    _apply_rope_kernel(np.ascontiguousarray(x), cos.astype(x.dtype, copy=False),
                       sin.astype(x.dtype, copy=False), out)
    return out
