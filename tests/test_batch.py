"""``npllm batch`` / ``npllm.batch.run`` (issue 16): offline generation over JSONL, resumable.

The expected outputs come from the library's own ``generate`` run on each record alone (greedy,
or with the record's seed): a record's result must not depend on the batch it ran in.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import npllm
from npllm.batch import run

PROMPTS = ([f"Question {i}: what is {i} times {i + 3}? Answer:" for i in range(10)]
           + ["Once upon a time", "The capital of France is", "def add(a, b):", "List three colours:",
              "Translate 'cat' to French:", "The meaning of life is", "In 1492,", "Water boils at",
              "My favourite food is", "The quick brown fox", "Write a haiku about rain.", "import numpy as np\n",
              "SELECT * FROM", "Dear Sir,", "The three laws of thermodynamics are", "Photosynthesis is",
              "A prime number is", "The sun rises in the", "To make tea,", "Python is a"])
MESSAGES = [{"role": "user", "content": "Name a planet."}]


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return npllm.load(smollm2_gguf)


def alone(model, tok, ids, n, **kw):
    out = model.generate(np.array([ids]), max_new_tokens=n, eos_token_id=tok.stop_token_ids,
                         return_dict_in_generate=True, **kw)
    k = int(out.num_new_tokens[0])
    return tok.decode(out.sequences[0, len(ids):len(ids) + k].tolist(), skip_special_tokens=True), \
        out.stop_reasons[0], k


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_thirty_records_equal_the_library_greedy_output_of_each(smol, tmp_path):
    model, tok = smol
    rows = [{"id": i, "prompt": p, "max_tokens": 12 + i % 3} for i, p in enumerate(PROMPTS)]
    rows.append({"id": "chat", "messages": MESSAGES, "max_tokens": 10})
    write_jsonl(tmp_path / "in.jsonl", rows)
    summary = run(tmp_path / "in.jsonl", tmp_path / "out.jsonl", model=model.source, temperature=0,
                  batch_size=8, progress=False)
    out = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert summary.written == len(rows) == len(out) == 31 and summary.errors == 0
    for r in rows:
        ids = tok.apply_chat_template(r["messages"]) if "messages" in r else tok.encode(r["prompt"])
        text, reason, k = alone(model, tok, ids, r["max_tokens"], temperature=0)
        got = out[r["id"]]
        assert got["text"] == text, (r, got)
        assert got["finish_reason"] == ("length" if reason == "length" else "stop")
        assert got["usage"] == {"prompt_tokens": len(ids), "completion_tokens": k}


def test_seeded_sampling_equals_the_library_with_that_seed(smol, tmp_path):
    model, tok = smol
    rows = [{"id": i, "prompt": p, "seed": 10 + i, "temperature": 0.9, "max_tokens": 10}
            for i, p in enumerate(PROMPTS[:5])]
    write_jsonl(tmp_path / "in.jsonl", rows)
    run(tmp_path / "in.jsonl", tmp_path / "out.jsonl", model=model.source, progress=False)
    out = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    for r in rows:
        text, _, _ = alone(model, tok, tok.encode(r["prompt"]), 10, temperature=0.9, top_k=40, top_p=0.95,
                           min_p=0.05, seed=r["seed"])
        assert out[r["id"]]["text"] == text


def test_stop_strings_end_the_text_before_them(smol, tmp_path):
    model, tok = smol
    ids = tok.encode("List three colours:")
    full, _, _ = alone(model, tok, ids, 30, temperature=0)
    stop = full.strip()[:8][-3:]                       # a string the greedy text does contain
    assert stop in full
    write_jsonl(tmp_path / "in.jsonl", [{"id": 0, "prompt": "List three colours:", "stop": stop, "max_tokens": 30}])
    run(tmp_path / "in.jsonl", tmp_path / "out.jsonl", model=model.source, temperature=0, progress=False)
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["text"] == full[:full.index(stop)] and row["finish_reason"] == "stop"


@pytest.mark.parametrize("line,needle", [
    ("not json", "JSON"), ('["a list"]', "object"), ('{"prompt": "no id"}', "id"),
    ('{"id": 1}', "prompt"), ('{"id": 1, "prompt": "x", "messages": []}', "exactly one"),
    ('{"id": 1, "prompt": ""}', "prompt"), ('{"id": 1, "messages": [{"role": "user"}]}', "messages"),
    ('{"id": 1, "prompt": "x", "max_tokens": -3}', "max_tokens"), ('{"id": 1, "prompt": "x", "temperature": "hot"}',
                                                                   "temperature"),
    ('{"id": 1, "prompt": "x", "stop": [""]}', "stop"), ('{"id": 1.5, "prompt": "x"}', "id"),
    ('{"id": 1, "prompt": "x", "json_schema": 5}', "json_schema"),
    ('{"id": 1, "prompt": "x", "json_schema": {"type": "integer", "minimum": "zero"}}', "json_schema"),
])
def test_a_malformed_line_gives_an_error_row_and_the_run_goes_on(smol, tmp_path, line, needle):
    model, _ = smol
    write_jsonl(tmp_path / "in.jsonl", [line, {"id": "ok", "prompt": "Hello", "max_tokens": 3}])
    summary = run(tmp_path / "in.jsonl", tmp_path / "out.jsonl", model=model.source, temperature=0, progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert summary.errors == 1 and summary.written == 1
    (err,) = [r for r in rows if "error" in r]
    assert needle in err["error"] and err["line"] == 1
    assert [r["id"] for r in rows if "text" in r] == ["ok"]


def test_records_with_a_json_schema_give_valid_json_equal_to_generate(smol, tmp_path):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    model, tok = smol
    point = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                              "y": {"type": "integer", "minimum": 0, "maximum": 99}},
             "required": ["x", "y"], "additionalProperties": False}
    colour = {"type": "string", "enum": ["red", "green", "blue"]}
    records = [{"id": 0, "prompt": "A point as JSON:", "json_schema": point},
               {"id": 1, "prompt": "Another point:", "json_schema": point},
               {"id": 2, "prompt": "Favourite colour:", "json_schema": json.dumps(colour)},
               {"id": 3, "prompt": "Favourite colour:"}]                       # the default schema
    write_jsonl(tmp_path / "in.jsonl", records)
    run(tmp_path / "in.jsonl", tmp_path / "out.jsonl", model=model.source, temperature=0, max_tokens=24,
        json_schema=colour, progress=False)
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    for r in records:
        schema = r.get("json_schema", colour)
        schema = json.loads(schema) if isinstance(schema, str) else schema
        jsonschema.validate(json.loads(rows[r["id"]]["text"]), schema)
        want, _, _ = alone(model, tok, tok.encode(r["prompt"]), 24, temperature=0, json_schema=schema, tokenizer=tok)
        assert rows[r["id"]]["text"] == want


def test_a_half_written_last_line_is_dropped_and_redone(smol, tmp_path):
    model, _ = smol
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": p, "max_tokens": 4} for i, p in enumerate(PROMPTS[:4])])
    run(tmp_path / "in.jsonl", tmp_path / "out.jsonl", model=model.source, temperature=0, progress=False)
    whole = (tmp_path / "out.jsonl").read_bytes()
    lines = whole.splitlines(keepends=True)
    (tmp_path / "out.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][:17])   # killed mid-write
    summary = run(tmp_path / "in.jsonl", tmp_path / "out.jsonl", model=model.source, temperature=0, progress=False)
    assert summary.skipped == 2 and summary.written == 2
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == [0, 1, 2, 3]
    assert sorted(map(json.dumps, rows)) == sorted(json.loads(line) and line.decode().strip() for line in lines)


def test_sigint_stops_after_the_batch_and_a_rerun_completes_exactly_once(smol, tmp_path):
    model, _ = smol
    rows = [{"id": f"r{i}", "prompt": p, "max_tokens": 16} for i, p in enumerate(PROMPTS)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "npllm", "batch", str(tmp_path / "in.jsonl"), "-o", str(out), "--temperature", "0",
           "-b", "2", "-m", model.source]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    first = read_jsonl(out)
    assert 2 <= len(first) < len(rows) and len(first) % 2 == 0       # whole batches, whole lines
    again = subprocess.run(cmd + ["--no-progress"], capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(r["id"] for r in rows)               # every id exactly once
    assert f"{len(first)} already there" in again.stderr.decode()


def test_cli_batch_bad_input_file_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "npllm", "batch", str(tmp_path / "missing.jsonl"), "-o",
                        str(tmp_path / "o.jsonl"), "--no-progress"], capture_output=True, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 2 and "missing.jsonl" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


# ------------------------------------------------------------------ on Ray
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_local_two_workers_give_the_in_process_outputs(smol, local_ray, tmp_path):
    model, _ = smol
    rows = [{"id": i, "prompt": p, "max_tokens": 10} for i, p in enumerate(PROMPTS)]
    rows += [{"id": "bad", "prompt": 7}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    run(tmp_path / "in.jsonl", tmp_path / "local.jsonl", model=model.source, temperature=0, progress=False)
    summary = run(tmp_path / "in.jsonl", tmp_path / "ray.jsonl", model=model.source, temperature=0, progress=False,
                  ray="local", workers=2, batch_size=4)
    assert summary.written == len(PROMPTS) and summary.errors == 1
    by_id = lambda path: {json.dumps(r["id"]): r for r in read_jsonl(path)}  # noqa: E731
    assert by_id(tmp_path / "ray.jsonl") == by_id(tmp_path / "local.jsonl")


def test_a_worker_killed_mid_run_still_ends_with_every_id_once(smol, local_ray, tmp_path):
    import threading

    model, _ = smol
    rows = [{"id": i, "prompt": p, "max_tokens": 24} for i, p in enumerate(PROMPTS)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "ray.jsonl"
    killed = []

    def kill_one_worker():
        deadline = time.time() + 240
        while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 2):
            time.sleep(0.05)
        for pid in os.listdir("/proc"):   # Ray titles an actor's process ray::MapWorker(MapBatches(BatchWorker))
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read()
            except OSError:
                continue
            if b"BatchWorker" in title and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)   # a worker dies mid-run
                killed.append(int(pid))
                return

    t = threading.Thread(target=kill_one_worker)
    t.start()
    summary = run(tmp_path / "in.jsonl", out, model=model.source, temperature=0, progress=False, ray="local",
                  workers=2, batch_size=2)
    t.join()
    assert killed, "no worker was killed: the test did not test anything"
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == list(range(len(PROMPTS))) and summary.written == len(PROMPTS)
