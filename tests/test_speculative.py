"""Speculative decoding (lesson 10): the verify pass, greedy exactness, the sampled distribution.

* The verify pass computes, for T tokens at once, exactly (bit for bit) the logits of T decode
  steps — the property greedy exactness rests on.
* Greedy with prompt lookup or an assistant model gives plain greedy's tokens on the default
  model, over many prompts (input-grounded ones, where drafts are accepted, and open ones),
  including a bad random draft model.
* Sampled speculative decoding draws from the plain sampling distribution: a chi-square test
  against the exact distribution of 3-token continuations of a tiny model (computed by
  enumerating them), with enough samples that a broken acceptance rule fails it.
"""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import npllm
from npllm import CausalLM, ModelConfig, speculative
from npllm.errors import GenerationParameterError
from npllm.sampling import softmax
from npllm.speculative import prompt_lookup_candidates, verify_forward

PARAGRAPH = ("The river Thames flows through London. It passes under Tower Bridge, past the Houses of "
             "Parliament, and out to the North Sea. Many boats use the river every day, carrying "
             "tourists and goods.")
PROMPTS = [
    "Repeat this paragraph exactly:\n\n" + PARAGRAPH,
    "Summarise this paragraph in one sentence:\n\n" + PARAGRAPH,
    "Fix the typo and print the code again:\n\ndef add(a, b):\n    retrun a + b\n\nprint(add(2, 3))",
    "List the names in this text: Alice met Bob and Carol. Then Bob met Dave. Alice, Bob, Carol, Dave.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Count from one to twenty in words.",
    "Translate to French: the cat is on the table, the dog is under the table.",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def smollm(smollm2_gguf):
    return npllm.load(smollm2_gguf)


def chat_ids(tok, text):
    return np.array([tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)])


