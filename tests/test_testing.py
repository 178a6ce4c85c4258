"""npllm.testing: the logits strategy reaches the hard cases, and check_filter passes npllm's
filters (and HF's) while catching realistic buggy ones.

Each buggy filter below is a mistake people make when writing a sampler; check_filter must
raise AssertionError on it, with a message that says what went wrong.
"""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from npllm import sampling
from npllm.testing import KINDS, check_filter, logits

CHECK = dict(max_examples=200, derandomize=True)


# ============================================================== the strategy
@given(logits())
def test_logits_are_float_batches_with_something_to_sample_in_every_row(x):
    assert x.ndim == 2 and x.dtype == np.float32 and 1 <= x.shape[0] <= 3
    assert not np.isnan(x).any() and not np.isposinf(x).any()
    assert (x > -np.inf).any(axis=1).all()


@given(logits(batch=2, vocab=7, dtype=np.float64, posinf=True))
def test_logits_take_a_fixed_shape_and_dtype(x):
    assert x.shape == (2, 7) and x.dtype == np.float64


def row_has(pred):
    return lambda x: any(pred(r) for r in x)


def finite(r):
    return r[np.isfinite(r)]


HARD_CASES = {
    "a whole uniform row of 100+ tokens": row_has(lambda r: r.size >= 100 and np.all(r == r[0])),
    "ties between finite logits": row_has(lambda r: finite(r).size > np.unique(finite(r)).size),
    "-inf entries": row_has(lambda r: np.isneginf(r).any()),
    "a single finite entry": row_has(lambda r: r.size > 1 and finite(r).size == 1),
    "huge magnitudes": row_has(lambda r: (np.abs(finite(r)) >= np.finfo(np.float32).max / 2).any()),
    "subnormals": row_has(lambda r: ((finite(r) != 0) & (np.abs(finite(r)) < np.finfo(np.float32).tiny)).any()),
    "values one ulp apart": row_has(lambda r: np.any(np.nextafter(
        np.unique(finite(r))[:-1], np.float32(np.inf)) == np.unique(finite(r))[1:])),
}


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_the_logits_strategy_reaches_the_hard_case(case):
    x = find(logits(), HARD_CASES[case], settings=settings(max_examples=2000, database=None))
    assert HARD_CASES[case](x)


# ============================================================== npllm's filters pass
OURS = {"temperature": sampling.apply_temperature, "top_k": sampling.top_k_filter,
        "top_p": sampling.top_p_filter, "min_p": sampling.min_p_filter, "typical": sampling.typical_filter,
        "repetition_penalty": sampling.apply_repetition_penalty}


@pytest.mark.parametrize("kind", KINDS)
def test_npllms_filters_pass_check_filter(kind):
    check_filter(OURS[kind], kind, **CHECK)
    check_filter(OURS[kind], kind, ties="lowest-id", posinf=True, **CHECK)  # npllm keeps the lowest ids


def test_npllms_top_p_kernel_and_reference_both_pass():
    from npllm import _jit

    try:
        _jit.use_reference(True)
        check_filter(sampling.top_p_filter, "top_p", ties="lowest-id", posinf=True, **CHECK)
    finally:
        _jit.use_reference(False)


@pytest.mark.parametrize("kind", ["top_k", "min_p", "typical", "repetition_penalty"])
def test_hfs_logits_processors_pass_check_filter(kind):
    """The reference semantics are HF's: its float32 processors pass where rounding cannot decide."""
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as hf

    make = {"top_k": lambda k: hf.TopKLogitsWarper(int(k)), "min_p": hf.MinPLogitsWarper,
            "typical": hf.TypicalLogitsWarper}

    def theirs(x, *args):
        with torch.no_grad():
            if kind == "repetition_penalty":
                ids, penalty = args
                return hf.RepetitionPenaltyLogitsProcessor(float(penalty))(
                    torch.from_numpy(ids), torch.from_numpy(x.copy())).numpy()
            return make[kind](args[0])(None, torch.from_numpy(x.copy())).numpy()

    check_filter(theirs, kind, **CHECK)


