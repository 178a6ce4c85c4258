"""Properties of the samplers in npllm.sampling (lesson 05).

Expected values come from the math (float64 softmax written out here with
math.fsum), never from npllm's own output.  Most properties draw their rows from
``npllm.testing.logits``, which aims at the hard cases (ties, uniform rows,
-inf, huge and tiny magnitudes, ulp gaps); the few that need exact arithmetic on
the logits (adding a constant, the temperature limits) use a coarse grid.
``tests/test_testing.py`` runs ``npllm.testing.check_filter`` on every filter.
"""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from npllm import _jit, sampling
from npllm.errors import GenerationParameterError
from npllm.testing import logits

# One float64 row [V] of hard cases, from npllm's own strategy.
hard_rows = logits(batch=1, dtype=np.float64).map(lambda x: x[0])

# Logits on a 1/8 grid: adding an integer constant is exact, ties are common.
grid = st.integers(-160, 160).map(lambda i: i / 8.0)
logit_rows = st.integers(1, 24).flatmap(lambda v: arrays(np.float64, v, elements=grid))


@st.composite
def grid_rows_with_neg_inf(draw):
    x = draw(logit_rows)
    holes = draw(arrays(bool, x.shape, elements=st.booleans()))
    holes[int(np.argmax(x))] = False  # keep one finite entry
    return np.where(holes, -np.inf, x)


