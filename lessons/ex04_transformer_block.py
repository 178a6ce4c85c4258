"""Lesson 04 example: SwiGLU, the pre-norm residual block, and counting parameters.

Run: python -m lessons 4   (or python -m lessons.ex04_transformer_block [--quick])
Reads: npllm/ops/mlp.py (silu, swiglu, mlp), npllm/block.py (TransformerBlock, Attention, Norm),
npllm/model.py (parameter_shapes, CausalLM.num_parameters), npllm/config.py.
"""

import sys

import numpy as np

from npllm import CausalLM, ModelConfig
from npllm.cache import ConcatCache
from npllm.config import llama_7b_config, tiny_config
from npllm.model import parameter_shapes
from npllm.ops import causal_padding_mask, linear, mlp, rms_norm, rope_cos_sin, silu, swiglu

from ._common import heading, save_plot, show, table

# The shape of SmolLM2-135M (lesson 06 reads the same numbers from the GGUF file's metadata).
SMOLLM2_SHAPE = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                            num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                            rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192)


def activations():
    heading("[4.1] SiLU(z) = z * sigmoid(z) next to ReLU")
    z = np.array([-6.0, -4.0, -2.0, -1.278, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0])
    table(["z", "silu(z)", "relu(z)", "sigmoid(z)"],
          [(a, silu(a), max(a, 0.0), 1 / (1 + np.exp(-a))) for a in z], ".4f")
    grid = np.linspace(-5, 0, 100001)
    i = np.argmin(silu(grid))
    print(f"minimum of silu on [-5, 0]: {silu(grid[i]):.4f} at z = {grid[i]:.3f} (smooth, slightly negative)")
    save_plot("04_silu", lambda plt: (
        plt.plot(np.linspace(-6, 4, 200), silu(np.linspace(-6, 4, 200)), label="silu"),
        plt.plot(np.linspace(-6, 4, 200), np.maximum(np.linspace(-6, 4, 200), 0), "--", label="relu"),
        plt.legend(), plt.grid(alpha=0.3), plt.title("SiLU vs ReLU")))


def tiny_model():
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=88, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         initializer_range=0.1)
    return CausalLM(config, seed=0, dtype=np.float64)


def swiglu_walkthrough(model, rng):
    heading("[4.2] the SwiGLU MLP of block 0, shape by shape")
    blk = model.layers[0]
    x = rng.normal(size=(1, 3, model.config.hidden_size))
    gate = linear(x, blk.gate_proj)
    up = linear(x, blk.up_proj)
    h = swiglu(gate, up)
    y = linear(h, blk.down_proj)
    print(f"x {x.shape} -> gate_proj {blk.gate_proj.shape} -> gate {gate.shape}; up {up.shape}")
    print(f"swiglu(gate, up) = silu(gate) * up -> {h.shape} -> down_proj {blk.down_proj.shape} -> {y.shape}")
    by_hand = (gate / (1 + np.exp(-gate)) * up) @ blk.down_proj.T
    print(f"max |mlp(x) - by hand| = {np.abs(mlp(x, blk.gate_proj, blk.up_proj, blk.down_proj) - by_hand).max():.3g}")
    print(f"fraction of silu(gate) * up entries that are exactly 0: {(h == 0).mean():.3f} "
          f"(a ReLU MLP would zero about half)")


