"""The generate loop (lesson 05): HF parity, reference parity, stop conditions, options, errors.

The expected tokens come from HF ``LlamaForCausalLM.generate`` and from the
PyTorch loop in ``reference/generation.py``, both running the same random weights.
"""

import numpy as np
import pytest
import torch
import transformers

from npllm import CausalLM, ModelConfig
from npllm.errors import GenerationParameterError
from npllm.generation import GenerateOutput, NonFiniteLogitsError, generate
from npllm.stopping import JsonCompleteCriteria, RepetitionCriteria, StoppingCriteria, json_is_complete
from reference.generation import generate as reference_generate
from reference.model import CausalLM as TorchCausalLM

V = 97
MAX_NEW = 12


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rms_norm_eps=1e-6, initializer_range=0.3, tie_word_embeddings=False,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model(hf_model):
    ours = CausalLM(ModelConfig.from_dict(hf_model.config.to_dict()), init=False)
    ours.load_state_dict(hf_model.state_dict())
    return ours


@pytest.fixture(scope="module")
def batch():
    """Three prompts of lengths 7, 4 and 2, left-padded with PAD."""
    rows = [[5, 17, 33, 2, 90, 41, 8], [61, 3, 3, 77], [12, 50]]
    T0 = max(len(r) for r in rows)
    ids = np.full((3, T0), PAD, dtype=np.int64)
    mask = np.zeros((3, T0), dtype=np.int64)
    for b, r in enumerate(rows):
        ids[b, T0 - len(r):] = r
        mask[b, T0 - len(r):] = 1
    return rows, ids, mask


PAD = 0


def hf_generate(hf_model, ids, mask, **kw):
    with torch.no_grad():
        out = hf_model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=PAD, top_k=None,
                                top_p=None, temperature=None, **kw)
    return out.numpy()


@pytest.fixture(scope="module")
def eos_setup(hf_model, batch):
    """An EOS id that row 0 produces early while another row does not: EOS, then padding."""
    rows, ids, mask = batch
    free = hf_generate(hf_model, ids, mask, eos_token_id=None)[:, ids.shape[1]:]  # [3, MAX_NEW]
    for tok in np.unique(free):
        first = [int(np.argmax(r == tok)) if (r == tok).any() else MAX_NEW for r in free]
        # stops one row early and leaves some row running to the end
        if 1 <= min(first) <= MAX_NEW - 4 and max(first) == MAX_NEW and tok != PAD:
            return int(tok)
    pytest.fail(f"no usable EOS in the greedy output {free}")


# ============================================================== parity
def test_greedy_batch_matches_hf_token_for_token_with_eos_and_padding(hf_model, model, batch, eos_setup):
    rows, ids, mask = batch
    expected = hf_generate(hf_model, ids, mask, eos_token_id=eos_setup)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0,
                   eos_token_id=eos_setup, pad_token_id=PAD, return_dict_in_generate=True)
    np.testing.assert_array_equal(out.sequences, expected)
    new = expected[:, ids.shape[1]:]
    assert (new == eos_setup).any(axis=1).sum() >= 1 and (new == PAD).any()  # EOS and padding happened
    assert "eos" in out.stop_reasons and "length" in out.stop_reasons


def test_each_row_of_the_batch_equals_the_row_generated_alone(hf_model, model, batch, eos_setup):
    rows, ids, mask = batch
    together = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0,
                        eos_token_id=eos_setup, pad_token_id=PAD)
    T0 = ids.shape[1]
    for b, r in enumerate(rows):
        alone = generate(model, np.array([r]), max_new_tokens=MAX_NEW, temperature=0,
                         eos_token_id=eos_setup, pad_token_id=PAD)
        hf_alone = hf_generate(hf_model, np.array([r]), np.ones((1, len(r)), np.int64), eos_token_id=eos_setup)
        np.testing.assert_array_equal(alone, hf_alone)
        n = alone.shape[1] - len(r)
        np.testing.assert_array_equal(together[b, T0:T0 + n], alone[0, len(r):])
        assert np.all(together[b, T0 + n:] == PAD)  # padded after its own EOS


