"""Lesson 09 example: serving with continuous batching, then offline batch generation.

Part 1 (serving) reads: npllm/engine.py (Engine, SamplingParams), npllm/cache.py (SlotCache),
npllm/quant/kernels.py (batch_invariant), npllm/serve.py (create_app, serve), benchmarks/bench_serve.py.
Part 2 (offline batch) reads: npllm/batch.py (run, plan_batches, generate_batch, Writer, done_ids),
npllm/batch_ray.py (run_on_ray, BatchWorker), benchmarks/bench_batch.py.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from npllm.batch import DEFAULTS, Record, plan_batches, run
from npllm.engine import Engine, Finished, SamplingParams, Token
from npllm.quant import kernels

from ._common import default_model, heading, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = ["The three laws of thermodynamics are", "Once upon a time", "def add(a, b):", "List three colours:",
           "Water boils at", "The quick brown fox", "Dear Sir,", "A prime number is a natural number that",
           "Photosynthesis is", "To make tea,", "SELECT * FROM", "The capital of France is"]


def batching_is_nearly_free(model, tok, quick):
    heading("[9.1] decode is memory-bound: 8 rows per step cost little more than 1")
    n = 8 if quick else 32
    ids = tok.encode(PROMPTS[0])
    rows = []
    for B in (1, 4, 8):
        batch = np.array([ids] * B)
        model.generate(batch, max_new_tokens=2, temperature=0, eos_token_id=[])            # warm-up
        t0 = time.perf_counter()
        model.generate(batch, max_new_tokens=n, temperature=0, eos_token_id=[])
        dt = time.perf_counter() - t0
        rows.append((B, n, dt, B * n / dt))
    table(["rows", "new tokens each", "seconds", "tokens/s (all rows)"], rows, ".3g")
    print(f"tokens/s at 8 rows / at 1 row: {rows[2][3] / rows[0][3]:.2f}x")


# ============================================================== part 1: serving
def drain(req):
    """A request's tokens, text and finish reason, read from its event queue."""
    ids, text = [], ""
    while True:
        ev = req.events.get()
        if isinstance(ev, Token):
            ids.append(ev.token_id)
            text += ev.text
        else:
            return ids, text + ev.text, ev.reason


def scheduler_trace(model, tok, quick):
    heading("[9.2] the scheduler loop: admit, prefill alone, one batched decode step for every slot")
    engine = Engine(model, tok, n_slots=2, ctx_per_slot=256)
    prompts = [tok.encode(p) for p in PROMPTS[:3]]
    reqs = [engine.submit(p, SamplingParams(max_tokens=4, temperature=0)) for p in prompts]
    print(f"3 requests, 2 slots: queue depth {engine.queue_depth}, busy slots {engine.busy_slots}")
    rows = []
    with kernels.batch_invariant():
        while any(s is not None for s in engine.slots) or engine.waiting:
            engine._admit()
            prefilling = [s.index for s in engine.slots if s is not None and s.next is None]
            engine._prefill_step()
            decoding = [s.index for s in engine.slots if s is not None and s.next is not None]
            engine._decode_step()
            rows.append((len(rows) + 1, str(prefilling[:1]), str(decoding), engine.queue_depth))
    table(["step", "prefilled slot", "decoded slots", "waiting"], rows)
    for p, r in zip(PROMPTS, reqs):
        ids, text, why = drain(r)
        print(f"{p!r} -> {text!r} ({len(ids)} tokens, {why})")


