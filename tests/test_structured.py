"""Structured output (lesson 10, ``npllm/structured.py``) and ``top_logprobs``.

Every constraint here is bounded (integer ranges, string lengths, repeat counts), so a complete
text fits in the token budget: a small model can fill an unbounded ``[a-z]+`` or integer until
``max_new_tokens`` (reason "length"), and a cut text cannot validate.

The acceptance tests sample from the default model (SmolLM2-135M Q4_1) and check every output
with an independent validator: ``jsonschema`` for JSON schemas, Python's ``re`` for regexes and for
the (bounded, so regular) language of the Lark / GBNF expression grammar.  The mechanics (mask first, EOS
exactly when complete, the "grammar" stop reason) run on a random tiny model over SmolLM2's
vocabulary, where the model's preferences are noise, so only the mask keeps the output valid.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npllm
from npllm import CausalLM, ModelConfig
from npllm.errors import GenerationParameterError, GrammarError, NpllmError

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from npllm.structured import Constraint, grammar_kind  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)  # the CLI's (llama.cpp's) defaults


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return npllm.load(smollm2_gguf)


@pytest.fixture(scope="module")
def noise(smol):
    """A random 1-layer model over SmolLM2's vocabulary (V = 49152): its logits are noise."""
    _, tok = smol
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, eos_token_id=tok.eos_token_id)
    return CausalLM(config, seed=0), tok


def chat_ids(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def sample_texts(model, tok, prompt, n, max_new_tokens, seed=0, **constraint):
    """n sampled completions (a batch of n rows) -> [(text without EOS, stop reason)]."""
    ids = chat_ids(tok, prompt)
    out = model.generate(np.array([ids] * n), max_new_tokens=max_new_tokens, tokenizer=tok, seed=seed,
                         return_dict_in_generate=True, **SAMPLING, **constraint)
    texts = []
    for b in range(n):
        new = out.sequences[b, len(ids):len(ids) + out.num_new_tokens[b]].tolist()
        if out.stop_reasons[b] == "eos":
            new = new[:-1]
        texts.append((tok.decode(new), out.stop_reasons[b]))
    return texts


# ============================================================== acceptance: JSON schemas, regexes, a grammar
NAME = {"type": "string", "minLength": 1, "maxLength": 12}
SCHEMAS = {
    "required_fields": {"type": "object",
                        "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
                        "required": ["name", "age"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                              "size": {"type": "string", "enum": ["S", "M", "L"]}},
             "required": ["color", "size"], "additionalProperties": False},
    "integer_range": {"type": "object", "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 250}},
                      "required": ["n"], "additionalProperties": False},
    "array_min_max": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                      "minItems": 2, "maxItems": 4},
    "nested": {"type": "object", "properties": {
        "person": {"type": "object", "properties": {"name": NAME, "ok": {"type": "boolean"}},
                   "required": ["name", "ok"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3}},
        "required": ["person", "tags"], "additionalProperties": False},
}


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_sampled_json_parses_and_validates(smol, name):
    model, tok = smol
    schema = SCHEMAS[name]
    outs = sample_texts(model, tok, "Answer in JSON.", 12, 60, json_schema=schema)
    for text, reason in outs:
        assert reason == "eos", (text, reason)
        jsonschema.validate(json.loads(text), schema)


def test_json_schema_may_be_given_as_text(smol):
    model, tok = smol
    schema = SCHEMAS["enum"]
    for text, _ in sample_texts(model, tok, "A T-shirt as JSON.", 4, 30, json_schema=json.dumps(schema)):
        jsonschema.validate(json.loads(text), schema)


REGEXES = [r"(yes|no|maybe)", r"[0-9]{3}-[0-9]{4}", r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8})?",
           r"(0|[1-9][0-9]{0,3})\.[0-9]{2} (EUR|USD)", r"[a-z]{1,10}@[a-z]{1,10}\.(com|org)"]


@pytest.mark.parametrize("regex", REGEXES)
def test_every_sampled_text_matches_the_regex(smol, regex):
    model, tok = smol
    for text, reason in sample_texts(model, tok, "Reply briefly.", 10, 28, regex=regex):
        assert reason in ("eos", "grammar") and re.fullmatch(regex, text), (text, reason)


