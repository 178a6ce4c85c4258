"""Lesson 10 — speculative decoding: guess several tokens, check them all in one pass.

    draft  d1..dk           (prompt lookup: copied from the context; or an assistant model)
    verify [last, d1..dk]   one forward pass -> the target's logits at k + 1 positions
    accept while the target agrees, then take the target's own token; crop the cache back

Greedy: the target's argmax decides every token, so the output is plain greedy's, token for
token — provided the verify pass computes exactly the logits k + 1 decode steps would.  It
does: ``verify_forward`` runs each row through the decode kernels (``verify_layer`` in
``ops/decode_layer.py``; matrices with ``MATVECR``, the decode matvec per row), only reading
the weights once for all rows.  That is where the speed comes from: decoding one token is
bound by reading the weights, and k + 1 tokens read them once.

Sampling: rejection sampling (Leviathan et al. 2023, Alg. 1).  A draft token d drawn from q
is kept with probability min(1, p(d) / q(d)); on the first rejection the token is drawn from
norm(max(0, p - q)); when all k are kept, one more from p.  Every emitted token then has the
target distribution p exactly.  Prompt lookup has no draft distribution: q is a point mass on
d, so d is kept with probability p(d), and on rejection the token comes from p without d.

``prompt_lookup_num_tokens`` / ``num_assistant_tokens`` are upper bounds: a draft of 4 or more is
cut so that the verify pass has a multiple of 4 rows (its Q4_1/Q8_0 matvec takes rows in fours).

HF: ``generate(prompt_lookup_num_tokens=, max_matching_ngram_size=)``
(``PromptLookupCandidateGenerator``) and ``generate(assistant_model=)``
(``AssistedCandidateGenerator``, ``_speculative_sampling``).  Batch size 1, as in HF.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from . import sampling
from .errors import GenerationParameterError

__all__ = ["prompt_lookup_candidates", "verify_forward", "PromptLookup", "AssistantDrafter"]


# ============================================================== the verify pass
def _fast_verify(model) -> bool:
    """Whether every layer has the one-call decode kernel (quantized layers, float32)."""
    from .quant import QuantizedWeight
    from .quant.weight import _use_reference

    layers = getattr(model, "layers", None)
    return (layers is not None and getattr(model, "dtype", None) == np.float32 and not _use_reference()
            and all(getattr(layer, "one_call", None) is not None for layer in layers)
            and isinstance(model.lm_head, (np.ndarray, QuantizedWeight)))


def verify_forward(model, tokens, key_mask, cache, position0):
    """Logits [T, V] for T new tokens of one sequence, bit-equal to T decode steps.

    tokens:    int [T], appended to ``cache`` (a ``KVCache`` with batch 1) at ``cache.length``
    key_mask:  int [1, cache.length + T], 1 for real tokens
    position0: the RoPE position of ``tokens[0]``

    Models whose layers lack the one-call kernel take T ordinary decode steps (exact too,
    without the speed-up).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    T = tokens.shape[0]
    if not _fast_verify(model):
        if cache.length + T > cache.max_seq_len:
            cache.reserve(max(2 * cache.max_seq_len, cache.length + T))
        rows = []
        for t in range(T):
            L = cache.length
            logits, cache = model.forward(tokens[None, t:t + 1], attention_mask=key_mask[:, :L + 1],
                                          past_key_values=cache, use_cache=True,
                                          position_ids=np.array([[position0 + t]]), logits_to_keep=1)
            rows.append(logits[0, -1])
        return np.stack(rows)
    from .ops.decode_layer import verify_layer
    from .quant import QuantizedWeight
    from .quant.kernels import matvec_rows

    if cache.length + T > cache.max_seq_len:
        cache.reserve(max(2 * cache.max_seq_len, cache.length + T))
    x = model._embed(tokens[None])[0]                                            # [T, D]
    # RoPE tables one position at a time, as decode computes them (same rounding)
    per_pos = [model._ropes(np.array([[position0 + t]])) for t in range(T)]
    ropes = {kind: tuple(np.ascontiguousarray(np.concatenate([p[kind][i] for p in per_pos]))
                         for i in (0, 1)) for kind in per_pos[0]}                # [T, 1, Dh] each
    key_mask = np.ascontiguousarray(key_mask, dtype=np.int64)
    for layer in model.layers:
        rope = layer.self_attn.rope
        cos, sin = ropes[rope] if rope is not None else (None, None)
        x = verify_layer(layer.one_call, x, cos, sin, key_mask, cache.keys[layer.idx],
                         cache.values[layer.idx], cache.length)
    cache.advance(T)
    h = model.norm(x[:, None])[:, 0]                                             # [T, D], per row
    head = model.lm_head
    if isinstance(head, QuantizedWeight):
        logits = np.empty((T, head.shape[0]), np.float32)
        matvec_rows(head.ggml_type, head._addresses(), np.ascontiguousarray(h), logits)
    else:
        logits = np.concatenate([h[t:t + 1] @ head.T for t in range(T)])         # decode's gemv per row
    cap = model.config.final_logit_softcapping
    if cap:
        for t in range(T):
            logits[t] = np.tanh(logits[t:t + 1] / cap)[0] * logits.dtype.type(cap)
    return logits