# ============================================================== realistic bugs are caught
def softmax64(x):
    z = x.astype(np.float64)
    with np.errstate(over="ignore"):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def keep_sorted(x, order, keep):
    """Scatter a keep mask given in rank order back to token ids; removed tokens -> -inf."""
    mask = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(mask, order, keep, axis=-1)
    return np.where(mask, x, -np.inf).astype(x.dtype)


def top_p_off_by_one(x, p):
    """Keeps a token while the mass ranked above it is <= p (should be < p): one too many at exact ties."""
    order = np.argsort(-x, axis=-1, kind="stable")
    probs = softmax64(np.take_along_axis(x, order, axis=-1))
    before = np.cumsum(probs, axis=-1) - probs
    return keep_sorted(x, order, before <= p)


def top_p_without_rounding_allowance(x, p):
    """The definition (keep while the mass above is < p) in float64 with no allowance for
    rounding: on 300 equal logits at p = 0.25 the mass of 75 tokens sums to just under 0.25."""
    order = np.argsort(-x, axis=-1, kind="stable")
    probs = softmax64(np.take_along_axis(x, order, axis=-1))
    before = np.cumsum(probs, axis=-1) - probs
    return keep_sorted(x, order, before < p)


def top_p_as_npllm_had_it(x, p):
    """npllm before the fix: drop while the float64 tail mass <= 1 - p, with no allowance for
    rounding: a uniform row of 300 kept 151 tokens at p = 0.5."""
    order = np.argsort(-x, axis=-1, kind="stable")
    probs = softmax64(np.take_along_axis(x, order, axis=-1))
    tail = np.cumsum(probs[:, ::-1], axis=-1)[:, ::-1]
    drop = tail <= 1.0 - p
    drop[:, 0] = False
    return keep_sorted(x, order, ~drop)


def top_p_highest_ids_on_ties(x, p):
    """Right count, right logits, but the highest ids among ties: fine unless ties='lowest-id'."""
    flipped = sampling.top_p_filter(x[:, ::-1], p)
    return np.ascontiguousarray(flipped[:, ::-1])


def top_k_in_place(x, k):
    """Writes -inf into the caller's logits."""
    kth = np.sort(x, axis=-1)[:, -min(k, x.shape[-1])][:, None]
    x[x < kth] = -np.inf
    return x.copy()


def top_k_drops_ties(x, k):
    """Keeps exactly k tokens (argsort), dropping tokens tied with the k-th."""
    order = np.argsort(-x, axis=-1, kind="stable")
    keep = np.zeros(x.shape, dtype=bool)
    keep[:, :k] = True
    return keep_sorted(x, order, keep)


def temperature_after_softmax(x, t):
    """Divides the probabilities by t and renormalises: the temperature has no effect at all."""
    p = softmax64(x) / t
    with np.errstate(divide="ignore"):
        return np.log(p / p.sum(axis=-1, keepdims=True)).astype(x.dtype)


def temperature_naive(x, t):
    """HF's x / t in the logits' dtype: at t = 1e-40, distinct logits become equal infinities."""
    with np.errstate(all="ignore"):
        return x / x.dtype.type(t)


def min_p_on_logits(x, min_p):
    """Compares logits with min_p * max logit instead of probabilities."""
    return np.where(x >= min_p * x.max(axis=-1, keepdims=True), x, -np.inf).astype(x.dtype)


def penalty_ignores_negative_logits(x, input_ids, penalty):
    """Divides every seen logit by the penalty: a negative one becomes *more* likely."""
    out = x.copy()
    for b, row in enumerate(input_ids):
        out[b, row] = x[b, row] / x.dtype.type(penalty)
    return out


def penalty_counts_repeats(x, input_ids, penalty):
    """Applies the penalty once per occurrence, not once per id."""
    out = x.copy()
    for b, row in enumerate(input_ids):
        for t in row:
            out[b, t] = out[b, t] * penalty if out[b, t] < 0 else out[b, t] / penalty
    return out.astype(x.dtype)