LARK = r"""
start: expr
expr: term (OP term)~0..2
term: NUMBER | "(" inner ")"
inner: NUMBER (OP NUMBER)~1..2
OP: "+" | "*"
NUMBER: /[0-9]{1,2}/
"""
GBNF = r"""
root ::= term (op term){0,2}
term ::= num | "(" num (op num){1,2} ")"
num ::= [0-9] | [0-9] [0-9]
op ::= "+" | "*"
"""
# The same (finite, so regular) language as a Python regex: an independent checker.
_NUM = r"[0-9]{1,2}"
_TERM = rf"(?:{_NUM}|\({_NUM}(?:[+*]{_NUM}){{1,2}}\))"
EXPR = rf"{_TERM}(?:[+*]{_TERM}){{0,2}}"


def test_the_expression_checker_is_a_real_checker():
    assert all(re.fullmatch(EXPR, t) for t in ["1", "12+(3*4)", "(1+2+3)*7+99", "(1+2)"])
    assert not any(re.fullmatch(EXPR, t) for t in ["1+", "123", "(1)", "((1+2))", "1+2+3+4", "1 + 2"])


@pytest.mark.parametrize("grammar", [LARK, GBNF], ids=["lark", "gbnf"])
def test_every_sampled_text_parses_with_the_grammar(smol, grammar):
    model, tok = smol  # at most 23 tokens (digits are single tokens), then EOS
    for text, reason in sample_texts(model, tok, "Write an arithmetic expression.", 10, 26, grammar=grammar):
        assert reason == "eos" and re.fullmatch(EXPR, text), (text, reason)


def test_grammar_kind_tells_gbnf_from_lark():
    assert grammar_kind(GBNF) == "gbnf" and grammar_kind(LARK) == "lark"
    assert grammar_kind('start: "a"') == "lark" and grammar_kind('root::="a"') == "gbnf"


# ============================================================== property: random schemas
@st.composite
def schemas(draw):
    """Objects of integers (with ranges), enums, booleans, short strings and bounded arrays."""
    def leaf():
        kind = draw(st.sampled_from(["int", "enum", "bool", "str", "array"]))
        if kind == "int":
            lo = draw(st.integers(-50, 50))
            return {"type": "integer", "minimum": lo, "maximum": lo + draw(st.integers(0, 200))}
        if kind == "enum":
            return {"enum": draw(st.lists(st.sampled_from(["x", "yes", "no", "Paris", "42"]), min_size=1,
                                          max_size=3, unique=True))}
        if kind == "bool":
            return {"type": "boolean"}
        if kind == "str":
            return {"type": "string", "maxLength": draw(st.integers(1, 8))}
        lo = draw(st.integers(0, 2))
        return {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                "minItems": lo, "maxItems": lo + draw(st.integers(0, 2))}

    keys = draw(st.lists(st.sampled_from(["a", "b", "id", "name", "v"]), min_size=1, max_size=3, unique=True))
    props = {k: leaf() for k in keys}
    required = [k for k in keys if draw(st.booleans())]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


@settings(max_examples=6)
@given(schema=schemas(), seed=st.integers(0, 2**16))
def test_random_schemas_are_always_satisfied(smol, schema, seed):
    model, tok = smol
    for text, reason in sample_texts(model, tok, "JSON please.", 2, 80, seed=seed, json_schema=schema):
        assert reason == "eos", (schema, text)
        jsonschema.validate(json.loads(text), schema)


# ============================================================== invalid constraints fail before any token
class CountingModel:
    """Wraps a model and counts forward calls."""

    def __init__(self, model):
        self.model, self.config, self.calls = model, model.config, 0

    def forward(self, *a, **kw):
        self.calls += 1
        return self.model.forward(*a, **kw)


