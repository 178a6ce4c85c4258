"""Lesson 05 — sampling: from the last position's logits to the next token.

One decode step turns ``logits [B, V]`` into one token id per row in two stages:

1. **Processing** (pure functions, each returns a new array, never touches its
   input; removed tokens become ``-inf``), applied in this documented order::

       penalties -> temperature -> top-k -> top-p -> min-p -> typical

   Penalties (repetition, frequency/presence, no-repeat-n-gram, EOS suppression
   for ``min_new_tokens``) change the model's preferences, so they apply to
   greedy decoding too.  The rest reshape the distribution we *sample* from, so
   (as in HF transformers) they apply only when sampling.
2. **Selection**: ``greedy`` (argmax, first index on ties) or ``sample`` (draw
   from ``softmax`` with a caller-owned ``np.random.Generator``).

Every function takes ``[B, V]`` or ``[V]`` float logits and matches the HF
transformers class named in its docstring: ``TemperatureLogitsWarper``,
``TopKLogitsWarper``, ``TopPLogitsWarper``, ``MinPLogitsWarper``,
``TypicalLogitsWarper``, ``RepetitionPenaltyLogitsProcessor``,
``NoRepeatNGramLogitsProcessor``, ``MinNewTokensLengthLogitsProcessor`` and
``LogitsProcessorList``.  Frequency/presence penalties follow the OpenAI API.

Probabilities used to *decide* what to remove are computed in float64; the
returned logits keep the input dtype.  Ties are broken by index everywhere:
among equal logits the lower token id ranks higher.

Shape legend: B batch, S tokens so far, V vocabulary.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from ._jit import njit, reference_mode
from .errors import GenerationParameterError

__all__ = [
    "softmax", "log_softmax",
    "apply_temperature", "top_k_filter", "top_p_filter", "min_p_filter", "typical_filter",
    "apply_repetition_penalty", "apply_frequency_presence_penalty", "no_repeat_ngram_filter",
    "suppress_tokens", "greedy", "sample",
    "LogitsProcessor", "RepetitionPenaltyProcessor", "FrequencyPresencePenaltyProcessor",
    "NoRepeatNGramProcessor", "MinNewTokensProcessor", "TemperatureProcessor", "TopKProcessor",
    "TopPProcessor", "MinPProcessor", "TypicalProcessor", "LogitsProcessorList",
    "build_processors", "fused_sampling_filter",
]


# ============================================================== validation
def _bad(name, value, expected):
    raise GenerationParameterError(f"{name} must be {expected}, got {value!r}")


def _integer(value):
    """``value`` as a Python int when it is an integer of any integer type (a 0-d integer
    array too); None otherwise (floats, bools, strings, sequences)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        return None
    return int(value)


def _check_int(name, value, minimum):
    v = _integer(value)
    if v is None or v < minimum:
        _bad(name, value, f"an integer >= {minimum}")
    return v