def test_greedy_with_penalties_matches_hf(hf_model, model, batch):
    rows, ids, mask = batch
    kw = dict(repetition_penalty=1.8, no_repeat_ngram_size=2, min_new_tokens=5)
    expected = hf_generate(hf_model, ids, mask, eos_token_id=[7, 30], **kw)
    ours = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                    eos_token_id=[7, 30], pad_token_id=PAD, **kw)
    np.testing.assert_array_equal(ours, expected)


def test_greedy_matches_the_pytorch_reference_loop(hf_model, model, batch, eos_setup):
    rows, ids, mask = batch
    ref = TorchCausalLM(model.config).eval()
    ref.load_state_dict(hf_model.state_dict(), strict=False)
    expected = reference_generate(ref, torch.from_numpy(ids), max_new_tokens=MAX_NEW, temperature=0.0,
                                  repetition_penalty=1.3, eos_token_id=eos_setup, pad_token_id=PAD,
                                  attention_mask=torch.from_numpy(mask)).numpy()
    ours = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0,
                    repetition_penalty=1.3, eos_token_id=eos_setup, pad_token_id=PAD)
    np.testing.assert_array_equal(ours, expected)


def test_cached_loop_equals_recomputing_the_whole_sequence_each_step(model):
    prompt = np.array([[4, 8, 15, 16, 23, 42]])
    seq = prompt
    for _ in range(8):  # no cache at all: the naive O(n^2) loop the KV cache replaces
        logits, _ = model.forward(seq)
        seq = np.concatenate([seq, [[int(np.argmax(logits[0, -1]))]]], axis=1)
    np.testing.assert_array_equal(generate(model, prompt, max_new_tokens=8, temperature=0, eos_token_id=[]), seq)


# ============================================================== options
def test_max_new_tokens_counts_only_new_tokens(model):
    long_prompt = np.arange(1, 41)[None, :]
    assert generate(model, long_prompt, max_new_tokens=5, eos_token_id=[], seed=0).shape == (1, 45)
    np.testing.assert_array_equal(generate(model, long_prompt, max_new_tokens=0), long_prompt)


def test_temperature_zero_is_greedy_and_the_same_seed_repeats_a_sample(model):
    prompt = [3, 1, 4, 1, 5]  # a plain list works; a 1-D prompt is one row
    greedy = generate(model, prompt, max_new_tokens=8, temperature=0.0, eos_token_id=[])
    np.testing.assert_array_equal(greedy, generate(model, prompt, max_new_tokens=8, do_sample=False,
                                                   eos_token_id=[]))
    np.testing.assert_array_equal(greedy, generate(model, prompt, max_new_tokens=8, top_k=1, seed=3,
                                                   eos_token_id=[]))  # top-1 sampling is greedy
    a = generate(model, prompt, max_new_tokens=10, temperature=1.5, seed=42, eos_token_id=[])
    b = generate(model, prompt, max_new_tokens=10, temperature=1.5, seed=42, eos_token_id=[])
    c = generate(model, prompt, max_new_tokens=10, temperature=1.5, seed=43, eos_token_id=[])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(model.generate(np.array([prompt]), max_new_tokens=8, temperature=0,
                                                 eos_token_id=[]), greedy)


def test_sampling_only_draws_tokens_the_filters_keep(model):
    out = generate(model, [9, 9, 2], max_new_tokens=6, top_k=3, seed=0, eos_token_id=[],
                   return_dict_in_generate=True, output_scores=True, output_logprobs=True)
    new = out.sequences[0, 3:]
    for step, scores in enumerate(out.scores):
        assert np.isfinite(scores[0]).sum() == 3 and np.isfinite(scores[0, new[step]])
    assert out.logprobs.shape == (1, 6) and np.all(out.logprobs <= 0)
    assert np.all(out.logprobs > np.log(1e-9))


