"""Beam search (lesson 10) against HF ``generate(num_beams=...)`` on a tiny random Llama.

The expected sequences, ``sequences_scores`` and ``beam_indices`` come from transformers'
``_beam_search`` running the same weights, over a grid of num_beams, length_penalty,
early_stopping and num_return_sequences, on a left-padded batch where EOS is reachable.
"""

import numpy as np
import pytest
import torch
import transformers

from npllm import CausalLM, ModelConfig
from npllm.errors import GenerationParameterError

V = 97
MAX_NEW = 10
PAD = 96  # nonzero: HF fills finished beams with `pad_token_id or eos`, so 0 would mean EOS


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-6, initializer_range=0.25, tie_word_embeddings=False,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model(hf_model):
    ours = CausalLM(ModelConfig.from_dict(hf_model.config.to_dict()), init=False)
    ours.load_state_dict(hf_model.state_dict())
    return ours


@pytest.fixture(scope="module")
def batch():
    """Three prompts of lengths 6, 3 and 1, left-padded."""
    rows = [[5, 17, 33, 2, 90, 41], [61, 3, 77], [12]]
    T0 = max(len(r) for r in rows)
    ids = np.full((3, T0), PAD, dtype=np.int64)
    mask = np.zeros((3, T0), dtype=np.int64)
    for b, r in enumerate(rows):
        ids[b, T0 - len(r):] = r
        mask[b, T0 - len(r):] = 1
    return ids, mask


def hf_beam(hf_model, ids, mask, **kw):
    with torch.no_grad():
        out = hf_model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=PAD, top_k=None,
                                top_p=None, temperature=None, return_dict_in_generate=True,
                                output_scores=True, **kw)
    return out


@pytest.fixture(scope="module")
def eos_ids(hf_model, batch):
    """Two EOS candidates: tokens the beams produce in the middle of the run, so that some
    hypotheses finish early and others run to max length."""
    ids, mask = batch
    out = hf_beam(hf_model, ids, mask, num_beams=4, num_return_sequences=4, eos_token_id=None)
    gen = out.sequences.numpy()[:, ids.shape[1]:]
    counts = {}
    for tok in np.unique(gen[:, 2:MAX_NEW - 2]):
        counts[int(tok)] = int((gen[:, 2:MAX_NEW - 2] == tok).any(axis=1).sum())
    best = sorted(counts, key=lambda t: -counts[t])
    assert counts[best[0]] >= 2, counts
    return best[:2]


def ours_beam(model, ids, mask, **kw):
    return model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0, pad_token_id=PAD,
                          return_dict_in_generate=True, output_scores=True, **kw)


def assert_same(ours, hf):
    np.testing.assert_array_equal(ours.sequences, hf.sequences.numpy())
    np.testing.assert_allclose(ours.sequences_scores, hf.sequences_scores.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(ours.beam_indices, hf.beam_indices.numpy())


GRID = [(nb, lp, es, nrs) for nb in (2, 3, 4) for lp in (0.0, 1.0, 2.0) for es in (True, False, "never")
        for nrs in sorted({1, nb})]


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,num_return_sequences", GRID)
def test_beam_search_equals_hf_on_a_left_padded_batch(hf_model, model, batch, eos_ids, num_beams,
                                                      length_penalty, early_stopping, num_return_sequences):
    ids, mask = batch
    kw = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
              num_return_sequences=num_return_sequences, eos_token_id=eos_ids[0])
    assert_same(ours_beam(model, ids, mask, **kw), hf_beam(hf_model, ids, mask, **kw))


@pytest.mark.parametrize("num_beams", [2, 3])
def test_two_eos_ids_keep_more_candidates_as_hf(hf_model, model, batch, eos_ids, num_beams):
    ids, mask = batch
    kw = dict(num_beams=num_beams, num_return_sequences=num_beams, eos_token_id=eos_ids)
    ours = ours_beam(model, ids, mask, **kw)
    assert_same(ours, hf_beam(hf_model, ids, mask, **kw))
    assert (ours.num_new_tokens < MAX_NEW).any()  # some hypotheses did finish on EOS


def test_penalties_act_on_log_probs_as_in_hf(hf_model, model, batch, eos_ids):
    ids, mask = batch
    kw = dict(num_beams=3, num_return_sequences=2, eos_token_id=eos_ids[0], repetition_penalty=1.7,
              no_repeat_ngram_size=2)
    assert_same(ours_beam(model, ids, mask, **kw), hf_beam(hf_model, ids, mask, **kw))


def test_processed_step_scores_equal_hfs(hf_model, model, batch, eos_ids):
    ids, mask = batch
    kw = dict(num_beams=2, eos_token_id=eos_ids[0])
    ours, hf = ours_beam(model, ids, mask, **kw), hf_beam(hf_model, ids, mask, **kw)
    assert len(ours.scores) == len(hf.scores)
    for a, b in zip(ours.scores, hf.scores):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)


def test_without_output_scores_there_are_no_sequences_scores(model, batch):
    ids, mask = batch
    out = model.generate(ids, attention_mask=mask, max_new_tokens=3, num_beams=2, temperature=0,
                         return_dict_in_generate=True)
    assert out.sequences_scores is None and out.beam_indices.shape == (3, 3)


def test_one_beam_returning_itself_is_greedy(model, batch):
    ids, mask = batch
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0, eos_token_id=[])
    beam = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0, eos_token_id=[],
                          num_beams=1, num_return_sequences=1)
    np.testing.assert_array_equal(beam, greedy)


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=2, length_penalty=float("nan")), "length_penalty"),
])
def test_bad_beam_parameters_raise_naming_them(model, kwargs, name):
    with pytest.raises(GenerationParameterError, match=name):
        model.generate([[1, 2]], max_new_tokens=2, temperature=0, **kwargs)
