"""Lesson 08 example: model families are knobs of one model.

Reads: npllm/config.py (ModelConfig, from_dict, knobs, layer_window, layer_rope), npllm/block.py
(TransformerBlock, Norm, Attention), npllm/ops/rope.py (rope_inv_freq), npllm/ops/mlp.py (glu,
gelu_tanh), npllm/ops/attention.py (causal_padding_mask, attention_ref), npllm/io/gguf.py.

Every family here is a tiny random model built from an HF-style config dict (no download, no
PyTorch); the last section loads the real Gemma-3-270M if its package is installed.
"""

import numpy as np

from npllm import CausalLM, ModelConfig
from npllm.ops.attention import attention_ref, causal_padding_mask
from npllm.ops.mlp import gelu_tanh, silu
from npllm.ops.rope import rope_inv_freq

from ._common import heading, table

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)
# What each family's config.json says beyond the shared sizes (the values are the real models').
FAMILIES = {
    "Llama 2": dict(model_type="llama"),
    "Llama 3.2": dict(model_type="llama", rope_theta=500000.0, tie_word_embeddings=True,
                      rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                        original_max_position_embeddings=8192)),
    "Mistral 7B v0.1": dict(model_type="mistral", sliding_window=4096),
    "Qwen2.5": dict(model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True),
    "Qwen3": dict(model_type="qwen3", head_dim=16, rope_theta=1e6),
    "Gemma 2": dict(model_type="gemma2", head_dim=16, query_pre_attn_scalar=16),
    "Gemma 3": dict(model_type="gemma3_text", head_dim=16, sliding_window=512, query_pre_attn_scalar=16),
    "Phi-3 mini-128k": dict(model_type="phi3", max_position_embeddings=131072, original_max_position_embeddings=4096,
                            rope_scaling=dict(type="longrope", short_factor=[1.0] * 4, long_factor=[4.0] * 4)),
    "SmolLM3": dict(model_type="smollm3", rope_theta=5e6),
}


def configs():
    return {name: ModelConfig.from_dict({**BASE, **fields}) for name, fields in FAMILIES.items()}


def knob_table(cfgs):
    heading("[8.1] family x knob: what ModelConfig.from_dict reads from each family's config.json")
    knobs = ["attention_bias", "hidden_act", "norm_weight_offset", "qk_norm", "sandwich_norms", "embed_scale",
             "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "sliding_window",
             "rope_scaling", "rope_local_base_freq", "no_rope_layers", "fused_qkv", "head_dim"]
    short = {"attention_bias": "bias", "hidden_act": "act", "norm_weight_offset": "1+w", "qk_norm": "qkN", "sandwich_norms": "4N",
             "embed_scale": "emb×", "query_pre_attn_scalar": "qpas", "attn_logit_softcapping": "capA",
             "final_logit_softcapping": "capF", "sliding_window": "SWA", "rope_scaling": "RoPE×",
             "rope_local_base_freq": "θloc", "no_rope_layers": "NoPE", "fused_qkv": "fused", "head_dim": "Dh≠"}
    rows = []
    for name, c in cfgs.items():
        k = c.knobs()
        cell = []
        for knob in knobs:
            if knob not in k:
                cell.append("·")
            elif knob == "hidden_act":
                cell.append("gelu")
            elif knob == "attention_bias":
                cell.append("qkv")
            elif knob == "rope_scaling":
                cell.append(k[knob]["rope_type"])
            elif knob == "embed_scale":
                cell.append(f"{k[knob]:.3g}")
            elif knob in ("sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping",
                          "final_logit_softcapping", "rope_local_base_freq", "head_dim"):
                cell.append(f"{k[knob]:g}")
            else:
                cell.append("✓")
        rows.append([name] + cell)
    table(["family"] + [short[k] for k in knobs], rows)
    print("· = Llama 2's value.  ModelConfig.knobs() lists what differs; `npllm info` prints it.")


