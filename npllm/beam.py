"""Lesson 10 — beam search, with HF's names and semantics (transformers 5.x ``_beam_search``).

Greedy keeps one sequence; beam search keeps the ``num_beams`` best by the sum of their
tokens' log-probabilities.  Each step, per prompt:

    log_probs = processors(seqs, log_softmax(logits))        [num_beams, V]  (penalties act on log-probs)
    total     = beam_score[:, None] + log_probs              [num_beams, V]
    top K = max(2, 1 + n_eos) x num_beams of the flattened [num_beams * V]     (so enough survive EOS)
    candidates that stop (EOS, max length) and rank in the first num_beams are *finished*,
        with score sum_logprobs / generated_len ** length_penalty;
    the best num_beams that do not stop are the next running beams; the KV cache rows follow
        their parents (``KVCache.reorder(beam_idx)``).

Initially only beam 0 is live (the others score -1e9), so step 1 draws distinct tokens.
``early_stopping``: True stops once num_beams hypotheses are finished; False (HF's default)
stops when the best running beam, scored at its current length, cannot beat the worst finished
one; "never" scores it at the longest possible length when length_penalty > 0.  The outputs are
the ``num_return_sequences`` best finished beams, best first, with ``sequences_scores`` (when
``output_scores``) and ``beam_indices`` (which beam each token came from, batch offset included,
-1 past the end), as HF returns them.

Shape legend: B prompts, N = num_beams, K candidates kept per step, V vocabulary, L max length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .errors import GenerationParameterError

__all__ = ["beam_search", "BeamSearchOutput"]

NEG = np.float32(-1.0e9)  # HF's "impossible" score


@dataclass
class BeamSearchOutput:
    """What ``generate(..., num_beams=N, return_dict_in_generate=True)`` returns (HF
    ``GenerateBeamDecoderOnlyOutput``)."""

    sequences: np.ndarray                      # int64 [B * num_return_sequences, T0 + n]
    sequences_scores: Optional[np.ndarray]     # float32 [B * num_return_sequences] (output_scores)
    beam_indices: np.ndarray                   # int64 [B * num_return_sequences, n], -1 past the end
    scores: Optional[Tuple[np.ndarray, ...]] = None  # n x float32 [B * N, V]: processed log-probs per step
    stop_reasons: Optional[List[str]] = None   # "eos", "length" or "stop" per returned sequence
    num_new_tokens: Optional[np.ndarray] = None  # int64 per returned sequence (stop token included)


def _gather(a, idx):
    """a [B, N, ...] -> [B, k, ...]: a[b, idx[b, j]] (HF ``_gather_beams``)."""
    return np.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)


def _top(scores, k):
    """Indices of the k largest per row, best first (ties: lower index first) — ``torch.topk``."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _sample_without_replacement(scores, k, rng):
    """k indices per row drawn without replacement from softmax(scores) (``torch.multinomial``)."""
    out = np.empty((scores.shape[0], k), np.int64)
    for b in range(scores.shape[0]):
        p = np.exp(scores[b].astype(np.float64) - scores[b].max())
        for j in range(k):
            c = np.cumsum(p)
            i = int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), p.shape[0] - 1))
            out[b, j] = i
            p[i] = 0.0
    return out


def _log_softmax32(logits):
    # float32 log-softmax over the last axis (HF: in float32)
    z = logits.astype(np.float32)
    m = z.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0))
    with np.errstate(divide="ignore", over="ignore"):
        return (z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))).astype(np.float32)


def _check(num_beams, length_penalty, early_stopping, num_return_sequences):
    if early_stopping not in (True, False, "never") or not isinstance(early_stopping, (bool, str)):
        raise GenerationParameterError(f'early_stopping must be True, False or "never", got {early_stopping!r}')
    if num_return_sequences > num_beams:
        raise GenerationParameterError(
            f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})")