def _check_float(name, value, low, high, low_open=False, high_open=False):
    """A real number in [low, high] (an end is excluded when its *_open flag is set)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        _bad(name, value, f"a number in {lo}{low}, {high}{hi}")
    return float(value)


def _as_logits(logits):
    """Return (``x`` [B, V] floating, was_1d).  ``x`` may alias the input: never write to it."""
    x = np.asarray(logits)
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise GenerationParameterError(f"logits must have shape [V] or [B, V] with V > 0, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise GenerationParameterError(f"logits must be a float array, got dtype {x.dtype}")
    return (x[None, :], True) if x.ndim == 1 else (x, False)


def _as_ids(ids, batch, vocab_size, name="input_ids"):
    """Token ids as int64 [B, S] (a [S] vector is one row); every id must be in [0, V)."""
    a = np.asarray(ids)
    if a.size == 0:
        return np.zeros((batch, 0), dtype=np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise GenerationParameterError(f"{name} must hold integer token ids, got dtype {a.dtype}")
    a = a.reshape(1, -1) if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[0] != batch:
        raise GenerationParameterError(f"{name} must have shape [B={batch}, S], got {np.shape(ids)}")
    if a.min() < 0 or a.max() >= vocab_size:
        raise GenerationParameterError(f"{name} has ids outside the vocabulary [0, {vocab_size})")
    return a.astype(np.int64, copy=False)


def _finish(out, was_1d):
    return out[0] if was_1d else out


# ============================================================== softmax
def _posinf_view(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Logits whose probabilities can be computed with ``z - max z``.

    A row holding ``+inf`` gives those tokens all the mass, shared equally
    (the limit of ``softmax`` as their logits grow): such a row becomes 0 at
    its ``+inf`` entries and ``-inf`` elsewhere.  Other rows are returned as is
    (no copy when no row holds ``+inf``).
    """
    pos = np.isposinf(z)
    if not pos.any():
        return z
    return np.where(pos.any(axis=axis, keepdims=True), np.where(pos, 0.0, -np.inf), z)


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Stable softmax in float64: ``exp(z - max z) / sum exp(z - max z)``.

    A row that is entirely ``-inf`` gives all zeros (there is nothing to sample);
    a row holding ``+inf`` shares all its mass among its ``+inf`` entries.
    """
    z = _posinf_view(np.asarray(logits, dtype=np.float64), axis)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore"):  # z - m overflows to -inf only where exp gives 0 anyway
        e = np.exp(z - m)
    s = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(s == 0, 1.0, s)


def log_softmax(logits, axis: int = -1) -> np.ndarray:
    """Stable log-softmax in float64: ``z - max z - log sum exp(z - max z)`` (``+inf`` as in ``softmax``)."""
    z = _posinf_view(np.asarray(logits, dtype=np.float64), axis)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", over="ignore"):
        return z - m - np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True))


# ============================================================== temperature
def apply_temperature(logits, temperature: float) -> np.ndarray:
    """``logits / temperature`` (HF ``TemperatureLogitsWarper``).

    temperature < 1 sharpens the distribution, > 1 flattens it.  Zero is not a
    temperature: ask ``greedy`` (or ``generate(temperature=0)``) for argmax.

    A temperature so small that ``logits / temperature`` overflows the dtype
    (about 1e-37 for float32 logits near 30) would turn distinct logits into
    equal infinities.  Such a row is divided after subtracting its largest
    finite logit, in float64: the same distribution, now representable.  All
    mass goes to the argmax; exactly tied maxima share it, as they do at every
    temperature > 0.
    """
    t = _check_float("temperature", temperature, 0.0, math.inf, low_open=True, high_open=True)
    x, was_1d = _as_logits(logits)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        tt = x.dtype.type(t)
        if np.finfo(x.dtype).tiny <= tt < np.inf:
            out = x / tt
        else:  # t is subnormal, 0 or inf in the dtype (float32 below 1.2e-38): divide in float64
            out = (x.astype(np.float64) / t).astype(x.dtype)
        lost = (np.isfinite(x) & ~np.isfinite(out)).any(axis=-1)  # [B] rows that overflowed
        if lost.any():
            rows = x[lost].astype(np.float64)
            finite = np.isfinite(rows)
            top = np.max(np.where(finite, rows, -np.inf), axis=-1, keepdims=True)
            out[lost] = np.where(finite, (rows - top) / t, rows)  # <= 0: only -inf can overflow
    return _finish(out, was_1d)


# ============================================================== top-k
def top_k_filter(logits, top_k: int, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Keep the ``top_k`` largest logits, and every logit tied with the k-th (HF ``TopKLogitsWarper``).

    ``top_k=0`` disables the filter.  At least ``min_tokens_to_keep`` tokens stay.
    """
    k = _check_int("top_k", top_k, 0)
    m = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)
    x, was_1d = _as_logits(logits)
    if k == 0:
        return _finish(x.copy(), was_1d)
    V = x.shape[-1]
    k = min(max(k, m), V)
    kth = np.partition(x, V - k, axis=-1)[:, V - k: V - k + 1]  # [B, 1] the k-th largest value
    return _finish(np.where(x < kth, -np.inf, x).astype(x.dtype, copy=False), was_1d)