def tiny_models(cfgs):
    heading("[8.2] one tiny random model of each family: the same CausalLM, other parameter names")
    llama_names = {n.split(".", 3)[-1] for n in CausalLM(cfgs["Llama 2"]).state_dict() if ".layers.0." in n}
    ids = np.array([[1, 5, 9, 17, 33, 2]])
    for name, c in cfgs.items():
        model = CausalLM(c, seed=0)
        layer0 = {n.split(".", 3)[-1].replace(".weight", "") for n in model.state_dict() if ".layers.0." in n}
        base = {n.replace(".weight", "") for n in llama_names}
        logits, _ = model.forward(ids)
        extra = ", ".join("+" + n for n in sorted(layer0 - base))
        lacks = ", ".join("-" + n for n in sorted(base - layer0))
        print(f"  {name:16s} {model.num_parameters():7,} parameters, logits {logits.shape}  "
              f"{extra} {lacks}".rstrip())
    print("(names relative to model.layers.0.; + a parameter Llama 2's block lacks, - one this family lacks)")


def norms_and_activations():
    heading("[8.3] Gemma's norm multiplies by (1 + w): a zero weight is the identity")
    from npllm.ops.norm import rms_norm_ref

    x = np.array([[3.0, -1.0, 2.0, 0.5]])
    w = np.zeros(4)
    print("x                      ", x[0])
    print("Llama:  rms_norm(x, w)  ", rms_norm_ref(x, w, 1e-6)[0], " (w = 0 kills the signal)")
    print("Gemma:  rms_norm(x, 1+w)", rms_norm_ref(x, 1 + w, 1e-6)[0])
    print("HF Gemma stores w; llama.cpp's GGUF stores 1 + w; npllm's loader subtracts 1 so both give HF's w.")

    heading("[8.4] GELU (tanh form) vs SiLU: both are z * sigmoid(a(z))")
    z = np.array([-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0])
    tanh_form = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    table(["z", "silu(z)", "gelu_tanh(z)", "0.5 z (1 + tanh(...))"],
          [(a, s, g, t) for a, s, g, t in zip(z, silu(z), gelu_tanh(z), tanh_form)], ".5f")
    wide = np.linspace(-30, 30, 100001)
    exact = 0.5 * wide * (1 + np.tanh(np.sqrt(2 / np.pi) * (wide + 0.044715 * wide ** 3)))
    print(f"max |sigmoid form - tanh form| on [-30, 30]: {np.abs(gelu_tanh(wide) - exact).max():.3g}")


def windows_and_softcaps(cfgs):
    heading("[8.5] sliding window W = 3: query i sees keys i-2, i-1, i (and never the future)")
    allowed = causal_padding_mask(np.ones((1, 8), np.int64), 0, 8, window=3)[0]
    for t, row in enumerate(allowed.astype(int)):
        print(f"  query {t}: {' '.join(map(str, row))}")
    print("per layer (Gemma 2: every other layer slides; Gemma 3: five of every six):")
    for name in ("Gemma 2", "Gemma 3", "Mistral 7B v0.1"):
        c = cfgs[name]
        print(f"  {name:16s}", " ".join("S" if c.layer_window(i) else "F" for i in range(c.num_hidden_layers)),
              f"(W = {c.sliding_window})")
    c = cfgs["SmolLM3"]
    print(f"  SmolLM3 RoPE per layer: {' '.join('-' if c.layer_rope(i) is None else 'R' for i in range(6))} "
          "(every 4th layer has no positions at all: NoPE)")
    c = cfgs["Gemma 3"]
    print(f"  Gemma 3 RoPE tables:    {' '.join(c.layer_rope(i)[0].upper() for i in range(6))} "
          f"(L = local base {c.rope_local_base_freq:g}, G = global base {c.rope_theta:g})")

    heading("[8.6] softcapping: c * tanh(s / c) is the identity for small s and never exceeds c")
    s = np.array([1.0, 10.0, 30.0, 50.0, 100.0, 1000.0])
    table(["score", "cap 50 (Gemma 2 attention)", "cap 30 (Gemma 2 logits)"],
          [(v, 50 * np.tanh(v / 50), 30 * np.tanh(v / 30)) for v in s], ".4g")
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(1, 2, 4, 8)) * 6, rng.normal(size=(1, 2, 4, 8)) * 6, rng.normal(size=(1, 2, 4, 8))
    mask = causal_padding_mask(np.ones((1, 4), np.int64), 0, 4)
    plain, capped = attention_ref(q, k, v, mask), attention_ref(q, k, v, mask, softcap=2.0)
    print(f"attention with a tight cap (2.0) vs none: max |difference| = {np.abs(plain - capped).max():.3g}")