def decode_logits(model, ids, new):
    """Logits of plain decode steps: the prompt, then each token of ``new`` [n] -> [n, V]."""
    cache = model.new_cache(1, ids.shape[1] + len(new) + 1)
    logits, cache = model.forward(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    rows = []
    for t in new:
        logits, cache = model.forward(np.array([[t]]), attention_mask=np.ones((1, cache.length + 1), np.int64),
                                      past_key_values=cache, use_cache=True, logits_to_keep=1)
        rows.append(logits[0, -1])
    return np.stack(rows)


def assert_verify_equals_decode(model, ids, new):
    expected = decode_logits(model, ids, new)
    cache = model.new_cache(1, ids.shape[1] + len(new) + 1)
    _, cache = model.forward(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    T0 = ids.shape[1]
    got = verify_forward(model, np.array(new), np.ones((1, T0 + len(new)), np.int64), cache, T0)
    assert cache.length == T0 + len(new)
    np.testing.assert_array_equal(got, expected)  # bit for bit, not approximately


# ============================================================== the verify pass
def test_verify_pass_is_bit_equal_to_decode_steps_on_the_default_model(smollm):
    model, tok = smollm
    ids = chat_ids(tok, PROMPTS[0])
    assert speculative._fast_verify(model)
    assert_verify_equals_decode(model, ids, [tok.encode(" The")[0], 504, 17, 3300, 9, 28, 1])


def test_verify_pass_is_bit_equal_on_gemma3_sliding_windows_and_qk_norms(gemma3_gguf):
    model, tok = npllm.load(gemma3_gguf)
    ids = np.array([tok.encode("The quick brown fox")])
    assert speculative._fast_verify(model)
    assert_verify_equals_decode(model, ids, [1000, 2000, 3000, 4000, 5])


def test_crop_then_verify_again_gives_the_decode_logits(smollm):
    model, tok = smollm
    ids = np.array([tok.encode("One, two, three, four,")])
    T0 = ids.shape[1]
    new = [1, 2, 3, 4]
    cache = model.new_cache(1, T0 + 8)
    _, cache = model.forward(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    verify_forward(model, np.array([9, 9, 9]), np.ones((1, T0 + 3), np.int64), cache, T0)  # rejected drafts
    cache.crop(T0)
    got = verify_forward(model, np.array(new), np.ones((1, T0 + 4), np.int64), cache, T0)
    np.testing.assert_array_equal(got, decode_logits(model, ids, new))


def test_matvec_rows_equals_one_matvec_per_row():
    from npllm.quant import QuantizedWeight
    from npllm.quant.formats import Q4_1, Q8_0
    from npllm.quant.kernels import matvec, matvec_rows

    rng = np.random.default_rng(0)
    for (kind, block_bytes), cols in itertools.product(((Q8_0, 34), (Q4_1, 20)), (576, 544)):
        rows = 70  # cols 544: an odd number of blocks (the kernels pair blocks: even / odd)
        raw = rng.integers(0, 256, (rows, cols // 32 * block_bytes), dtype=np.uint8)
        raw[:, 1::block_bytes] = 0x20  # fp16 scales (and Q4_1's minimum) of modest size: finite
        raw[:, 3::block_bytes] = 0x20
        w = QuantizedWeight.from_raw(raw, kind, (rows, cols))
        x = rng.standard_normal((13, cols)).astype(np.float32)  # a group of eight, one of four, one alone
        got = np.empty((13, rows), np.float32)
        matvec_rows(kind, w._addresses(), x, got)
        for n in range(13):
            one = np.empty((1, rows), np.float32)
            matvec(kind, w._addresses(), np.ascontiguousarray(x[n:n + 1]), one)
            np.testing.assert_array_equal(got[n], one[0])


# ============================================================== greedy exactness
@pytest.fixture(scope="module")
def plain(smollm):
    model, tok = smollm
    return {text: model.generate(chat_ids(tok, text), max_new_tokens=MAX_NEW, temperature=0) for text in PROMPTS}


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_prompt_lookup_gives_plain_greedys_tokens(smollm, plain, text):
    model, tok = smollm
    out = model.generate(chat_ids(tok, text), max_new_tokens=MAX_NEW, temperature=0, prompt_lookup_num_tokens=10)
    np.testing.assert_array_equal(out, plain[text])


def test_prompt_lookup_accepts_drafts_on_an_input_grounded_prompt(smollm, plain, monkeypatch):
    """The repeat-the-paragraph prompt needs far fewer verify passes than tokens."""
    model, tok = smollm
    calls = []
    real = speculative.verify_forward
    monkeypatch.setattr(speculative, "verify_forward", lambda *a: calls.append(1) or real(*a))
    out = model.generate(chat_ids(tok, PROMPTS[0]), max_new_tokens=MAX_NEW, temperature=0,
                         prompt_lookup_num_tokens=10)
    np.testing.assert_array_equal(out, plain[PROMPTS[0]])
    assert len(calls) <= MAX_NEW // 3


@pytest.mark.parametrize("ngram", [1, 3])
def test_greedy_prompt_lookup_with_other_ngram_sizes(smollm, plain, ngram):
    model, tok = smollm
    for text in PROMPTS[:3]:
        out = model.generate(chat_ids(tok, text), max_new_tokens=MAX_NEW, temperature=0,
                             prompt_lookup_num_tokens=4, max_matching_ngram_size=ngram)
        np.testing.assert_array_equal(out, plain[text])


def random_draft_model(vocab_size, seed=0):
    cfg = ModelConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048)
    return CausalLM(cfg, seed=seed)


def test_greedy_with_a_bad_random_assistant_gives_plain_greedys_tokens(smollm, plain):
    model, tok = smollm
    bad = random_draft_model(model.config.vocab_size)
    for text in PROMPTS[2:4]:
        out = model.generate(chat_ids(tok, text), max_new_tokens=MAX_NEW, temperature=0, assistant_model=bad,
                             num_assistant_tokens=2)
        np.testing.assert_array_equal(out, plain[text])


def test_greedy_with_the_model_as_its_own_assistant_accepts_everything(smollm, plain):
    model, tok = smollm
    for text in PROMPTS[4:5]:
        out = model.generate(chat_ids(tok, text), max_new_tokens=MAX_NEW, temperature=0, assistant_model=model,
                             num_assistant_tokens=5)
        np.testing.assert_array_equal(out, plain[text])


def test_speculative_stops_on_eos_and_reports_the_reason_as_plain(smollm, plain):
    model, tok = smollm
    ids = chat_ids(tok, PROMPTS[0])
    eos = int(plain[PROMPTS[0]][0, ids.shape[1] + 12])  # a token plain greedy emits mid-way: as EOS
    ref = model.generate(ids, max_new_tokens=MAX_NEW, temperature=0, return_dict_in_generate=True, eos_token_id=eos)
    out = model.generate(ids, max_new_tokens=MAX_NEW, temperature=0, return_dict_in_generate=True,
                         prompt_lookup_num_tokens=10, eos_token_id=eos)
    assert ref.stop_reasons == ["eos"] and ref.num_new_tokens[0] <= 13
    np.testing.assert_array_equal(out.sequences, ref.sequences)
    assert out.stop_reasons == ref.stop_reasons
    np.testing.assert_array_equal(out.num_new_tokens, ref.num_new_tokens)


# ============================================================== prompt lookup's drafts (HF's rule)
def test_prompt_lookup_takes_the_first_earlier_match_of_the_longest_ngram():
    seq = np.array([1, 2, 3, 9, 2, 3, 7, 8, 1, 2, 3])
    # the last 2-gram (2, 3) first occurs at 1: the draft is what followed it
    assert prompt_lookup_candidates(seq, 3, 2).tolist() == [9, 2, 3]
    # with 3-grams, (1, 2, 3) at 0 also wins
    assert prompt_lookup_candidates(seq, 2, 3).tolist() == [9, 2]
    assert prompt_lookup_candidates(np.array([4, 5, 6]), 3, 2).tolist() == []
    # the draft stops before an EOS
    assert prompt_lookup_candidates(np.array([1, 2, 0, 5, 1, 2]), 4, 2, eos_token_ids=[0]).tolist() == []
    assert prompt_lookup_candidates(np.array([1, 2, 7, 0, 1, 2]), 4, 2, eos_token_ids=[0]).tolist() == [7]


@pytest.mark.parametrize("kwargs,name", [
    (dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens"),
    (dict(prompt_lookup_num_tokens=3, max_matching_ngram_size=0), "max_matching_ngram_size"),
    (dict(max_matching_ngram_size=2), "max_matching_ngram_size"),
    (dict(assistant_model="small"), "assistant_model"),
    (dict(prompt_lookup_num_tokens=3, num_beams=2), "num_beams"),
])
def test_bad_speculative_parameters_raise_naming_them(kwargs, name):
    model = random_draft_model(11)
    with pytest.raises(GenerationParameterError, match=name):
        model.generate([[1, 2, 3]], max_new_tokens=2, temperature=0, **kwargs)


def test_speculative_needs_batch_size_one_and_the_same_vocabulary():
    model = random_draft_model(11)
    with pytest.raises(GenerationParameterError, match="batch size 1"):
        model.generate([[1, 2], [3, 4]], max_new_tokens=2, temperature=0, prompt_lookup_num_tokens=2)
    with pytest.raises(GenerationParameterError, match="vocab"):
        model.generate([[1, 2]], max_new_tokens=2, temperature=0, assistant_model=random_draft_model(12))


# ============================================================== sampling keeps the distribution
V_TINY, N_NEW = 5, 3
PROMPT_TINY = [[1, 2, 3, 1, 2, 3, 1, 2]]  # repeats: prompt lookup always has a draft


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(vocab_size=V_TINY, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      initializer_range=0.5)
    return CausalLM(cfg, seed=3)


def exact_distribution(model, temperature):
    """P(t1 t2 t3 | prompt) for all V^3 continuations, by the chain rule over full forwards."""
    probs = {}
    for seq in itertools.product(range(V_TINY), repeat=N_NEW):
        p = 1.0
        for i in range(N_NEW):
            ids = np.array([PROMPT_TINY[0] + list(seq[:i])])
            logits, _ = model.forward(ids)
            p *= softmax(logits[0, -1].astype(np.float64) / temperature)[seq[i]]
        probs[seq] = p
    return probs


def chi_square_p(samples, probs):
    """p-value of the samples' counts against ``probs``; bins expected < 5 are merged."""
    keys = sorted(probs)
    n = len(samples)
    counts = {k: 0 for k in keys}
    for s in samples:
        counts[tuple(s)] += 1
    obs, exp, rest_o, rest_e = [], [], 0, 0.0
    for k in keys:
        if probs[k] * n >= 5:
            obs.append(counts[k])
            exp.append(probs[k] * n)
        else:
            rest_o += counts[k]
            rest_e += probs[k] * n
    obs.append(rest_o)
    exp.append(rest_e)
    return stats.chisquare(obs, np.array(exp) * sum(obs) / sum(exp)).pvalue


def draw(model, n, **kw):
    rng = np.random.default_rng(1234)
    return [model.generate(PROMPT_TINY, max_new_tokens=N_NEW, temperature=0.8, eos_token_id=[], seed=rng,
                           **kw)[0, -N_NEW:] for _ in range(n)]


N_SAMPLES = 3000


@pytest.fixture(scope="module")
def exact(tiny):
    return exact_distribution(tiny, 0.8)


def test_plain_sampling_passes_the_chi_square_test(tiny, exact):
    """The test's calibration: plain sampling fits the enumerated distribution."""
    assert chi_square_p(draw(tiny, N_SAMPLES), exact) > 1e-3


def test_sampled_prompt_lookup_keeps_the_distribution(tiny, exact):
    assert chi_square_p(draw(tiny, N_SAMPLES, prompt_lookup_num_tokens=3), exact) > 1e-3


def test_sampled_assistant_decoding_keeps_the_distribution(tiny, exact):
    cfg = ModelConfig(vocab_size=V_TINY, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      initializer_range=0.5)
    assistant = CausalLM(cfg, seed=9)
    assert chi_square_p(draw(tiny, N_SAMPLES, assistant_model=assistant, num_assistant_tokens=2), exact) > 1e-3


def test_the_chi_square_test_catches_a_sampler_that_always_keeps_the_draft(tiny, exact, monkeypatch):
    """Power: accepting every draft (skipping the p/q test) is detected at these sample sizes."""
    monkeypatch.setattr(speculative, "_accept_or_resample", lambda p, d, q, rng: int(d))
    assert chi_square_p(draw(tiny, N_SAMPLES, prompt_lookup_num_tokens=3), exact) < 1e-3


def test_the_chi_square_test_catches_a_residual_that_ignores_the_draft(tiny, exact, monkeypatch):
    """Power: resampling from p instead of norm(max(0, p - q)) after a rejection is detected too."""
    def wrong(p, d, q, rng):
        return int(d) if rng.random() < p[d] else speculative._draw(p, rng)
    monkeypatch.setattr(speculative, "_accept_or_resample", wrong)
    assert chi_square_p(draw(tiny, N_SAMPLES, prompt_lookup_num_tokens=3), exact) < 1e-3


# ============================================================== CLI
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_generate(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "npllm", "generate", *args], capture_output=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def test_cli_lookup_and_draft_model_print_the_plain_greedy_text(smollm2_gguf):
    common = ["-m", smollm2_gguf, "--temp", "0", "-n", "16", "--chat", "--no-progress", PROMPTS[0]]
    plain_text = run_generate(*common)
    assert plain_text.strip()
    assert run_generate(*common, "--lookup", "8") == plain_text
    assert run_generate(*common, "--draft-model", smollm2_gguf, "--draft-max", "3") == plain_text


@pytest.mark.parametrize("num_tokens", [1, 3, 10, 20])
def test_the_draft_limit_grows_after_full_acceptance_shrinks_after_poor_and_pauses_after_a_miss(num_tokens):
    lo = min(3, num_tokens)
    for limit, k, accepted in itertools.product(range(lo, num_tokens + 1), range(1, num_tokens + 1), range(num_tokens + 1)):
        if not (k <= limit and accepted <= k):  # k drafts were asked for (at most limit), accepted of them
            continue
        got = speculative._next_limit(limit, k, accepted, num_tokens)
        if accepted == k:
            assert got == min(num_tokens, k + 4)
        elif accepted == 0:
            assert got == 0  # every draft rejected: the next round is a plain decode step
        elif accepted < k // 2:
            assert got == max(lo, k - 4)
        else:
            assert got == limit
        assert got == 0 or lo <= got <= num_tokens
    assert speculative._next_limit(7, 0, 0, num_tokens) == 7    # no draft was found: no evidence
    assert speculative._next_limit(0, 0, 0, num_tokens) == lo   # after the pause, drafts again