def cancellation(model, tok):
    heading("[9.3] cancellation frees the slot at once")
    engine = Engine(model, tok, n_slots=1, ctx_per_slot=256).start()
    req = engine.submit(tok.encode(PROMPTS[1]), SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
    for _ in range(3):
        req.events.get()  # three tokens arrive
    print(f"after 3 tokens: busy slots {engine.busy_slots}; the client goes away -> req.cancel()")
    req.cancel()
    while True:
        ev = req.events.get()
        if isinstance(ev, Finished):
            break
    t0 = time.perf_counter()
    while engine.busy_slots:
        time.sleep(0.001)
    print(f"finished: {ev.reason!r} after {ev.completion_tokens} of 200 tokens; busy slots {engine.busy_slots} "
          f"({1000 * (time.perf_counter() - t0):.1f} ms after the event)")
    nxt = engine.submit(tok.encode(PROMPTS[2]), SamplingParams(max_tokens=4, temperature=0))
    print("the next request is served at once:", repr(drain(nxt)[1]))
    engine.shutdown()


def batch_invariance(model, tok, quick):
    heading("[9.4] batch invariance: a row's arithmetic does not depend on the other rows")
    W = model.layers[0].gate_up_proj
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, W.shape[1])).astype(np.float32)
    one = W.matmul(x[:1])
    eight = W.matmul(x)
    with kernels.batch_invariant():
        inv = W.matmul(x)
    print(f"gate|up [{W.shape[0]}x{W.shape[1]}] {W.type_name}: row 0 alone (MATVEC1) vs in a batch of 8 (MATVECN): "
          f"max |diff| {np.abs(one[0] - eight[0]).max():.3g}")
    print(f"row 0 alone (MATVEC1) vs in a batch of 8 in batch_invariant mode (MATVECR): "
          f"max |diff| {np.abs(one[0] - inv[0]).max():.3g}")
    n = 8 if quick else 24
    engine = Engine(model, tok, n_slots=4, ctx_per_slot=256).start()
    prompts = [tok.encode(p) for p in PROMPTS[:4]]
    alone = [drain(engine.submit(p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)))[0]
             for p in prompts]
    together = [drain(r)[0] for r in [engine.submit(p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
                                      for p in prompts]]
    engine.shutdown()
    same = [a == b for a, b in zip(alone, together)]
    print(f"greedy, {n} tokens each: alone == beside 3 others, per request: {same}")


def the_server(quick):
    heading("[9.5] npllm serve: a real server, 4 concurrent clients")
    try:
        import fastapi  # noqa: F401  (the server's own stack)
        import httpx
    except ImportError:
        print('the serve extra is not installed (pip install "npllm[serve]" httpx): skipped')
        return

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "npllm", "serve", "--port", "0", "-np", "4", "-c", "2048"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        port = None
        while port is None:
            log.seek(0)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
            port = int(m.group(1)) if m else time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        seen = []
        while True:
            try:
                code = httpx.get(base + "/health", timeout=5).status_code
                seen.append(code)
                if code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        print(f"/health while loading, then ready: {sorted(set(seen), reverse=True)}")
        answers = {}

        def ask(i):
            body = {"messages": [{"role": "user", "content": QUESTIONS[i]}], "max_tokens": 12 if quick else 32,
                    "temperature": 0}
            t0 = time.perf_counter()
            r = httpx.post(base + "/v1/chat/completions", json=body, timeout=300).json()
            answers[i] = (time.perf_counter() - t0, r["choices"][0]["message"]["content"], r["usage"])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        for i, q in enumerate(QUESTIONS):
            s, text, usage = answers[i]
            print(f"{q!r}: {s:.1f} s, {usage['completion_tokens']} tokens -> {text!r}")
        total = sum(a[2]["completion_tokens"] for a in answers.values())
        print(f"4 clients at once: {total} tokens in {wall:.1f} s = {total / wall:.1f} tok/s in aggregate")
        bad = httpx.post(base + "/v1/chat/completions", json={"messages": [], "temperature": 5}, timeout=30)
        print(f"a bad request: HTTP {bad.status_code} {bad.json()}")
        proc.send_signal(signal.SIGTERM)
        print(f"SIGTERM -> the server drains and exits with status {proc.wait(60)}")
        log.seek(0)
        print("its log, one line per request:")
        for line in log.read().splitlines():
            if '"POST' in line:
                print("   ", line)
    finally:
        if proc.poll() is None:
            proc.kill()


QUESTIONS = ["Name a planet.", "What is 2 + 2?", "Say hello in French.", "Name a colour."]


def serve_table():
    heading("[9.10] the serving benchmark (benchmarks/results/serve.json, from benchmarks/bench_serve.py)")
    path = os.path.join(ROOT, "benchmarks", "results", "serve.json")
    if not os.path.exists(path):
        print("no results yet: run python benchmarks/bench_serve.py --llama-server PATH")
        return
    with open(path) as f:
        data = json.load(f)
    rows = []
    for engine, levels in data["engines"].items():
        for lv in levels:
            rows.append((engine, lv["clients"], lv["aggregate_tok_s"], lv["ttft_p50_s"], lv["latency_p50_s"],
                         lv["latency_p99_s"]))
    table(["engine", "clients", "tok/s", "TTFT p50 s", "latency p50 s", "p99 s"], rows, ".3g")
    for r in data.get("ratios", []):
        print(f"{r['clients']} client(s): npllm / llama-server tok/s x{r['tok_s_npllm_over_llama']}, "
              f"TTFT x{r['ttft_npllm_over_llama']}")


# ============================================================== part 2: offline batch
def padding_waste(tok):
    heading("[9.6] grouping by length: how much of each left-padded batch is padding")
    recs = [Record(i, p, None, dict(DEFAULTS, max_tokens=16)) for i, p in enumerate(PROMPTS * 2)]
    lengths = {id(r): len(tok.encode(r.prompt)) for r in recs}

    def waste(batches):
        pad = sum(max(lengths[id(r)] for r in b) * len(b) - sum(lengths[id(r)] for r in b) for b in batches)
        return pad / sum(max(lengths[id(r)] for r in b) * len(b) for b in batches)

    as_given = [recs[i:i + 4] for i in range(0, len(recs), 4)]
    planned = plan_batches(recs, 4, lengths)
    print(f"{len(recs)} prompts of {min(lengths.values())}..{max(lengths.values())} tokens, batches of 4")
    table(["order", "batches", "padding share of the prompt positions"],
          [("as given", len(as_given), waste(as_given)), ("sorted by length (plan_batches)", len(planned),
                                                           waste(planned))], ".3f")


def whole_lines_and_resume(model_source, quick):
    heading("[9.7] nothing lost: whole lines, a rerun skips what is done and drops a half-written line")
    with tempfile.TemporaryDirectory() as d:
        inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
        with open(inp, "w") as f:
            for i, p in enumerate(PROMPTS[:6]):
                f.write(json.dumps({"id": i, "prompt": p, "max_tokens": 6}) + "\n")
            f.write('{"id": "bad", "prompt": 42}\n')
        s = run(inp, out, model=model_source, temperature=0, progress=False)
        print(f"first run: {s.written} records, {s.errors} error row(s), {s.completion_tokens} tokens")
        with open(out, "rb") as f:
            lines = f.read().splitlines(keepends=True)
        print("an error row:", next(line.decode().strip() for line in lines if b'"error"' in line))
        with open(out, "wb") as f:   # as if the process had died in the middle of its 5th line
            f.write(b"".join(lines[:4]) + lines[4][:10])
        s = run(inp, out, model=model_source, temperature=0, progress=False)
        with open(out) as f:
            ids = [json.loads(line)["id"] for line in f]
        print(f"rerun: {s.skipped} skipped, {s.written} written; ids in the file: {sorted(map(str, ids))} "
              f"(each once: {len(ids) == len(set(map(str, ids)))})")


def on_ray(model_source, quick):
    heading("[9.8] the same batches on a local Ray with 2 workers (if Ray is installed)")
    try:
        import ray
    except ImportError:
        print("Ray is not installed (pip install 'npllm[ray]'): skipped")
        return
    with tempfile.TemporaryDirectory() as d:
        inp = os.path.join(d, "in.jsonl")
        with open(inp, "w") as f:
            for i, p in enumerate(PROMPTS[:4 if quick else 12]):
                f.write(json.dumps({"id": i, "prompt": p, "max_tokens": 8}) + "\n")
        here, there = os.path.join(d, "local.jsonl"), os.path.join(d, "ray.jsonl")
        t0 = time.perf_counter()
        run(inp, here, model=model_source, temperature=0, progress=False)
        t1 = time.perf_counter()
        run(inp, there, model=model_source, temperature=0, progress=False, ray="local", workers=2, batch_size=2)
        t2 = time.perf_counter()
        ray.shutdown()

        def rows(path):
            with open(path) as f:
                return {json.loads(line)["id"]: json.loads(line)["text"] for line in f}

        same = rows(here) == rows(there)
        print(f"in-process {t1 - t0:.1f} s, Ray {t2 - t1:.1f} s (starting Ray and 2 model loads included); "
              f"identical outputs: {same}")


def scaling_table():
    heading("[9.9] the benchmark (benchmarks/results/batch.json, from benchmarks/bench_batch.py)")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results",
                        "batch.json")
    if not os.path.exists(path):
        print("no results yet: run python benchmarks/bench_batch.py")
        return
    with open(path) as f:
        data = json.load(f)
    print(f"measured {data['date'][:16]} UTC:")
    print(data["table_markdown"])


def main(quick: bool = False) -> None:
    pair = default_model()
    if pair is not None:
        model, tok = pair
        batching_is_nearly_free(model, tok, quick)
        scheduler_trace(model, tok, quick)
        cancellation(model, tok)
        batch_invariance(model, tok, quick)
        the_server(quick)
        padding_waste(tok)
        whole_lines_and_resume(model.source, quick)
        if not quick:
            on_ray(model.source, quick)
    scaling_table()
    serve_table()


if __name__ == "__main__":
    main()