def probs64(x):
    """softmax in float64, written independently of npllm."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):  # huge logits: x - max overflows to -inf, exp gives 0
        e = np.exp(x - x.max())
    return e / math.fsum(e)


def descending_order(x):
    """Token ids by descending logit; the lower id first among equal logits."""
    return sorted(range(len(x)), key=lambda i: (-x[i], i))


def kept(out):
    return np.asarray(out) > -np.inf


# ============================================================== top-p
@settings(max_examples=150)
@given(hard_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_the_minimal_descending_prefix_whose_mass_reaches_p(x, p):
    out = sampling.top_p_filter(x, p)
    probs = probs64(x)
    order = descending_order(x)
    masses = np.cumsum(probs[order])
    # The smallest k with mass(first k) >= p; stay away from float ties with p itself.
    assume(np.all(np.abs(masses - p) > 1e-9))
    k = int(np.argmax(masses >= p)) + 1 if masses[-1] >= p else len(x)
    expected = np.zeros(len(x), dtype=bool)
    expected[order[:k]] = True
    expected &= probs > 0  # a token already at -inf stays removed
    expected[order[0]] = True
    np.testing.assert_array_equal(kept(out), expected)
    assert kept(out).sum() >= 1


def test_top_p_nucleus_definition_on_many_random_rows():
    rng = np.random.default_rng(11)
    x = rng.normal(0, 2, (4000, 33))
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[:, 5] = 0.0
    p = rng.uniform(0.05, 1.0, (4000, 1))
    order = np.argsort(-x, axis=1, kind="stable")
    probs = np.exp(x - x.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    before = np.cumsum(np.take_along_axis(probs, order, 1), 1) - np.take_along_axis(probs, order, 1)
    keep_sorted = before < p - 1e-12  # a token is kept while the mass ranked above it is < p
    expected = np.zeros_like(keep_sorted)
    np.put_along_axis(expected, order, keep_sorted, 1)
    expected &= np.isfinite(x)
    out = np.stack([sampling.top_p_filter(x[i], p[i, 0]) for i in range(0, 4000, 8)])
    np.testing.assert_array_equal(kept(out), expected[::8])
    for value in (0.3, 0.9):  # one batched call with a single p
        exp_v = np.zeros_like(keep_sorted)
        np.put_along_axis(exp_v, order, before < value - 1e-12, 1)
        np.testing.assert_array_equal(kept(sampling.top_p_filter(x, value)), exp_v & np.isfinite(x))


@given(hard_rows, st.floats(0.01, 0.99), st.integers(1, 5))
def test_top_p_honours_min_tokens_to_keep(x, p, m):
    out = sampling.top_p_filter(x, p, min_tokens_to_keep=m)
    n_finite = int(np.isfinite(x).sum())
    assert kept(out).sum() >= min(m, n_finite)
    top_m = descending_order(x)[:m]
    assert np.all(out[top_m] == x[top_m])


# ============================================================== top-k
@given(hard_rows, st.integers(1, 30))
def test_top_k_keeps_at_least_k_and_every_logit_at_least_the_kth(x, k):
    out = sampling.top_k_filter(x, k)
    finite = np.sort(x[np.isfinite(x)])[::-1]
    assert kept(out).sum() >= min(k, finite.size)
    kth = finite[min(k, finite.size) - 1]
    np.testing.assert_array_equal(kept(out), x >= kth)


@given(st.integers(1, 30).flatmap(
    lambda v: arrays(np.float64, v, elements=grid, unique=True)), st.integers(1, 30))
def test_top_k_keeps_exactly_k_without_ties(x, k):
    out = sampling.top_k_filter(x, k)
    assert kept(out).sum() == min(k, x.size)


def test_top_k_zero_disables_and_keeps_ties_at_the_kth_value():
    x = np.array([1.0, 3.0, 2.0, 2.0, 0.0])
    np.testing.assert_array_equal(sampling.top_k_filter(x, 0), x)
    np.testing.assert_array_equal(kept(sampling.top_k_filter(x, 2)), [False, True, True, True, False])


# ============================================================== all filters
FILTERS = {
    "top_k": lambda x, a: sampling.top_k_filter(x, 1 + int(a * 10)),
    "top_p": lambda x, a: sampling.top_p_filter(x, max(a, 0.01)),
    "min_p": lambda x, a: sampling.min_p_filter(x, a),
    "typical": lambda x, a: sampling.typical_filter(x, max(a, 0.01)),
}


@pytest.mark.parametrize("name", list(FILTERS))
@given(x=hard_rows, a=st.floats(0.0, 1.0))
def test_filters_never_remove_the_argmax_except_typical(name, x, a):
    out = FILTERS[name](x, a)
    assert kept(out).sum() >= 1
    assert np.all(out[kept(out)] == x[kept(out)])  # kept logits are untouched
    if name != "typical":  # typical sampling may drop the most likely token (by design)
        top = int(np.argmax(x))
        assert out[top] == x[top]


@pytest.mark.parametrize("name", list(FILTERS))
@given(x=grid_rows_with_neg_inf(), a=st.floats(0.0, 1.0), c=st.integers(-100, 100))
def test_filters_are_invariant_to_adding_a_constant(name, x, a, c):
    np.testing.assert_array_equal(kept(FILTERS[name](x + c, a)), kept(FILTERS[name](x, a)))


@pytest.mark.parametrize("name", list(FILTERS))
@given(x=hard_rows, a=st.floats(0.0, 1.0))
def test_kept_probabilities_renormalize_to_one(name, x, a):
    out = FILTERS[name](x, a)
    p = sampling.softmax(out)
    assert math.isclose(p.sum(), 1.0, rel_tol=1e-12)
    full = probs64(x)
    np.testing.assert_allclose(p[kept(out)], full[kept(out)] / full[kept(out)].sum(), rtol=1e-9)
    assert np.all(p[~kept(out)] == 0)


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_do_not_modify_their_input_and_keep_dtype_and_shape(name):
    x = np.random.default_rng(0).normal(size=(4, 9)).astype(np.float32)
    before = x.copy()
    out = FILTERS[name](x, 0.5)
    np.testing.assert_array_equal(x, before)
    assert out.dtype == np.float32 and out.shape == (4, 9) and out is not x
    for b in range(4):  # a batch row equals the same row filtered alone
        np.testing.assert_array_equal(FILTERS[name](x[b], 0.5), out[b])


@given(hard_rows, st.floats(0.0, 1.0))
def test_min_p_keeps_exactly_tokens_at_least_min_p_times_the_top(x, mp):
    probs = probs64(x)
    assume(np.all(np.abs(probs - mp * probs.max()) > 1e-12))
    out = sampling.min_p_filter(x, mp)
    expected = probs >= mp * probs.max()
    np.testing.assert_array_equal(kept(out), expected & np.isfinite(x))


@given(hard_rows, st.floats(0.01, 0.99))
def test_typical_keeps_a_set_of_mass_at_least_p_closest_to_the_entropy(x, tp):
    probs = probs64(x)
    nz = probs > 0
    entropy = -math.fsum(probs[nz] * np.log(probs[nz]))
    dist = np.where(nz, np.abs(-np.log(np.where(nz, probs, 1.0)) - entropy), np.inf)
    out = sampling.typical_filter(x, tp)
    keep = kept(out)
    assert probs[keep].sum() >= tp - 1e-9 or keep.sum() == nz.sum()
    # everything kept is at least as typical as anything removed
    if keep.any() and (~keep & nz).any():
        assert dist[keep].max() <= dist[~keep & nz].min() + 1e-9


# ============================================================== temperature
@given(grid_rows_with_neg_inf())
def test_temperature_to_zero_gives_one_hot_and_to_infinity_gives_uniform(x):
    finite = np.sort(x[np.isfinite(x)])[::-1]
    if finite.size > 1:
        assume(finite[0] - finite[1] >= 0.125)  # a unique maximum
    cold = sampling.softmax(sampling.apply_temperature(x, 1e-3))
    np.testing.assert_allclose(cold, np.eye(x.size)[np.argmax(x)], atol=1e-12)
    hot = sampling.softmax(sampling.apply_temperature(x, 1e7))
    np.testing.assert_allclose(hot[np.isfinite(x)], 1.0 / finite.size, rtol=1e-4)


@given(grid_rows_with_neg_inf(), st.floats(0.05, 20.0))
def test_temperature_divides_the_logits(x, t):
    np.testing.assert_array_equal(sampling.apply_temperature(x, t), x / t)


# ============================================================== penalties
@given(hard_rows, st.floats(0.1, 5.0), st.data())
def test_repetition_penalty_sign_rule(x, penalty, data):
    ids = data.draw(arrays(np.int64, st.integers(0, 12), elements=st.integers(0, x.size - 1)))
    out = sampling.apply_repetition_penalty(x, ids, penalty)
    seen = np.zeros(x.size, dtype=bool)
    seen[ids] = True
    np.testing.assert_array_equal(out[~seen], x[~seen])
    pos, neg = seen & (x > 0), seen & (x < 0)
    with np.errstate(over="ignore"):  # beyond float64's range both sides are +-inf
        np.testing.assert_allclose(out[pos], x[pos] / penalty)  # positive logits are divided
        np.testing.assert_allclose(out[neg], x[neg] * penalty)  # negative ones multiplied
    if penalty > 1:  # a penalty > 1 never makes a seen token more likely
        assert np.all(out[seen] <= x[seen])


def test_repetition_penalty_counts_each_id_once_and_can_skip_left_padding():
    x = np.array([[2.0, -2.0, 1.0, 4.0]] * 2)
    ids = np.array([[0, 0, 0, 1], [3, 3, 0, 2]])
    out = sampling.apply_repetition_penalty(x, ids, 2.0, prompt_ignore_length=[0, 2])
    np.testing.assert_array_equal(out, [[1.0, -4.0, 1.0, 4.0], [1.0, -2.0, 0.5, 4.0]])


def test_frequency_and_presence_penalties_follow_the_openai_formula():
    x = np.array([[1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    generated = np.array([[2, 2, 2, 0]])
    out = sampling.apply_frequency_presence_penalty(x, generated, 0.5, 0.25)
    # token 2: 1 - 3 * 0.5 - 0.25;  token 0: 1 - 0.5 - 0.25
    np.testing.assert_allclose(out, [[0.25, 1.0, -0.75, 1.0]])
    assert out.dtype == np.float32


def test_no_repeat_ngram_bans_tokens_completing_a_seen_ngram():
    x = np.zeros((1, 6))
    ids = np.array([[1, 2, 3, 1, 2, 4, 1, 2]])  # 2-grams after "2": (2,3), (2,4)
    out = sampling.no_repeat_ngram_filter(x, ids, 3)
    np.testing.assert_array_equal(kept(out)[0], [True, True, True, False, False, True])
    out1 = sampling.no_repeat_ngram_filter(x, ids, 1)  # unigrams: every seen id is banned
    np.testing.assert_array_equal(kept(out1)[0], [True, False, False, False, False, True])


# ============================================================== selection
def test_greedy_takes_the_first_index_on_ties():
    assert sampling.greedy(np.array([0.0, 3.0, 3.0, -1.0])) == 1
    np.testing.assert_array_equal(sampling.greedy(np.array([[1.0, 1.0], [0.0, 2.0]])), [0, 1])


def chi2_critical(df, z=4.265):
    """Upper quantile of chi-square (Wilson-Hilferty); z=4.265 is a 1e-5 tail."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("filt", ["none", "top_k", "top_p"])
