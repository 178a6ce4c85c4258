"""Lesson 10, part 3 example: structured output — a grammar becomes a token mask.

Reads: npllm/structured.py (Constraint, RowConstraints), npllm/generation.py (the mask comes first),
tests/test_structured.py.
"""

import json
import re
import time

import numpy as np

from ._common import default_model, heading, table

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "city": {"enum": ["Paris", "Tokyo", "Lima"]}},
          "required": ["name", "age", "city"], "additionalProperties": False}


def _prompt(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def _shown(tok, ids, limit=6):
    return " ".join(repr(tok.decode([int(i)])) for i in ids[:limit]) + (" ..." if len(ids) > limit else "")


def mask_step_by_step(model, tok):
    heading("[10.S1] a regex as a mask: how many of the V tokens may come next, step by step")
    from npllm.structured import Constraint

    V, eos = model.config.vocab_size, tok.eos_token_id
    regex = r"(yes|no) [0-9]{2}"
    c = Constraint(tok, regex=regex, eos_token_id=eos, vocab_size=V)
    ids = _prompt(tok, "Is the sky blue? Answer yes or no and a number.")
    logits, cache = model.forward(np.array([ids]), use_cache=True)
    rows, text = [], ""
    for step in range(8):
        ok = c.allowed()  # bool [V]
        z = np.where(ok, logits[0, -1], -np.inf)
        tok_id = int(np.argmax(z))  # greedy among the allowed tokens
        unmasked = int(np.argmax(logits[0, -1]))
        rows.append((step, int(ok.sum()), bool(ok[eos]), _shown(tok, np.nonzero(ok)[0]),
                     repr(tok.decode([unmasked])), repr(tok.decode([tok_id]))))
        if tok_id == eos:
            break
        c.consume(tok_id)
        text += tok.decode([tok_id])
        logits, cache = model.forward(np.array([[tok_id]]), past_key_values=cache, use_cache=True,
                                      attention_mask=np.ones((1, len(ids) + step + 1), np.int64),
                                      position_ids=np.array([[len(ids) + step]]))
    table(["step", f"allowed of {V}", "EOS allowed", "some allowed tokens", "model's own pick", "chosen"], rows)
    print(f"regex {regex!r} -> {text!r}; matches: {re.fullmatch(regex, text) is not None}")


def mask_before_filters(model, tok):
    heading("[10.S2] why the mask comes first: the model's top-40 and what the grammar allows")
    from npllm.structured import Constraint

    V = model.config.vocab_size
    ids = _prompt(tok, "Tell me about yourself.")
    logits, _ = model.forward(np.array(ids)[None])
    z = logits[0, -1]
    top40 = np.argsort(-z)[:40]
    rows = []
    for what, kw in (("regex [0-9]{4}", dict(regex="[0-9]{4}")), ("JSON schema PERSON", dict(json_schema=PERSON)),
                     ("regex (yes|no)", dict(regex="(yes|no)"))):
        ok = Constraint(tok, vocab_size=V, **kw).allowed()
        rows.append((what, int(ok.sum()), int(ok[top40].sum())))
    table(["constraint", "allowed tokens", "allowed among the top-40"], rows)
    print("a row with 0 above would have no token left if top-k ran before the mask;")
    print("mask first, then top-k keeps the 40 best *allowed* tokens.")


def _valid_person(text):
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (isinstance(d, dict) and set(d) == {"name", "age", "city"} and isinstance(d["name"], str)
            and 1 <= len(d["name"]) <= 12 and type(d["age"]) is int and 0 <= d["age"] <= 120
            and d["city"] in PERSON["properties"]["city"]["enum"])


def json_samples(model, tok, quick):
    heading("[10.S3] sampled JSON under a schema: every output parses and validates")
    n = 3 if quick else 16
    ids = _prompt(tok, "Describe a person as JSON.")
    out = model.generate(np.array([ids] * n), max_new_tokens=48, tokenizer=tok, json_schema=PERSON, seed=0,
                         temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, return_dict_in_generate=True)
    free = model.generate(np.array([ids] * n), max_new_tokens=24 if quick else 48, seed=0, temperature=0.8, top_k=40,
                          top_p=0.95, min_p=0.05, return_dict_in_generate=True)
    rows, valid = [], {"schema": 0, "free": 0}
    for name, o in (("schema", out), ("free", free)):
        for b in range(n):
            new = o.sequences[b, len(ids):len(ids) + o.num_new_tokens[b]]
            text = tok.decode(new, skip_special_tokens=True)
            valid[name] += _valid_person(text)
            if b < 3:
                rows.append((name, o.stop_reasons[b], text[:60].replace("\n", "\\n")))
    table(["decoding", "stop", "text (first 60 characters)"], rows)
    print(f"valid under the schema: with the mask {valid['schema']}/{n}, without {valid['free']}/{n}")


def mask_cost(model, tok, quick):
    heading("[10.S4] the price of the mask: milliseconds per step, next to a decode step")
    from npllm.structured import Constraint

    V = model.config.vocab_size
    c = Constraint(tok, json_schema=PERSON, eos_token_id=tok.eos_token_id, vocab_size=V)
    t0 = time.perf_counter()
    Constraint(tok, json_schema={"type": "object", "properties": {"k": {"type": "integer"}}}, vocab_size=V)
    compile_ms = 1e3 * (time.perf_counter() - t0)
    text = '{"name":"Ada","age":36,"city":"Lima"}'
    steps = tok.encode(text, add_special_tokens=False)
    t0 = time.perf_counter()
    for t in steps:
        c.allowed()
        assert c.consume(t)
    mask_ms = 1e3 * (time.perf_counter() - t0) / len(steps)
    ids = np.array([tok.encode("Hello")])
    model.generate(ids, max_new_tokens=2, temperature=0, eos_token_id=[])  # warm-up
    n = 8 if quick else 32
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=n, temperature=0, eos_token_id=[])
    step_ms = 1e3 * (time.perf_counter() - t0) / n
    table(["what", "ms"], [("compile a small schema (tokenizer cached)", compile_ms),
                           (f"mask + consume, mean over the {len(steps)} tokens of {text}", mask_ms),
                           ("one decode step of the model (greedy, batch 1)", step_ms)], ".3g")
    print(f"the mask costs {100 * mask_ms / step_ms:.1f}% of a decode step here")


def top_logprobs_under_grammar(model, tok):
    heading("[10.S5] top_logprobs under a grammar: the distribution the token was drawn from")
    ids = _prompt(tok, "Is water wet? Answer yes or no.")
    for kw in ({}, {"regex": "(yes|no)"}):
        out = model.generate(np.array([ids]), max_new_tokens=1, temperature=0, tokenizer=tok,
                             return_dict_in_generate=True, output_logprobs=True, top_logprobs=4, **kw)
        lp, alt = out.top_logprobs[0, 0], out.top_logprob_ids[0, 0]
        print(f"{'regex (yes|no)' if kw else 'no constraint'}: " + ", ".join(
            f"{tok.decode([int(i)])!r} p={np.exp(v):.3f}" for i, v in zip(alt, lp) if i >= 0 and np.isfinite(v)))


def main(quick: bool = False) -> None:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        print("llguidance is not installed: pip install 'npllm[structured]'")
        return
    pair = default_model()
    if pair is None:
        return
    model, tok = pair
    mask_step_by_step(model, tok)
    mask_before_filters(model, tok)
    json_samples(model, tok, quick)
    mask_cost(model, tok, quick)
    top_logprobs_under_grammar(model, tok)


if __name__ == "__main__":
    main()
