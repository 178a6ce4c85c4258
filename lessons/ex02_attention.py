"""Lesson 02 example: scaled dot-product attention, causal and padding masks, MHA/GQA/MQA.

Run: python -m lessons 2   (or python -m lessons.ex02_attention [--quick])
Reads: npllm/ops/attention.py (attention_ref, attention, causal_padding_mask), npllm/ops/softmax.py.
"""

import sys

import numpy as np

from npllm.ops import attention, attention_ref, causal_padding_mask, softmax_ref
from npllm.ops.attention import _attention_kernel

from ._common import heading, save_plot, show, table


def step_by_step(rng):
    """Section 1-2: one head, five tokens, every intermediate of softmax(q k^T / sqrt(Dh) + mask) v."""
    heading("[2.1] one head by hand: scores -> mask -> softmax -> weighted sum")
    B, H, T, Dh = 1, 1, 5, 4
    q, k, v = (rng.normal(size=(B, H, T, Dh)) for _ in range(3))
    show("q [B,H,T,Dh]", q)
    scores = q[0, 0] @ k[0, 0].T / np.sqrt(Dh)                      # [T, S]
    show("scores = q k^T / sqrt(Dh)  [T,S]", scores)
    allowed = causal_padding_mask(np.ones((B, T), np.int64), past_len=0, T=T)   # [B, T, S]
    show("allowed = causal_padding_mask(ones, 0, T)  [B,T,S] (1 = may attend)", allowed.astype(int))
    masked = np.where(allowed[0], scores, -np.inf)
    show("masked scores (future -> -inf)", masked)
    att = softmax_ref(masked)
    show("att = softmax(masked)  (each row sums to 1, upper triangle is 0)", att)
    print("row sums:", np.round(att.sum(-1), 12))
    out = att @ v[0, 0]                                              # [T, Dh]
    ref = attention_ref(q, k, v, allowed)[0, 0]
    ker = np.empty_like(q)
    _attention_kernel(q, k, v, allowed, ker, 1 / np.sqrt(q.shape[-1]), 0.0)   # scale, no softcap
    print(f"max |by hand - attention_ref|     = {np.abs(out - ref).max():.3g}")
    print(f"max |by hand - _attention_kernel| = {np.abs(out - ker[0, 0]).max():.3g}")
    save_plot("02_causal_attention_weights", lambda plt: (
        plt.imshow(att, cmap="viridis"), plt.colorbar(),
        plt.title("causal attention weights (query row, key column)"),
        plt.xlabel("key position s"), plt.ylabel("query position t")))


def why_sqrt_dh(rng, quick):
    """Section 1.3: the variance of q.k grows like Dh; dividing by sqrt(Dh) keeps softmax from saturating."""
    heading("[2.2] why divide by sqrt(Dh): variance of q.k and the peakiness of softmax")
    S, n = 32, (200 if quick else 2000)
    rows = []
    for Dh in (4, 16, 64, 256):
        q = rng.normal(size=(n, Dh))
        k = rng.normal(size=(n, S, Dh))
        dots = np.einsum("nd,nsd->ns", q, k)                        # [n, S]
        p_raw = softmax_ref(dots).max(-1).mean()
        p_scaled = softmax_ref(dots / np.sqrt(Dh)).max(-1).mean()
        rows.append((Dh, dots.var(), (dots / np.sqrt(Dh)).var(), p_raw, p_scaled))
    table(["Dh", "var(q.k)", "var(q.k/sqrt(Dh))", "mean max weight (raw)", "mean max weight (scaled)"],
          rows, ".3f")
    print(f"(q, k ~ N(0, 1); {S} keys; the max weight near 1 means softmax has become an argmax)")


def padding(rng):
    """Section 2: left padding in a batch; padded keys get weight 0 and real rows are unaffected."""
    heading("[2.3] padding mask: a left-padded batch of two")
    B, H, T, Dh = 2, 2, 5, 4
    mask = np.array([[1, 1, 1, 1, 1],
                     [0, 0, 1, 1, 1]])
    allowed = causal_padding_mask(mask, past_len=0, T=T)
    show("attention_mask [B,S]", mask)
    show("allowed[1] (row 1: two pad keys, causal)", allowed[1].astype(int))
    q, k, v = (rng.normal(size=(B, H, T, Dh)) for _ in range(3))
    out = attention_ref(q, k, v, allowed)
    print("rows 0 and 1 of allowed[1] have no visible key: output there is", out[1, 0, :2].ravel()[:4],
          "(zeros, no NaN)")
    alone = attention_ref(q[1:, :, 2:], k[1:, :, 2:], v[1:, :, 2:],
                          causal_padding_mask(np.ones((1, 3), np.int64), 0, 3))
    print(f"max |padded row 1 (real positions) - same 3 tokens alone| = {np.abs(out[1:, :, 2:] - alone).max():.3g}")

    heading("[2.4] decoding with a cache: T=1 new query against S = past + 1 keys")
    allowed = causal_padding_mask(np.ones((1, 7), np.int64), past_len=6, T=1)
    show("allowed for one new token after 6 cached ones [B,T,S]", allowed.astype(int))


def groups(rng):
    """Section 3: MHA / GQA / MQA share K/V heads between query heads."""
    heading("[2.5] MHA, GQA, MQA: which K/V head each query head reads")
    B, H, T, Dh, D = 1, 8, 6, 8, 64
    allowed = causal_padding_mask(np.ones((B, T), np.int64), 0, T)
    rows = []
    for Hkv, name in ((8, "MHA"), (2, "GQA"), (1, "MQA")):
        G = H // Hkv
        q = rng.normal(size=(B, H, T, Dh))
        k, v = rng.normal(size=(B, Hkv, T, Dh)), rng.normal(size=(B, Hkv, T, Dh))
        # HF's repeat_kv: copy each K/V head G times, then ordinary MHA.
        k_rep, v_rep = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
        explicit = attention_ref(q, k_rep, v_rep, allowed)
        grouped = attention_ref(q, k, v, allowed)              # reshape/broadcast, no copy
        kernel = attention(q, k, v, allowed)                   # reads K/V head h // G
        mapping = " ".join(str(h // G) for h in range(H))
        kv_params = 2 * D * Hkv * Dh
        rows.append((name, Hkv, G, mapping, kv_params, 2 * Hkv * Dh * 4,
                     np.abs(grouped - explicit).max(), np.abs(kernel - explicit).max()))
    table(["kind", "Hkv", "G", "kv head of q heads 0..7", "K+V proj params (D=64)",
           "cache bytes/token/layer fp32", "|grouped-repeat_kv|", "|kernel-repeat_kv|"], rows, ".2g")


def main(quick: bool = False) -> None:
    rng = np.random.default_rng(0)
    step_by_step(rng)
    why_sqrt_dh(rng, quick)
    padding(rng)
    groups(rng)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