def test_sampled_first_tokens_follow_hfs_warped_distribution(hf_model, model):
    """4000 copies of one prompt, one sampled token each: a chi-square test against the
    distribution HF's own processors give (repetition penalty, temperature, top-k, top-p)."""
    from transformers.generation import logits_process as hf

    prompt = np.array([[8, 41, 3, 3, 19]])
    with torch.no_grad():
        raw = hf_model(torch.from_numpy(prompt)).logits[:, -1, :]
        chain = hf.LogitsProcessorList([hf.RepetitionPenaltyLogitsProcessor(1.5), hf.TemperatureLogitsWarper(0.7),
                                        hf.TopKLogitsWarper(20), hf.TopPLogitsWarper(0.9)])
        expected = torch.softmax(chain(torch.from_numpy(prompt), raw), -1)[0].double().numpy()
    n = 4000
    out = generate(model, np.repeat(prompt, n, axis=0), max_new_tokens=1, temperature=0.7, top_k=20, top_p=0.9,
                   repetition_penalty=1.5, seed=5, eos_token_id=[])
    counts = np.bincount(out[:, -1], minlength=V)
    support = expected > 0
    assert counts[~support].sum() == 0 and support.sum() > 3
    e = expected[support] * n
    chi2 = float(np.sum((counts[support] - e) ** 2 / e))
    df = support.sum() - 1
    assert chi2 < df * (1 - 2 / (9 * df) + 4.265 * np.sqrt(2 / (9 * df))) ** 3, chi2  # 1e-5 tail


def test_presence_penalty_and_no_repeat_unigrams_prevent_repeats(model):
    out = generate(model, [1, 2, 3], max_new_tokens=15, temperature=0, presence_penalty=1e4, eos_token_id=[])
    assert len(set(out[0, 3:].tolist())) == 15
    out = generate(model, [1, 2, 3], max_new_tokens=15, temperature=0, no_repeat_ngram_size=1, eos_token_id=[])
    assert len(set(out[0].tolist())) == 18


def test_stop_reasons_eos_length_and_stop(model, batch):
    rows, ids, mask = batch
    free = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0, eos_token_id=[])
    T0 = ids.shape[1]
    stop_seq = free[1, T0 + 2:T0 + 4].tolist()  # row 1's 3rd and 4th tokens
    out = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0,
                   eos_token_id=int(free[0, T0]), stop_token_sequences=[stop_seq], pad_token_id=PAD,
                   return_dict_in_generate=True)
    assert out.stop_reasons[0] == "eos" and out.num_new_tokens[0] == 1
    assert out.stop_reasons[1] == "stop" and out.num_new_tokens[1] <= 4
    np.testing.assert_array_equal(out.sequences[1, T0 + out.num_new_tokens[1] - 2:T0 + out.num_new_tokens[1]],
                                  stop_seq)
    assert out.stop_reasons[2] in ("length", "stop", "eos")


def test_min_new_tokens_postpones_eos(model):
    first = int(generate(model, [6, 6], max_new_tokens=1, temperature=0, eos_token_id=[])[0, 2])
    assert generate(model, [6, 6], max_new_tokens=5, temperature=0, eos_token_id=first).shape == (1, 3)
    out = generate(model, [6, 6], max_new_tokens=5, temperature=0, eos_token_id=first, min_new_tokens=3)
    assert first not in out[0, 2:5].tolist()


class EveryOtherRowAfter(StoppingCriteria):
    def __init__(self, n):
        self.n = n

    def __call__(self, input_ids, new_token_ids, prompt_length):
        done = input_ids.shape[1] - prompt_length >= self.n
        return np.array([done and b % 2 == 0 for b in range(input_ids.shape[0])])


