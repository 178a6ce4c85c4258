"""Lesson 09 example: offline batch generation over a JSONL file, in this process and on Ray.

Reads: npllm/batch.py (run, plan_batches, generate_batch, Writer, done_ids), npllm/batch_ray.py
(run_on_ray, BatchWorker), benchmarks/bench_batch.py.
"""

import json
import os
import tempfile
import time

import numpy as np

from npllm.batch import DEFAULTS, Record, plan_batches, run

from ._common import default_model, heading, table

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


def padding_waste(tok):
    heading("[9.2] grouping by length: how much of each left-padded batch is padding")
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
    heading("[9.3] nothing lost: whole lines, a rerun skips what is done and drops a half-written line")
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
    heading("[9.4] the same batches on a local Ray with 2 workers (if Ray is installed)")
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
    heading("[9.5] the benchmark (benchmarks/results/batch.json, from benchmarks/bench_batch.py)")
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
        padding_waste(tok)
        whole_lines_and_resume(model.source, quick)
        if not quick:
            on_ray(model.source, quick)
    scaling_table()


if __name__ == "__main__":
    main()