@pytest.mark.parametrize("kw,name", [
    (dict(json_schema={"type": "nonsense"}), "json_schema"),
    (dict(json_schema={"type": "integer", "minimum": 5, "maximum": 3}), "json_schema"),
    (dict(json_schema="{not json"), "json_schema"),
    (dict(json_schema=[1, 2]), "json_schema"),
    (dict(json_schema={"enum": [{1, 2}]}), "json_schema"),  # a set: not JSON
    (dict(regex="[0-9"), "regex"),
    (dict(regex="(a|b"), "regex"),
    (dict(grammar='start: x\nx: "a" | y'), "grammar"),
    (dict(grammar='root ::= "a" | undefined_rule'), "grammar"),
    (dict(grammar=42), "grammar"),
])
def test_an_invalid_constraint_raises_naming_it_before_any_token(noise, kw, name):
    model, tok = noise
    spy = CountingModel(model)
    with pytest.raises(GrammarError, match=rf"^{name}\b") as e:
        npllm.generation.generate(spy, np.array([[1, 2, 3]]), max_new_tokens=5, tokenizer=tok, **kw)
    assert isinstance(e.value, NpllmError) and isinstance(e.value, ValueError)
    assert spy.calls == 0


def test_two_constraints_or_no_tokenizer_are_parameter_errors(noise):
    model, tok = noise
    with pytest.raises(GenerationParameterError, match="exactly one of json_schema, regex or grammar"):
        model.generate(np.array([[1]]), tokenizer=tok, regex="a", grammar='start: "a"')
    with pytest.raises(GenerationParameterError, match="tokenizer="):
        model.generate(np.array([[1]]), regex="a")
    with pytest.raises(GenerationParameterError, match="constraint"):
        model.generate(np.array([[1], [2]]), constraint=[Constraint(tok, regex="a")])


# ============================================================== mechanics
def test_eos_is_allowed_exactly_when_the_text_is_complete(noise):
    model, tok = noise
    eos = tok.eos_token_id
    digit = [tok.encode(str(d), add_special_tokens=False) for d in range(10)]
    assert all(len(t) == 1 for t in digit)  # SmolLM2 spells numbers digit by digit
    c = Constraint(tok, regex="[0-9]{2,4}", eos_token_id=eos, vocab_size=model.config.vocab_size)
    for n_digits in range(5):
        ok = c.allowed()
        assert ok[eos] == (2 <= n_digits <= 4) == c.accepting, n_digits
        if n_digits == 4:  # complete and nothing can follow: EOS only
            assert c.stopped and np.nonzero(ok)[0].tolist() == [eos]
            break
        assert all(ok[d[0]] for d in digit)
        assert c.consume(digit[n_digits % 10][0])


def test_in_generate_eos_scores_are_minus_inf_until_the_text_is_complete(noise):
    model, tok = noise
    eos = tok.eos_token_id
    out = model.generate(np.array([[1, 2]] * 3), max_new_tokens=8, tokenizer=tok, regex="[0-9]{2,4}", seed=3,
                         return_dict_in_generate=True, output_scores=True, temperature=1.0)
    for b in range(3):
        new = out.sequences[b, 2:2 + out.num_new_tokens[b]].tolist()
        text = tok.decode([t for t in new if t != eos])
        assert re.fullmatch("[0-9]{2,4}", text)
        for step in range(out.num_new_tokens[b]):
            complete = re.fullmatch("[0-9]{2,4}", tok.decode(new[:step])) is not None
            assert np.isfinite(out.scores[step][b, eos]) == complete, (b, step)


def test_a_complete_grammar_without_eos_stops_with_reason_grammar(noise):
    model, tok = noise
    out = model.generate(np.array([[1, 2]] * 2), max_new_tokens=10, tokenizer=tok, regex="[0-9]{3}",
                         eos_token_id=[], seed=0, return_dict_in_generate=True)
    assert out.stop_reasons == ["grammar", "grammar"]
    assert out.num_new_tokens.tolist() == [3, 3]
    for b in range(2):
        assert re.fullmatch("[0-9]{3}", tok.decode(out.sequences[b, 2:5]))