def test_user_stopping_criteria_and_callbacks(model, batch):
    rows, ids, mask = batch
    seen = []
    out = generate(model, ids, attention_mask=mask, max_new_tokens=6, temperature=0, eos_token_id=[],
                   stopping_criteria=[EveryOtherRowAfter(2)], streamer=seen.append, pad_token_id=PAD,
                   return_dict_in_generate=True)
    assert out.stop_reasons == ["stop", "length", "stop"]
    assert list(out.num_new_tokens) == [2, 6, 2]
    np.testing.assert_array_equal(np.stack(seen, axis=1), out.sequences[:, ids.shape[1]:])


def test_hf_style_streamer_gets_the_prompt_then_tokens_then_end(model):
    class Recorder:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(np.asarray(value))

        def end(self):
            self.calls.append("end")

    rec = Recorder()
    out = generate(model, [[1, 2, 3]], max_new_tokens=4, temperature=0, eos_token_id=[], streamer=rec)
    assert rec.calls[-1] == "end" and len(rec.calls) == 6
    np.testing.assert_array_equal(rec.calls[0], [[1, 2, 3]])
    np.testing.assert_array_equal(np.concatenate(rec.calls[1:5]), out[0, 3:])


def test_repetition_stop_ends_a_looping_row(model):
    prompt = [61, 3, 3, 77]  # this model answers "77 77 77 ..." to it
    looping = generate(model, prompt, max_new_tokens=30, temperature=0, eos_token_id=[])[0, 4:]
    crit = RepetitionCriteria(max_ngram_size=4, min_repeats=3)
    hits = [k for k in range(1, 31) if crit(looping[None, :k], looping[k - 1:k], 0)[0]]
    assert hits, looping
    out = generate(model, prompt, max_new_tokens=30, temperature=0, eos_token_id=[], repetition_stop=(4, 3),
                   return_dict_in_generate=True)
    assert out.stop_reasons == ["stop"] and out.num_new_tokens[0] == hits[0] < 30
    np.testing.assert_array_equal(out.sequences[0, 4:], looping[:hits[0]])
    # the criterion itself, on a hand-made loop
    ids = np.array([[9, 1, 2, 3, 1, 2, 3, 1, 2, 3], [9, 1, 2, 3, 1, 2, 3, 4, 2, 3]])
    np.testing.assert_array_equal(crit(ids, ids[:, -1], 1), [True, False])
    np.testing.assert_array_equal(RepetitionCriteria(1, 3)(np.array([[5, 5, 5]]), None, 0), [True])


def test_json_criterion_stops_when_braces_balance():
    assert json_is_complete('Sure: {"a": [1, {"b": "}"}], "c": "\\"{"}')
    assert not json_is_complete('{"a": [1, 2')
    assert not json_is_complete('{"a": "}"')
    assert not json_is_complete("no json here }")
    text = {1: "{", 2: '"k"', 3: ": ", 4: "[1]", 5: "}", 6: "x"}
    crit = JsonCompleteCriteria(lambda ids: "".join(text[i] for i in ids))
    ids = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 6]])
    np.testing.assert_array_equal(crit(ids, ids[:, -1], 1), [True, False])


# ============================================================== errors
class NaNModel:
    class config:
        vocab_size = 10

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None):
        logits = np.zeros((input_ids.shape[0], input_ids.shape[1], 10), np.float32)
        logits[-1, -1, 3] = np.nan
        return logits, None


def test_nan_logits_raise_a_clear_error():
    with pytest.raises(NonFiniteLogitsError, match="NaN/inf logits at generation step 0 for batch rows \\[1\\]"):
        generate(NaNModel(), [[1, 2], [3, 4]], max_new_tokens=3)