def rope_scaling():
    heading("[8.7] RoPE scaling: how each type changes the Dh/2 frequencies (ratio to plain RoPE)")
    d, theta = 16, 10000.0
    plain, _ = rope_inv_freq(d, theta)
    kinds = {
        "linear x4": dict(rope_type="linear", factor=4.0),
        "llama3 x8": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64),
        "yarn x4": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
        "longrope (long)": dict(rope_type="longrope", short_factor=[1.0] * 8, long_factor=list(np.linspace(1, 8, 8)),
                                original_max_position_embeddings=64),
    }
    rows, factors = [], []
    for name, s in kinds.items():
        inv, af = rope_inv_freq(d, theta, s, seq_len=100, max_position_embeddings=256)
        rows.append([name] + [f"{r:.3f}" for r in inv / plain])
        factors.append((name, af))
    table(["type"] + [f"i={i}" for i in range(d // 2)], rows)
    print("attention factors (cos and sin are multiplied by it):", ", ".join(f"{n}: {a:.4f}" for n, a in factors))
    print("wavelength of the slowest pair, in positions:", f"plain {2 * np.pi / plain[-1]:.0f},",
          f"llama3 x8 {2 * np.pi / rope_inv_freq(d, theta, kinds['llama3 x8'])[0][-1]:.0f}")
    dyn = dict(rope_type="dynamic", factor=2.0)
    for L in (100, 256, 512):
        inv, _ = rope_inv_freq(d, theta, dyn, seq_len=L, max_position_embeddings=256)
        print(f"dynamic x2, sequence of {L:3d} (max_position_embeddings 256): slowest frequency ratio "
              f"{inv[-1] / plain[-1]:.4f}")


def gguf_spelling():
    heading("[8.8] the same knobs in a GGUF file (llama.cpp's names)")
    from npllm.io import gguf as g

    table(["GGUF architecture", "HF model_type", "Q/K rows permuted"],
          [(a, g.MODEL_TYPES[a], "yes" if a in g.PERMUTED_QK else "no") for a in g.SUPPORTED_ARCHITECTURES])
    rows = [(k, v, g._BLOCK_KEYS.get(k, "-")) for k, v in g._GEMMA_BLOCK_KEYS.items()
            if g._BLOCK_KEYS.get(k) != v]
    table(["GGUF tensor", "HF name in Gemma 2/3", "HF name in Llama"], rows)
    print("RoPE scaling stored as tensors, not keys:", ", ".join(g.ROPE_TENSORS))


def real_gemma3(quick):
    heading("[8.9] the real Gemma-3-270M (Q4_K_M), if its package is installed")
    import npllm
    from npllm.errors import ModelNotFoundError

    try:
        model, tok = npllm.load("gemma3-270m")
    except ModelNotFoundError as e:
        print(f"not installed: {e}")
        return
    except Exception as e:  # e.g. a tokenizer this npllm version cannot build yet
        print(f"could not load it: {e}")
        return
    for k, v in model.config.knobs().items():
        print(f"  {k:24s} {v if not isinstance(v, list) else f'{len(v)} entries'}")
    ids = tok.encode("The capital of France is")
    out = model.generate(np.array([ids]), max_new_tokens=8 if quick else 24, temperature=0, eos_token_id=[1])
    print("greedy:", repr(tok.decode(out[0, len(ids):].tolist())))


def main(quick: bool = False) -> None:
    cfgs = configs()
    knob_table(cfgs)
    tiny_models(cfgs)
    norms_and_activations()
    windows_and_softcaps(cfgs)
    rope_scaling()
    gguf_spelling()
    real_gemma3(quick)


if __name__ == "__main__":
    main()
