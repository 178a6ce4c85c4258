"""`npllm serve` (issue 13): a real server process on an ephemeral 127.0.0.1 port, driven by
the official openai client.

The expected values are properties, not npllm's earlier output: streamed text equals the
non-streamed text; a stop string cuts the unstopped greedy text at its first occurrence; a
request decoded beside seven others gives the tokens it gives alone; greedy logprobs pick the
best of their own top list, which is sorted and sums to at most 1.
"""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")
pytest.importorskip("prometheus_client")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOTS = 8

pytestmark = pytest.mark.slow


def _start(*flags, log_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "npllm", "serve", "--port", "0", *flags],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.time() + 120
    port = None
    while port is None:
        assert proc.poll() is None, open(log_path).read()
        assert time.time() < deadline, "the server did not print its port"
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log_path).read())
        port = int(m.group(1)) if m else time.sleep(0.1)
    statuses = set()
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            statuses.add(r.status_code)
            if r.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, open(log_path).read()
        assert time.time() < deadline, "the server never became healthy"
        time.sleep(0.2)
    return proc, port, statuses


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log_path = str(tmp_path_factory.mktemp("serve") / "server.log")
    proc, port, statuses = _start("-np", str(SLOTS), "-c", str(SLOTS * 512), "--max-queue", "32",
                                  log_path=log_path)
    yield {"port": port, "base": f"http://127.0.0.1:{port}", "log": log_path, "health": statuses, "proc": proc}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="none", max_retries=0, timeout=300)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three fruits."}]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,",
           "The best way to learn", "Water boils at", "My favourite colour is", "import numpy as np\n"]


def _chat_stream(client, **kw):
    text, usage, ids, reasons = "", None, set(), []
    for chunk in client.chat.completions.create(stream=True, **kw):
        ids.add(chunk.id)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reasons.append(chunk.choices[0].finish_reason)
        if chunk.usage is not None:
            usage = chunk.usage
    return text, usage, ids, reasons


def test_health_was_503_while_loading_then_200(server):
    assert server["health"] <= {503, 200} and 200 in server["health"]


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert len(models) == 1 and models[0].object == "model" and models[0].id


def test_chat_streamed_and_not_give_the_same_text_and_usage(client):
    kw = dict(model="m", messages=CHAT, max_tokens=10, temperature=0)
    r = client.chat.completions.create(**kw)
    text, usage, ids, reasons = _chat_stream(client, stream_options={"include_usage": True}, **kw)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert text == r.choices[0].message.content and text
    assert len(ids) == 1  # one id for every chunk
    assert reasons[-1] == r.choices[0].finish_reason and all(x is None for x in reasons[:-1])
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens <= 10
    assert usage.prompt_tokens == r.usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completions_streamed_and_not_give_the_same_text(client):
    kw = dict(model="m", prompt=PROMPTS[0], max_tokens=12, temperature=0)
    r = client.completions.create(**kw)
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices]
    assert r.object == "text_completion" and r.choices[0].text
    assert "".join(pieces) == r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12


def test_without_include_usage_no_usage_chunk(client):
    text, usage, _, _ = _chat_stream(client, model="m", messages=CHAT, max_tokens=4, temperature=0)
    assert usage is None and text


@pytest.mark.parametrize("stop", [", 7,", ["zzz", " 6"]])
def test_a_stop_string_cuts_the_text_and_never_leaks(client, stop):
    kw = dict(model="m", prompt="1, 2, 3, 4,", max_tokens=16, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    stops = [stop] if isinstance(stop, str) else stop
    cut = min(full.find(s) for s in stops if s in full)
    assert cut > 0, f"the stop strings must occur in the greedy text {full!r}"
    r = client.completions.create(stop=stop, **kw)
    assert r.choices[0].text == full[:cut] and r.choices[0].finish_reason == "stop"
    # streamed text is never taken back, so equal concatenations mean no piece leaked
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, stop=stop, **kw) if c.choices]
    assert "".join(pieces) == full[:cut]


def test_chat_stop_string_streamed(client):
    kw = dict(model="m", messages=CHAT, max_tokens=14, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3 and stop.strip()
    expected = full[:full.find(stop)]
    assert client.chat.completions.create(stop=stop, **kw).choices[0].message.content == expected
    assert _chat_stream(client, stop=[stop], **kw)[0] == expected


def test_seed_reproduces_a_sampled_answer(client):
    kw = dict(model="m", prompt=PROMPTS[2], max_tokens=8, temperature=1.0, top_p=0.95)
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(seed=1234, stream=True, **kw)
                       if c.choices)
    others = {c.text for c in client.completions.create(seed=1, n=3, **kw).choices}
    assert a == b == streamed
    assert len(others | {a}) > 1  # the seed matters


