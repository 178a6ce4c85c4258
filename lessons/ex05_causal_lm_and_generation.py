"""Lesson 05 example: the causal LM, the KV cache, sampling, and the seed's five exercises solved.

Run: python -m lessons 5   (or python -m lessons.ex05_causal_lm_and_generation [--quick])
Reads: npllm/model.py (CausalLM.forward, CausalLM.generate), npllm/cache.py (KVCache, kv_cache_bytes,
concat_update), npllm/sampling.py, npllm/generation.py, npllm/stopping.py.
"""

import sys
import time
import tracemalloc

import numpy as np

from npllm import CausalLM, ModelConfig, kv_cache_bytes
from npllm import sampling as S
from npllm.config import llama_7b_config

from ._common import default_model, have_module, heading, human_bytes, rss_bytes, save_plot, show, table, todo
from .ex04_transformer_block import SMOLLM2_SHAPE

CHAT_PROMPT = "Write a short story about a cat who learns to fly."
QUICK_PROMPT = "Once upon a time"


# ============================================================== 5.1 architecture
def architecture():
    heading("[5.1] forward: input_ids [B,T] -> logits [B,T,V]; weight tying")
    config = ModelConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = CausalLM(config, seed=0)
    ids = np.array([[5, 17, 42], [7, 8, 9]])
    logits, past = model.forward(ids)
    print(f"input_ids {ids.shape} -> logits {logits.shape} {logits.dtype}; past_key_values = {past}")
    print(f"tied: model.lm_head is model.embed_tokens -> {model.lm_head is model.embed_tokens}")
    untied = CausalLM(config.replace(tie_word_embeddings=False), seed=0)
    print(f"parameters tied {model.num_parameters():,} / untied {untied.num_parameters():,} "
          f"(difference V*D = {config.vocab_size * config.hidden_size:,})")