def test_a_row_whose_grammar_is_already_complete_stops_before_any_token(noise):
    model, tok = noise
    done = Constraint(tok, regex="[0-9]", eos_token_id=[], vocab_size=model.config.vocab_size)
    assert done.consume(tok.encode("7", add_special_tokens=False)[0]) and not done.can_continue
    out = model.generate(np.array([[1, 2]] * 2), max_new_tokens=3, constraint=[done, None], eos_token_id=[],
                         return_dict_in_generate=True)
    assert out.stop_reasons == ["grammar", "length"] and out.num_new_tokens.tolist() == [0, 3]
    alone = model.generate(np.array([[1, 2]]), max_new_tokens=3, constraint=[done], eos_token_id=[],
                           return_dict_in_generate=True, output_logprobs=True, top_logprobs=2)
    assert alone.stop_reasons == ["grammar"] and alone.sequences.shape == (1, 2)
    assert alone.logprobs.shape == (1, 0) and alone.top_logprobs.shape == (1, 0, 2)


def test_a_forbidden_token_forced_after_the_mask_stops_the_row_with_reason_grammar(noise):
    model, tok = noise
    x = tok.encode("x", add_special_tokens=False)[0]

    def force_x_on_row_0(input_ids, scores):
        scores = scores.copy()
        scores[0, x] = 1e9  # a user processor overriding the grammar on row 0 only
        return scores

    out = model.generate(np.array([[1, 2]] * 2), max_new_tokens=4, tokenizer=tok, regex="[0-9]+",
                         eos_token_id=[], temperature=0, logits_processor=[force_x_on_row_0],
                         return_dict_in_generate=True)
    assert out.stop_reasons == ["grammar", "length"]
    assert out.sequences[0, 2] == x and out.num_new_tokens.tolist() == [1, 4]


def test_the_mask_comes_before_top_k_and_penalties(noise):
    """With top_k=1 applied after the mask, the one kept token is the best *allowed* one; if the
    filter ran first, the row would be left with nothing (every token -inf)."""
    model, tok = noise
    ids = np.array([[5, 6, 7]])
    logits, _ = model.forward(ids)
    allowed = Constraint(tok, regex="(cat|dog)", vocab_size=model.config.vocab_size).allowed()
    best_allowed = int(np.argmax(np.where(allowed, logits[0, -1], -np.inf)))
    assert best_allowed != int(np.argmax(logits[0, -1]))  # the grammar does change the choice
    out = model.generate(ids, max_new_tokens=1, tokenizer=tok, regex="(cat|dog)", do_sample=True, top_k=1,
                         repetition_penalty=1.3, seed=0)
    assert out[0, 3] == best_allowed


@settings(max_examples=12)
@given(temperature=st.sampled_from([0.0, 0.5, 1.5]), top_k=st.sampled_from([0, 1, 5]),
       top_p=st.sampled_from([1.0, 0.5]), min_p=st.sampled_from([0.0, 0.3]), typical_p=st.sampled_from([1.0, 0.7]),
       penalty=st.sampled_from([1.0, 1.5]), presence=st.sampled_from([0.0, 2.0]), seed=st.integers(0, 9))
def test_every_processor_after_the_mask_keeps_the_text_valid(noise, temperature, top_k, top_p, min_p, typical_p,
                                                             penalty, presence, seed):
    model, tok = noise
    regex = "(cat|dog)-[0-9]{2}"
    out = model.generate(np.array([[1, 2]] * 2), max_new_tokens=10, tokenizer=tok, regex=regex, seed=seed,
                         temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                         repetition_penalty=penalty, presence_penalty=presence, no_repeat_ngram_size=3,
                         return_dict_in_generate=True)
    for b in range(2):
        new = out.sequences[b, 2:2 + out.num_new_tokens[b]]
        assert out.stop_reasons[b] == "eos" and re.fullmatch(regex, tok.decode(new, skip_special_tokens=True))


def test_per_row_constraints_and_an_unconstrained_row(noise):
    model, tok = noise
    V = model.config.vocab_size
    rows = [Constraint(tok, regex="[0-9]{2}", vocab_size=V), None, Constraint(tok, regex="(a|b)c", vocab_size=V)]
    out = model.generate(np.array([[1, 2]] * 3), max_new_tokens=6, constraint=rows, seed=1,
                         return_dict_in_generate=True)
    texts = [tok.decode(out.sequences[b, 2:2 + out.num_new_tokens[b]], skip_special_tokens=True) for b in range(3)]
    assert re.fullmatch("[0-9]{2}", texts[0]) and re.fullmatch("(a|b)c", texts[2])
    assert out.stop_reasons[0] == out.stop_reasons[2] == "eos"
    assert out.num_new_tokens[1] == 6  # random noise runs to the limit


