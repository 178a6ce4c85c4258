"""Lesson 05 — test your own sampler: Hypothesis strategies and ``check_filter``.

    from npllm.testing import check_filter, logits

    def my_top_p(x, p):                 # x: float logits [B, V]; returns new logits [B, V]
        ...

    check_filter(my_top_p, "top_p")     # AssertionError with the shrunk example on any deviation

``logits(batch=None, vocab=None, dtype=np.float32)`` is a Hypothesis strategy of
``[B, V]`` logits that reaches the hard cases on purpose: ties and whole uniform
rows, ``-inf`` entries, a single finite entry, huge and tiny magnitudes, and
values one or two ulps apart (subnormal gaps around 0).

``check_filter(fn, kind)`` searches logits and parameters and compares ``fn``
with npllm's float64 reference semantics, which are HF transformers'
LogitsProcessors (``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``, ``MinPLogitsWarper``, ``TypicalLogitsWarper``,
``RepetitionPenaltyLogitsProcessor``; ``min_tokens_to_keep=1``).  ``fn`` is
called as ``fn(logits, param)``, or ``fn(logits, input_ids, penalty)`` for the
repetition penalty.  Besides the semantics it checks the invariants every npllm
filter keeps: the input is never modified, the result is a new array (no view
of the input) of the same shape and dtype, nothing is NaN, removed tokens are
exactly ``-inf`` and kept ones unchanged, and a most likely token survives
(except for typical sampling, which may drop it by design, and the penalty,
which changes the ranking on purpose).

What the reference decides, and what is left free:

* Which of several *tied* tokens is kept at a top-p cut is free (HF's
  ``torch.sort`` is not stable); the *number* kept and their logits are not.
  ``ties="lowest-id"`` also requires the lowest ids, as npllm keeps.  Top-k,
  min-p and typical keep or drop tied tokens together, as HF does.
* Floating point cannot decide everything.  A mass within ``8 V eps`` of the
  threshold (eps of the logits' dtype) may count as reaching it or not; the same
  margin applies to min-p's ratio and to typical's distances from the entropy;
  values are compared to a couple of ulps.  Exact ties are the exception: by the
  Lindemann-Weierstrass theorem (e^v for distinct rational v are linearly
  independent over the rationals) the most likely tokens can weigh exactly
  ``p < 1`` only in a row whose finite logits are all equal, so there the mass
  is counted exactly (k tokens of n weigh k/n): 150 of 300 equal tokens reach
  p = 0.5, 151 is a bug.  A mass a rounding error *below* p still counts as
  reaching it.
* A temperature so small that ``logits / t`` overflows must keep the
  distribution (all mass on the argmax), not turn distinct logits into equal
  infinities; elsewhere the result must be ``logits / t``.

Hypothesis is a test dependency (``pip install hypothesis``); ``import npllm``
does not need it, only this module does.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays
except ImportError as e:  # pragma: no cover - exercised by tests/test_testing.py in a subprocess
    raise ImportError("npllm.testing needs Hypothesis: pip install hypothesis") from e

__all__ = ["KINDS", "logits", "check_filter"]

KINDS = ("temperature", "top_k", "top_p", "min_p", "typical", "repetition_penalty")
# Uniform rows where k of n tokens weigh exactly k/n: check_filter tries each (n, p = k/n) for top-p.
EXACT_SIZES = (2, 3, 10, 12, 100, 256, 300, 1000)
EXACT_FRACTIONS = (0.5, 0.1, 0.25, 1 / 3, 0.6, 0.75, 0.9, 0.95)
ROW_KINDS = ("grid", "palette", "general", "uniform", "single", "huge", "tiny", "ulp_gaps", "uniform")


# ============================================================== the strategy
def _strategy(value, default):
    if value is None:
        return default
    if isinstance(value, st.SearchStrategy):
        return value
    return st.just(int(value))


def _floats(dtype, **kw):
    return st.floats(width=8 * np.dtype(dtype).itemsize, allow_nan=False, allow_infinity=False, **kw)


def _steps_from(base, dtype, k):
    """``base`` moved k ulps (k < 0: down) in ``dtype``."""
    x = np.array(base, dtype=dtype)
    direction = np.array(np.inf if k > 0 else -np.inf, dtype=dtype)
    for _ in range(abs(k)):
        x = np.nextafter(x, direction)
    return float(x)


@st.composite
def _row(draw, V, dtype, posinf):
    """One row of V logits (float64 values, each exactly representable in ``dtype``)."""
    fi = np.finfo(dtype)
    kind = draw(st.sampled_from(ROW_KINDS), label="row kind")
    ordinary = _floats(dtype, min_value=-60.0, max_value=60.0)
    if kind == "grid":  # a coarse grid: ties everywhere, sums exact
        row = draw(arrays(np.float64, V, elements=st.integers(-12, 12).map(lambda i: i / 4)))
    elif kind == "palette":  # two or three levels: groups of ties
        levels = draw(st.lists(ordinary, min_size=1, max_size=3, unique=True))
        row = draw(arrays(np.float64, V, elements=st.sampled_from(levels)))
    elif kind == "general":
        row = draw(arrays(np.float64, V, elements=ordinary))
    elif kind == "uniform":  # every token equally likely
        row = np.full(V, draw(st.one_of(ordinary, st.sampled_from([0.0, float(fi.max), -float(fi.max)]))))
    elif kind == "single":  # one finite entry
        row = np.full(V, -np.inf)
        row[draw(st.integers(0, V - 1))] = draw(ordinary)
    elif kind == "huge":  # near the top of the dtype's range
        big = [float(fi.max), -float(fi.max), float(fi.max) / 2, -float(fi.max) / 3, 0.0, 1.0]
        row = draw(arrays(np.float64, V, elements=st.one_of(st.sampled_from(big), ordinary)))
    elif kind == "tiny":  # subnormals and the smallest normals
        small = [0.0, float(fi.smallest_subnormal), -float(fi.smallest_subnormal), float(fi.tiny),
                 -float(fi.tiny), 3 * float(fi.smallest_subnormal)]
        row = draw(arrays(np.float64, V, elements=st.one_of(
            st.sampled_from(small), _floats(dtype, min_value=-4 * float(fi.tiny), max_value=4 * float(fi.tiny)))))
    else:  # "ulp_gaps": values a few ulps apart (around 0: subnormal gaps)
        base = draw(st.sampled_from([0.0, 1.0, -2.5, 30.0, float(fi.max) / 4]))
        ladder = {k: _steps_from(base, dtype, k) for k in range(-3, 4)}
        row = np.array([ladder[k] for k in draw(arrays(np.int64, V, elements=st.integers(-3, 3)))])
    row = np.asarray(row, dtype=np.float64).copy()
    if kind != "single" and V > 1 and draw(st.booleans(), label="-inf holes"):
        holes = draw(arrays(bool, V, elements=st.booleans()))
        holes[draw(st.integers(0, V - 1))] = False  # keep one entry finite
        row[holes] = -np.inf
    if posinf and draw(st.booleans(), label="+inf entries"):
        row[draw(arrays(bool, V, elements=st.booleans()))] = np.inf
    return row


def logits(batch=None, vocab=None, dtype=np.float32, *, posinf: bool = False):
    """A Hypothesis strategy of float logits [B, V] (B = ``batch``, V = ``vocab``).

    ``batch`` and ``vocab`` are ints, strategies, or None (1..3 rows; a vocabulary
    of 1..64 tokens or 100, 300, 1000).  Each row is one of: a coarse grid (ties),
    two or three levels (tie groups), general floats, a uniform row, a single
    finite entry, huge magnitudes (near the dtype's max), tiny ones (subnormals),
    or values a few ulps apart; most rows get some ``-inf`` entries, and every row
    keeps at least one entry that is not ``-inf``.  ``posinf=True`` adds ``+inf``
    entries to some rows.
    """
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a float dtype, got {dtype}")
    batches = _strategy(batch, st.integers(1, 3))
    vocabs = _strategy(vocab, st.one_of(st.integers(1, 8), st.integers(9, 64), st.sampled_from([100, 300, 1000])))

    @st.composite
    def build(draw):
        B, V = draw(batches, label="batch"), draw(vocabs, label="vocab")
        return np.stack([draw(_row(V, dtype, posinf)) for _ in range(B)]).astype(dtype)

    return build()


# ============================================================== float64 reference semantics
def _eps(dtype):
    return float(np.finfo(dtype).eps)


def _band(V, dtype):
    """Masses closer than this to a threshold may fall either way: 8 V eps."""
    return 8.0 * V * _eps(dtype)


def _prob_view(row):
    """float64 logits whose probabilities are ``exp(z - max) / sum``: a row holding +inf
    gives its +inf tokens all the mass (z = 0 there, -inf elsewhere)."""
    z = row.astype(np.float64)
    if np.isposinf(z).any():
        z = np.where(np.isposinf(z), 0.0, -np.inf)
    return z


def _probs(z):
    """float64 probabilities of finite-or--inf logits z (at least one finite)."""
    e = np.exp(z - z.max())
    return e / math.fsum(e)


def _is_uniform(row):
    """True when the finite-probability logits of ``row`` are all equal."""
    z = _prob_view(row)
    alive = z[z > -np.inf]
    return alive.size > 0 and bool(np.all(alive == alive[0]))


def _ids(mask):
    return np.flatnonzero(mask).tolist()


def _fmt_ids(ids, limit=24):
    ids = list(ids)
    return str(ids) if len(ids) <= limit else f"{ids[:limit]}... ({len(ids)} tokens)"


def _top_p_problem(x, out_kept, p, ties):
    """None, or what is wrong with the kept tokens of one row at top_p = p."""
    V = x.size
    z = _prob_view(x)
    finite = z > -np.inf
    n = int(finite.sum())
    order = np.argsort(-z, kind="stable")[:n]  # most likely first, lower id first on ties
    s = z[order]
    probs = _probs(s)
    before = np.concatenate([[0.0], np.cumsum(probs)[:-1]])  # [n] mass ranked above each token
    band = _band(V, x.dtype)
    if np.all(s == s[0]):  # uniform: k tokens weigh exactly k/n
        hi = max(1, math.ceil(Fraction(p) * n))
        lo = max(1, math.ceil((Fraction(p) - Fraction(band)) * n))
        why = f"the row's {n} logits are equal, so k tokens weigh exactly k/{n}; the fewest that reach top_p"
    else:
        hi = max(1, int(np.sum(before < p + band)))
        lo = max(1, int(np.sum(before < p - band)))
        why = "the fewest most likely tokens whose mass reaches top_p"
    if (out_kept & ~finite).any():
        return f"keeps tokens {_fmt_ids(_ids(out_kept & ~finite))} of probability 0 (a +inf token holds all the mass)"
    k = int(out_kept.sum())
    head = ", ".join(f"{m:.17g}" for m in np.cumsum(probs)[:min(n, 8)])
    expect = f"{lo}" if lo == hi else f"{lo} to {hi}"
    if not lo <= k <= hi:
        return (f"keeps {k} tokens {_fmt_ids(_ids(out_kept))}, expected {expect}: {why} "
                f"(cumulative masses in rank order: {head}{', ...' if n > 8 else ''})")
    if not np.array_equal(np.sort(z[out_kept])[::-1], s[:k]):
        return (f"keeps tokens {_fmt_ids(_ids(out_kept))}, which are not the {k} most likely "
                f"(those are {_fmt_ids(sorted(order[:k].tolist()))}, ties at the cut interchangeable)")
    if ties == "lowest-id" and set(_ids(out_kept)) != set(order[:k].tolist()):
        return (f"keeps tokens {_fmt_ids(_ids(out_kept))}; ties='lowest-id' wants {_fmt_ids(sorted(order[:k].tolist()))}")
    return None


def _top_k_problem(x, out_kept, k, ties):
    kth = np.sort(x)[::-1][min(k, x.size) - 1]
    want = (x >= kth) & (x > -np.inf)
    if not np.array_equal(out_kept, want):
        return (f"keeps tokens {_fmt_ids(_ids(out_kept))}; top-k keeps every token whose logit is >= the "
                f"k-th largest ({kth!r}), ties included: {_fmt_ids(_ids(want))}")
    return None


def _min_p_problem(x, out_kept, min_p, ties):
    V = x.size
    alive = x > -np.inf
    if min_p == 0.0 or np.isposinf(x).any():
        want = alive if min_p == 0.0 else np.isposinf(x)
        if not np.array_equal(out_kept, want):
            return (f"keeps tokens {_fmt_ids(_ids(out_kept))}; expected {_fmt_ids(_ids(want))} "
                    f"({'min_p = 0 keeps every token' if min_p == 0.0 else '+inf tokens hold all the mass'})")
        return None
    x64 = x.astype(np.float64)
    m = x64.max()
    with np.errstate(invalid="ignore", over="ignore"):
        d = x64 - m  # log(p_i / p_max)
    L = math.log(min_p)
    eps = _eps(x.dtype)
    band = 8.0 * eps * (V + np.abs(np.where(alive, x64, 0.0)) + abs(m))
    floor = math.log(float(np.finfo(x.dtype).tiny)) + math.log(V) + 1.0  # below it, probabilities underflow
    free = (np.abs(d - L) <= band) | ((d < floor) & (L < floor))
    must_keep = alive & (d >= L) & ~free
    must_drop = alive & (d < L) & ~free
    bad = (must_keep & ~out_kept) | (must_drop & out_kept)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return (f"{'drops' if must_keep[i] else 'keeps'} token {i}: p_i / p_max = exp({d[i]!r}) is "
                f"{'>=' if must_keep[i] else '<'} min_p = {min_p!r} (min-p compares probabilities); "
                f"kept {_fmt_ids(_ids(out_kept))}, expected {_fmt_ids(_ids(must_keep))} "
                f"(free by rounding: {_fmt_ids(_ids(free & alive))})")
    return None


def _typical_problem(x, out_kept, mass, ties):
    V = x.size
    z = _prob_view(x)
    alive = z > -np.inf
    m = z[alive].max()
    with np.errstate(divide="ignore"):
        logp = np.where(alive, z - m - math.log(math.fsum(np.exp(z[alive] - m))), -np.inf)
    p = np.exp(logp)
    nz = p > 0
    H = -math.fsum(p[nz] * logp[nz])
    with np.errstate(invalid="ignore"):
        dist = np.where(alive, np.abs(-logp - H), np.inf)  # distance of each surprisal from the entropy
    eps = _eps(x.dtype)
    x64 = np.abs(np.where(alive, x.astype(np.float64), 0.0))
    tol = 8.0 * eps * (V + x64 + abs(m) + np.abs(np.where(alive, logp, 0.0)) + H)
    band = _band(V, x.dtype)
    kept, dropped = out_kept & alive, ~out_kept & alive
    if dropped.any() and kept.any():
        i = int(np.flatnonzero(kept)[np.argmax(dist[kept] - tol[kept])])
        j = int(np.flatnonzero(dropped)[np.argmin(dist[dropped] + tol[dropped])])
        if dist[i] - tol[i] > dist[j] + tol[j]:
            return (f"keeps token {i} (|-log p - H| = {dist[i]!r}) but drops the more typical token {j} "
                    f"({dist[j]!r}); H = {H!r}")
    got = math.fsum(p[kept])
    if got < mass - band and dropped.any():
        return (f"keeps tokens {_fmt_ids(_ids(kept))} of mass {got!r} < typical_p = {mass!r}: typical "
                f"sampling keeps the most typical tokens until their mass reaches typical_p")
    if kept.any():
        top = dist[kept].max()
        level = kept & (dist >= top - 2 * tol.max())  # the least typical kept tokens
        rest = math.fsum(p[kept & ~level])
        if rest >= mass + band:
            return (f"keeps tokens {_fmt_ids(_ids(kept))}, but the more typical ones among them already "
                    f"weigh {rest!r} >= typical_p = {mass!r}: drop {_fmt_ids(_ids(level))}")
    return None


def _close(got, want64, dtype):
    """got (dtype) vs an exact float64 value: equal, within 2 ulps, or on the right side of overflow."""
    fi = np.finfo(dtype)
    with np.errstate(over="ignore"):
        want = np.asarray(want64).astype(dtype)
    near_max = np.abs(want64) >= float(fi.max) * (1 - 4 * float(fi.eps))
    same_inf = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore", over="ignore"):
        ulp = np.abs(np.spacing(np.where(np.isfinite(want), want, 0).astype(dtype))).astype(np.float64)
        ulps = np.abs(got.astype(np.float64) - want64) <= 2 * ulp
    edge = near_max & (np.sign(got) == np.sign(want64)) & (np.abs(got) >= float(fi.max) * (1 - 4 * float(fi.eps)))
    return same_inf | (np.isfinite(got) & np.isfinite(want) & ulps) | edge


def _temperature_problem(x, out, t):
    """None, or what is wrong with one row of fn(x, t)."""
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        want64 = x64 / t
        want = want64.astype(x.dtype)
    alive = x > -np.inf
    if not (np.isfinite(x) & ~np.isfinite(want)).any():  # x / t fits the dtype: it is the answer
        ok = _close(out, want64, x.dtype)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            return f"token {i}: got {out[i]!r}, logits / temperature = {x[i]!r} / {t!r} = {want64[i]!r}"
    else:  # overflow: the result must keep the distribution softmax(x / t)
        z = _prob_view(x)
        zo = _prob_view(out)
        if not (zo > -np.inf).any():
            return "every token became -inf"
        fin = z > -np.inf
        with np.errstate(over="ignore", invalid="ignore"):
            ref = np.where(fin, np.exp(np.where(fin, (z - z[fin].max()) / t, 0.0)), 0.0)
        ref /= ref.sum()
        got = _probs(zo)
        if not np.allclose(got, ref, rtol=0, atol=_band(x.size, x.dtype) + 1e-12):
            return (f"logits / {t!r} overflows {x.dtype}; the result must keep the distribution "
                    f"softmax(logits / t) = {np.round(ref, 6).tolist()}, but softmax(result) = "
                    f"{np.round(got, 6).tolist()} (distinct logits must not become equal infinities)")
    if alive.any():
        top = int(np.argmax(x))
        if out[top] != out.max():
            return f"the most likely token {top} is no longer the most likely ({out[top]!r} < {out.max()!r})"
    return None


def _penalty_problem(x, out, ids, penalty):
    seen = np.zeros(x.size, dtype=bool)
    seen[ids] = True
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        want64 = np.where(x64 < 0, x64 * penalty, x64 / penalty)
    same = (out == x) | (np.isnan(out) & np.isnan(x))
    ok = np.where(seen, _close(out, want64, x.dtype), same)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        if not seen[i]:
            return f"token {i} is not in input_ids but changed: {x[i]!r} -> {out[i]!r}"
        rule = "a negative logit is multiplied by the penalty" if x[i] < 0 else "a positive logit is divided"
        return f"token {i} (seen): got {out[i]!r}, expected {want64[i]!r} ({rule}; each id counts once)"
    return None


FILTER_PROBLEM = {"top_k": _top_k_problem, "top_p": _top_p_problem, "min_p": _min_p_problem,
                  "typical": _typical_problem}


# ============================================================== the checker
def _show(a):
    with np.printoptions(threshold=80, edgeitems=6, floatmode="unique", linewidth=100):
        return np.array2string(np.asarray(a), separator=", ")


def _fail(kind, fn, x, args, message):
    params = ("input_ids", "penalty") if kind == "repetition_penalty" else (kind,)
    lines = [f"check_filter({getattr(fn, '__name__', fn)!r}, {kind!r}): {message}",
             f"  logits ({x.dtype}, shape {x.shape}) = {_show(x)}"]
    lines += [f"  {name} = {_show(a) if isinstance(a, np.ndarray) else repr(a)}" for name, a in zip(params, args)]
    raise AssertionError("\n".join(lines))


def _check_call(fn, kind, x, args, ties):
    """Run fn once on (x, *args) and raise AssertionError on any deviation."""
    before = x.copy()
    ids_before = args[0].copy() if kind == "repetition_penalty" else None
    try:
        out = fn(x, *args)
    except Exception as e:  # a crash is a deviation too
        _fail(kind, fn, before, args, f"raised {type(e).__name__}: {e}")
    if not np.array_equal(x.view(np.uint8), before.view(np.uint8)):
        _fail(kind, fn, before, args, f"modified its input logits in place (now {_show(x)})")
    if ids_before is not None and not np.array_equal(args[0], ids_before):
        _fail(kind, fn, before, (ids_before, args[1]), "modified its input_ids")
    if not isinstance(out, np.ndarray):
        _fail(kind, fn, x, args, f"returned {type(out).__name__}, not a numpy array")
    if out.shape != x.shape or out.dtype != x.dtype:
        _fail(kind, fn, x, args, f"returned shape {out.shape} dtype {out.dtype}; the input has "
                                 f"shape {x.shape} dtype {x.dtype}")
    if np.shares_memory(out, x):
        _fail(kind, fn, x, args, "returned (a view of) its input: the result must be a new array")
    if np.isnan(out).any():
        _fail(kind, fn, x, args, f"returned NaN at {np.argwhere(np.isnan(out)).tolist()[:8]}: {_show(out)}")
    for b in range(x.shape[0]):
        with np.errstate(over="ignore", under="ignore"):  # huge logits: differences overflow to -inf
            problem = _row_problem(kind, x[b], out[b], args, b, ties)
        if problem:
            _fail(kind, fn, x, args, f"row {b}: {problem}\n  got     = {_show(out)}")


def _row_problem(kind, x, out, args, b, ties):
    if kind == "temperature":
        return _temperature_problem(x, out, args[0])
    if kind == "repetition_penalty":
        return _penalty_problem(x, out, args[0][b], args[1])
    alive = x > -np.inf
    untouched = (out == x) | np.isneginf(out)
    if not untouched.all():
        i = int(np.flatnonzero(~untouched)[0])
        return f"token {i} changed from {x[i]!r} to {out[i]!r}: a filter keeps a logit as is or sets it to -inf"
    kept = (out > -np.inf) & alive
    if alive.any() and not kept.any():
        return "removed every token"
    if kind != "typical" and alive.any() and not (kept & (x == x.max())).any():
        return f"removed the most likely token {int(np.argmax(x))}"
    if kind in ("top_k", "min_p", "typical"):  # equal logits, equal fate (HF)
        for v in np.unique(x[alive]):
            group = x == v
            if kept[group].any() and not kept[group].all():
                return f"keeps some of the tokens {_fmt_ids(_ids(group))} with the same logit {v!r} and drops others"
    return FILTER_PROBLEM[kind](x, kept, args[0], ties)


def _params(kind, data, x):
    """Draw the arguments after the logits, reaching the boundaries on purpose."""
    B, V = x.shape
    row = data.draw(st.integers(0, B - 1), label="row the parameter is aimed at")
    z = _prob_view(x[row])
    alive = z > -np.inf
    if kind == "temperature":
        return (data.draw(st.one_of(st.floats(1e-3, 1e3), st.just(1.0), st.floats(5e-324, 1e-30),
                                    st.floats(1e30, 1e300)), label="temperature"),)
    if kind == "top_k":
        return (data.draw(st.integers(1, V + 2), label="top_k"),)
    if kind == "repetition_penalty":
        S = data.draw(st.integers(0, 12), label="S")
        ids = data.draw(arrays(np.int64, (B, S), elements=st.integers(0, V - 1)), label="input_ids")
        pen = data.draw(st.one_of(st.floats(0.01, 10.0), st.sampled_from([1.0, 1.2, 0.5, 2.0]),
                                  st.floats(1e-3, 1e3)), label="penalty")
        return ids, pen
    n = int(alive.sum())
    masses = np.cumsum(np.sort(_probs(z[alive]))[::-1])[:-1]  # [n - 1] mass of the top j < n tokens
    # p = 1 disables top-p and typical (HF and npllm): aim below it
    aimed = [st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)]
    counts = [int((_prob_view(r) > -np.inf).sum()) for r in x if _is_uniform(r)]
    for c in [max(counts)] if counts and max(counts) > 1 else ([n] if n > 1 else []):  # the largest uniform row
        # k of c equal tokens weigh exactly k/c: the exact ties, where rounding bites.  Any k, and
        # the k nearest the usual settings (p = 0.5 of 300 tokens...), twice as often as the rest.
        usual = sorted({round(q * c) / c for q in (0.1, 0.25, 1 / 3, 0.5, 0.6, 0.75, 0.9, 0.95)} - {0.0, 1.0})
        aimed += [st.integers(1, c - 1).map(lambda k, c=c: k / c)] + [st.sampled_from(usual)] * 2
    if masses.size and 0 < masses.min() and masses.max() < 1:
        aimed.append(st.sampled_from(masses.tolist()))  # right at the mass of a top-ranked set
    if kind == "top_p":
        return (data.draw(st.one_of(*aimed, st.sampled_from([0.5, 0.9, 0.95, 0.99])), label="top_p"),)
    if kind == "typical":
        return (data.draw(st.one_of(*aimed, st.sampled_from([0.2, 0.5, 0.9, 0.95])), label="typical_p"),)
    m = z[alive].max()
    ratios = [float(r) for r in np.exp(z[alive] - m) if 0 <= r <= 1]  # right at a token's p_i / p_max
    return (data.draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.05, 0.1, 1.0]),
                                st.sampled_from(ratios), st.floats(0.0, 1e-30)), label="min_p"),)


def check_filter(fn, kind: str, *, max_examples: int = 200, ties: str = "any", derandomize: bool = False,
                 posinf: bool = False) -> None:
    """Search for logits and a parameter on which ``fn`` deviates from npllm's reference.

    fn:           ``fn(logits [B, V], param) -> new logits [B, V]`` (float32 or float64 logits),
                  or ``fn(logits, input_ids [B, S], penalty)`` for ``kind="repetition_penalty"``
    kind:         one of ``KINDS``: "temperature", "top_k", "top_p", "min_p", "typical",
                  "repetition_penalty"
    max_examples: how many examples Hypothesis tries
    ties:         "any" (which tied tokens survive a top-p cut is free) or "lowest-id"
    derandomize:  the same examples on every run (for CI)
    posinf:       also feed rows holding +inf (they must take all the mass)

    For top-p it first tries every uniform row of ``EXACT_SIZES`` tokens at p = k/n for
    ``EXACT_FRACTIONS`` (both dtypes), where exactly k tokens reach p: a random search
    meets those exact ties only now and then, and rounding errs there.

    Returns None when no deviation is found; raises ``AssertionError`` naming the
    shrunk example (logits, parameter, what was expected and what ``fn`` did).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if ties not in ("any", "lowest-id"):
        raise ValueError(f"ties must be 'any' or 'lowest-id', got {ties!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer, got {max_examples!r}")

    quiet = dict(deadline=None, database=None, report_multiple_bugs=False, print_blob=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much, HealthCheck.large_base_example])

    if kind == "top_p":  # every exact tie of a small catalogue first: uniform rows at p = k/n
        @settings(max_examples=len(EXACT_SIZES) * len(EXACT_FRACTIONS) * 2, derandomize=True, **quiet)
        @given(st.sampled_from(EXACT_SIZES), st.sampled_from(EXACT_FRACTIONS),
               st.sampled_from([np.float32, np.float64]))
        def exact_ties(n, q, dtype):
            k = min(n - 1, max(1, round(q * n)))
            _check_call(fn, kind, np.full((1, n), 1.5, dtype=dtype), (k / n,), ties)

        exact_ties()

    @settings(max_examples=max_examples, derandomize=derandomize, **quiet)
    @given(st.data())
    def search(data):
        dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
        x = data.draw(logits(dtype=dtype, posinf=posinf), label="logits")
        with np.errstate(over="ignore", under="ignore"):
            args = _params(kind, data, x)
        _check_call(fn, kind, x, args, ties)

    search()