# ============================================================== top-p (nucleus)
def _mass_tolerance(V: int) -> float:
    """How far a float64 mass over V tokens may sit from the exact one: 4 V eps.

    Each probability ``exp(z - max) / sum`` carries a relative error below
    (V + 3) u (u = eps / 2: one exp, a sum of V terms, one division), and a
    running sum of up to V of them adds V u more, so the computed tail mass is
    within (2 V + 4) u <= 4 V eps of the exact one.  A mass that close to
    ``top_p`` is treated as reaching it: 150 tokens of a uniform 300 reach
    exactly 0.5, whichever way their float sum rounds.
    """
    return 4.0 * V * np.finfo(np.float64).eps


def _top_p_ref(x: np.ndarray, top_p: float, min_tokens_to_keep: int) -> np.ndarray:
    """NumPy reference.  x: [B, V] -> new [B, V] with the tokens outside the nucleus at -inf.

    Rank tokens by descending logit (lower id first on ties).  Walking up from the
    least likely token, drop tokens while the dropped mass stays <= 1 - top_p
    (up to ``_mass_tolerance``).  What remains is the smallest top-ranked set
    whose mass reaches top_p; the token that crosses the threshold is kept.
    """
    z = _posinf_view(x)  # +inf tokens share all the mass
    order = np.argsort(-z, axis=-1, kind="stable")  # [B, V] token ids, most likely first
    probs = softmax(np.take_along_axis(z, order, axis=-1))  # [B, V] in that order
    tail = np.cumsum(probs[:, ::-1], axis=-1)[:, ::-1]  # [B, V] mass from rank j to the end
    drop_sorted = tail <= 1.0 - top_p + _mass_tolerance(x.shape[-1])
    drop_sorted[:, :min_tokens_to_keep] = False
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)  # back to token-id order
    drop |= np.isneginf(z)  # finite logits beside a +inf one have probability 0
    return np.where(drop, -np.inf, x).astype(x.dtype, copy=False)


@njit
def _top_p_kernel(x, top_p, min_tokens_to_keep, tol, drop):
    # x: [B, V] float64 without +inf, drop: [B, V] bool (zeroed); same rule as _top_p_ref.
    # Sorting all of V (49k tokens) costs milliseconds per step, so first grow a
    # cut-off t while every token below it, all together, still weighs <= 1 - p:
    # those tokens would be dropped anyway.  Only the tokens at or above t are
    # sorted.  A serial loop over the rows: decode batches are small.
    B, V = x.shape
    budget = 1.0 - top_p + tol  # the most mass that may be dropped
    for b in range(B):
        top = np.max(x[b])
        if top == -np.inf:
            continue
        probs = np.exp(x[b] - top)  # [V]
        probs /= np.sum(probs)
        t, below = 0.0, 0.0  # cut-off, mass under it
        trial = (1.0 - top_p) / V
        while trial < 1.0:
            mass = 0.0
            for i in range(V):
                if probs[i] < trial:
                    mass += probs[i]
            if mass > budget:
                break
            t, below, trial = trial, mass, trial * 2.0
        ids = np.flatnonzero((probs >= t) & (x[b] > -np.inf))
        if ids.size < min_tokens_to_keep:  # too few left to honour the minimum: sort them all
            t, below = 0.0, 0.0
            ids = np.flatnonzero(x[b] > -np.inf)
        for i in range(V):
            if probs[i] < t:
                drop[b, i] = True
        order = ids[np.argsort(-x[b, ids], kind="mergesort")]  # stable: lower id first on ties
        tail = below  # mass from rank j down to the least likely token
        for j in range(order.size - 1, min_tokens_to_keep - 1, -1):
            tail += probs[order[j]]
            if tail > budget:
                break
            drop[b, order[j]] = True