def test_sampled_frequencies_match_the_filtered_distribution(filt):
    logits = np.log(np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005]))
    if filt == "top_k":
        logits = sampling.top_k_filter(logits, 6)
    elif filt == "top_p":
        logits = sampling.top_p_filter(logits, 0.8)
    expected = probs64(logits)
    n = 200_000
    draws = sampling.sample(np.broadcast_to(logits, (n, logits.size)), np.random.default_rng(7))
    counts = np.bincount(draws, minlength=logits.size)
    support = expected > 0
    assert counts[~support].sum() == 0  # removed tokens are never drawn
    e = expected[support] * n
    chi2 = float(np.sum((counts[support] - e) ** 2 / e))
    assert chi2 < chi2_critical(support.sum() - 1), chi2


def test_the_same_seed_gives_the_same_draws():
    x = np.random.default_rng(0).normal(size=(64, 50))
    a = sampling.sample(x, np.random.default_rng(123))
    b = sampling.sample(x, np.random.default_rng(123))
    c = sampling.sample(x, np.random.default_rng(124))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_refuses_rows_with_nothing_to_draw():
    with pytest.raises(GenerationParameterError, match="all -inf"):
        sampling.sample(np.array([[0.0, 1.0], [-np.inf, -np.inf]]), np.random.default_rng(0))