# ============================================================== 5.2 the KV cache
def kv_cache_equivalence(quick):
    heading("[5.2] no cache vs the seed's concat cache vs the preallocated KVCache")
    config = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)
    model = CausalLM(config, seed=1)
    n = 16 if quick else 256
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(1, n))

    def run(method, steps):
        """Decode ``steps`` tokens one at a time; returns (seconds per step [steps], last logits per step)."""
        past = model.new_cache(1, steps) if method == "static" else None
        seconds, last = [], []
        for i in range(steps):
            t0 = time.perf_counter()
            if method == "none":                                         # recompute everything
                logits, _ = model.forward(ids[:, :i + 1])
            else:                                                        # only the new token
                logits, past = model.forward(ids[:, i:i + 1], past_key_values=past, use_cache=True)
            seconds.append(time.perf_counter() - t0)
            last.append(logits[0, -1])
        return np.array(seconds), np.stack(last), past

    # Warm-up: the first call of each path compiles its Numba kernels (the KVCache path has its
    # own fused decode kernel), which takes far longer than the steps themselves.  Untimed, it
    # would be charged to whichever method runs first: the preallocated cache would look slowest.
    for method in ("none", "concat", "static"):
        run(method, 4)
    results = {method: run(method, n) for method in ("none", "concat", "static")}
    reference = results["none"][1]
    rows = []
    for method, name, pushed in (("none", "no cache (recompute)", n * (n + 1) // 2),
                                 ("concat", "concat list (seed 2.3)", n), ("static", "KVCache (preallocated)", n)):
        sec, logits, _ = results[method]
        rows.append((name, pushed, sec.sum(), 1e6 * np.median(sec[:8]), 1e6 * np.median(sec[-8:]),
                     np.abs(logits - reference).max()))
    table(["method", "token positions pushed through the layers", "total s", "us/step first 8",
           "us/step last 8", "max |logits - no cache|"], rows, ".3g")
    past_concat, static = results["concat"][2], results["static"][2]
    print(f"{n} decode steps after an untimed warm-up (kernels compiled); medians per step resist a busy "
          f"machine.  n(n+1)/2 = {n * (n + 1) // 2}.  After the loop: concat cache {len(past_concat)} "
          f"layers of k {past_concat[0][0].shape}, KVCache.length = {static.length}")


# ============================================================== 5.3 sampling on toy distributions
def entropy(probs):
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0 turns -0.0 (a one-hot) into 0.0


def sampling_basics(quick):
    heading("[5.3] temperature on a fixed logit vector")
    z = np.array([3.0, 2.0, 1.0, 0.5, 0.0, -1.0])
    rows = []
    for T in (0.1, 0.5, 1.0, 2.0, 10.0):
        p = S.softmax(S.apply_temperature(z, T))
        rows.append((T, " ".join(f"{v:.3f}" for v in p), entropy(p)))
    table(["temperature", "softmax(z / T)", "entropy (nats)"], rows, ".3f")
    print(f"uniform over {len(z)} tokens would have entropy ln({len(z)}) = {np.log(len(z)):.3f}")

    heading("[5.4] top-k and top-p (the seed's distributions A and B)")
    for name, probs in (("A", [0.9, 0.05, 0.03, 0.02]), ("B", [0.4, 0.3, 0.2, 0.1])):
        logits = np.log(np.array(probs))
        p = S.softmax(logits)
        tail = np.cumsum(p[::-1])[::-1]                                  # mass from rank j to the end
        naive = int((~(tail <= 1 - 0.9)).sum())                          # without a rounding allowance
        for top_p in (0.9, 0.89):
            kept = np.isfinite(S.top_p_filter(logits, top_p))
            print(f"{name} {probs}: top_p_filter(p={top_p}) keeps tokens {np.flatnonzero(kept).tolist()} "
                  f"(kept mass {np.array(probs)[kept].sum():.2f})")
        cut = 3 if name == "B" else 1                                    # the seed's answer
        print(f"   boundary: tail mass after the first {cut} = {tail[cut]!r}, 1 - 0.9 = {1 - 0.9!r}; "
              f"'tail <= 1 - p' alone would keep {naive}; the allowance 4*V*eps = "
              f"{S._mass_tolerance(len(probs))!r}")
        print(f"   top_k_filter(k=2) keeps {np.flatnonzero(np.isfinite(S.top_k_filter(logits, 2))).tolist()}")
    uniform = np.zeros(300, dtype=np.float32)
    tail = np.cumsum(S.softmax(uniform)[::-1])[::-1]
    print(f"300 equal logits at p = 0.5: top_p_filter keeps {int(np.isfinite(S.top_p_filter(uniform, 0.5)).sum())} "
          f"(150 weigh exactly 0.5); the float64 tail of the other 150 sums to {tail[150]!r}, so "
          f"'tail <= 1 - p' alone keeps {int((~(tail <= 0.5)).sum())}")

    heading("[5.5] repetition penalty (penalty 1.2, tokens 0 and 1 already generated)")
    z = np.array([[2.0, -1.0, 0.5, 1.0]])                                  # [B=1, V=4]
    out = S.apply_repetition_penalty(z, np.array([[0, 1, 1]]), 1.2)
    z = z[0]
    table(["token", "logit", "after penalty", "rule"],
          [(0, z[0], out[0][0], "positive: divided by 1.2"), (1, z[1], out[0][1], "negative: multiplied by 1.2"),
           (2, z[2], out[0][2], "not seen: unchanged"), (3, z[3], out[0][3], "not seen: unchanged")], ".3f")

    heading("[5.6] sampling statistics: drawn frequencies vs the filtered distribution")
    z = np.log(np.array([0.35, 0.25, 0.15, 0.1, 0.08, 0.05, 0.02]))
    n = 4000 if quick else 40000
    rng = np.random.default_rng(0)
    rows = []
    for label, filt in (("T=1", z), ("T=0.5", S.apply_temperature(z, 0.5)),
                        ("T=1, top_p=0.8", S.top_p_filter(z, 0.8)), ("T=1, top_k=3", S.top_k_filter(z, 3))):
        expected = S.softmax(filt)
        draws = S.sample(np.tile(filt, (n, 1)), rng)
        freq = np.bincount(draws, minlength=len(z)) / n
        rows.append((label, " ".join(f"{v:.3f}" for v in expected), " ".join(f"{v:.3f}" for v in freq),
                     np.abs(freq - expected).max()))
    table(["setting", "expected p", f"frequency in {n} draws", "max |diff|"], rows, ".3f")

    heading("[5.7] order: top-k and temperature commute, top-p / min-p and temperature do not")
    z = np.array([[3.0, 2.0, 2.0, 1.0, 0.5, 0.0, -1.0, -2.5]])
    table(["pipeline", "kept tokens", "probabilities"],
          [(name, np.flatnonzero(np.isfinite(v[0])).tolist(), " ".join(f"{q:.4f}" for q in S.softmax(v)[0]))
           for name, v in (("temperature(0.5) -> top_k(3)", S.top_k_filter(S.apply_temperature(z, 0.5), 3)),
                           ("top_k(3) -> temperature(0.5)", S.apply_temperature(S.top_k_filter(z, 3), 0.5)),
                           ("temperature(2.0) -> top_p(0.6)", S.top_p_filter(S.apply_temperature(z, 2.0), 0.6)),
                           ("top_p(0.6) -> temperature(2.0)", S.apply_temperature(S.top_p_filter(z, 0.6), 2.0)),
                           ("temperature(2.0) -> min_p(0.3)", S.min_p_filter(S.apply_temperature(z, 2.0), 0.3)),
                           ("min_p(0.3) -> temperature(2.0)", S.apply_temperature(S.min_p_filter(z, 0.3), 2.0)))],
          ".4f")
    a = S.top_k_filter(S.apply_temperature(z, 0.5), 3)
    b = S.apply_temperature(S.top_k_filter(z, 3), 0.5)
    print(f"top-k/temperature in either order: identical logits -> {np.array_equal(a, b)}")


# ============================================================== exercise 1
def exercise1_hand_step():
    heading("[exercise 1] one generation step by hand: tiny vocab, 2 layers, checked against CausalLM.forward")
    vocab = ["<eos>", "I", "you", "like", "love", "cats", "dogs", "and", "fish", "."]
    config = ModelConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=10000.0,
                         tie_word_embeddings=True, initializer_range=0.5)
    model = CausalLM(config, seed=3, dtype=np.float64)
    p = model.state_dict()
    ids = np.array([vocab.index(w) for w in ["I", "like", "cats", "and"]])
    T, D, H, Hkv, Dh = len(ids), config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    G, eps = H // Hkv, config.rms_norm_eps
    print(f"vocab {vocab}\nprompt ids {ids.tolist()}  config: D={D} H={H} Hkv={Hkv} Dh={Dh} L=2 F=12")

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    x = p["model.embed_tokens.weight"][ids]                              # [T, D]
    show("x = embed_tokens[ids]  [T,D]", x)
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, Dh, 2) / Dh)
    ang = np.arange(T)[:, None] * inv_freq                               # [T, Dh/2]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(a):                                                         # a: [T, heads, Dh]
        half = Dh // 2
        rot = np.concatenate([-a[..., half:], a[..., :half]], -1)
        return a * cos[:, None] + rot * sin[:, None]

    causal = np.tril(np.ones((T, T), bool))
    for layer in range(2):
        w = lambda name: p[f"model.layers.{layer}.{name}"]              # noqa: E731
        print(f"--- layer {layer} ---")
        n1 = rms(x, w("input_layernorm.weight"))
        show("n1 = rms_norm(x)", n1)
        q = (n1 @ w("self_attn.q_proj.weight").T).reshape(T, H, Dh)
        k = (n1 @ w("self_attn.k_proj.weight").T).reshape(T, Hkv, Dh)
        v = (n1 @ w("self_attn.v_proj.weight").T).reshape(T, Hkv, Dh)
        q, k = rope(q), rope(k)
        show("q after RoPE [T,H,Dh]", q)
        show("k after RoPE [T,Hkv,Dh]", k)
        heads = []
        for h in range(H):
            kh = h // G                                                  # GQA: the K/V head this query head reads
            scores = q[:, h] @ k[:, kh].T / np.sqrt(Dh)
            scores = np.where(causal, scores, -np.inf)
            att = np.exp(scores - scores.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            show(f"attention weights, head {h} (reads kv head {kh}) [T,S]", att)
            heads.append(att @ v[:, kh])
        y = np.concatenate(heads, -1) @ w("self_attn.o_proj.weight").T
        x = x + y
        show("x = x + o_proj(attention)", x)
        n2 = rms(x, w("post_attention_layernorm.weight"))
        gate, up = n2 @ w("mlp.gate_proj.weight").T, n2 @ w("mlp.up_proj.weight").T
        m = (gate / (1 + np.exp(-gate)) * up) @ w("mlp.down_proj.weight").T
        x = x + m
        show("x = x + mlp(rms_norm(x))", x)
    logits = rms(x, p["model.norm.weight"]) @ p["model.embed_tokens.weight"].T   # tied head
    show("logits = final_norm(x) @ embed_tokens.T  [T,V]", logits)
    model_logits, _ = model.forward(ids[None])
    print(f"max |hand logits - CausalLM.forward| = {np.abs(logits - model_logits[0]).max():.3g}")

    last = logits[-1]
    z = last / 0.8
    show("last position / temperature 0.8", z)
    kth = np.sort(z)[-5]
    z = np.where(z < kth, -np.inf, z)
    show("top-k (k=5): below the 5th largest -> -inf", z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    tail = np.cumsum(probs[order][::-1])[::-1]                           # mass from rank j to the end
    drop = tail <= 1 - 0.9
    drop[0] = False
    z[order[drop]] = -np.inf
    show("top-p (p=0.9): drop the tail while its mass <= 0.1", z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    show("probs = softmax(filtered)", probs)
    u = np.random.default_rng(7).random()
    token = int(np.sum(np.cumsum(probs) <= u))
    print(f"u = {u:.4f}; cumulative {np.round(np.cumsum(probs), 4).tolist()} -> token {token} = {vocab[token]!r}")
    npl = S.top_p_filter(S.top_k_filter(S.apply_temperature(model_logits[0, -1], 0.8), 5), 0.9)
    print(f"npllm.sampling pipeline keeps the same tokens: {np.array_equal(np.isfinite(npl), np.isfinite(z))}; "
          f"npllm.sampling.sample with the same seed draws {int(S.sample(npl, np.random.default_rng(7)))}")


# ============================================================== exercise 2
def exercise2_kv_memory(quick):
    heading("[exercise 2] KV-cache memory at seq_len 1024 and 4096: MHA vs GQA (SmolLM2-135M shape, fp32)")
    configs = (("GQA Hkv=3", SMOLLM2_SHAPE), ("MHA Hkv=9", SMOLLM2_SHAPE.replace(num_key_value_heads=9)))
    rows = []
    for name, cfg in configs:
        model = CausalLM(cfg, init=False)
        for seq in (1024, 4096):
            formula = (2 * cfg.num_hidden_layers * 1 * cfg.num_key_value_heads * seq * cfg.head_dim * 4)
            tracemalloc.start()
            cache = model.new_cache(1, seq)
            traced, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows.append((name, seq, formula, kv_cache_bytes(cfg, 1, seq, "float32"), cache.nbytes, traced,
                         human_bytes(cache.nbytes)))
            del cache
    table(["config", "seq_len", "formula 2*L*B*Hkv*S*Dh*4", "kv_cache_bytes", "KVCache.nbytes",
           "tracemalloc", "size"], rows)
    mha, gqa = rows[3][4], rows[1][4]
    print(f"GQA / MHA at 4096 = {gqa / mha:.3f} (= Hkv ratio 3/9)")

    model = CausalLM(SMOLLM2_SHAPE, init=False)
    r0 = rss_bytes()
    cache = model.new_cache(1, 1024)
    r1 = rss_bytes()
    for a in cache.keys + cache.values:
        a.fill(1.0)                                                      # touch every page
    r2 = rss_bytes()
    print(f"RSS: +{human_bytes(r1 - r0)} right after allocating {human_bytes(cache.nbytes)} (np.zeros pages are "
          f"lazy), +{human_bytes(r2 - r0)} after writing all of it")
    del cache

    print(f"the seed's LLaMA-7B example: kv_cache_bytes(llama_7b_config, 1, 4096, 'float16') = "
          f"{human_bytes(kv_cache_bytes(llama_7b_config, 1, 4096, 'float16'))}; with Hkv=8: "
          f"{human_bytes(kv_cache_bytes(llama_7b_config.replace(num_key_value_heads=8), 1, 4096, 'float16'))}")
    lengths = np.array([256, 512, 1024, 2048, 4096, 8192])

    def draw(plt):
        for hkv, style in ((9, "o-"), (3, "s-"), (1, "^-")):
            cfg = SMOLLM2_SHAPE.replace(num_key_value_heads=hkv)
            plt.plot(lengths, [kv_cache_bytes(cfg, 1, int(n), "float32") / 2**20 for n in lengths], style,
                     label=f"Hkv={hkv}" + {9: " (MHA)", 3: " (GQA, SmolLM2)", 1: " (MQA)"}[hkv])
        measured = [(r[1], r[4] / 2**20) for r in rows]
        plt.plot(*zip(*measured), "kx", markersize=10, label="measured KVCache.nbytes")
        plt.xlabel("sequence length"), plt.ylabel("KV cache (MiB, fp32, batch 1)")
        plt.title("KV-cache memory vs sequence length, SmolLM2-135M shape"), plt.legend(), plt.grid(alpha=0.3)
    save_plot("05_kv_cache_memory", draw)


# ============================================================== real-model helpers
def chat_ids(tokenizer, text):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)
    return np.asarray(ids, dtype=np.int64).reshape(1, -1)


def distinct_n(seqs, n):
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def sample_batch(model, prompt, n_rows, n_new, temperature, top_p, eos_ids, seed):
    """Our own decode loop (what npllm.generation does, minus the options) so we can log each step's entropy."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(prompt, n_rows, axis=0)                              # [N, P]
    cache = model.new_cache(n_rows, ids.shape[1] + n_new)
    logits, cache = model.forward(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    out, ents, kept = [], [], []
    for _ in range(n_new):
        z = logits[:, -1].astype(np.float64)
        z = S.apply_temperature(z, temperature)
        z = S.top_p_filter(z, top_p)
        probs = S.softmax(z)
        ents.append([entropy(r) for r in probs])
        kept.append(np.isfinite(z).sum(-1))
        tok = S.sample(z, rng)
        out.append(tok)
        logits, cache = model.forward(tok[:, None], past_key_values=cache, use_cache=True)
    toks = np.stack(out, 1)                                              # [N, n_new]
    seqs = []
    for row in toks:                                                     # cut each row at its first EOS
        stop = [i for i, t in enumerate(row) if t in eos_ids]
        seqs.append(row[:stop[0]].tolist() if stop else row.tolist())
    return seqs, float(np.mean(ents)), float(np.mean(kept))


# ============================================================== exercise 3
def next_token_distribution(model, tok, prompt):
    heading("[exercise 3a] the real next-token distribution after the prompt, under temperature and top-p")
    logits, _ = model.forward(prompt, logits_to_keep=1)
    z = logits[0, -1].astype(np.float64)
    top = np.argsort(-z)[:10]
    settings = [("T=0.5", S.apply_temperature(z, 0.5)), ("T=1.0", z), ("T=1.5", S.apply_temperature(z, 1.5)),
                ("T=1, top_p=0.9", S.top_p_filter(z, 0.9))]
    probs = {name: S.softmax(v) for name, v in settings}
    table(["token"] + [n for n, _ in settings],
          [(repr(tok.decode([int(t)])),) + tuple(probs[n][t] for n, _ in settings) for t in top], ".4f")
    table(["setting", "entropy (nats)", "tokens with p > 0"],
          [(n, entropy(probs[n]), int((probs[n] > 0).sum())) for n, _ in settings], ".3f")

    def draw(plt):
        xs = np.arange(len(top))
        width = 0.2
        for j, (n, _) in enumerate(settings):
            plt.bar(xs + (j - 1.5) * width, probs[n][top], width, label=n)
        plt.xticks(xs, [repr(tok.decode([int(t)]))[:10] for t in top], rotation=45)
        plt.ylabel("probability"), plt.title("next-token distribution (SmolLM2-135M), top 10 tokens")
        plt.legend()
    save_plot("05_sampling_distributions", draw)


def exercise3_diversity(model, tok, prompt, quick):
    heading("[exercise 3b] sampling diversity on the real model: distinct-n and entropy")
    n_rows, n_new = (4, 12) if quick else (6, 40)
    temperatures = (0.3, 1.5) if quick else (0.3, 0.7, 1.0, 1.5)
    grid = [(t, p) for t in temperatures for p in (1.0, 0.9)]
    eos = set(model.config.eos_token_ids)
    rows = []
    for temperature, top_p in grid:
        seqs, ent, kept = sample_batch(model, prompt, n_rows, n_new, temperature, top_p, eos, seed=0)
        rows.append((temperature, top_p, distinct_n(seqs, 1), distinct_n(seqs, 2), ent, kept,
                     np.mean([len(s) for s in seqs])))
    print(f"{n_rows} samples x up to {n_new} new tokens per setting; distinct-n = unique n-grams / all n-grams "
          f"over the samples; entropy of the distribution actually sampled from, averaged over steps")
    table(["temperature", "top_p", "distinct-1", "distinct-2", "mean entropy", "mean tokens kept", "mean length"],
          rows, ".3f")
    if not quick:
        xs = [f"T={r[0]},p={r[1]}" for r in rows]
        save_plot("05_diversity", lambda plt: (
            plt.plot(xs, [r[3] for r in rows], "o-", label="distinct-2"),
            plt.plot(xs, [r[4] / max(r[4] for r in rows) for r in rows], "s-", label="entropy (scaled)"),
            plt.xticks(rotation=45), plt.legend(), plt.title("diversity vs temperature / top-p")))


# ============================================================== exercise 4
def sequence_logprob(model, ids, prompt_len):
    """Mean log-probability the model gives to the generated part of ``ids`` [1, N]."""
    logits, _ = model.forward(ids)
    logp = S.log_softmax(logits[0, :-1].astype(np.float64))
    targets = ids[0, 1:]
    lp = logp[np.arange(len(targets)), targets][prompt_len - 1:]
    return float(lp.mean())


def exercise4_greedy_vs_sampling(model, tok, prompt, quick):
    heading("[exercise 4] greedy vs sampling on the same prompt (model.generate)")
    n_new = 16 if quick else 48
    eos = model.config.eos_token_ids
    runs = [("greedy (temperature=0)", dict(temperature=0.0)), ("greedy again", dict(temperature=0.0))]
    runs += [(f"T=0.8 top_p=0.9 seed={s}", dict(temperature=0.8, top_p=0.9, seed=s))
             for s in ((0, 1) if quick else (0, 1, 2))]
    rows, texts = [], []
    P = prompt.shape[1]
    for name, kw in runs:
        out = np.asarray(model.generate(prompt, max_new_tokens=n_new, eos_token_id=eos, **kw))
        new = out[0, P:].tolist()
        texts.append((name, tok.decode(new, skip_special_tokens=True)))
        # mean log p the model gives its own continuation: one more forward over the whole sequence
        lp = sequence_logprob(model, out, P)
        rows.append((name, len(new), distinct_n([new], 2), lp))
    for name, text in texts:
        print(f"--- {name}:\n{text}")
    table(["run", "new tokens", "distinct-2", "mean log p(token)"], rows, ".3f")
    print(f"the two greedy runs are identical: {texts[0][1] == texts[1][1]}")


LOOP_PROMPT = "I like cats. I like dogs. I like cats."


def exercise5_repetition_stop(model, tok, quick):
    heading("[exercise 5] early stop when the output starts looping (npllm/stopping.py RepetitionCriteria)")
    from npllm.stopping import RepetitionCriteria

    crit = RepetitionCriteria(max_ngram_size=4, min_repeats=3)
    rows = np.array([[7, 1, 2, 3, 1, 2, 3, 1, 2, 3],      # "a b c" three times
                     [7, 7, 7, 4, 5, 6, 9, 9, 9, 9],      # "x" four times
                     [7, 1, 2, 3, 4, 5, 6, 1, 2, 3]])     # no loop at the end
    print(f"{crit!r} on hand-made rows (prompt_length=1):")
    for row, fired in zip(rows, crit(rows, rows[:, -1], 1)):
        print(f"   generated {row[1:].tolist()} -> stop: {bool(fired)}")

    ids = np.asarray([tok.encode(LOOP_PROMPT)], dtype=np.int64)
    n_new = 30 if quick else 60
    P = ids.shape[1]
    out = model.generate(ids, max_new_tokens=n_new, temperature=0.0, return_dict_in_generate=True)
    seq = out.sequences
    print(f"raw-text prompt {LOOP_PROMPT!r} ({P} tokens), greedy, no repetition stop "
          f"({out.stop_reasons[0]!r} after {int(out.num_new_tokens[0])} tokens):\n   {tok.decode(seq[0, P:].tolist())!r}")
    print(f"   tokens: {[tok.decode([t]) for t in seq[0, P:].tolist()]}")

    # Replay the same tokens through each criterion, one step at a time, as generate would.
    table_rows = []
    for criterion in (RepetitionCriteria(2, 3), RepetitionCriteria(4, 3), RepetitionCriteria(8, 3),
                      RepetitionCriteria(8, 2)):
        fired_at = next((k for k in range(1, seq.shape[1] - P + 1)
                         if criterion(seq[:, :P + k], seq[:, P + k - 1], P)[0]), None)
        table_rows.append((repr(criterion), "never" if fired_at is None else fired_at,
                           "-" if fired_at is None else tok.decode(seq[0, P:P + fired_at].tolist())[-30:]))
    table(["criterion", "would stop after (new tokens)", "text ends with"], table_rows)

    stopped = model.generate(ids, max_new_tokens=n_new, temperature=0.0, return_dict_in_generate=True,
                             repetition_stop=RepetitionCriteria(8, 3))
    print(f"generate(..., repetition_stop=RepetitionCriteria(8, 3)): stop reason {stopped.stop_reasons[0]!r} "
          f"after {int(stopped.num_new_tokens[0])} new tokens (instead of {int(out.num_new_tokens[0])}); "
          f"same tokens as the replay: {np.array_equal(stopped.sequences[0], seq[0, :stopped.sequences.shape[1]])}")


# ============================================================== 5.8 testing your own sampler
def _nucleus(x, keep_rule):
    """A learner's top-p: rank the tokens, then keep those whose ``before`` (the mass ranked
    above them) passes ``keep_rule(before, p)``."""
    order = np.argsort(-x, axis=-1, kind="stable")                       # [B, V] most likely first
    probs = S.softmax(np.take_along_axis(x, order, axis=-1))              # float64, in that order
    before = np.cumsum(probs, axis=-1) - probs                            # [B, V] mass ranked above
    keep_sorted = keep_rule(before)
    keep_sorted[:, 0] = True                                              # the most likely token stays
    keep = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, x, -np.inf).astype(x.dtype)


def my_top_p_le(x, p):
    """First attempt: keep while the mass above is <= p (one token too many when it equals p)."""
    return _nucleus(x, lambda before: before <= p)


def my_top_p_lt(x, p):
    """The definition: keep while the mass above is < p (exact arithmetic would make this right)."""
    return _nucleus(x, lambda before: before < p)


def my_top_p_tol(x, p):
    """The definition, with rounding allowed for: a mass within 4 V eps below p counts as p."""
    return _nucleus(x, lambda before: before < p - 4 * x.shape[-1] * np.finfo(np.float64).eps)


def testing_your_sampler(quick):
    heading("[5.8] testing your own top-p with npllm.testing.check_filter (Hypothesis)")
    try:
        from npllm.testing import check_filter
    except ImportError as e:
        print(f"skipped: {e}")
        return
    n = 50 if quick else 400
    rows, failures = [], []
    for fn in (my_top_p_le, my_top_p_lt, my_top_p_tol, S.top_p_filter):
        kept = [int(np.isfinite(fn(np.zeros((1, V), np.float32), 0.5)).sum()) for V in (12, 300)]
        t0 = time.perf_counter()
        try:
            check_filter(fn, "top_p", max_examples=n, derandomize=True)
            verdict = "passes"
        except AssertionError as e:
            verdict = "raises AssertionError (below)"
            failures.append(str(e).split("\nFalsifying")[0])
        rows.append((fn.__name__, kept[0], kept[1], f"{verdict} [{time.perf_counter() - t0:.1f} s]"))
    table(["top-p", "kept of 12 equal logits, p=0.5 (6 is right)", "of 300 (150)",
           f"check_filter(fn, 'top_p', max_examples={n}, derandomize=True)"], rows)
    for failure in failures:
        print("as check_filter reports it (the shrunk example):")
        print("\n".join("    " + line for line in failure.splitlines()))


def main(quick: bool = False) -> None:
    architecture()
    kv_cache_equivalence(quick)
    sampling_basics(quick)
    testing_your_sampler(quick)
    exercise1_hand_step()
    exercise2_kv_memory(quick)
    pair = default_model()
    if pair is None:
        return
    model, tok = pair
    if quick:  # a short raw-text prompt keeps the quick run to seconds
        prompt = np.asarray([tok.encode(QUICK_PROMPT)], dtype=np.int64)
        print(f"(quick mode: exercises 3 and 4 use the raw-text prompt {QUICK_PROMPT!r} instead of the chat "
              f"prompt, fewer samples and fewer tokens)")
    else:
        prompt = chat_ids(tok, CHAT_PROMPT)
        print(f"chat prompt: {CHAT_PROMPT!r} -> {prompt.shape[1]} tokens with the chat template")
    next_token_distribution(model, tok, prompt)
    exercise3_diversity(model, tok, prompt, quick)
    exercise4_greedy_vs_sampling(model, tok, prompt, quick)
    exercise5_repetition_stop(model, tok, quick)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