def top_p_filter(logits, top_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Nucleus filtering (HF ``TopPLogitsWarper``): keep the smallest set of most
    likely tokens whose probability reaches ``top_p``.  ``top_p=1`` disables it.

    Masses are float64; one within ``_mass_tolerance`` (4 V eps) of ``top_p``
    counts as reaching it, so exact ties are decided as in exact arithmetic:
    a uniform row of 300 keeps 150 tokens at p = 0.5.  Among tokens tied at the
    cut, the lower ids are kept.

    >>> top_p_filter(np.log(np.array([0.5, 0.3, 0.2])), 0.6)   # 0.5 < 0.6, 0.5+0.3 >= 0.6
    array([-0.69314718, -1.2039728 ,        -inf])
    """
    p = _check_float("top_p", top_p, 0.0, 1.0, low_open=True)
    m = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)
    x, was_1d = _as_logits(logits)
    if p == 1.0:
        return _finish(x.copy(), was_1d)
    if reference_mode():
        return _finish(_top_p_ref(x, p, m), was_1d)
    drop = np.zeros(x.shape, dtype=np.bool_)
    z = _posinf_view(np.ascontiguousarray(x, dtype=np.float64))
    _top_p_kernel(z, p, m, _mass_tolerance(x.shape[-1]), drop)
    drop |= np.isneginf(z)  # finite logits beside a +inf one have probability 0
    return _finish(np.where(drop, -np.inf, x).astype(x.dtype, copy=False), was_1d)


# ============================================================== min-p
def min_p_filter(logits, min_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Drop tokens less likely than ``min_p`` times the top token (HF ``MinPLogitsWarper``).

    ``min_p=0`` keeps everything.  The ``min_tokens_to_keep`` most likely tokens always stay.
    """
    mp = _check_float("min_p", min_p, 0.0, 1.0)
    m = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)
    x, was_1d = _as_logits(logits)
    probs = softmax(x)  # [B, V]
    with np.errstate(invalid="ignore"):  # (a row of -inf: 0 / 0, nothing to drop)
        drop = probs / probs.max(axis=-1, keepdims=True) < mp  # the ratio cannot underflow like mp * max
    best = np.argsort(-probs, axis=-1, kind="stable")[:, :m]  # [B, m]
    np.put_along_axis(drop, best, False, axis=-1)
    return _finish(np.where(drop, -np.inf, x).astype(x.dtype, copy=False), was_1d)


# ============================================================== the fused chain
def fused_sampling_filter(logits, temperature=None, top_k: int = 0, top_p: float = 1.0,
                          min_p: float = 0.0) -> np.ndarray:
    """``apply_temperature -> top_k_filter -> top_p_filter -> min_p_filter`` in one pass
    (``min_tokens_to_keep=1``), for the chain ``generate`` runs by default.

    The four filters above each read the whole vocabulary; top-p and min-p even
    sort it.  Here only the top-k candidates are looked at after the first,
    partial selection (``np.partition``, linear in V): temperature and the
    top-k cut are computed as in the chain, then top-p and min-p run on the k
    (or so, ties included) survivors.  The result is the chain's: the same
    kept tokens with the same logits, so ``sample`` draws the same token from
    the same RNG stream.  Min-p's sum of probabilities is taken over a
    full-length row, as the chain does, so its ratios are bit-identical.
    Top-p's masses are summed over the survivors alone, so a cut whose tail
    mass sits within rounding (``_mass_tolerance``) of ``1 - top_p`` may fall
    the other way, as it may between any two correct implementations
    (``npllm.testing.check_filter`` allows that band).

    ``temperature=None`` and ``top_k=0`` skip those steps.  Rows holding NaN
    or ``+inf`` (and ``NPLLM_REFERENCE=1``) take the readable chain instead.

    >>> x = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    >>> fused_sampling_filter(x, top_k=3, top_p=0.7)   # top-3, then 0.5 + 0.3 >= 0.7
    array([[-0.69314718, -1.2039728 ,        -inf,        -inf]])
    """
    t = None if temperature is None else _check_float("temperature", temperature, 0.0, math.inf, True, True)
    k = _check_int("top_k", top_k, 0)
    p = _check_float("top_p", top_p, 0.0, 1.0, low_open=True)
    mp = _check_float("min_p", min_p, 0.0, 1.0)
    x, was_1d = _as_logits(logits)
    if t is not None:
        x = apply_temperature(x, t)  # [B, V] elementwise, cheap; the same values as the chain's
    B, V = x.shape
    k = V if k == 0 else min(k, V)
    part = np.partition(x, V - k, axis=-1)  # [B, V] the k largest at the end, as top_k_filter
    top = part[:, V - k:]  # [B, k]
    if reference_mode() or np.isnan(top).any() or np.isposinf(top).any():  # (NaN sorts last)
        return _finish(_chain(x, k, p, mp), was_1d)
    kth = top[:, :1]  # [B, 1] the k-th largest logit
    out = np.full_like(x, -np.inf)
    tol = _mass_tolerance(V)
    for b in range(B):
        row = x[b]
        ids = np.flatnonzero(row >= kth[b, 0]) if kth[b, 0] > -np.inf else np.flatnonzero(row > -np.inf)
        z = row[ids].astype(np.float64)  # [n] the survivors of top-k, ascending ids
        if p < 1.0:
            drop = np.zeros((1, ids.size), dtype=np.bool_)
            _top_p_kernel(z[None, :], p, 1, tol, drop)
            ids, z = ids[~drop[0]], z[~drop[0]]
        if mp > 0.0:
            with np.errstate(over="ignore"):  # (as softmax: only where exp gives 0 anyway)
                e = np.exp(z - z.max())  # [n] as softmax's exp(z - max z)
            full = np.zeros(V)  # the chain sums over the whole row (pairwise): the same sum
            full[ids] = e
            probs = e / np.sum(full)
            keep = probs / probs.max() >= mp
            keep[np.argmax(probs)] = True  # min_tokens_to_keep = 1: the most likely (lowest id) stays
            ids = ids[keep]
        out[b, ids] = row[ids]
    return _finish(out, was_1d)