def test_every_eos_id_is_allowed_when_complete_and_none_before(noise):
    _, tok = noise
    c = Constraint(tok, regex="[0-9]", eos_token_id=[2, 0])
    assert not c.allowed()[[0, 2]].any()
    assert c.consume(tok.encode("7", add_special_tokens=False)[0])
    assert np.nonzero(c.allowed())[0].tolist() == [0, 2]


def test_mask_sets_exactly_the_forbidden_logits_to_minus_inf_in_place(noise):
    _, tok = noise
    c = Constraint(tok, regex="(yes|no)")
    row = np.random.default_rng(0).standard_normal(tok.vocab_size).astype(np.float32)
    before = row.copy()
    out = c.mask(row)
    ok = c.allowed()
    assert out is row and np.isneginf(row[~ok]).all() and (row[ok] == before[ok]).all()
    assert {tok.decode([int(i)]) for i in np.nonzero(ok)[0]} >= {"yes", "no"}


def test_padded_embedding_rows_are_never_allowed(noise):
    _, tok = noise
    ok = Constraint(tok, regex="[0-9a-z ]*", vocab_size=tok.vocab_size + 64).allowed()
    assert ok.shape == (tok.vocab_size + 64,) and ok[:tok.vocab_size].sum() > 100 and not ok[tok.vocab_size:].any()
    assert npllm.structured.Constraint is Constraint


def test_a_single_constraint_is_a_template_left_untouched(noise):
    model, tok = noise
    c = Constraint(tok, regex="[0-9]{2}", vocab_size=model.config.vocab_size)
    for seed in (0, 1):
        out = model.generate(np.array([[1, 2]] * 2), max_new_tokens=4, constraint=c, seed=seed,
                             return_dict_in_generate=True)
        assert out.stop_reasons == ["eos", "eos"] and out.num_new_tokens.tolist() == [3, 3]
    assert not c.accepting and c.allowed().sum() == 10  # still at the start: ten digits


def test_a_constraint_built_for_other_eos_ids_is_refused(noise):
    model, tok = noise
    c = Constraint(tok, regex="a", eos_token_id=[0], vocab_size=model.config.vocab_size)
    with pytest.raises(GenerationParameterError, match=r"eos_token_id=\[0\].*\[2\]"):
        model.generate(np.array([[1]]), max_new_tokens=2, constraint=c)


def test_constraint_copy_is_an_independent_fresh_matcher(noise):
    _, tok = noise
    c = Constraint(tok, regex="[0-9]{2}")
    one, x = (tok.encode(s, add_special_tokens=False)[0] for s in ("1", "x"))
    assert c.consume(one) and not c.accepting
    twin = c.copy()
    assert not twin.consume(x) and twin.error and not twin.can_continue  # the copy fails alone...
    assert c.error is None and c.can_continue and c.consume(one) and c.accepting  # ...the original goes on
    fresh = c.copy()  # and a copy starts at the beginning, whatever the original consumed
    assert fresh.consume(one) and not fresh.accepting and fresh.consume(one) and fresh.accepting