BAD = [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=1.5), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(min_p=-0.01), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(typical_p=0.0), "typical_p"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(min_new_tokens=-2), "min_new_tokens"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(frequency_penalty=float("inf")), "frequency_penalty"),
    (dict(eos_token_id=V), "eos_token_id"),
    (dict(eos_token_id=[1, -1]), "eos_token_id"),
    (dict(pad_token_id=V + 5), "pad_token_id"),
    (dict(seed=-1), "seed"),
    (dict(do_sample="yes"), "do_sample"),
    (dict(stop_token_sequences=[[]]), "stop_token_sequences"),
    (dict(stop_token_sequences=[[1, V]]), "stop_token_sequences"),
    (dict(repetition_stop=(2, 1)), "min_repeats"),
    (dict(repetition_stop="yes"), "repetition_stop"),
    (dict(attention_mask=[[1, 1, 0]]), "left-padded"),
    (dict(attention_mask=[[1, 1]]), "attention_mask"),
    (dict(attention_mask=[[0, 0, 0]]), "attention_mask"),
    (dict(streamer=42), "streamer"),
    (dict(logits_processor=42), "logits_processor"),
    (dict(logits_processor=[lambda ids, s: s, "x"]), "logits_processor"),
]


@pytest.mark.parametrize("kwargs,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_parameters_raise_a_value_error_naming_them(model, kwargs, name):
    with pytest.raises(GenerationParameterError, match=name) as err:
        generate(model, [[1, 2, 3]], **{"max_new_tokens": 2, **kwargs})
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("prompt", [[], [[]], [[1, V]], [[-1, 2]], [[1, 2], [3]], [[0.5, 1.0]]],
                         ids=["empty", "empty-row", "id-too-big", "negative-id", "ragged", "floats"])
def test_bad_prompts_raise_a_value_error_naming_input_ids(model, prompt):
    with pytest.raises(GenerationParameterError, match="input_ids"):
        generate(model, prompt, max_new_tokens=2)


def test_generate_output_is_a_dataclass_with_sequences(model):
    out = generate(model, [1, 2], max_new_tokens=3, temperature=0, eos_token_id=[], return_dict_in_generate=True)
    assert isinstance(out, GenerateOutput) and out.sequences.dtype == np.int64
    assert out.scores is None and out.logprobs is None and out.stop_reasons == ["length"]


def test_plain_function_criteria_and_bad_criterion_output(model):
    out = generate(model, [[1, 2], [3, 4]], max_new_tokens=5, temperature=0, eos_token_id=[],
                   stopping_criteria=lambda ids, new, T0: ids.shape[1] - T0 >= 3, return_dict_in_generate=True)
    assert out.stop_reasons == ["stop", "stop"] and out.sequences.shape == (2, 5)
    with pytest.raises(GenerationParameterError, match="stopping criterion"):
        generate(model, [[1, 2], [3, 4]], max_new_tokens=5, stopping_criteria=lambda ids, new, T0: [True] * 3)


def test_prompt_longer_than_max_positions_names_both_lengths_or_truncates():
    from npllm import CausalLM, ModelConfig
    from npllm.errors import GenerationParameterError

    config = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16)
    model = CausalLM(config, seed=0)
    ids = np.arange(20)[None] % 50
    with pytest.raises(GenerationParameterError, match=r"20 tokens.*max_position_embeddings=16"):
        model.generate(ids, max_new_tokens=4, temperature=0)
    out = model.generate(ids, max_new_tokens=4, temperature=0, truncate_prompt=True,
                         return_dict_in_generate=True, eos_token_id=[])
    assert out.sequences.shape == (1, 16)
    assert out.sequences[0, :12].tolist() == ids[0, -12:].tolist()
    # Near the limit, generation stops at max_position_embeddings with reason "length".
    out = model.generate(ids[:, :14], max_new_tokens=10, temperature=0, return_dict_in_generate=True,
                         eos_token_id=[])
    assert out.sequences.shape == (1, 16) and out.stop_reasons == ["length"]