# ============================================================== kernel vs reference
def test_top_p_kernel_agrees_with_the_numpy_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, (3000, 57)).astype(np.float32)
    x[:1000] = rng.integers(-3, 4, (1000, 57))  # many ties
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[:, 0] = 1.0
    big = rng.normal(0, 3, (6, 49152)).astype(np.float32)  # a real vocabulary: the pruned path
    big[3] = np.round(big[3])  # ties
    big[4, ::2] = -np.inf
    for x, p, m in [(x, 0.1, 1), (x, 0.5, 1), (x, 0.9, 3), (x, 0.99, 1),
                    (big, 0.5, 1), (big, 0.9, 1), (big, 0.999, 1), (big, 0.5, 200)]:
        fast = sampling.top_p_filter(x, p, m)
        try:
            _jit.use_reference(True)
            ref = sampling.top_p_filter(x, p, m)
        finally:
            _jit.use_reference(False)
        np.testing.assert_array_equal(fast, ref)


# ============================================================== processors
def test_processor_list_applies_the_documented_order():
    procs = sampling.build_processors(do_sample=True, temperature=0.5, top_k=5, top_p=0.9, min_p=0.1,
                                      typical_p=0.95, repetition_penalty=1.1, frequency_penalty=0.1,
                                      no_repeat_ngram_size=3, min_new_tokens=2, eos_token_ids=[0],
                                      prompt_length=1)
    assert [type(p).__name__ for p in procs] == [
        "RepetitionPenaltyProcessor", "FrequencyPresencePenaltyProcessor", "NoRepeatNGramProcessor",
        "MinNewTokensProcessor", "TemperatureProcessor", "TopKProcessor", "TopPProcessor",
        "MinPProcessor", "TypicalProcessor"]
    greedy_procs = sampling.build_processors(do_sample=False, temperature=0.5, top_k=5,
                                             repetition_penalty=1.1)
    assert [type(p).__name__ for p in greedy_procs] == ["RepetitionPenaltyProcessor"]

    x = np.random.default_rng(1).normal(size=(2, 30)).astype(np.float32)
    ids = np.array([[3, 4, 5], [6, 7, 8]])
    by_hand = x
    for p in procs:
        by_hand = p(ids, by_hand)
    np.testing.assert_array_equal(procs(ids, x), by_hand)
    manual = sampling.top_k_filter(sampling.apply_temperature(
        sampling.apply_repetition_penalty(x, ids, 1.1), 0.5), 5)
    two = sampling.LogitsProcessorList([sampling.RepetitionPenaltyProcessor(1.1),
                                        sampling.TemperatureProcessor(0.5), sampling.TopKProcessor(5)])
    np.testing.assert_array_equal(two(ids, x), manual)


def test_min_new_tokens_processor_suppresses_eos_only_before_the_minimum():
    proc = sampling.MinNewTokensProcessor(prompt_length=2, min_new_tokens=2, eos_token_ids=[1, 3])
    x = np.zeros((1, 5))
    assert np.isneginf(proc(np.zeros((1, 3), int), x)[0, [1, 3]]).all()
    np.testing.assert_array_equal(proc(np.zeros((1, 4), int), x), x)