def test_hf_directory_tokenizer_works_too(smollm2_gguf, tmp_path):
    """An HF directory: transformers' own tokenizer.json (converted by transformers from the GGUF, not
    by npllm) next to a random tiny Llama over that vocabulary."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf),
                                                        gguf_file=os.path.basename(smollm2_gguf))
    hf_tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(hf_tok), hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, eos_token_id=hf_tok.eos_token_id)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    model, tok = npllm.load(str(tmp_path))
    assert tok.name_or_path == str(tmp_path)
    out = model.generate(np.array([tok.encode("hi")] * 4), max_new_tokens=20, tokenizer=tok, seed=0,
                         json_schema=SCHEMAS["array_min_max"], return_dict_in_generate=True)
    p = len(tok.encode("hi"))
    for b in range(4):
        text = tok.decode(out.sequences[b, p:p + out.num_new_tokens[b]], skip_special_tokens=True)
        assert out.stop_reasons[b] == "eos"
        jsonschema.validate(json.loads(text), SCHEMAS["array_min_max"])


@pytest.mark.parametrize("vocab", ["llama-spm", "phi-3", "qwen2"])
def test_gguf_tokenizers_of_other_families_work(test_vocab_dir, vocab):
    """SentencePiece (Llama 2, Phi-3) and byte-level BPE (Qwen2) GGUF vocabularies: a random walk
    through the mask, decoded by npllm's tokenizer, always matches the regex."""
    tok = npllm.Tokenizer.from_gguf(os.path.join(str(test_vocab_dir), f"ggml-vocab-{vocab}.gguf"))
    regex = r" ?(cat|dog|é) [0-9]{2}"
    rng = np.random.default_rng(0)
    template = Constraint(tok, regex=regex)
    for _ in range(5):
        c, ids = template.copy(), []
        while not c.accepting:
            t = int(rng.choice(np.nonzero(c.allowed())[0]))
            assert c.consume(t)
            ids.append(t)
        text = tok.decode(ids)  # (SentencePiece drops the leading space of a text when decoding)
        assert re.fullmatch(regex, text) or re.fullmatch(regex, " " + text), (text, ids)


# ============================================================== top_logprobs: the math
def log_softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def tiny():
    config = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, eos_token_id=0)
    return CausalLM(config, seed=1)


@settings(max_examples=25)
@given(n=st.integers(1, 45), top_k=st.sampled_from([0, 3, 10]), greedy=st.booleans(), seed=st.integers(0, 99))
def test_top_logprobs_are_the_best_of_log_softmax_of_the_processed_scores(tiny, n, top_k, greedy, seed):
    out = tiny.generate(np.array([[1, 2, 3], [4, 5, 6]]), max_new_tokens=4, top_k=top_k, temperature=0.7,
                        do_sample=not greedy, seed=seed, eos_token_id=[], repetition_penalty=1.2,
                        return_dict_in_generate=True, output_scores=True, output_logprobs=True, top_logprobs=n)
    steps = len(out.scores)
    assert out.top_logprobs.shape == out.top_logprob_ids.shape == (2, steps, n)
    for s in range(steps):
        want = log_softmax64(out.scores[s])  # [B, V]
        for b in range(2):
            ids, lps = out.top_logprob_ids[b, s], out.top_logprobs[b, s]
            k = min(n, 40)
            order = sorted(range(40), key=lambda i: (-want[b, i], i))[:k]  # best first, ties by id
            assert ids[:k].tolist() == order
            np.testing.assert_allclose(lps[:k], want[b, order], rtol=1e-5, atol=1e-6)
            assert (ids[k:] == -1).all() and np.isneginf(lps[k:]).all()
            tok = out.sequences[b, 3 + s]
            np.testing.assert_allclose(out.logprobs[b, s], want[b, tok], rtol=1e-5, atol=1e-6)
            if top_k and not greedy:  # filtered tokens: probability 0
                assert np.isneginf(lps[top_k:k]).all() and np.isfinite(lps[:top_k]).all()


def test_top_logprobs_of_a_finished_row_are_padding(tiny):
    out = tiny.generate(np.array([[1, 2], [3, 4]]), max_new_tokens=5, temperature=0, return_dict_in_generate=True,
                        output_logprobs=True, top_logprobs=2,
                        stopping_criteria=lambda ids, new, T0: np.array([True, False]))
    assert out.stop_reasons == ["stop", "length"]
    assert (out.top_logprob_ids[0, 1:] == -1).all() and np.isneginf(out.top_logprobs[0, 1:]).all()
    assert (out.top_logprob_ids[1] >= 0).all()


def test_top_logprobs_needs_output_logprobs_and_a_count(tiny):
    with pytest.raises(GenerationParameterError, match="top_logprobs needs output_logprobs"):
        tiny.generate(np.array([[1]]), max_new_tokens=1, top_logprobs=3)
    with pytest.raises(GenerationParameterError, match="top_logprobs"):
        tiny.generate(np.array([[1]]), max_new_tokens=1, output_logprobs=True, top_logprobs=-1)