def test_chunked_prefill_gives_the_same_scores_as_one_pass(monkeypatch):
    from npllm import CausalLM, ModelConfig
    from npllm import generation

    config = ModelConfig(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = CausalLM(config, seed=3, dtype=np.float64)
    ids = np.random.default_rng(4).integers(0, 60, size=(2, 23))
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    kw = dict(max_new_tokens=5, temperature=0, attention_mask=mask, eos_token_id=[],
              return_dict_in_generate=True, output_scores=True)
    whole = model.generate(ids, **kw)
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 4)   # 23 tokens -> 6 chunks
    chunked = model.generate(ids, **kw)
    assert np.array_equal(whole.sequences, chunked.sequences)
    assert max(np.abs(a - b).max() for a, b in zip(whole.scores, chunked.scores)) < 1e-10


# ============================================================== a vanishing temperature
def test_a_temperature_that_overflows_the_logits_samples_the_greedy_tokens(model):
    """logits / 1e-40 overflows float32; the limit of sampling is the argmax, never id 0."""
    prompt = [[5, 17, 33, 2], [61, 3, 3, 77]]
    greedy = generate(model, prompt, max_new_tokens=8, temperature=0, eos_token_id=[])
    for t in (1e-40, 1e-300):
        np.testing.assert_array_equal(
            generate(model, prompt, max_new_tokens=8, temperature=t, seed=0, eos_token_id=[]), greedy)


# ============================================================== token-id arguments of any integer type
@pytest.mark.parametrize("eos", [np.int64(7), np.int32(7), np.uint8(7), np.array(7), [np.int16(7)],
                                 np.array([7]), (7,)],
                         ids=["int64", "int32", "uint8", "0-d-array", "list-int16", "1-d-array", "tuple"])
def test_eos_and_pad_ids_accept_any_integer_type(model, eos):
    want = generate(model, [[1, 2, 3]], max_new_tokens=4, temperature=0, eos_token_id=7, pad_token_id=0,
                    return_dict_in_generate=True)
    got = generate(model, [[1, 2, 3]], max_new_tokens=4, temperature=0, eos_token_id=eos,
                   pad_token_id=np.array(0), return_dict_in_generate=True)
    np.testing.assert_array_equal(got.sequences, want.sequences)
    assert got.stop_reasons == want.stop_reasons


@pytest.mark.parametrize("eos", [2.0, np.float64(2.0), np.array(2.0), [2, 3.0], "2", True, [[2]], object()],
                         ids=["float", "np-float", "0-d-float-array", "list-with-float", "str", "bool",
                              "nested", "object"])
def test_non_integer_eos_ids_raise_an_error_naming_eos_token_id(model, eos):
    with pytest.raises(GenerationParameterError, match="eos_token_id"):
        generate(model, [[1, 2, 3]], max_new_tokens=2, eos_token_id=eos)


@pytest.mark.parametrize("pad", [2.5, np.array(1.0), "0", [1, 2]], ids=["float", "float-array", "str", "two"])
def test_non_integer_pad_id_raises_an_error_naming_pad_token_id(model, pad):
    with pytest.raises(GenerationParameterError, match="pad_token_id"):
        generate(model, [[1, 2, 3]], max_new_tokens=2, pad_token_id=pad)


@pytest.mark.parametrize("result", [None, "shape", "ints", "list"])
def test_a_logits_processor_returning_no_scores_raises_an_error_naming_it(model, result):
    def broken(input_ids, scores):
        return {"none": None, "shape": scores[:, :-1], "ints": scores.astype(np.int64),
                "list": scores.tolist()}.get(result)

    with pytest.raises(GenerationParameterError, match="logits_processor"):
        generate(model, [[1, 2, 3]], max_new_tokens=2, logits_processor=broken)


