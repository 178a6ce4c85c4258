"""Lesson 10 example: beam search by hand on a 5-token vocabulary; speculative decoding that
never changes the greedy output and keeps the sampling distribution.

Reads: npllm/beam.py (beam_search), npllm/speculative.py (prompt_lookup_candidates,
verify_forward, speculative_loop, _accept_or_resample), npllm/ops/decode_layer.py
(verify_layer), npllm/quant/kernels.py (matvec_rows).
"""

import itertools
import time
from types import SimpleNamespace

import numpy as np

from npllm import speculative
from npllm.sampling import softmax

from ._common import default_model, heading, table

TOKENS = ["A", "B", "C", "D", "<eos>"]
EOS = 4
# P(next | last token): rows are the last token A, B, C, D, <eos>; a bigram "model".
P = np.array([
    [0.10, 0.45, 0.40, 0.00, 0.05],   # after A: B is likelier than C ...
    [0.05, 0.05, 0.32, 0.28, 0.30],   # ... but after B everything is lukewarm
    [0.02, 0.02, 0.02, 0.90, 0.04],   # while after C, D is almost certain
    [0.10, 0.10, 0.10, 0.10, 0.60],
    [0.20, 0.20, 0.20, 0.20, 0.20],
])


class Bigram:
    """A duck-typed model for ``generate``: logits = log P[last token], no cache."""

    config = SimpleNamespace(vocab_size=5, eos_token_ids=[EOS], pad_token_id=EOS)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None):
        with np.errstate(divide="ignore"):
            return np.log(P[np.asarray(input_ids)]).astype(np.float32), None


def seq_text(ids):
    return " ".join(TOKENS[t] for t in ids)


def beam_by_hand():
    heading("[10.1] beam search by hand: prompt A, 5 tokens, num_beams=2, 3 new tokens at most")
    table(["after"] + TOKENS, [[TOKENS[i]] + list(P[i]) for i in range(5)], ".2f")
    # greedy: the most likely next token each time
    seq, lp = [0], 0.0
    for _ in range(3):
        t = int(np.argmax(P[seq[-1]]))
        lp += np.log(P[seq[-1], t])
        seq.append(t)
        if t == EOS:
            break
    print(f"greedy: {seq_text(seq[1:])}   log-prob {lp:.4f}   (prob {np.exp(lp):.4f})")
    # every continuation of up to 3 tokens, scored by its summed log-prob (ending at EOS or length 3)
    best = []
    for n in (1, 2, 3):
        for cont in itertools.product(range(5), repeat=n):
            if EOS in cont[:-1] or (n < 3 and cont[-1] != EOS):
                continue
            p = np.prod([P[a, b] for a, b in zip((0,) + cont, cont)])
            if p > 0:
                best.append((np.log(p), cont))
    best.sort(reverse=True)
    print("the three most likely complete continuations (enumerated):")
    table(["continuation", "sum log-prob", "prob"], [(seq_text(c), lp, np.exp(lp)) for lp, c in best[:3]], ".4f")
    # the two beams, step by step
    beams = [(0.0, (0,))]
    for step in (1, 2, 3):
        cands = sorted(((s + np.log(P[b[-1], t]), b + (t,)) for s, b in beams for t in range(5) if P[b[-1], t] > 0),
                       reverse=True)
        print(f"step {step}: the best candidates of {len(beams)} beam(s) x 5 tokens:")
        table(["candidate", "sum log-prob"], [(seq_text(c[1:]), s) for s, c in cands[:4]], ".4f")
        beams = [c for c in cands if c[1][-1] != EOS][:2]
    out = Bigram()
    from npllm.generation import generate

    r = generate(out, [[0]], max_new_tokens=3, num_beams=2, num_return_sequences=2, length_penalty=0.0,
                 early_stopping="never", temperature=0, return_dict_in_generate=True, output_scores=True)
    print("npllm generate(num_beams=2, length_penalty=0, early_stopping='never'):")
    table(["sequence", "sequences_scores", "beam_indices"],
          [(seq_text(s[1:][s[1:] != EOS].tolist() + ([EOS] if EOS in s[1:] else [])), sc, bi.tolist())
           for s, sc, bi in zip(r.sequences, r.sequences_scores, r.beam_indices)], ".4f")
    for lp in (1.0, 2.0):
        r = generate(out, [[0]], max_new_tokens=3, num_beams=2, length_penalty=lp, temperature=0,
                     return_dict_in_generate=True, output_scores=True)
        s = r.sequences[0, 1:]
        print(f"length_penalty={lp}: best {seq_text(s[:r.num_new_tokens[0]].tolist())}, "
              f"score {r.sequences_scores[0]:.4f} = sum log-prob / {r.num_new_tokens[0]}**{lp}")


def chat(tok, text):
    return np.array([tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)])


PARAGRAPH = ("The river Thames flows through London. It passes under Tower Bridge, past the Houses of "
             "Parliament, and out to the North Sea. Many boats use the river every day.")


