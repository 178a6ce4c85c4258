"""npllm.engine without HTTP (lesson 09): the queue bound, cancellation while queued, and that
each request's sampling is its own (a seed gives the same tokens alone or beside others)."""

import pytest

import npllm
from npllm.engine import Engine, QueueFullError, SamplingParams, Token
from npllm.errors import GenerationParameterError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded():
    return npllm.load()


def _drain(req):
    ids = []
    while True:
        ev = req.events.get(timeout=300)
        if isinstance(ev, Token):
            ids.append(ev.token_id)
        else:
            return ids, ev


def test_a_full_queue_raises_and_a_too_long_prompt_names_the_prompt(loaded):
    model, tok = loaded
    engine = Engine(model, tok, n_slots=1, ctx_per_slot=32, max_queue=2)   # not started: nothing drains
    for _ in range(2):
        engine.submit([1, 2, 3], SamplingParams(max_tokens=2))
    with pytest.raises(QueueFullError):
        engine.submit([1, 2, 3], SamplingParams(max_tokens=2))
    with pytest.raises(GenerationParameterError, match="prompt"):
        engine.submit(list(range(1, 40)), SamplingParams(max_tokens=2))


def test_a_request_cancelled_while_queued_never_takes_a_slot(loaded):
    model, tok = loaded
    engine = Engine(model, tok, n_slots=1, ctx_per_slot=64)
    first = engine.submit(tok.encode("Hello"), SamplingParams(max_tokens=3, temperature=0))
    queued = engine.submit(tok.encode("Goodbye"), SamplingParams(max_tokens=3, temperature=0))
    queued.cancel()
    engine.start()
    try:
        ids, done = _drain(first)
        assert len(ids) == 3 and done.reason == "length"
        ids, done = _drain(queued)
        assert ids == [] and done.reason == "cancelled" and queued.first_token is None
    finally:
        engine.shutdown()


def test_a_seeded_request_samples_the_same_tokens_alone_and_beside_others(loaded):
    model, tok = loaded
    engine = Engine(model, tok, n_slots=3, ctx_per_slot=64).start()
    try:
        params = SamplingParams(max_tokens=8, temperature=1.0, seed=42, ignore_eos=True)
        prompt = tok.encode("Once upon a time")
        alone, _ = _drain(engine.submit(prompt, params))
        reqs = [engine.submit(prompt, params),
                engine.submit(tok.encode("def f(x):"), SamplingParams(max_tokens=8, temperature=1.0, seed=1)),
                engine.submit(prompt, params)]
        together = [_drain(r)[0] for r in reqs]
        assert together[0] == together[2] == alone
    finally:
        engine.shutdown()


def test_a_failing_request_ends_alone_and_its_neighbour_goes_on(loaded):
    model, tok = loaded

    def broken(input_ids, scores):
        raise RuntimeError("constraint failed")

    def ban_first_choice(input_ids, scores):  # a per-request processor (the response_format seam)
        out = scores.copy()
        out[0, 29] = -float("inf")
        return out

    engine = Engine(model, tok, n_slots=2, ctx_per_slot=64).start()
    try:
        good = engine.submit(tok.encode("Hello"), SamplingParams(max_tokens=4, temperature=0,
                                                                 logits_processors=[ban_first_choice]))
        bad = engine.submit(tok.encode("Hello"), SamplingParams(max_tokens=4, temperature=0,
                                                                logits_processors=[broken]))
        ids, done = _drain(good)
        assert len(ids) == 4 and 29 not in ids and done.reason == "length"
        ids, done = _drain(bad)
        assert ids == [] and done.reason == "error" and "constraint failed" in done.text
    finally:
        engine.shutdown()