# ============================================================== bad parameters
BAD = [
    (lambda: sampling.apply_temperature(np.zeros(3), 0.0), "temperature"),
    (lambda: sampling.apply_temperature(np.zeros(3), -1.0), "temperature"),
    (lambda: sampling.top_k_filter(np.zeros(3), -1), "top_k"),
    (lambda: sampling.top_k_filter(np.zeros(3), 2.5), "top_k"),
    (lambda: sampling.top_k_filter(np.zeros(3), 2, min_tokens_to_keep=0), "min_tokens_to_keep"),
    (lambda: sampling.top_p_filter(np.zeros(3), 0.0), "top_p"),
    (lambda: sampling.top_p_filter(np.zeros(3), 1.5), "top_p"),
    (lambda: sampling.top_p_filter(np.zeros(3), float("nan")), "top_p"),
    (lambda: sampling.min_p_filter(np.zeros(3), -0.1), "min_p"),
    (lambda: sampling.min_p_filter(np.zeros(3), 1.1), "min_p"),
    (lambda: sampling.typical_filter(np.zeros(3), 0.0), "typical_p"),
    (lambda: sampling.apply_repetition_penalty(np.zeros(3), [0], 0.0), "repetition_penalty"),
    (lambda: sampling.apply_repetition_penalty(np.zeros(3), [3], 1.2), "input_ids"),
    (lambda: sampling.apply_frequency_presence_penalty(np.zeros(3), [0], float("inf"), 0), "frequency_penalty"),
    (lambda: sampling.no_repeat_ngram_filter(np.zeros(3), [0], 0), "no_repeat_ngram_size"),
    (lambda: sampling.top_k_filter(np.zeros((2, 2, 2)), 1), "logits"),
    (lambda: sampling.top_k_filter(np.arange(3), 1), "logits"),
    (lambda: sampling.sample(np.zeros(3), 0), "rng"),
    (lambda: sampling.TopPProcessor(2.0), "top_p"),
    (lambda: sampling.TemperatureProcessor(0), "temperature"),
    (lambda: sampling.RepetitionPenaltyProcessor(-1.0), "repetition_penalty"),
    (lambda: sampling.MinPProcessor(3), "min_p"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_parameters_raise_a_value_error_naming_them(call, name):
    with pytest.raises(GenerationParameterError, match=name) as err:
        call()
    assert isinstance(err.value, ValueError)


# ============================================================== +inf logits
def test_sample_draws_the_plus_inf_token():
    rng = np.random.default_rng(0)
    x = np.array([[0.0, 1.0, np.inf, 2.0], [np.inf, 5.0, -np.inf, 0.0]])
    draws = sampling.sample(np.tile(x, (200, 1)), rng).reshape(200, 2)
    assert np.all(draws[:, 0] == 2) and np.all(draws[:, 1] == 0)


def test_sample_is_uniform_among_several_plus_inf_tokens():
    x = np.array([0.0, np.inf, 3.0, np.inf, -np.inf, np.inf])
    n = 30_000
    draws = sampling.sample(np.broadcast_to(x, (n, x.size)), np.random.default_rng(1))
    counts = np.bincount(draws, minlength=x.size)
    assert counts[[0, 2, 4]].sum() == 0
    e = n / 3
    chi2 = float(np.sum((counts[[1, 3, 5]] - e) ** 2 / e))
    assert chi2 < chi2_critical(2), counts


def test_softmax_gives_the_plus_inf_tokens_all_the_mass():
    np.testing.assert_array_equal(sampling.softmax(np.array([1.0, np.inf, 0.0])), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(sampling.softmax(np.array([[np.inf, np.inf, -np.inf, 7.0]])),
                                  [[0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_array_equal(sampling.log_softmax(np.array([np.inf, 0.0])), [0.0, -np.inf])


def test_min_p_with_a_plus_inf_logit_keeps_only_the_plus_inf_tokens():
    x = np.array([[0.0, 1.0, np.inf, 2.0], [np.inf, np.inf, 3.0, -1.0]])
    np.testing.assert_array_equal(kept(sampling.min_p_filter(x, 0.1)),
                                  [[False, False, True, False], [True, True, False, False]])
    np.testing.assert_array_equal(kept(sampling.min_p_filter(x, 0.0)), x > -np.inf)


# ============================================================== exact ties at the top-p cut
@pytest.mark.parametrize("n,p", [(300, 0.5), (100, 0.5), (100, 0.3), (1000, 0.5), (10, 0.9), (49152, 0.25)])
def test_top_p_on_a_uniform_row_keeps_the_tokens_whose_mass_reaches_exactly_p(n, p):
    """n equal logits: each token has probability 1/n, so round(p n) tokens reach exactly p
    (150 of 300 at p = 0.5, as HF keeps); one more would not be the smallest such set."""
    expected = round(p * n)
    for dtype in (np.float32, np.float64):
        x = np.full(n, 1.5, dtype=dtype)
        assert kept(sampling.top_p_filter(x, p)).sum() == expected
        try:
            _jit.use_reference(True)
            assert kept(sampling.top_p_filter(x, p)).sum() == expected
        finally:
            _jit.use_reference(False)


# ============================================================== temperature overflow
@pytest.mark.parametrize("t", [1e-37, 1e-39, 1e-45, 1e-300, 5e-324])
def test_a_temperature_so_small_that_logits_over_t_overflows_puts_all_mass_on_the_argmax(t):
    x = np.array([[3.0, 2.0, -1.0, 2.5], [-4.0, 0.0, -np.inf, -0.5]], dtype=np.float32)
    out = sampling.apply_temperature(x, t)
    assert out.dtype == np.float32 and not np.isnan(out).any()
    np.testing.assert_array_equal(sampling.softmax(out), [[1, 0, 0, 0], [0, 1, 0, 0]])
    draws = sampling.sample(np.tile(out, (50, 1)), np.random.default_rng(0))
    np.testing.assert_array_equal(draws, np.tile([0, 1], 50))


def test_a_tiny_temperature_keeps_exact_ties_at_the_top_tied():
    """Equal logits stay equal at every temperature > 0, so the limit shares the mass among them."""
    x = np.array([1.0, 7.0, 7.0, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(sampling.softmax(sampling.apply_temperature(x, 1e-40)), [0, 0.5, 0.5, 0])


# ============================================================== found by npllm.testing.check_filter
def test_top_p_on_a_row_with_plus_inf_drops_the_finite_tokens():
    x = np.array([[np.inf, np.inf, 0.0, 0.0, 3.0]], dtype=np.float32)
    for p, want in [(5e-324, [True, False]), (0.5, [True, False]), (0.9, [True, True])]:
        np.testing.assert_array_equal(kept(sampling.top_p_filter(x, p)), [want + [False] * 3])


def test_min_p_does_not_underflow_its_threshold():
    """min_p * p_max underflows to 0 for min_p = 5e-324; p_i / p_max < min_p does not."""
    x = np.array([np.inf, np.inf, 0.0])
    np.testing.assert_array_equal(kept(sampling.min_p_filter(x, 5e-324)), [True, True, False])


@pytest.mark.parametrize("t", [8.86e-41, 1e-45, 3.5e38, 1e300])
def test_a_temperature_outside_the_float32_range_still_divides_exactly(t):
    """float32(t) is subnormal, 0 or inf here: dividing by it would lose digits or give NaN."""
    x = np.array([0.015625, -np.inf, 1e-20, -1e-3], dtype=np.float32)
    out = sampling.apply_temperature(x, t)
    with np.errstate(over="ignore"):
        want = (x.astype(np.float64) / t).astype(np.float32)
    if np.isfinite(want[np.isfinite(x)]).all():
        np.testing.assert_array_equal(out, want)
    assert not np.isnan(out).any() and out.dtype == np.float32


# ============================================================== order of the processors
@given(grid_rows_with_neg_inf(), st.integers(1, 30), st.floats(0.05, 20.0))
def test_top_k_and_temperature_commute(x, k, t):
    """z -> z / t is strictly increasing, so the k largest are the same tokens (ties too), and
    top-k leaves the kept logits alone: either order gives the same logits (lesson 05, 3.7)."""
    finite = np.unique(x[np.isfinite(x)])
    assume(np.unique(finite / t).size == finite.size)  # rounding of z / t merged no two logits
    np.testing.assert_array_equal(sampling.apply_temperature(sampling.top_k_filter(x, k), t),
                                  sampling.top_k_filter(sampling.apply_temperature(x, t), k))


def test_top_p_and_temperature_do_not_commute():
    z = np.array([3.0, 2.0, 2.0, 1.0, 0.5, 0.0, -1.0, -2.5])
    hot_then_cut = sampling.top_p_filter(sampling.apply_temperature(z, 2.0), 0.6)
    cut_then_hot = sampling.apply_temperature(sampling.top_p_filter(z, 0.6), 2.0)
    assert kept(hot_then_cut).sum() > kept(cut_then_hot).sum()  # a flatter distribution needs more tokens