# ============================================================== drafters
def prompt_lookup_candidates(seq, num_tokens: int, max_ngram_size: int = 2, eos_token_ids=()) -> np.ndarray:
    """HF's prompt lookup: the draft that followed an earlier copy of the context's last n-gram.

    For n from ``max_ngram_size`` down to 1, look for the sequence's last n tokens earlier in
    it; the first (leftmost) occurrence with tokens after it wins, and up to ``num_tokens`` of
    those are the draft, cut before the first EOS.  No match: an empty draft.

    >>> prompt_lookup_candidates(np.array([5, 6, 7, 8, 5, 6]), 3).tolist()
    [7, 8, 5]
    """
    seq = np.asarray(seq)
    L = seq.shape[0]
    for n in range(min(max_ngram_size, L - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(seq[:L - 1], n)   # [L - n, n]
        hits = np.flatnonzero((windows == seq[L - n:]).all(axis=1))
        if hits.size:
            start = hits[0] + n
            draft = seq[start:min(start + num_tokens, L)]
            if len(eos_token_ids):
                at = np.flatnonzero(np.isin(draft, eos_token_ids))
                if at.size:
                    draft = draft[:at[0]]
            return draft.astype(np.int64)
    return np.zeros(0, np.int64)


class PromptLookup:
    """Drafts copied from the context (HF ``PromptLookupCandidateGenerator``); no draft
    distribution (q = None: a point mass on each draft token)."""

    def __init__(self, num_tokens: int, max_ngram_size: int, eos_token_ids):
        self.num_tokens, self.max_ngram_size, self.eos = num_tokens, max_ngram_size, list(eos_token_ids)

    def propose(self, seq, k, key_mask, n_pad):
        return prompt_lookup_candidates(seq, min(k, self.num_tokens), self.max_ngram_size, self.eos), None


class AssistantDrafter:
    """Drafts generated by a smaller model with the same vocabulary (HF ``assistant_model``).

    It keeps its own KV cache, cropped back to what the target accepted; its tokens are chosen
    the way the target's are (the same processors; greedy or sampled), and when sampling their
    distributions q are returned for the rejection test."""

    def __init__(self, assistant, num_tokens: int, processors, do_sample: bool, rng):
        self.model, self.num_tokens = assistant, num_tokens
        self.processors, self.do_sample, self.rng = processors, do_sample, rng
        self.cache, self.tokens = None, np.zeros(0, np.int64)  # tokens: what the cache holds

    def propose(self, seq, k, key_mask, n_pad):
        k = min(k, self.num_tokens)
        if k == 0:
            return np.zeros(0, np.int64), None
        S = seq.shape[0]
        if self.cache is None:
            self.cache = self.model.new_cache(1, S + 64)
        keep = min(self.tokens.shape[0], S - 1)
        diff = np.flatnonzero(self.tokens[:keep] != seq[:keep])
        keep = int(diff[0]) if diff.size else keep
        self.cache.crop(min(keep, self.cache.length))
        cur = list(seq)
        feed = seq[self.cache.length:]
        drafts, qs = [], []
        for i in range(k):
            L = self.cache.length
            if L + feed.shape[0] > self.cache.max_seq_len:
                self.cache.reserve(max(2 * self.cache.max_seq_len, L + feed.shape[0]))
            pos = np.arange(L, L + feed.shape[0])[None] - n_pad
            logits, self.cache = self.model.forward(feed[None], attention_mask=key_mask[:, :L + feed.shape[0]],
                                                    past_key_values=self.cache, use_cache=True,
                                                    position_ids=pos, logits_to_keep=1)
            sc = self.processors(np.array(cur, np.int64)[None], logits[:, -1].astype(np.float32))
            if self.do_sample:
                q = sampling.softmax(sc[0])
                d = int(_draw(q, self.rng))
                qs.append(q)
            else:
                d = int(np.argmax(sc[0]))
            drafts.append(d)
            cur.append(d)
            feed = np.array([d], np.int64)
        self.tokens = np.array(cur[:-1], np.int64)  # the last draft was not fed
        return np.array(drafts, np.int64), (np.stack(qs) if self.do_sample else None)


def _draw(p, rng) -> int:
    """One index drawn from the probabilities p [V] (inverse CDF)."""
    c = np.cumsum(p)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), p.shape[0] - 1))


def _accept_or_resample(p, d, q, rng) -> int:
    """Leviathan et al.'s rejection step: keep d with probability min(1, p(d) / q(d)), else draw
    from norm(max(0, p - q)).  q None is a point mass on d (prompt lookup)."""
    if q is None:
        keep = p[d]
        residual = p.copy()
        residual[d] = 0.0
    else:
        keep = 1.0 if q[d] <= 0 else min(1.0, p[d] / q[d])
        residual = np.maximum(0.0, p - q)
    if rng.random() < keep or residual.sum() <= 0:
        return int(d)
    return _draw(residual, rng)


