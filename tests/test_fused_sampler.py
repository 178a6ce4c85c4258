"""The fused sampling chain (lesson 07): ``fused_sampling_filter`` equals the readable chain
``apply_temperature -> top_k_filter -> top_p_filter -> min_p_filter``, and
``LogitsProcessorList`` takes it for the chain ``npllm generate`` runs by default.

Expected values come from the per-filter reference functions (each checked against HF
transformers in ``tests/test_sampling_hf_parity.py``) and from ``npllm.testing.check_filter``.
"""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from npllm import sampling
from npllm.testing import check_filter, logits

CHECK = dict(max_examples=150, derandomize=True)


def chain(x, t, k, p, mp):
    """The readable chain, one filter after another."""
    out = x if t is None else sampling.apply_temperature(x, t)
    if k:
        out = sampling.top_k_filter(out, k)
    if p < 1.0:
        out = sampling.top_p_filter(out, p)
    if mp > 0.0:
        out = sampling.min_p_filter(out, mp)
    return out


def top_p_cut_is_ambiguous(row, p):
    """True when some tail mass of ``row`` (float64 logits, -inf removed) lies within rounding
    of 1 - p: there two correct top-p filters may cut differently (see check_filter's band)."""
    z = np.sort(row[row > -np.inf].astype(np.float64))  # ascending: least likely first
    if z.size == 0:
        return False
    e = np.exp(z - z[-1])
    total = math.fsum(e)
    tails = np.array([math.fsum(e[:j + 1]) for j in range(e.size)]) / total
    return bool(np.any(np.abs(tails - (1.0 - p)) <= 4 * sampling._mass_tolerance(row.size)))


params = st.tuples(
    st.one_of(st.none(), st.sampled_from([0.8, 0.5, 1.3]), st.floats(0.05, 5.0)),  # temperature
    st.integers(1, 70),  # top_k
    st.one_of(st.just(1.0), st.sampled_from([0.95, 0.5]), st.floats(0.01, 1.0)),  # top_p
    st.one_of(st.just(0.0), st.sampled_from([0.05, 1.0]), st.floats(0.0, 1.0)),  # min_p
)


@settings(max_examples=400, deadline=None, database=None)
@given(logits(dtype=np.float32), params)
def test_fused_chain_equals_the_readable_chain(x, args):
    t, k, p, mp = args
    want = chain(x, t, k, p, mp)
    got = sampling.fused_sampling_filter(x, t, k, p, mp)
    assert got.dtype == want.dtype and got.shape == want.shape
    for b in range(x.shape[0]):
        if np.array_equal(got[b], want[b]):
            continue
        # Only a top-p cut within rounding of 1 - p may differ; the row top-p saw is top-k's output.
        before_p = sampling.top_k_filter(x[b] if t is None else sampling.apply_temperature(x[b], t), k)
        assert p < 1.0 and top_p_cut_is_ambiguous(before_p, p), (b, got[b], want[b])


@settings(max_examples=200, deadline=None, database=None)
@given(logits(dtype=np.float64), params)
def test_fused_chain_equals_the_readable_chain_in_float64(x, args):
    t, k, p, mp = args
    want = chain(x, t, k, p, mp)
    got = sampling.fused_sampling_filter(x, t, k, p, mp)
    for b in range(x.shape[0]):
        if not np.array_equal(got[b], want[b]):
            before_p = sampling.top_k_filter(x[b] if t is None else sampling.apply_temperature(x[b], t), k)
            assert p < 1.0 and top_p_cut_is_ambiguous(before_p, p), (b, got[b], want[b])


def test_fused_chain_on_a_real_sized_vocabulary_equals_the_chain_exactly():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 49152)) * 2.5).astype(np.float32)
    x[:, :60] += rng.uniform(4, 9, size=(8, 60)).astype(np.float32)
    for args in [(0.8, 40, 0.95, 0.05), (1.0, 200, 0.9, 0.0), (None, 40, 1.0, 0.1), (0.6, 5, 0.5, 0.2)]:
        np.testing.assert_array_equal(sampling.fused_sampling_filter(x, *args), chain(x, *args))