def _chain(x, k, p, mp):
    """The readable chain after temperature: top-k -> top-p -> min-p."""
    out = top_k_filter(x, k) if k < x.shape[-1] else x
    if p < 1.0:
        out = top_p_filter(out, p)
    if mp > 0.0:
        out = min_p_filter(out, mp)
    return out.copy() if out is x else out


# ============================================================== typical
def typical_filter(logits, typical_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Locally typical sampling (Meister et al. 2022; HF ``TypicalLogitsWarper``).

    Rank tokens by how close their surprisal ``-log p`` is to the entropy ``H``,
    then keep the closest ones until their mass reaches ``typical_p``.  The most
    likely token may be dropped.  ``typical_p=1`` disables the filter.
    """
    mass = _check_float("typical_p", typical_p, 0.0, 1.0, low_open=True)
    m = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)
    x, was_1d = _as_logits(logits)
    if mass == 1.0:
        return _finish(x.copy(), was_1d)
    logp = log_softmax(x)  # [B, V]
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):  # 0 * -inf for removed tokens: NaN, skipped by nansum
        entropy = -np.nansum(logp * p, axis=-1, keepdims=True)  # [B, 1]
    shifted = np.abs(-logp - entropy)  # [B, V] distance of each surprisal from H
    order = np.argsort(shifted, axis=-1, kind="stable")  # most typical first
    sorted_shift = np.take_along_axis(shifted, order, axis=-1)
    cum = np.cumsum(np.take_along_axis(p, order, axis=-1), axis=-1)
    last = np.minimum((cum < mass).sum(axis=-1, keepdims=True), x.shape[-1] - 1)  # [B, 1]
    drop_sorted = sorted_shift > np.take_along_axis(sorted_shift, last, axis=-1)
    drop_sorted[:, :m] = False
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return _finish(np.where(drop, -np.inf, x).astype(x.dtype, copy=False), was_1d)


# ============================================================== penalties
def apply_repetition_penalty(logits, input_ids, penalty: float, prompt_ignore_length=None) -> np.ndarray:
    """CTRL repetition penalty (HF ``RepetitionPenaltyLogitsProcessor``).

    Every id present in ``input_ids`` [B, S] (prompt included) is penalised once,
    however often it occurs: a positive logit is divided by ``penalty``, a
    negative one multiplied, so ``penalty > 1`` always makes the token less likely.
    ``prompt_ignore_length`` (int or [B] ints) skips that many leading positions
    per row, which is how ``generate`` ignores left padding.
    """
    pen = _check_float("repetition_penalty", penalty, 0.0, math.inf, low_open=True, high_open=True)
    x, was_1d = _as_logits(logits)
    B, V = x.shape
    ids = _as_ids(input_ids, B, V)
    seen = np.zeros((B, V), dtype=bool)
    keep = np.ones(ids.shape, dtype=bool)
    if prompt_ignore_length is not None:
        skip = np.broadcast_to(np.asarray(prompt_ignore_length, dtype=np.int64), (B,))
        keep = np.arange(ids.shape[1])[None, :] >= skip[:, None]  # [B, S]
    rows = np.broadcast_to(np.arange(B)[:, None], ids.shape)
    seen[rows[keep], ids[keep]] = True
    with np.errstate(over="ignore"):  # beyond the dtype's range: -inf or +inf, the right limit
        scaled = np.where(x < 0, x * x.dtype.type(pen), x / x.dtype.type(pen))
    return _finish(np.where(seen, scaled, x), was_1d)


def apply_frequency_presence_penalty(logits, generated_ids, frequency_penalty: float,
                                     presence_penalty: float) -> np.ndarray:
    """OpenAI-style penalties over *generated* tokens only (not the prompt)::

        logit[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0)

    Both may be negative (to encourage repetition); OpenAI allows [-2, 2].
    """
    fp = _check_float("frequency_penalty", frequency_penalty, -math.inf, math.inf, True, True)
    pp = _check_float("presence_penalty", presence_penalty, -math.inf, math.inf, True, True)
    x, was_1d = _as_logits(logits)
    B, V = x.shape
    ids = _as_ids(generated_ids, B, V, name="generated_ids")
    counts = np.zeros((B, V), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(B)[:, None], ids.shape), ids), 1)
    penalty = fp * counts + pp * (counts > 0)  # [B, V] float64
    return _finish((x - penalty).astype(x.dtype, copy=False), was_1d)


def no_repeat_ngram_filter(logits, input_ids, ngram_size: int) -> np.ndarray:
    """Ban every token that would complete an n-gram already present in ``input_ids``
    (HF ``NoRepeatNGramLogitsProcessor``; the prompt counts)."""
    n = _check_int("no_repeat_ngram_size", ngram_size, 1)
    x, was_1d = _as_logits(logits)
    B, V = x.shape
    ids = _as_ids(input_ids, B, V)
    out = x.copy()
    S = ids.shape[1]
    if S < n:
        return _finish(out, was_1d)
    windows = np.lib.stride_tricks.sliding_window_view(ids, n, axis=1)  # [B, S-n+1, n]
    prefix = ids[:, S - n + 1:]  # [B, n-1] the tokens the next one would extend
    match = np.all(windows[:, :, :-1] == prefix[:, None, :], axis=-1)  # [B, S-n+1]
    rows, cols = np.nonzero(match)
    out[rows, windows[rows, cols, -1]] = -np.inf
    return _finish(out, was_1d)


def suppress_tokens(logits, token_ids) -> np.ndarray:
    """Set the given token ids to ``-inf`` in every row (used for ``min_new_tokens``)."""
    x, was_1d = _as_logits(logits)
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= x.shape[-1]):
        raise GenerationParameterError(f"token_ids has ids outside the vocabulary [0, {x.shape[-1]})")
    out = x.copy()
    out[:, ids] = -np.inf
    return _finish(out, was_1d)


# ============================================================== selection
def greedy(logits) -> np.ndarray:
    """Argmax per row (the first index wins ties).  [B, V] -> int64 [B]; [V] -> int64 scalar."""
    x, was_1d = _as_logits(logits)
    return _finish(np.argmax(x, axis=-1).astype(np.int64), was_1d)


def sample(logits, rng: np.random.Generator) -> np.ndarray:
    """Draw one token per row from ``softmax(logits)`` with ``rng``.  [B, V] -> int64 [B].

    Inverse-CDF sampling: one uniform number per row, located in the row's
    cumulative distribution.  Tokens at ``-inf`` have zero probability and are
    never drawn; a row holding ``+inf`` draws uniformly among its ``+inf`` tokens.
    """
    if not isinstance(rng, np.random.Generator):
        _bad("rng", rng, "a numpy.random.Generator (np.random.default_rng(seed))")
    x, was_1d = _as_logits(logits)
    if np.isnan(x).any():
        raise GenerationParameterError("logits contain NaN; cannot sample")
    finite = x > -np.inf  # [B, V]
    dead = ~finite.any(axis=-1)
    if dead.any():
        raise GenerationParameterError(f"logits rows {np.nonzero(dead)[0].tolist()} are all -inf; cannot sample")
    # After top-k / top-p only a few columns are alive: work on those alone.
    cols = np.flatnonzero(finite.any(axis=0))  # [C] token ids some row can draw
    cdf = np.cumsum(softmax(x[:, cols]), axis=-1)  # [B, C]
    u = rng.random(x.shape[0]) * cdf[:, -1]  # [B] one uniform draw per row
    idx = np.sum(cdf <= u[:, None], axis=-1)  # [B] first column whose CDF exceeds u
    # Guard against u landing on the very top of the CDF through rounding: take
    # the last drawable column instead of stepping past the end.
    last = cols.size - 1 - np.argmax(finite[:, cols][:, ::-1], axis=-1)
    return _finish(cols[np.minimum(idx, last)].astype(np.int64), was_1d)


# ============================================================== processors
class LogitsProcessor:
    """A step of the processing pipeline: ``processor(input_ids [B, S], scores [B, V]) -> [B, V]``.

    Subclasses validate their arguments in ``__init__`` (raising
    ``GenerationParameterError`` naming the parameter) and never modify ``scores``.
    """

    def __call__(self, input_ids, scores):  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class RepetitionPenaltyProcessor(LogitsProcessor):
    """``apply_repetition_penalty`` as a processor (HF ``RepetitionPenaltyLogitsProcessor``)."""

    def __init__(self, penalty: float, prompt_ignore_length=None):
        self.penalty = _check_float("repetition_penalty", penalty, 0.0, math.inf, True, True)
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids, scores):
        return apply_repetition_penalty(scores, input_ids, self.penalty, self.prompt_ignore_length)


class FrequencyPresencePenaltyProcessor(LogitsProcessor):
    """OpenAI frequency/presence penalties over the tokens after ``prompt_length``."""

    def __init__(self, frequency_penalty: float, presence_penalty: float, prompt_length: int):
        self.frequency_penalty = _check_float("frequency_penalty", frequency_penalty, -math.inf, math.inf, True, True)
        self.presence_penalty = _check_float("presence_penalty", presence_penalty, -math.inf, math.inf, True, True)
        self.prompt_length = _check_int("prompt_length", prompt_length, 0)

    def __call__(self, input_ids, scores):
        generated = np.asarray(input_ids)[..., self.prompt_length:]
        return apply_frequency_presence_penalty(scores, generated, self.frequency_penalty, self.presence_penalty)


class NoRepeatNGramProcessor(LogitsProcessor):
    """HF ``NoRepeatNGramLogitsProcessor``: no n-gram of ``ngram_size`` may occur twice."""

    def __init__(self, ngram_size: int):
        self.ngram_size = _check_int("no_repeat_ngram_size", ngram_size, 1)

    def __call__(self, input_ids, scores):
        return no_repeat_ngram_filter(scores, input_ids, self.ngram_size)


class MinNewTokensProcessor(LogitsProcessor):
    """HF ``MinNewTokensLengthLogitsProcessor``: forbid EOS until ``min_new_tokens`` are generated."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_ids):
        self.prompt_length = _check_int("prompt_length", prompt_length, 0)
        self.min_new_tokens = _check_int("min_new_tokens", min_new_tokens, 0)
        self.eos_token_ids = [int(e) for e in np.atleast_1d(eos_token_ids)]

    def __call__(self, input_ids, scores):
        if np.shape(input_ids)[-1] - self.prompt_length < self.min_new_tokens:
            return suppress_tokens(scores, self.eos_token_ids)
        return np.array(scores, copy=True)


class TemperatureProcessor(LogitsProcessor):
    """HF ``TemperatureLogitsWarper``."""

    def __init__(self, temperature: float):
        self.temperature = _check_float("temperature", temperature, 0.0, math.inf, True, True)

    def __call__(self, input_ids, scores):
        return apply_temperature(scores, self.temperature)


class TopKProcessor(LogitsProcessor):
    """HF ``TopKLogitsWarper``."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        self.top_k = _check_int("top_k", top_k, 0)
        self.min_tokens_to_keep = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def __call__(self, input_ids, scores):
        return top_k_filter(scores, self.top_k, self.min_tokens_to_keep)


class TopPProcessor(LogitsProcessor):
    """HF ``TopPLogitsWarper``."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        self.top_p = _check_float("top_p", top_p, 0.0, 1.0, low_open=True)
        self.min_tokens_to_keep = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def __call__(self, input_ids, scores):
        return top_p_filter(scores, self.top_p, self.min_tokens_to_keep)


class MinPProcessor(LogitsProcessor):
    """HF ``MinPLogitsWarper``."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        self.min_p = _check_float("min_p", min_p, 0.0, 1.0)
        self.min_tokens_to_keep = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def __call__(self, input_ids, scores):
        return min_p_filter(scores, self.min_p, self.min_tokens_to_keep)


class TypicalProcessor(LogitsProcessor):
    """HF ``TypicalLogitsWarper``."""

    def __init__(self, typical_p: float, min_tokens_to_keep: int = 1):
        self.typical_p = _check_float("typical_p", typical_p, 0.0, 1.0, low_open=True)
        self.min_tokens_to_keep = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def __call__(self, input_ids, scores):
        return typical_filter(scores, self.typical_p, self.min_tokens_to_keep)


class LogitsProcessorList(list):
    """Apply processors in list order (HF ``LogitsProcessorList``).

    >>> procs = LogitsProcessorList([TemperatureProcessor(0.7), TopKProcessor(50)])
    >>> scores = procs(input_ids, logits)   # input_ids [B, S], logits [B, V]

    A run ``[temperature] -> top-k -> [top-p] -> [min-p]`` of npllm's own processors
    (``min_tokens_to_keep=1``, at least two of them) is applied by
    ``fused_sampling_filter`` in one pass: the same result, without sorting the
    vocabulary.
    """

    def __call__(self, input_ids, scores):
        i = 0
        while i < len(self):
            n, fused = _fusable_run(self, i)
            if n:
                scores = fused_sampling_filter(scores, **fused)
                i += n
            else:
                scores = self[i](input_ids, scores)
                i += 1
        return scores


def _fusable_run(procs, i):
    """(length, fused_sampling_filter arguments) of the fusable run at procs[i], or (0, None)."""
    args, j = {}, i
    if j < len(procs) and type(procs[j]) is TemperatureProcessor:
        args["temperature"], j = procs[j].temperature, j + 1
    steps = ((TopKProcessor, "top_k"), (TopPProcessor, "top_p"), (MinPProcessor, "min_p"))
    for n, (cls, name) in enumerate(steps):
        if j < len(procs) and type(procs[j]) is cls and procs[j].min_tokens_to_keep == 1:
            args[name], j = getattr(procs[j], name), j + 1
        elif n == 0:  # no top-k: nothing to gain over the chain
            return 0, None
    return (j - i, args) if j - i >= 2 else (0, None)


def build_processors(*, do_sample: bool, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                     min_p: float = 0.0, typical_p: float = 1.0, repetition_penalty: float = 1.0,
                     frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                     no_repeat_ngram_size: int = 0, min_new_tokens: int = 0, eos_token_ids=(),
                     prompt_length: int = 0, prompt_ignore_length=None) -> LogitsProcessorList:
    """The processors ``generate`` uses, in the documented order; neutral settings are left out.

    penalties (repetition, frequency/presence, no-repeat-n-gram, min-new-tokens)
    -> [only when sampling] temperature -> top-k -> top-p -> min-p -> typical.
    """
    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyProcessor(repetition_penalty, prompt_ignore_length))
    if frequency_penalty != 0.0 or presence_penalty != 0.0:
        procs.append(FrequencyPresencePenaltyProcessor(frequency_penalty, presence_penalty, prompt_length))
    if no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramProcessor(no_repeat_ngram_size))
    if min_new_tokens > 0 and len(eos_token_ids) > 0:
        procs.append(MinNewTokensProcessor(prompt_length, min_new_tokens, eos_token_ids))
    if do_sample:
        if temperature != 1.0:
            procs.append(TemperatureProcessor(temperature))
        if top_k > 0:
            procs.append(TopKProcessor(top_k))
        if top_p < 1.0:
            procs.append(TopPProcessor(top_p))
        if min_p > 0.0:
            procs.append(MinPProcessor(min_p))
        if typical_p < 1.0:
            procs.append(TypicalProcessor(typical_p))
    return procs