def beam_search(model, ids, mask, max_new_tokens, processors, criteria, do_sample, rng, pad, eos,
                num_beams, length_penalty, early_stopping, num_return_sequences, output_scores):
    """Beam search over left-padded prompts ``ids`` [B, T0]; see the module docstring.
    ``processors``/``criteria`` are ``generate``'s; returns a ``BeamSearchOutput``."""
    import inspect

    from .generation import _forward, _new_cache, _prefill

    _check(num_beams, length_penalty, early_stopping, num_return_sequences)
    B, T0 = ids.shape
    N, V = num_beams, model.config.vocab_size
    L = T0 + max_new_tokens
    K = max(2, 1 + len(eos)) * N
    if max_new_tokens == 0:
        rep = np.repeat(ids, num_return_sequences, axis=0)
        return BeamSearchOutput(rep, np.zeros(rep.shape[0], np.float32) if output_scores else None,
                                np.zeros((rep.shape[0], 0), np.int64), () if output_scores else None,
                                ["length"] * rep.shape[0], np.zeros(rep.shape[0], np.int64))
    top_mask = np.arange(K) < N                                      # [K]: may finish this step
    ids_x, mask_x = np.repeat(ids, N, axis=0), np.repeat(mask, N, axis=0)   # [B*N, T0]
    running = np.full((B, N, L), pad, np.int64)
    running[:, :, :T0] = ids_x.reshape(B, N, T0)
    running_scores = np.zeros((B, N), np.float32)
    running_scores[:, 1:] = NEG                                      # only beam 0 is live at first
    running_bi = np.full((B, N, max_new_tokens), -1, np.int64)
    seqs, bi = running.copy(), running_bi.copy()                     # the finished hypotheses
    scores = np.full((B, N), NEG, np.float32)
    finished = np.zeros((B, N), bool)
    reasons = np.full((B, N), "length", dtype=object)
    unsatisfied = np.ones((B, 1), bool)                              # improvement still possible
    all_scores = []

    cache = _new_cache(model, B * N, T0, L)
    positions = np.where(mask_x == 0, 1, np.cumsum(mask_x, axis=1) - 1)
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    logits, cache = _prefill(model, ids_x, mask_x, cache, positions, keep_last)  # [B*N, V]
    full_mask = np.concatenate([mask_x, np.ones((B * N, max_new_tokens), mask_x.dtype)], axis=1)
    cur = T0
    while True:
        log_probs = processors(running[:, :, :cur].reshape(B * N, cur), _log_softmax32(logits))  # [B*N, V]
        if output_scores:
            all_scores.append(np.array(log_probs, np.float32))
        total = (log_probs.reshape(B, N, V) + running_scores[:, :, None]).reshape(B, N * V)
        if do_sample:
            idx = _sample_without_replacement(total, K, rng)
            order = np.argsort(-np.take_along_axis(total, idx, axis=1), axis=1, kind="stable")
            idx = np.take_along_axis(idx, order, axis=1)
        else:
            idx = _top(total, K)                                     # [B, K]
        topk_lp = np.take_along_axis(total, idx, axis=1).astype(np.float32)
        parent, tok = idx // V, idx % V
        cand = _gather(running, parent)                              # [B, K, L]
        cand[:, :, cur] = tok
        cand_bi = _gather(running_bi, parent)
        cand_bi[:, :, cur - T0] = parent + np.arange(B)[:, None] * N
        stop, why = criteria(cand[:, :, :cur + 1].reshape(B * K, cur + 1), tok.reshape(-1), T0)
        hits, why = stop.reshape(B, K), np.array(why, dtype=object).reshape(B, K)

        # the next running beams: the best N candidates that did not stop
        run_lp = (topk_lp + hits.astype(np.float32) * NEG).astype(np.float32)
        nxt = _top(run_lp, N)
        running, running_scores, running_bi = _gather(cand, nxt), _gather(run_lp, nxt), _gather(cand_bi, nxt)

        # the finished hypotheses: merge the ones that just stopped among the top N
        just = hits & top_mask[None, :]
        fin_lp = (topk_lp / np.float32((cur + 1 - T0) ** length_penalty)).astype(np.float32)
        full = finished.all(axis=1, keepdims=True) & (early_stopping is True)
        fin_lp = fin_lp + full * NEG + (~unsatisfied) * NEG + (~just) * NEG
        m_scores = np.concatenate([scores, fin_lp.astype(np.float32)], axis=1)
        pick = _top(m_scores, N)
        seqs = _gather(np.concatenate([seqs, cand], axis=1), pick)
        scores = _gather(m_scores, pick)
        bi = _gather(np.concatenate([bi, cand_bi], axis=1), pick)
        finished = _gather(np.concatenate([finished, just], axis=1), pick)
        reasons = _gather(np.concatenate([reasons, why], axis=1), pick)

        beam_idx = running_bi[:, :, cur - T0].reshape(-1)            # [B*N]: each new row's parent row
        cur += 1
        # can a running beam still beat the worst finished one?
        best_len = (L - T0) if (early_stopping == "never" and length_penalty > 0.0) else (cur - T0)
        best_running = running_scores[:, :1] / np.float32(best_len ** length_penalty)
        worst = np.where(finished, scores.min(axis=1, keepdims=True), NEG)
        unsatisfied = unsatisfied & (best_running > worst).any(axis=1, keepdims=True)
        go_on = unsatisfied.any() and not (finished.all() and early_stopping is True) and not hits.all()
        if not go_on:
            break
        if hasattr(cache, "reorder"):                                 # KVCache: rows follow their parents
            cache.reorder(beam_idx)
            if cache.length + 1 > cache.max_seq_len:
                cache.reserve(min(L, max(cache.length + 1, 2 * cache.max_seq_len)))
        elif cache is not None:                                       # the seed's list of (k, v)
            cache = [(k[beam_idx], v[beam_idx]) for k, v in cache]
        m = np.ascontiguousarray(full_mask[:, :cur])
        pos = m.sum(axis=1, keepdims=True) - 1
        logits, cache = _forward(model, running[:, :, cur - 1].reshape(B * N, 1), m, cache, pos, keep_last)

    R = num_return_sequences
    seqs, scores, bi = seqs[:, :R].reshape(B * R, L), scores[:, :R].reshape(B * R), bi[:, :R].reshape(B * R, -1)
    lengths = (bi >= 0).sum(axis=1)
    n = int(lengths.max())
    return BeamSearchOutput(
        sequences=seqs[:, :T0 + n], sequences_scores=scores if output_scores else None,
        beam_indices=bi[:, :n], scores=tuple(all_scores) if output_scores else None,
        stop_reasons=[str(r) for r in reasons[:, :R].reshape(-1)], num_new_tokens=lengths.astype(np.int64))