# ============================================================== memory: buffers grow with the tokens reached
def traced_peak(fn):
    """Bytes allocated at the peak of a second call of ``fn`` (the first compiles the kernels)."""
    import tracemalloc

    fn()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_generate_allocates_for_the_tokens_it_reaches_not_for_the_context_limit():
    """max_new_tokens=10**9 is capped at the 2**20-position context; a run that stops after
    5 tokens must not hold a KV cache for 2**20 positions (2 x 2 x 2**20 x 2 x 16 x 4 B = 512 MiB)."""
    config = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=2 ** 20)
    model = CausalLM(config, seed=0)
    stop_after_5 = lambda ids, new, T0: np.full(ids.shape[0], ids.shape[1] - T0 >= 5)  # noqa: E731
    out = []
    peak = traced_peak(lambda: out.append(model.generate(
        [[1, 2, 3]], max_new_tokens=10 ** 9, temperature=0, eos_token_id=[], stopping_criteria=stop_after_5)))
    assert out[0].shape == (1, 8)
    assert peak < 16 * 2 ** 20, peak


class CountingModel:
    """A model without a context limit whose next token is (last token + 1) % 10."""

    class config:
        vocab_size = 10

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None):
        logits = np.zeros((input_ids.shape[0], input_ids.shape[1], 10), np.float32)
        logits[np.arange(input_ids.shape[0]), -1, (input_ids[:, -1] + 1) % 10] = 1.0
        return logits, None


def test_without_a_context_limit_a_huge_max_new_tokens_allocates_only_what_is_generated():
    out = []
    peak = traced_peak(lambda: out.append(generate(CountingModel(), [[3]], max_new_tokens=10 ** 9,
                                                   temperature=0, eos_token_id=9)))
    np.testing.assert_array_equal(out[0], [[3, 4, 5, 6, 7, 8, 9]])
    assert peak < 16 * 2 ** 20, peak


def test_a_kv_cache_grown_in_chunks_gives_the_logits_of_a_full_preallocated_one():
    config = ModelConfig(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = CausalLM(config, seed=5)
    ids = np.random.default_rng(1).integers(0, 60, size=(2, 30))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    full, grown = model.new_cache(2, 30), model.new_cache(2, 2)
    sizes = []
    for start, end in [(0, 5)] + [(i, i + 1) for i in range(5, 30)]:  # a 5-token prefill, then decode
        if end > grown.max_seq_len:
            grown.reserve(min(30, max(end, 2 * grown.max_seq_len)))
        sizes.append(grown.max_seq_len)
        kw = dict(attention_mask=mask[:, :end], use_cache=True)
        a, full = model.forward(ids[:, start:end], past_key_values=full, **kw)
        b, grown = model.forward(ids[:, start:end], past_key_values=grown, **kw)
        np.testing.assert_array_equal(a, b)
    assert sorted(set(sizes)) == [5, 10, 20, 30] and grown.nbytes == full.nbytes
    np.testing.assert_array_equal(grown.keys[1], full.keys[1])


def test_generate_with_a_small_cache_chunk_gives_the_same_tokens_and_scores(model, batch, monkeypatch):
    from npllm import generation

    rows, ids, mask = batch
    kw = dict(attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0.9, top_p=0.95, seed=3,
              eos_token_id=[], return_dict_in_generate=True, output_scores=True)
    whole = generate(model, ids, **kw)
    monkeypatch.setattr(generation, "CACHE_CHUNK", 1)  # T0 + 1 positions at first: they grow twice
    grown = generate(model, ids, **kw)
    np.testing.assert_array_equal(grown.sequences, whole.sequences)
    for a, b in zip(whole.scores, grown.scores):
        np.testing.assert_array_equal(a, b)


# ============================================================== which tokens the penalties count
def test_the_repetition_penalty_does_not_count_left_padding(hf_model, model):
    """HF passes the padding lengths as prompt_ignore_length: PAD tokens on the left are not
    "seen".  The pad id here is the token the short row generates first, so counting the
    padding would penalise exactly the token it needs."""
    row, penalty = [12, 50], 3.0
    alone = generate(model, [row], max_new_tokens=MAX_NEW, temperature=0, repetition_penalty=penalty,
                     eos_token_id=[])
    pad = int(alone[0, len(row)])
    assert pad not in row
    logits, _ = model.forward(np.array([row]))  # the test can fail: penalising pad changes the first token
    first = logits[0, -1].astype(np.float64)
    seen = [*row, pad]
    first[seen] = np.where(first[seen] > 0, first[seen] / penalty, first[seen] * penalty)
    assert int(np.argmax(first)) != pad

    ids = np.array([[5, 17, 33, 2, 90], [pad, pad, pad, *row]])
    mask = np.array([[1] * 5, [0, 0, 0, 1, 1]])
    out = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0,
                   repetition_penalty=penalty, eos_token_id=[], pad_token_id=pad)
    np.testing.assert_array_equal(out[1, 5:], alone[0, len(row):])
    with torch.no_grad():
        theirs = hf_model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                   do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=pad,
                                   eos_token_id=None, repetition_penalty=penalty, top_k=None, top_p=None,
                                   temperature=None).numpy()
    np.testing.assert_array_equal(out, theirs)