def verify_is_exact(model, tok):
    heading("[10.2] the verify pass: T tokens in one call, bit-equal to T decode steps")
    ids = np.array([tok.encode("One, two, three, four, five,")])
    new = tok.encode(" six, seven, eight")
    T0, T = ids.shape[1], len(new)
    # T decode steps
    cache = model.new_cache(1, T0 + T + 1)
    model.forward(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    dec = []
    for t in new:
        lg, _ = model.forward(np.array([[t]]), attention_mask=np.ones((1, cache.length + 1), np.int64),
                              past_key_values=cache, use_cache=True, logits_to_keep=1)
        dec.append(lg[0, -1])
    dec = np.stack(dec)
    # the verify pass
    cache = model.new_cache(1, T0 + T + 1)
    model.forward(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    ver = speculative.verify_forward(model, np.array(new), np.ones((1, T0 + T), np.int64), cache, T0)
    # the prefill path (dequantize + BLAS, another attention kernel) over the same tokens
    cache = model.new_cache(1, T0 + T + 1)
    model.forward(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    pre, _ = model.forward(np.array([new]), attention_mask=np.ones((1, T0 + T), np.int64), past_key_values=cache,
                           use_cache=True)
    table(["path", "max |logits - decode logits|", "same argmax at every position"],
          [("verify_forward", float(np.abs(ver - dec).max()), bool((ver.argmax(1) == dec.argmax(1)).all())),
           ("prefill forward", float(np.abs(pre[0] - dec).max()), bool((pre[0].argmax(1) == dec.argmax(1)).all()))],
          ".3g")


def lookup_is_greedy(model, tok, quick):
    heading("[10.3] prompt lookup: the greedy tokens, fewer passes over the weights")
    n = 24 if quick else 80
    rows = []
    for name, text in (("repeat the paragraph", "Repeat this paragraph exactly:\n\n" + PARAGRAPH),
                       ("open question", "Write a short poem about winter.")):
        ids = chat(tok, text)
        model.generate(ids, max_new_tokens=4, temperature=0)                      # warm-up
        stamps = []  # the time of each new token: decoding speed without the prompt's prefill
        plain = model.generate(ids, max_new_tokens=n, temperature=0,
                               streamer=lambda t: stamps.append(time.perf_counter()))
        t_plain = stamps[-1] - stamps[0]
        calls = []
        real = speculative.verify_forward
        speculative.verify_forward = lambda *a: calls.append(len(a[1])) or real(*a)
        try:
            stamps = []
            fast = model.generate(ids, max_new_tokens=n, temperature=0, prompt_lookup_num_tokens=10,
                                  streamer=lambda t: stamps.append(time.perf_counter()))
            t_fast = stamps[-1] - stamps[0]
        finally:
            speculative.verify_forward = real
        k = plain.shape[1] - ids.shape[1]
        rows.append((name, k, bool(np.array_equal(plain, fast)), len(calls) + 1, sum(calls) - len(calls),
                     (k - 1) / t_plain, (k - 1) / t_fast))
    table(["prompt", "new tokens", "identical", "forward passes", "drafts verified", "plain tok/s",
           "lookup tok/s"], rows, ".3g")
    print("(forward passes: the prefill plus one verify pass per round; a plain run makes one per token;\n"
          " tok/s: from the first new token to the last, so the prompt's prefill is left out)")


def rejection_keeps_p(quick):
    heading("[10.4] rejection sampling keeps the target distribution p")
    rng = np.random.default_rng(0)
    p = softmax(np.array([2.0, 1.0, 0.5, 0.0, -1.0]))
    q = softmax(np.array([0.0, 1.5, 0.5, 1.0, 0.0]))  # a draft that is wrong about almost everything
    n = 20000 if quick else 200000
    right = np.zeros(5)
    always = np.zeros(5)
    for _ in range(n):
        d = speculative._draw(q, rng)
        right[speculative._accept_or_resample(p, d, q, rng)] += 1
        always[d] += 1
    table(["token", "target p", "draft q", "rejection sampling", "keep every draft"],
          [(i, p[i], q[i], right[i] / n, always[i] / n) for i in range(5)], ".4f")
    tv = lambda f: 0.5 * np.abs(f / n - p).sum()  # noqa: E731
    print(f"{n} draws; total variation from p: rejection sampling {tv(right):.4f}, keeping every draft "
          f"{tv(always):.4f}; accepted drafts: {sum(min(1, p[i] / q[i]) * q[i] for i in range(5)):.4f} "
          f"= sum_i min(p_i, q_i)")


def main(quick: bool = False):
    beam_by_hand()
    model, tok = default_model()
    verify_is_exact(model, tok)
    lookup_is_greedy(model, tok, quick)
    rejection_keeps_p(quick)
    from . import ex10_structured   # part 3: structured output ([10.S1]-[10.S5])

    ex10_structured.main(quick)


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