def block_walkthrough(model, rng):
    heading("[4.3] one pre-norm block step by step, checked against TransformerBlock.__call__")
    c = model.config
    blk = model.layers[0]
    B, T = 1, 5
    x = rng.normal(size=(B, T, c.hidden_size))
    cos, sin = rope_cos_sin(np.arange(T)[None], c.head_dim, c.rope_theta, np.float64)
    allowed = causal_padding_mask(np.ones((B, T), np.int64), 0, T)
    ropes, masks = {"global": (cos, sin)}, {None: allowed}   # RoPE table and mask per kind (lesson 08)
    a_in = blk.input_layernorm(x)
    a_out = blk.self_attn(a_in, ropes, masks, ConcatCache(), 0)
    h = x + a_out
    m_out = mlp(blk.post_attention_layernorm(h), blk.gate_proj, blk.up_proj, blk.down_proj)
    y = h + m_out
    for name, a in (("x (residual stream in)", x), ("input_layernorm(x)", a_in), ("self_attn(...)", a_out),
                    ("h = x + attn", h), ("mlp(post_attention_layernorm(h))", m_out), ("y = h + mlp", y)):
        print(f"{name:36s} shape {a.shape}   rms per position {np.sqrt((a * a).mean(-1)).round(3).ravel()}")
    y_blk = blk(x, ropes, masks, ConcatCache())
    print(f"max |step by step - TransformerBlock.__call__| = {np.abs(y - y_blk).max():.3g}")

    heading("[4.4] the residual path is an identity: zero o_proj and down_proj and the block returns x")
    sd = {k: v.copy() for k, v in model.state_dict().items()}
    sd["model.layers.0.self_attn.o_proj.weight"][:] = 0
    sd["model.layers.0.mlp.down_proj.weight"][:] = 0
    zeroed = CausalLM(c, init=False, dtype=np.float64)
    zeroed.load_state_dict(sd)
    y0 = zeroed.layers[0](x, ropes, masks, ConcatCache())
    print(f"max |block(x) - x| with both output projections zeroed = {np.abs(y0 - x).max():.3g}")

    heading("[4.5] the residual stream through all layers (random init, RMSNorm keeps each branch's input tame)")
    T = 6
    ids = rng.integers(0, c.vocab_size, size=(1, T))
    cos, sin = rope_cos_sin(np.arange(T)[None], c.head_dim, c.rope_theta, np.float64)
    ropes = {"global": (cos, sin)}
    masks = {None: causal_padding_mask(np.ones((1, T), np.int64), 0, T)}
    h = model._embed(ids)
    rows = [("embed", np.sqrt((h * h).mean()))]
    cache = ConcatCache()
    for i, layer in enumerate(model.layers):
        h = layer(h, ropes, masks, cache)
        rows.append((f"after block {i}", np.sqrt((h * h).mean())))
    rows.append(("after model.norm", np.sqrt((model.norm(h) ** 2).mean())))
    table(["point", "rms of hidden state"], rows, ".4f")


def count(config):
    """Parameters by component, from the formula in the lesson."""
    D, F, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    H, Hkv, Dh = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    attn = D * H * Dh + 2 * D * Hkv * Dh + H * Dh * D
    ffn = 3 * D * F
    norms = 2 * D
    embed = V * D
    head = 0 if config.tie_word_embeddings else V * D
    return dict(embed=embed, attn=L * attn, mlp=L * ffn, norms=L * norms + D, head=head,
                total=embed + L * (attn + ffn + norms) + D + head)


def parameters():
    heading("[4.6] counting parameters: formula vs parameter_shapes / CausalLM.num_parameters")
    rows = []
    for name, cfg in (("tiny_config", tiny_config), ("SmolLM2-135M shape", SMOLLM2_SHAPE),
                      ("llama_7b_config", llama_7b_config)):
        n = count(cfg)
        model = CausalLM(cfg, init=False)          # init=False: no arrays allocated, just the count
        from_shapes = sum(int(np.prod(s)) for s in parameter_shapes(cfg).values())
        rows.append((name, n["total"], model.num_parameters(), from_shapes,
                     f"{100 * n['embed'] / n['total']:.1f}%", f"{100 * n['attn'] / n['total']:.1f}%",
                     f"{100 * n['mlp'] / n['total']:.1f}%", f"{100 * n['head'] / n['total']:.1f}%"))
    table(["config", "formula", "num_parameters()", "sum(parameter_shapes)", "embed", "attention", "MLP",
           "lm_head"], rows)
    c = llama_7b_config
    print(f"llama_7b MLP: SwiGLU 3*D*F = {3 * c.hidden_size * c.intermediate_size:,} vs "
          f"a GELU FFN with 4D hidden 2*D*4D = {2 * c.hidden_size * 4 * c.hidden_size:,}")
    n = count(SMOLLM2_SHAPE)
    nonembed = n["total"] - n["embed"]
    print(f"SmolLM2-135M shape: non-embedding parameters {nonembed:,}; "
          f"forward FLOPs per token ~ 2 * (non-embedding + lm_head V*D) = "
          f"{2 * (nonembed + SMOLLM2_SHAPE.vocab_size * SMOLLM2_SHAPE.hidden_size) / 1e6:.0f} MFLOP")


def main(quick: bool = False) -> None:
    rng = np.random.default_rng(0)
    activations()
    model = tiny_model()
    swiglu_walkthrough(model, rng)
    block_walkthrough(model, rng)
    parameters()


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