def test_chat_logprobs_and_top_logprobs(client):
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        lps = [t.logprob for t in e.top_logprobs]
        assert len(lps) == 3 and lps == sorted(lps, reverse=True)
        assert e.token == e.top_logprobs[0].token and math.isclose(e.logprob, lps[0])  # greedy: the best
        assert e.logprob <= 0 and sum(math.exp(x) for x in lps) <= 1 + 1e-5
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content[:1])


def test_completion_logprobs(client):
    r = client.completions.create(model="m", prompt=PROMPTS[3], max_tokens=6, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs) == 6 and all(x <= 0 for x in lp.token_logprobs)
    for tok, top in zip(lp.tokens, lp.top_logprobs):
        assert len(top) <= 2 and max(top, key=top.get) == tok
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_n_choices(client):
    greedy = client.chat.completions.create(model="m", messages=CHAT, max_tokens=6, temperature=0)
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=6, temperature=0, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert {c.message.content for c in r.choices} == {greedy.choices[0].message.content}
    sampled = client.completions.create(model="m", prompt=PROMPTS[2], max_tokens=6, temperature=1.0, n=4, seed=7)
    assert [c.index for c in sampled.choices] == [0, 1, 2, 3]
    assert len({c.text for c in sampled.choices}) > 1  # each choice has its own RNG stream
    assert 4 <= sampled.usage.completion_tokens <= 24


def _alone(client, prompts, max_tokens):
    return [client.completions.create(model="m", prompt=p, max_tokens=max_tokens, temperature=0, logprobs=0)
            for p in prompts]


def _together(client, prompts, max_tokens):
    out = [None] * len(prompts)

    def one(i):
        out[i] = client.completions.create(model="m", prompt=prompts[i], max_tokens=max_tokens, temperature=0,
                                           logprobs=0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.fixture(scope="module")
def alone(client):
    return _alone(client, PROMPTS, 12)


def test_8_concurrent_greedy_requests_give_the_tokens_each_gives_alone(client, alone):
    together = _together(client, PROMPTS, 12)
    for a, b in zip(alone, together):
        assert b.choices[0].logprobs.tokens == a.choices[0].logprobs.tokens
        assert b.choices[0].text == a.choices[0].text


def _metric(server, name):
    text = httpx.get(server["base"] + "/metrics", timeout=10).text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1))


def test_abandoned_streams_free_their_slots(server, client):
    body = {"model": "m", "prompt": "Tell me a very long story.", "max_tokens": 400, "temperature": 0,
            "stream": True, "ignore_eos": True}
    streams = []
    with httpx.Client(timeout=60) as http:
        for _ in range(SLOTS):
            cm = http.stream("POST", server["base"] + "/v1/completions", json=body)
            r = cm.__enter__()
            streams.append((cm, r))
        readers = [r.iter_lines() for _, r in streams]  # (dropping a reader closes its stream)
        for lines in readers:  # each got going: its first token arrived
            while not next(lines).startswith("data: {"):
                pass
        assert _metric(server, "npllm_busy_slots") == SLOTS
        for (cm, r), lines in zip(streams, readers):  # then the clients go away mid-way
            lines.close()
            r.close()
            cm.__exit__(None, None, None)
    t0 = time.time()
    while _metric(server, "npllm_busy_slots") > 0:
        assert time.time() - t0 < 10, "abandoned streams still hold their slots"
        time.sleep(0.1)
    r = client.completions.create(model="m", prompt=PROMPTS[0], max_tokens=4, temperature=0)
    assert r.choices[0].text and time.time() - t0 < 30


