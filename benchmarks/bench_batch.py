"""Benchmark ``npllm batch`` (lesson 09): in this process vs a local Ray with 2 workers.

    python benchmarks/bench_batch.py                 # 64 records x 64 greedy tokens, both modes
    python benchmarks/bench_batch.py --records 16 --new-tokens 16 --out /tmp/b.json

Each mode runs in its own process, on the same records, output to a fresh file, greedy. It reports
records/s and generated tokens/s over the whole run (model loading and, for Ray, starting the
local cluster included, as a user sees it) and over the generation alone (first record written
to the last), and estimates what N machines like this one would do: the measured per-machine
generation throughput times N, with the fixed start-up cost paid once per machine in parallel.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PROMPTS = ["The three laws of thermodynamics are", "Once upon a time, in a small village by the sea,",
           "To make a good cup of tea, you should", "The main difference between a list and a tuple is",
           "Photosynthesis is the process by which plants", "The history of the printing press begins",
           "Here are five tips for learning a new language:", "A prime number is a natural number that"]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from npllm.batch import run
s = run({inp!r}, {out!r}, model={model!r}, temperature=0, max_tokens={n}, batch_size={b}, progress=False,
        ray={ray!r}, workers=2)
print(json.dumps({{"seconds": time.perf_counter() - t0, "written": s.written, "tokens": s.completion_tokens}}))
"""


def run_mode(args, ray, inp):
    out = tempfile.mktemp(suffix=".jsonl")
    code = CHILD.format(root=ROOT, inp=inp, out=out, model=args.model, n=args.new_tokens, b=args.batch_size,
                        ray=ray)
    env = dict(os.environ, NPLLM_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = last = None
    lines = 0
    while proc.poll() is None:   # when did the first and the last record arrive?
        if os.path.exists(out):
            with open(out, "rb") as f:
                n = f.read().count(b"\n")
            now = time.perf_counter() - t0
            if n and first is None:
                first = now
            if n > lines:
                lines, last = n, now
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{'ray' if ray else 'in-process'} run failed:\n{stderr.decode()[-2000:]}")
    res = json.loads(stdout.decode().strip().splitlines()[-1])
    with open(out, "rb") as f:
        res["lines"] = f.read().count(b"\n")
    os.remove(out)
    res.update(first_record_s=first, last_record_s=last, wall_s=time.perf_counter() - t0)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--records", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--machines", type=int, nargs="*", default=[1, 4, 16, 64])
    p.add_argument("--out", default=os.path.join(HERE, "results", "batch.json"))
    args = p.parse_args(argv)
    inp = tempfile.mktemp(suffix=".jsonl")
    with open(inp, "w") as f:
        for i in range(args.records):
            f.write(json.dumps({"id": i, "prompt": f"{PROMPTS[i % len(PROMPTS)]} (item {i})"}) + "\n")
    results = {}
    for name, ray in (("in-process", None), ("ray, 2 workers", "local")):
        print(f"{name} ...", file=sys.stderr, flush=True)
        results[name] = r = run_mode(args, ray, inp)
        gen = (r["last_record_s"] - r["first_record_s"]) if r["first_record_s"] is not None else None
        r["records_per_s"] = r["written"] / r["wall_s"]
        r["tokens_per_s"] = r["tokens"] / r["wall_s"]
        # generation alone: from the first record written to the last (one batch's worth earlier)
        per_batch = gen / max(1, r["written"] / args.batch_size - 1) if gen else None
        r["generation_tokens_per_s"] = (r["tokens"] / (gen + per_batch)) if gen else None
        r["startup_s"] = r["first_record_s"] - per_batch if gen else None
    os.remove(inp)
    lines = ["| mode | records | tokens | wall (s) | records/s | tokens/s (wall) | tokens/s (generation) | start-up (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['written']} | {r['tokens']} | {r['wall_s']:.1f} | {r['records_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {r['generation_tokens_per_s'] or float('nan'):.1f} | "
                     f"{r['startup_s'] or float('nan'):.1f} |")
    best = max(results.values(), key=lambda r: r["generation_tokens_per_s"] or 0)
    per_machine = best["generation_tokens_per_s"]
    per_record = best["tokens"] / best["written"]
    est = ["", "Scaling out (estimate): N machines like this one, each running the faster mode, the records split evenly:",
           "", "| machines | tokens/s | records/s | 1M records (hours) |", "|---|---|---|---|"]
    for n in args.machines:
        tps = per_machine * n
        est.append(f"| {n} | {tps:.0f} | {tps / per_record:.1f} | {1e6 * per_record / tps / 3600:.1f} |")
    table = "\n".join(lines + est)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "settings": vars(args),
                   "results": results, "table_markdown": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