def test_top_logprobs_under_a_grammar_renormalise_over_the_allowed_tokens(noise):
    model, tok = noise
    out = model.generate(np.array([[1, 2]]), max_new_tokens=1, tokenizer=tok, regex="(yes|no)", temperature=0,
                         return_dict_in_generate=True, output_logprobs=True, top_logprobs=5, output_scores=True)
    lps = out.top_logprobs[0, 0]
    finite = lps[np.isfinite(lps)]
    allowed = Constraint(tok, regex="(yes|no)", vocab_size=model.config.vocab_size).allowed()
    assert finite.size == min(5, allowed.sum())
    assert set(out.top_logprob_ids[0, 0, :finite.size].tolist()) <= set(np.nonzero(allowed)[0].tolist())
    np.testing.assert_allclose(np.exp(log_softmax64(out.scores[0][0])[allowed]).sum(), 1.0, rtol=1e-6)


NO_TORCH = r"""
import sys
sys.modules['torch'] = None          # any 'import torch' now raises ImportError
sys.modules['transformers'] = None
import numpy as np
import npllm
model, tok = npllm.load()
ids = tok.encode("Answer:")
out = model.generate(np.array([ids]), max_new_tokens=4, tokenizer=tok, regex="(yes|no)", temperature=0)
print(repr(tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)))
assert not any(m.startswith(('torch', 'transformers')) for m in sys.modules if sys.modules[m] is not None)
"""


def test_structured_output_runs_with_torch_blocked():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"'(yes|no)'", r.stdout.strip()), r.stdout


# ============================================================== the lesson's example
def test_the_lesson_example_runs_and_every_masked_json_validates(capsys):
    """``lessons/ex10_structured.py`` (part 3 of lesson 10): what it prints holds, not only that it runs."""
    sys.path.insert(0, ROOT)
    from lessons.ex10_structured import main

    main(quick=True)
    out = capsys.readouterr().out
    assert re.search(r"valid under the schema: with the mask (\d+)/\1,", out) and "matches: True" in out
    assert "[10.S5]" in out


# ============================================================== CLI
def run_cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "npllm", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def test_cli_json_schema_regex_and_grammar_file(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMAS["integer_range"]))
    lark = tmp_path / "g.lark"
    lark.write_text('start: "color: " COLOR\nCOLOR: "red" | "green" | "blue"\n')
    r = run_cli("generate", "--no-progress", "--chat", "-n", "24", "-s", "0", "--json-schema", str(schema),
                "A number as JSON.")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), SCHEMAS["integer_range"])
    inline = json.dumps(SCHEMAS["array_min_max"])  # llama-cli takes the schema itself too
    r = run_cli("generate", "--no-progress", "-n", "16", "-s", "0", "--json-schema", inline, "Numbers:")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), SCHEMAS["array_min_max"])
    r = run_cli("generate", "--no-progress", "-n", "12", "-s", "0", "--regex", "[0-9]{3}-[0-9]{4}", "Call")
    assert r.returncode == 0 and re.fullmatch(r"[0-9]{3}-[0-9]{4}\n", r.stdout), (r.stdout, r.stderr)
    r = run_cli("generate", "--no-progress", "-n", "16", "-s", "0", "--grammar-file", str(lark), "The sky is")
    assert r.returncode == 0 and re.fullmatch(r"color: (red|green|blue)\n", r.stdout), (r.stdout, r.stderr)


@pytest.mark.parametrize("args,msg", [
    (["--regex", "[0-9"], "regex is invalid"),
    (["--json-schema", "/nonexistent/s.json"], "--json-schema /nonexistent/s.json"),
    (["--grammar-file", "/nonexistent/g.lark"], "--grammar-file /nonexistent/g.lark"),
    (["--regex", "a", "--grammar-file", "x"], "--regex"),
])
def test_cli_constraint_errors_are_one_line(args, msg):
    r = run_cli("generate", "--no-progress", "-n", "4", *args, "hi")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npllm: error:") and msg in lines[0], r.stderr


def test_cli_json_schema_file_that_is_not_json_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    r = run_cli("generate", "--no-progress", "-n", "4", "--json-schema", str(bad), "hi")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "json_schema" in lines[0], r.stderr