@pytest.mark.parametrize("kind", ["temperature", "top_k", "top_p", "min_p"])
def test_each_step_of_the_fused_chain_passes_check_filter(kind):
    fn = {"temperature": lambda x, t: sampling.fused_sampling_filter(x, temperature=t),
          "top_k": lambda x, k: sampling.fused_sampling_filter(x, top_k=k),
          "top_p": lambda x, p: sampling.fused_sampling_filter(x, top_p=p),
          "min_p": lambda x, mp: sampling.fused_sampling_filter(x, min_p=mp)}[kind]
    check_filter(fn, kind, ties="lowest-id", posinf=True, **CHECK)


def test_the_default_processor_list_takes_the_fused_path(monkeypatch):
    procs = sampling.build_processors(do_sample=True, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
    calls = []
    real = sampling.fused_sampling_filter
    monkeypatch.setattr(sampling, "fused_sampling_filter", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    x = np.random.default_rng(2).standard_normal((2, 500)).astype(np.float32) * 3
    out = procs(None, x)
    assert calls == [dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)]
    np.testing.assert_array_equal(out, chain(x, 0.8, 40, 0.95, 0.05))


def test_a_chain_of_another_shape_runs_processor_by_processor(monkeypatch):
    monkeypatch.setattr(sampling, "fused_sampling_filter", lambda *a, **kw: pytest.fail("fused"))
    x = np.random.default_rng(3).standard_normal((1, 300)).astype(np.float32)
    for procs in [sampling.LogitsProcessorList([sampling.TopKProcessor(40, min_tokens_to_keep=2),
                                                sampling.TopPProcessor(0.9)]),
                  sampling.build_processors(do_sample=True, temperature=0.7, top_p=0.9, min_p=0.1),
                  sampling.build_processors(do_sample=True, top_k=40)]:
        procs(None, x)


def test_a_penalty_before_the_chain_still_applies(monkeypatch):
    ids = np.array([[3, 4, 5]])
    procs = sampling.build_processors(do_sample=True, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                                      repetition_penalty=1.3)
    x = np.random.default_rng(4).standard_normal((1, 300)).astype(np.float32) * 3
    pen = sampling.apply_repetition_penalty(x, ids, 1.3)
    np.testing.assert_array_equal(procs(ids, x), chain(pen, 0.8, 40, 0.95, 0.05))


def test_the_sampled_token_is_the_chains_for_the_same_rng_stream():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8, 49152)) * 2).astype(np.float32)
    x[:, :30] += 6
    fused = sampling.fused_sampling_filter(x, 0.8, 40, 0.95, 0.05)
    want = chain(x, 0.8, 40, 0.95, 0.05)
    a = [sampling.sample(fused, np.random.default_rng(s)) for s in range(20)]
    b = [sampling.sample(want, np.random.default_rng(s)) for s in range(20)]
    np.testing.assert_array_equal(a, b)
    assert len({tuple(t) for t in a}) > 1  # the draws do vary with the stream


@pytest.mark.parametrize("name,value", [("temperature", 0.0), ("top_k", -1), ("top_p", 0.0), ("min_p", 1.5)])
def test_fused_chain_names_a_bad_parameter(name, value):
    from npllm.errors import GenerationParameterError

    with pytest.raises(GenerationParameterError, match=name):
        sampling.fused_sampling_filter(np.zeros((1, 5), np.float32), **{name: value})


def test_a_row_with_nan_takes_the_chain_and_its_error():
    x = np.zeros((1, 5), np.float32)
    x[0, 2] = np.nan
    with np.errstate(invalid="ignore"):
        got = sampling.fused_sampling_filter(x, 0.8, 3, 0.9, 0.05)
        want = chain(x, 0.8, 3, 0.9, 0.05)
    np.testing.assert_array_equal(got, want)