# ============================================================== the loop
def _next_limit(limit: int, k: int, accepted: int, num_tokens: int) -> int:
    """How many drafts to ask for after a round that verified ``k`` and accepted ``accepted``.

    A verify pass of 8 rows costs about twice one of 4, and 4 rows about two decode steps
    (lesson 10), so drafts pay only while they are accepted.  Like HF's "heuristic" schedule for
    assistant models, grow after a round that accepted every draft and shrink after one that
    accepted fewer than half: by 4, the verify kernels' row group, between 3 and ``num_tokens``.
    After a round that accepted none, pause: one round without drafts (a plain decode step,
    ``limit`` 0), since right after the text left the copied span the next lookup is most often
    wrong too; then start again at 3.  A round without drafts because no n-gram matched says
    nothing, and keeps the limit.  The drafts' length changes the speed only: greedy output is
    the same for any draft.
    """
    lo = min(3, num_tokens)
    if k == 0:
        return lo if limit == 0 else limit
    if accepted == k:
        return min(num_tokens, k + 4)
    if accepted == 0:
        return 0
    if accepted < k // 2:
        return max(lo, k - 4)
    return limit


def speculative_loop(model, ids, mask, max_new_tokens, processors, criteria, do_sample, rng, pad,
                     streamer, output_scores, output_logprobs, drafter, num_tokens):
    """``generation._decode_loop`` with drafts verified k + 1 tokens per forward pass (batch 1).

    Invariant at the top of a round: ``seq[:S]`` is decided; ``rows`` [k + 1, V] are the target's
    logits for positions S .. S + k given the k drafts at S .. S + k - 1, which the cache holds.
    """
    from .generation import GenerateOutput, _check_finite, _new_cache, _prefill

    _, T0 = ids.shape
    total = T0 + max_new_tokens
    seq = np.full(total, pad, np.int64)
    seq[:T0] = ids[0]
    key_mask = np.ones((1, total + num_tokens + 1), np.int64)
    key_mask[0, :T0] = mask[0]
    n_pad = int(T0 - mask[0].sum())
    reason = "length" if max_new_tokens == 0 else None
    all_scores, all_logprobs = [], []
    n = 0
    if max_new_tokens > 0:
        cache = _new_cache(model, 1, T0, total + num_tokens + 1)
        positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)
        rows, cache = _prefill(model, ids, mask, cache, positions, True)          # [1, V]
        S, drafts, q = T0, np.zeros(0, np.int64), None
        live = np.ones(1, dtype=bool)
        limit = num_tokens  # drafts to ask for next (see _next_limit)
        while reason is None:
            k = drafts.shape[0]
            for i in range(k + 1):
                j = S + i                                    # the index being decided
                _check_finite(rows[i:i + 1], live, n)
                sc = processors(seq[None, :j], rows[i:i + 1].astype(np.float32, copy=False))  # [1, V]
                if do_sample:
                    p = sampling.softmax(sc[0])
                    t = _accept_or_resample(p, drafts[i], None if q is None else q[i], rng) if i < k \
                        else _draw(p, rng)
                else:
                    t = int(np.argmax(sc[0]))
                seq[j] = t
                n += 1
                if output_scores:
                    all_scores.append(np.array(sc, dtype=np.float32))
                if output_logprobs:
                    all_logprobs.append(sampling.log_softmax(sc)[:, t].astype(np.float32))
                if streamer is not None:
                    (streamer.put if hasattr(streamer, "put") else streamer)(np.array([t], np.int64))
                stop, why = criteria(seq[None, :j + 1], np.array([t], np.int64), T0)
                if stop[0]:
                    reason = why[0]
                    break
                if i == k or t != drafts[i]:
                    break                                    # t is the target's own: not in the cache
            if reason is not None:
                break
            cache.crop(j)                                    # drop the rejected drafts
            S = j + 1
            limit = _next_limit(limit, k, i, num_tokens)     # i drafts were accepted
            room = min(max_new_tokens - n - 1, limit)        # k drafts give up to k + 1 tokens
            drafts, q = drafter.propose(seq[:S], room, key_mask, n_pad) if room > 0 else (drafts[:0], None)
            if drafts.shape[0] >= 4 and (drafts.shape[0] + 1) % 4:
                # the verify matvec takes rows four at a time (a lone row costs about two of a
                # group's): 8 rows verify up to 8 tokens for less than 11 rows would cost
                keep = (drafts.shape[0] + 1) // 4 * 4 - 1
                drafts, q = drafts[:keep], (None if q is None else q[:keep])
            tokens = np.concatenate([seq[S - 1:S], drafts])
            rows = verify_forward(model, tokens, key_mask[:, :S + drafts.shape[0]], cache, S - 1 - n_pad)

    return GenerateOutput(
        sequences=seq[None, :T0 + n].copy(), stop_reasons=[reason or "length"],
        scores=tuple(all_scores) if output_scores else None,
        logprobs=(np.stack(all_logprobs, axis=1) if n else np.zeros((1, 0), np.float32))
        if output_logprobs else None,
        num_new_tokens=np.array([n], np.int64))
