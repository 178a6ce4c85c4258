"""Lesson 03 example: RoPE (rotate_half vs interleaved, and GGUF's Q/K permutation), RMSNorm vs LayerNorm.

Run: python -m lessons 3   (or python -m lessons.ex03_rope_and_norms [--quick])
Reads: npllm/ops/rope.py (rope_cos_sin, apply_rope_ref, apply_rope), npllm/ops/norm.py.
"""

import sys

import numpy as np

from npllm.io.gguf import unpermute_qk_rows
from npllm.ops import apply_rope, apply_rope_ref, layer_norm, layer_norm_ref, rms_norm, rms_norm_ref, rope_cos_sin

from ._common import heading, save_plot, show, table


def rope_at(x, pos, theta=10000.0):
    """apply_rope_ref on one head vector x [Dh] at an integer position."""
    cos, sin = rope_cos_sin(np.array([[pos]]), x.shape[-1], theta, np.float64)
    return apply_rope_ref(x.reshape(1, 1, 1, -1), cos, sin).ravel()


def rope_interleaved(x, pos, theta=10000.0):
    """The *other* layout (GPT-J / llama.cpp): rotate pairs (x[2i], x[2i+1]) by pos * theta^(-2i/Dh)."""
    Dh = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, Dh, 2) / Dh)             # [Dh/2]
    c, s = np.cos(pos * inv_freq), np.sin(pos * inv_freq)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x2 * c + x1 * s
    return out


