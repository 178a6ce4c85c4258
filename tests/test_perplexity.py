"""Perplexity (lesson 07) against its definitions, computed here independently on a tiny model:

* llama.cpp's method: non-overlapping chunks of ``context`` tokens, each starting with BOS when
  the tokenizer adds one, scoring the second half of each chunk;
* HF's sliding-window method (the "Perplexity of fixed-length models" guide): windows of
  ``context`` tokens every ``stride`` tokens; each window scores only the tokens no earlier
  window scored, the very first token of the text never.
"""

import numpy as np
import pytest

from npllm import CausalLM, ModelConfig
from npllm.errors import GenerationParameterError
from npllm.perplexity import perplexity

V = 50


class StubTokenizer:
    def __init__(self, ids, bos=None):
        self.ids, self.bos_token_id, self.add_bos_token = list(ids), bos, bos is not None

    def encode(self, text):
        return list(self.ids)


class Recording:
    """Wraps a model and records the token rows it is asked to score."""

    def __init__(self, model):
        self.model, self.config, self.seen = model, model.config, []

    def forward(self, ids, **kw):
        self.seen.append(np.array(ids[0]))
        return self.model.forward(ids, **kw)


@pytest.fixture(scope="module")
def model():
    config = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, initializer_range=0.3)
    return CausalLM(config, seed=3, dtype=np.float64)


def nll_of(model, window, j):
    """-log p(window[j] | window[:j]) from a forward over the window alone."""
    logits, _ = model.forward(window[None, :j])
    z = logits[0, -1].astype(np.float64)
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[window[j]])


@pytest.mark.parametrize("n,context,stride", [(37, 8, 3), (40, 10, 10), (25, 6, 1), (30, 12, 5), (9, 16, 4)])
def test_stride_method_scores_each_token_once_with_its_own_window(model, n, context, stride):
    ids = np.random.default_rng(n).integers(0, V, n)
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):                      # HF's guide, token by token
        end = min(begin + context, n)
        window = ids[begin:end]
        for j in range(max(prev_end, begin + 1), end):
            total += nll_of(model, window, j - begin)
            count += 1
        prev_end = end
        if end == n:
            break
    got = perplexity(model, StubTokenizer(ids), "", context=context, stride=stride)
    assert got.n_scored == count                            # each new token once (a window's
    assert count == n - 1 or stride == context             # first token has no context in it)
    assert got.nll == pytest.approx(total / count, rel=1e-9)


@pytest.mark.parametrize("bos", [None, 7])
def test_default_method_starts_each_chunk_with_bos_and_scores_its_second_half(model, bos):
    n, context = 35, 8
    ids = np.random.default_rng(1).integers(10, V, n)       # no BOS (7) in the text itself
    rec = Recording(model)
    got = perplexity(rec, StubTokenizer(ids, bos), "", context=context)
    chunks = [ids[s:s + context].copy() for s in range(0, n - context + 1, context)]
    if bos is not None:
        for c in chunks:
            c[0] = bos
    assert len(rec.seen) == len(chunks) == got.n_chunks
    for seen, chunk in zip(rec.seen, chunks):
        np.testing.assert_array_equal(seen, chunk)
    expected = [nll_of(model, c, j) for c in chunks for j in range(context // 2 + 1, context)]
    assert got.n_scored == len(expected)
    assert got.nll == pytest.approx(np.mean(expected), rel=1e-9)


def test_a_context_beyond_the_model_is_refused(model):
    ids = np.arange(200) % V
    with pytest.raises(GenerationParameterError, match="context"):
        perplexity(model, StubTokenizer(ids), "", context=65)
