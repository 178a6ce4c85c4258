"""npllm.sampling against HF transformers' LogitsProcessors on thousands of random rows.

The rows mix Gaussian logits, small-integer logits (many ties) and entries
already at -inf.  Everything is batched into one big array per processor so the
whole file runs in a few seconds.
"""

import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from npllm import sampling

N, V = 6000, 40


def random_rows(seed, n=N, v=V):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, (n, v)).astype(np.float32)
    ties = rng.random(n) < 0.3
    x[ties] = rng.integers(-3, 4, (ties.sum(), v))  # small integers: ties everywhere
    x[rng.random((n, v)) < 0.1] = -np.inf
    x[np.arange(n), rng.integers(0, v, n)] = rng.normal(0, 3, n)  # at least one finite entry
    return x


def run_hf(processor, x, ids=None):
    ids = torch.zeros((x.shape[0], 1), dtype=torch.long) if ids is None else torch.from_numpy(ids)
    with torch.no_grad():
        return processor(ids, torch.from_numpy(x.copy())).numpy()


@pytest.fixture(scope="module")
def rows():
    return random_rows(0)


def split_tie_rows(x, out):
    """Rows where a removed token has the same logit as a kept one.

    torch.sort is not stable, so when a cut falls inside a group of equal logits
    HF keeps arbitrary members of the group; npllm keeps the lower token ids.
    On those rows only the kept *values* must agree.
    """
    kept = ~np.isneginf(out)
    removed = np.isneginf(out) & np.isfinite(x)
    same = x[:, :, None] == x[:, None, :]  # [N, V, V]
    return (same & kept[:, :, None] & removed[:, None, :]).any(axis=(1, 2))


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("min_keep", [1, 3])
def test_top_p_matches_hf(rows, top_p, min_keep):
    ours = sampling.top_p_filter(rows, top_p, min_tokens_to_keep=min_keep)
    theirs = run_hf(hf.TopPLogitsWarper(top_p, min_tokens_to_keep=min_keep), rows)
    # Same multiset of kept logits in every row ...
    np.testing.assert_array_equal(np.sort(ours, axis=1), np.sort(theirs, axis=1))
    # ... and exactly the same tokens wherever the cut does not split a tie group.
    clean = ~split_tie_rows(rows, ours)
    assert clean.sum() > N // 2
    np.testing.assert_array_equal(ours[clean], theirs[clean])


@pytest.mark.parametrize("top_k", [1, 2, 5, 20, 39, 40, 100])
def test_top_k_matches_hf_including_ties(rows, top_k):
    np.testing.assert_array_equal(sampling.top_k_filter(rows, top_k), run_hf(hf.TopKLogitsWarper(top_k), rows))


def test_top_k_min_tokens_to_keep_matches_hf(rows):
    np.testing.assert_array_equal(sampling.top_k_filter(rows, 2, min_tokens_to_keep=7),
                                  run_hf(hf.TopKLogitsWarper(2, min_tokens_to_keep=7), rows))


@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.1, 0.3, 0.7, 1.0])
def test_min_p_matches_hf(rows, min_p):
    np.testing.assert_array_equal(sampling.min_p_filter(rows, min_p), run_hf(hf.MinPLogitsWarper(min_p), rows))


def test_min_p_min_tokens_to_keep_matches_hf_without_ties():
    x = np.random.default_rng(5).normal(0, 3, (3000, V)).astype(np.float32)  # distinct values
    np.testing.assert_array_equal(sampling.min_p_filter(x, 0.9, min_tokens_to_keep=4),
                                  run_hf(hf.MinPLogitsWarper(0.9, min_tokens_to_keep=4), x))


@pytest.mark.parametrize("typical_p", [0.05, 0.2, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("min_keep", [1, 4])
def test_typical_matches_hf(rows, typical_p, min_keep):
    ours = sampling.typical_filter(rows, typical_p, min_tokens_to_keep=min_keep)
    theirs = run_hf(hf.TypicalLogitsWarper(typical_p, min_tokens_to_keep=min_keep), rows)
    np.testing.assert_array_equal(np.sort(ours, axis=1), np.sort(theirs, axis=1))
    # min_tokens_to_keep > 1 can split a group of equal logits (again torch.sort's tie order).
    clean = ~split_tie_rows(rows, ours) if min_keep > 1 else np.ones(N, dtype=bool)
    assert clean.sum() > N // 2
    np.testing.assert_array_equal(ours[clean], theirs[clean])


@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 1.3, 10.0])
def test_temperature_matches_hf(rows, temperature):
    np.testing.assert_array_equal(sampling.apply_temperature(rows, temperature),
                                  run_hf(hf.TemperatureLogitsWarper(temperature), rows))


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.1, 1.5, 3.0])
def test_repetition_penalty_matches_hf(rows, penalty):
    ids = np.random.default_rng(1).integers(0, V, (N, 15))
    np.testing.assert_array_equal(sampling.apply_repetition_penalty(rows, ids, penalty),
                                  run_hf(hf.RepetitionPenaltyLogitsProcessor(penalty), rows, ids))


def test_repetition_penalty_with_per_row_ignored_prefix_matches_hf(rows):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, V, (N, 15))
    skip = rng.integers(0, 15, N)
    theirs = run_hf(hf.RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=torch.from_numpy(skip)),
                    rows, ids)
    np.testing.assert_array_equal(sampling.apply_repetition_penalty(rows, ids, 1.3, skip), theirs)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_hf(rows, n):
    ids = np.random.default_rng(3).integers(0, 4, (N, 14))  # a small alphabet repeats n-grams
    np.testing.assert_array_equal(sampling.no_repeat_ngram_filter(rows, ids, n),
                                  run_hf(hf.NoRepeatNGramLogitsProcessor(n), rows, ids))


def test_min_new_tokens_matches_hf(rows):
    ids = np.zeros((N, 6), dtype=np.int64)
    for length, eos in [(6, [3]), (6, [3, 17]), (9, [3])]:
        ids_now = np.zeros((N, length), dtype=np.int64)
        proc = sampling.MinNewTokensProcessor(prompt_length=4, min_new_tokens=3, eos_token_ids=eos)
        theirs = run_hf(hf.MinNewTokensLengthLogitsProcessor(4, 3, eos), rows, ids_now)
        np.testing.assert_array_equal(proc(ids_now, rows), theirs)
    assert ids.shape == (N, 6)


def test_the_sampling_chain_matches_hf_list(rows):
    ids = np.random.default_rng(4).integers(0, V, (N, 10))
    chain = hf.LogitsProcessorList([hf.RepetitionPenaltyLogitsProcessor(1.2), hf.TemperatureLogitsWarper(0.8),
                                    hf.TopKLogitsWarper(25), hf.MinPLogitsWarper(0.02)])
    ours = sampling.build_processors(do_sample=True, repetition_penalty=1.2, temperature=0.8, top_k=25,
                                     min_p=0.02)
    np.testing.assert_array_equal(ours(ids, rows), run_hf(chain, rows, ids))


def test_greedy_matches_torch_argmax_on_ties(rows):
    np.testing.assert_array_equal(sampling.greedy(rows), torch.argmax(torch.from_numpy(rows), -1).numpy())