def gguf_permute(w, n_head):
    """What llama.cpp's converter does to q_proj/k_proj rows: per head, [first half | second half]
    -> interleaved (row i of the first half goes to 2i, row i of the second half to 2i+1)."""
    out_dim, D = w.shape
    Dh = out_dim // n_head
    return w.reshape(n_head, 2, Dh // 2, D).swapaxes(1, 2).reshape(out_dim, D)


def gguf_unpermute(w, n_head):
    """The inverse: interleaved rows back to HF's rotate_half order."""
    out_dim, D = w.shape
    Dh = out_dim // n_head
    return w.reshape(n_head, Dh // 2, 2, D).swapaxes(1, 2).reshape(out_dim, D)


def rope_tables():
    heading("[3.1] the RoPE tables: inv_freq, angles, cos/sin (Dh=8, theta=10000)")
    Dh, theta = 8, 10000.0
    inv_freq = 1.0 / theta ** (np.arange(0, Dh, 2) / Dh)
    show("inv_freq_i = theta^(-2i/Dh)  [Dh/2]", inv_freq)
    pos = np.arange(4)[None]                                          # [B=1, T=4]
    cos, sin = rope_cos_sin(pos, Dh, theta, np.float64)
    show("cos = rope_cos_sin(pos 0..3)[0]  [B,T,Dh] (half table repeated twice)", cos)
    show("sin", sin)


def rope_properties(rng):
    heading("[3.2] RoPE is a rotation: norms kept, q.k depends only on m - n")
    Dh = 8
    q, k = rng.normal(size=Dh), rng.normal(size=Dh)
    print(f"|q| = {np.linalg.norm(q):.6f}   |rope(q, pos=13)| = {np.linalg.norm(rope_at(q, 13)):.6f}")
    rows = [(m, n, m - n, rope_at(q, m) @ rope_at(k, n)) for m, n in
            ((3, 0), (10, 7), (103, 100), (5, 5), (50, 50), (7, 10))]
    table(["pos q (m)", "pos k (n)", "m-n", "rope(q,m) . rope(k,n)"], rows, ".6f")

    heading("[3.3] wavelengths: each pair turns at its own speed (Dh=64, theta=1e5)")
    Dh, theta = 64, 1e5
    inv_freq = 1.0 / theta ** (np.arange(0, Dh, 2) / Dh)
    wave = 2 * np.pi / inv_freq
    rows = [(i, inv_freq[i], wave[i]) for i in (0, 1, 2, 8, 16, 24, 31)]
    table(["pair i", "radians per position", "wavelength (positions)"], rows, ".4g")
    save_plot("03_rope_wavelengths", lambda plt: (
        plt.semilogy(np.arange(Dh // 2), wave, "o-"), plt.xlabel("pair index i"),
        plt.ylabel("wavelength in positions (log)"), plt.title("RoPE wavelengths, Dh=64, theta=1e5")))


def layouts(rng):
    heading("[3.4] two RoPE layouts and GGUF's Q/K permutation")
    H, Dh, D, pos = 2, 8, 16, 5
    w_hf = rng.normal(size=(H * Dh, D))          # q_proj.weight as in an HF checkpoint
    w_gguf = gguf_permute(w_hf, H)               # as stored in a GGUF file
    x = rng.normal(size=D)
    q_hf = (w_hf @ x).reshape(H, Dh)
    q_gguf = (w_gguf @ x).reshape(H, Dh)
    print("row order of head 0 in the GGUF file (HF row indices):",
          gguf_permute(np.arange(H * Dh)[:, None], H)[:Dh, 0].tolist())
    neox = np.stack([rope_at(h, pos) for h in q_hf])                  # rotate_half on HF rows
    inter = np.stack([rope_interleaved(h, pos) for h in q_gguf])      # interleaved on GGUF rows
    inter_back = gguf_unpermute(inter.reshape(-1, 1), H).reshape(H, Dh)
    wrong = np.stack([rope_at(h, pos) for h in q_gguf])               # rotate_half on GGUF rows
    print(f"max |rotate_half(HF q) - unpermute(interleaved(GGUF q))| = {np.abs(neox - inter_back).max():.3g}")
    print(f"max |rotate_half(HF q) - unpermute(rotate_half(GGUF q))| = "
          f"{np.abs(neox - gguf_unpermute(wrong.reshape(-1, 1), H).reshape(H, Dh)).max():.3g}   <- the bug")
    print(f"unpermute(permute(W)) == W: {np.array_equal(gguf_unpermute(w_gguf, H), w_hf)}")
    perm = unpermute_qk_rows(H * Dh, H)
    print(f"npllm.io.gguf.unpermute_qk_rows({H * Dh}, {H}) = {perm.tolist()}; "
          f"w_gguf[perm] == W_hf: {np.array_equal(w_gguf[perm], w_hf)}")
    k_hf = rng.normal(size=(H * Dh, D))
    k_gguf = gguf_permute(k_hf, H)
    kx_hf, kx_gguf = (k_hf @ x).reshape(H, Dh), (k_gguf @ x).reshape(H, Dh)
    s_neox = (neox * np.stack([rope_at(h, 2) for h in kx_hf])).sum(-1)
    s_inter = (inter * np.stack([rope_interleaved(h, 2) for h in kx_gguf])).sum(-1)
    print(f"attention scores per head, HF+rotate_half: {np.round(s_neox, 6)}, "
          f"GGUF+interleaved: {np.round(s_inter, 6)}  (the same: q.k ignores a shared permutation)")


def norms(rng):
    heading("[3.5] RMSNorm vs LayerNorm on one vector (weight = 1, bias = 0)")
    D, eps = 8, 1e-6
    x = rng.normal(loc=2.0, size=D)
    w, b = np.ones(D), np.zeros(D)
    show("x", x)
    print(f"mean(x) = {x.mean():.4f}   rms(x) = sqrt(mean(x^2)) = {np.sqrt((x * x).mean()):.4f}   "
          f"std(x) = {x.std():.4f}")
    show("rms_norm_ref(x)  (divided by rms, mean kept)", rms_norm_ref(x, w, eps))
    show("layer_norm_ref(x) (mean removed, divided by std)", layer_norm_ref(x, w, b, eps))
    rows = [
        ("x * 10", np.abs(rms_norm_ref(10 * x, w, eps) - rms_norm_ref(x, w, eps)).max(),
         np.abs(layer_norm_ref(10 * x, w, b, eps) - layer_norm_ref(x, w, b, eps)).max()),
        ("x + 3", np.abs(rms_norm_ref(x + 3, w, eps) - rms_norm_ref(x, w, eps)).max(),
         np.abs(layer_norm_ref(x + 3, w, b, eps) - layer_norm_ref(x, w, b, eps)).max()),
    ]
    table(["change to x", "max |RMSNorm change|", "max |LayerNorm change|"], rows, ".3g")
    xc = x - x.mean()
    print(f"zero-mean input: max |RMSNorm - LayerNorm| = "
          f"{np.abs(rms_norm_ref(xc, w, eps) - layer_norm_ref(xc, w, b, eps)).max():.3g}")
    tiny = np.full(D, 1e-4)
    print(f"eps matters for tiny inputs: rms_norm(1e-4 * ones) with eps=1e-6 -> {rms_norm_ref(tiny, w, 1e-6)[0]:.4f}, "
          f"eps=1e-12 -> {rms_norm_ref(tiny, w, 1e-12)[0]:.4f}")

    heading("[3.6] kernel == reference (float32, a [4, 576] batch of rows)")
    x = rng.normal(size=(4, 576)).astype(np.float32)
    w, b = rng.normal(size=576).astype(np.float32), rng.normal(size=576).astype(np.float32)
    print(f"max |rms_norm - rms_norm_ref|     = {np.abs(rms_norm(x, w, 1e-5) - rms_norm_ref(x, w, 1e-5)).max():.3g}")
    print(f"max |layer_norm - layer_norm_ref| = "
          f"{np.abs(layer_norm(x, w, b, 1e-5) - layer_norm_ref(x, w, b, 1e-5)).max():.3g}")
    q = rng.normal(size=(1, 9, 7, 64)).astype(np.float32)
    cos, sin = rope_cos_sin(np.arange(7)[None], 64, 1e5)
    print(f"max |apply_rope - apply_rope_ref| = {np.abs(apply_rope(q, cos, sin) - apply_rope_ref(q, cos, sin)).max():.3g}")


def main(quick: bool = False) -> None:
    rng = np.random.default_rng(0)
    rope_tables()
    rope_properties(rng)
    layouts(rng)
    norms(rng)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