def test_frequency_and_presence_penalties_count_only_generated_tokens(model):
    """OpenAI's formula, c[j] = how often j was *sampled* so far (vLLM: "in the generated text"):
    logit[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty.  The expected scores are
    rebuilt from one uncached forward over the final sequences, with counts written out here;
    the prompt and its left padding never count."""
    ids = np.array([[77, 77, 77, 61, 3, 3, 77], [0, 0, 0, 0, 0, 12, 50]])
    mask = np.array([[1] * 7, [0] * 5 + [1, 1]])
    fp, pp = 0.75, 0.5
    out = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, temperature=0,
                   frequency_penalty=fp, presence_penalty=pp, eos_token_id=[], pad_token_id=0,
                   return_dict_in_generate=True, output_scores=True)
    seqs, T0 = out.sequences, ids.shape[1]
    full_mask = np.concatenate([mask, np.ones((2, MAX_NEW), np.int64)], axis=1)
    raw, _ = model.forward(seqs, attention_mask=full_mask)  # [B, T0 + n, V], no cache
    for step, scores in enumerate(out.scores):
        counts = np.zeros((2, V))
        for b in range(2):
            for tok in seqs[b, T0:T0 + step]:
                counts[b, tok] += 1
        expected = raw[:, T0 - 1 + step].astype(np.float64) - fp * counts - pp * (counts > 0)
        np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_ids_past_the_tokenizer_vocabulary_but_inside_the_model_vocabulary_are_valid():
    """Checkpoints often pad the embedding matrix (model V > tokenizer V).  generate checks ids
    against the model's V: such ids may be prompt tokens, EOS, padding, or generated."""

    class Padded(CountingModel):
        class config:
            vocab_size = 12  # a tokenizer of 10 tokens: ids 10 and 11 are padding rows

        def forward(self, input_ids, **kw):
            logits = np.zeros((input_ids.shape[0], input_ids.shape[1], 12), np.float32)
            logits[np.arange(input_ids.shape[0]), -1, (input_ids[:, -1] + 1) % 12] = 1.0
            return logits, None

    out = generate(Padded(), [[8], [0]], max_new_tokens=5, temperature=0, eos_token_id=11, pad_token_id=10,
                   stop_token_sequences=[[10, 11]], return_dict_in_generate=True)
    np.testing.assert_array_equal(out.sequences, [[8, 9, 10, 11, 10, 10], [0, 1, 2, 3, 4, 5]])
    assert out.stop_reasons == ["eos", "length"]  # EOS is checked before the stop sequences
    np.testing.assert_array_equal(generate(Padded(), [[11, 10]], max_new_tokens=1, temperature=0,
                                           eos_token_id=[]), [[11, 10, 11]])
    with pytest.raises(GenerationParameterError, match="input_ids"):
        generate(Padded(), [[12]], max_new_tokens=1)