def typical_drops_the_crossing_token(x, mass):
    """Keeps the most typical tokens while their running mass is < typical_p: the token that
    makes the mass reach typical_p is dropped."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(softmax64(x))
        p = np.exp(logp)
        H = -np.nansum(p * logp, axis=-1, keepdims=True)
        dist = np.abs(-logp - H)
    order = np.argsort(dist, axis=-1, kind="stable")
    cum = np.cumsum(np.take_along_axis(p, order, axis=-1), axis=-1)
    keep = cum < mass
    keep[:, 0] = True
    return keep_sorted(x, order, keep)


def filter_returns_a_view(x, k):
    out = sampling.top_k_filter(x, k)
    return x if np.array_equal(out, x) else out


def filter_returns_float64(x, p):
    return sampling.top_p_filter(x.astype(np.float64), p)


BUGGY = [
    (top_p_off_by_one, "top_p", "any", "keeps"),
    (top_p_as_npllm_had_it, "top_p", "any", "logits are equal"),
    (top_p_without_rounding_allowance, "top_p", "any", "logits are equal"),
    (top_p_highest_ids_on_ties, "top_p", "lowest-id", "lowest-id"),
    (top_k_in_place, "top_k", "any", "modified its input"),
    (top_k_drops_ties, "top_k", "any", "ties included|same logit"),
    (temperature_after_softmax, "temperature", "any", "logits / temperature"),
    (temperature_naive, "temperature", "any", "overflows|NaN"),
    (min_p_on_logits, "min_p", "any", "min-p compares probabilities|most likely|every token"),
    (penalty_ignores_negative_logits, "repetition_penalty", "any", "negative logit is multiplied"),
    (penalty_counts_repeats, "repetition_penalty", "any", "each id counts once"),
    (typical_drops_the_crossing_token, "typical", "any", "until their mass reaches typical_p|same logit"),
    (filter_returns_a_view, "top_k", "any", "new array"),
    (filter_returns_float64, "top_p", "any", "dtype float64"),
]


@pytest.mark.parametrize("fn,kind,ties,message", BUGGY, ids=[b[0].__name__ for b in BUGGY])
def test_check_filter_catches_a_buggy_filter(fn, kind, ties, message):
    with pytest.raises(AssertionError, match=message) as err:
        check_filter(fn, kind, ties=ties, **CHECK)
    text = str(err.value)
    assert f"check_filter({fn.__name__!r}, {kind!r})" in text and "logits (" in text  # the shrunk example


def test_the_highest_ids_among_ties_are_fine_by_default():
    check_filter(top_p_highest_ids_on_ties, "top_p", **CHECK)


def test_the_off_by_one_top_p_shrinks_to_a_tiny_uniform_row():
    with pytest.raises(AssertionError) as err:
        check_filter(top_p_off_by_one, "top_p", **CHECK)
    assert "logits are equal" in str(err.value) and "shape (1, " in str(err.value)


def test_a_crash_is_reported_as_a_deviation():
    def crashes(x, p):
        raise IndexError("oops")

    with pytest.raises(AssertionError, match="raised IndexError: oops"):
        check_filter(crashes, "top_p", max_examples=5, derandomize=True)


@pytest.mark.parametrize("kwargs,error", [(dict(kind="top_q"), ValueError), (dict(ties="random"), ValueError),
                                          (dict(max_examples=0), ValueError), (dict(fn=3), TypeError)])
def test_check_filter_refuses_bad_arguments(kwargs, error):
    args = {"fn": sampling.top_p_filter, "kind": "top_p", **kwargs}
    with pytest.raises(error):
        check_filter(args.pop("fn"), args.pop("kind"), **args)


# ============================================================== hypothesis is optional for npllm
NO_HYPOTHESIS = r"""
import sys
sys.modules['hypothesis'] = None     # any 'import hypothesis' now raises ImportError
import npllm, npllm.sampling, npllm.generation
try:
    import npllm.testing
except ImportError as e:
    print(e)
"""


def test_npllm_imports_without_hypothesis_and_testing_says_how_to_get_it():
    out = subprocess.run([sys.executable, "-c", NO_HYPOTHESIS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "pip install hypothesis" in out.stdout