def test_a_non_streaming_client_that_leaves_frees_its_slot(server):
    # 4 choices of 500 tokens each take seconds on any CPU; the client leaves after 1 s of silence.
    n, max_tokens = 4, 500
    body = {"model": "m", "prompt": "Tell me a very long story.", "max_tokens": max_tokens, "temperature": 0.8,
            "n": n, "ignore_eos": True}
    before = _metric(server, "npllm_completion_tokens_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server["base"] + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=1))
    t0 = time.time()
    while _metric(server, "npllm_busy_slots") > 0:
        assert time.time() - t0 < 10, "the slot of a client that went away is still busy"
        time.sleep(0.1)
    # had the request run to its end, all n * max_tokens tokens would have been made
    assert _metric(server, "npllm_completion_tokens_total") - before < n * max_tokens


def test_12_clients_times_3_requests_all_arrive_intact(client, alone):
    expected = {p: a.choices[0].text for p, a in zip(PROMPTS, alone)}
    results, errors = [], []

    def worker(k):
        try:
            for j in range(3):
                p = PROMPTS[(k + j) % len(PROMPTS)]
                if (k + j) % 2:
                    r = client.completions.create(model="m", prompt=p, max_tokens=12, temperature=0)
                    results.append((p, r.choices[0].text))
                else:
                    text = "".join(c.choices[0].text for c in client.completions.create(
                        model="m", prompt=p, max_tokens=12, temperature=0, stream=True) if c.choices)
                    results.append((p, text))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 36
    for p, text in results:
        assert text == expected[p]


BAD = [
    # (endpoint, body or raw text, param named in the error)
    ("chat", "{not json", None),
    ("chat", "[1, 2]", None),
    ("chat", {"model": "m"}, "messages"),
    ("chat", {"messages": []}, "messages"),
    ("chat", {"messages": "hello"}, "messages"),
    ("chat", {"messages": ["hello"]}, "messages[0]"),
    ("chat", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("chat", {"messages": [{"content": "hi"}]}, "messages[0].role"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
    ("chat", {"model": 5, "messages": CHAT}, "model"),
    ("chat", {"messages": CHAT, "max_tokens": "ten"}, "max_tokens"),
    ("chat", {"messages": CHAT, "max_tokens": 0}, "max_tokens"),
    ("chat", {"messages": CHAT, "max_tokens": 2.5}, "max_tokens"),
    ("chat", {"messages": CHAT, "max_completion_tokens": -3}, "max_completion_tokens"),
    ("chat", {"messages": CHAT, "temperature": 2.5}, "temperature"),
    ("chat", {"messages": CHAT, "temperature": "hot"}, "temperature"),
    ("chat", {"messages": CHAT, "temperature": True}, "temperature"),
    ("chat", {"messages": CHAT, "top_p": 0}, "top_p"),
    ("chat", {"messages": CHAT, "top_p": 1.5}, "top_p"),
    ("chat", {"messages": CHAT, "top_k": 1.5}, "top_k"),
    ("chat", {"messages": CHAT, "min_p": 2}, "min_p"),
    ("chat", {"messages": CHAT, "frequency_penalty": 3}, "frequency_penalty"),
    ("chat", {"messages": CHAT, "presence_penalty": -2.5}, "presence_penalty"),
    ("chat", {"messages": CHAT, "repetition_penalty": 0}, "repetition_penalty"),
    ("chat", {"messages": CHAT, "stop": 5}, "stop"),
    ("chat", {"messages": CHAT, "stop": [""]}, "stop"),
    ("chat", {"messages": CHAT, "seed": "x"}, "seed"),
    ("chat", {"messages": CHAT, "n": 0}, "n"),
    ("chat", {"messages": CHAT, "n": SLOTS + 1}, "n"),
    ("chat", {"messages": CHAT, "logprobs": "yes"}, "logprobs"),
    ("chat", {"messages": CHAT, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ("chat", {"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
    ("chat", {"messages": CHAT, "stream": "yes"}, "stream"),
    ("chat", {"messages": CHAT, "stream": True, "stream_options": 5}, "stream_options"),
    ("chat", {"messages": CHAT, "ignore_eos": 1}, "ignore_eos"),
    ("chat", {"messages": CHAT, "response_format": {"type": "json_schema"}}, "response_format"),
    ("chat", {"messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}}}}},
     "response_format"),
    ("chat", {"messages": CHAT, "response_format": {"type": "yaml"}}, "response_format"),
    ("chat", {"messages": CHAT, "response_format": "json"}, "response_format"),
    ("completions", {"model": "m"}, "prompt"),
    ("completions", {"prompt": ""}, "prompt"),
    ("completions", {"prompt": 5}, "prompt"),
    ("completions", {"prompt": [-1, 3]}, "prompt"),
    ("completions", {"prompt": [[1, 2], "x", 3]}, "prompt"),
    ("completions", {"prompt": "hi", "logprobs": 10}, "logprobs"),
    ("completions", {"prompt": "hi", "echo": True}, "echo"),
    ("completions", {"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ("tokenize", {"content": 5}, "content"),
    ("detokenize", {"tokens": ["a"]}, "tokens"),
    ("detokenize", {"tokens": [10 ** 9]}, "tokens"),
]
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "tokenize": "/tokenize",
         "detokenize": "/detokenize"}


@pytest.mark.parametrize("endpoint, body, param", BAD, ids=[f"{e}-{p}-{i}" for i, (e, _, p) in enumerate(BAD)])
def test_bad_request_is_a_400_naming_the_parameter(server, endpoint, body, param):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(server["base"] + PATHS[endpoint], content=content, timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == 400
    assert err["param"] == param
    leaf = param.split(".")[-1].split("[")[0] if param else "JSON"
    assert leaf in err["message"]


def test_the_openai_client_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=CHAT, temperature=9)
    assert e.value.status_code == 400 and e.value.param == "temperature"


def test_unknown_route_is_404_and_unknown_fields_are_ignored(server, client):
    r = httpx.get(server["base"] + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=2, temperature=0,
                                       extra_body={"no_such_field": [1, 2], "user": "u"})
    assert r.choices[0].message.content is not None


def test_tokenize_detokenize_round_trip(server):
    ids = httpx.post(server["base"] + "/tokenize", json={"content": "Hello world"}, timeout=10).json()["tokens"]
    assert ids and all(isinstance(i, int) for i in ids)
    text = httpx.post(server["base"] + "/detokenize", json={"tokens": ids}, timeout=10).json()["content"]
    assert text == "Hello world"


def test_metrics_count_requests_tokens_and_ttft(server):
    text = httpx.get(server["base"] + "/metrics", timeout=10).text
    for name in ("npllm_requests_total", "npllm_prompt_tokens_total", "npllm_completion_tokens_total",
                 "npllm_queue_depth", "npllm_busy_slots", "npllm_time_to_first_token_seconds_count"):
        assert name in text
    assert _metric(server, "npllm_completion_tokens_total") > 100
    assert _metric(server, "npllm_time_to_first_token_seconds_count") > 10


def test_zz_no_500_anywhere_and_one_log_line_per_request(server):
    text = httpx.get(server["base"] + "/metrics", timeout=10).text
    # (/health answers 503 while the model loads, by design; nothing else may be a 5xx)
    assert not re.findall(r'npllm_requests_total\{endpoint="(?!/health")[^"]*",status="5\d\d"', text)
    assert 'status="500"' not in text
    log = open(server["log"]).read()
    assert "Traceback" not in log and "internal error" not in log
    assert re.search(r'"POST /v1/chat/completions" 200 \d+ ms', log)
    assert re.search(r'"POST /v1/chat/completions" 400 \d+ ms', log)


def test_full_queue_is_429_and_sigterm_drains_then_exits_0(tmp_path):
    proc, port, _ = _start("-np", "1", "-c", "512", "--max-queue", "1", log_path=str(tmp_path / "small.log"))
    base = f"http://127.0.0.1:{port}"
    body = {"model": "m", "prompt": "Tell me a story.", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    # The running request is long (400 tokens), so it still holds the slot, and the second request
    # still waits, when the third arrives, however fast the machine decodes.
    long_body = {**body, "max_tokens": 400}
    results = {}

    def post(k, b=body):
        results[k] = httpx.post(base + "/v1/completions", json=b, timeout=300)

    try:
        first = threading.Thread(target=post, args=("running", long_body))
        first.start()
        t0 = time.time()
        while _metric({"base": base}, "npllm_busy_slots") < 1:
            assert time.time() - t0 < 60
            time.sleep(0.05)
        second = threading.Thread(target=post, args=("queued",))
        second.start()
        while _metric({"base": base}, "npllm_queue_depth") < 1:
            assert time.time() - t0 < 60
            time.sleep(0.05)
        third = httpx.post(base + "/v1/completions", json=body, timeout=60)
        assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["type"] == "rate_limit_error"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        first.join(60)
        second.join(60)
        assert results["running"].status_code == 200  # in flight when SIGTERM came: finished
        assert results["running"].json()["usage"]["completion_tokens"] == 400
    finally:
        if proc.poll() is None:
            proc.kill()


def _cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "npllm", "serve", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_errors_are_one_line_with_status_2():
    r = _cli("-np", "4", "-c", "6")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "-c/--ctx-size" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = _cli("--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ response_format (npllm.structured)
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_gives_valid_json(client, stream):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    msgs = [{"role": "user", "content": "Describe a person as JSON."}]
    for seed in range(3):
        kw = dict(model="m", messages=msgs, temperature=0.8, seed=seed, max_tokens=60, response_format=rf)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)
        else:
            r = client.chat.completions.create(**kw)
            assert r.choices[0].finish_reason == "stop"
            text = r.choices[0].message.content
        jsonschema.validate(json.loads(text), PERSON)


def test_response_format_json_object_gives_a_json_object(client):
    pytest.importorskip("llguidance")
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "A JSON object, please."}],
                                       temperature=0, max_tokens=48, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut at max_tokens: still the start of an object
        assert r.choices[0].message.content.startswith("{")
