"""Lesson 10: prompt-lookup speculative decoding against plain greedy, and against llama.cpp's.

    python benchmarks/bench_lookup.py                 # 128 new tokens, 5 rounds
    python benchmarks/bench_lookup.py --quick         # 16 new tokens, 1 round (a smoke run)
    python benchmarks/bench_lookup.py --threads 2 --lookup 10 --model M.gguf

The task is input-grounded: the chat-templated request "repeat this paragraph", where the
answer copies the prompt, so drafts copied from the context are often right.  Four runs on the
same GGUF and the same prompt ids, alternating round after round in one process:

- npllm greedy             ``model.generate(ids, temperature=0)``
- npllm lookup             ``... prompt_lookup_num_tokens=N`` (HF's max_matching_ngram_size=2)
- llama.cpp greedy         llama-cpp-python ``Llama.generate(ids, top_k=1)``
- llama.cpp lookup         the same with ``draft_model=LlamaPromptLookupDecoding(num_pred_tokens=N)``

Each is timed from its first new token to its last (the prompt's prefill, the same for both runs
of an engine and noisy on a busy machine, is left out), and reports (new tokens - 1) / second,
as ``bench_generate.py``'s "decode b1" does; the table shows medians over rounds, the
ratios lookup / greedy per engine and npllm lookup / llama.cpp lookup.  npllm checks that its
lookup output equals its greedy output token for token.  Results go to
``benchmarks/results/lookup.json``.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PARAGRAPH = (
    "The river Thames flows for 215 miles from its source in the Cotswolds to the North Sea. On its way it "
    "passes through Oxford, Reading, Windsor and London, where it runs under Tower Bridge and past the Houses "
    "of Parliament. For centuries the river was the main road of the city: boats carried goods, people and "
    "news, and the docks in the east were among the busiest in the world. Today the water is cleaner than it "
    "has been for a hundred years, and seals and porpoises are seen again near the estuary.")
REQUEST = "Repeat this paragraph exactly, word for word:\n\n" + PARAGRAPH


def npllm_runs(model_path, threads, lookup, new_tokens):
    import numpy as np

    import npllm
    from npllm import _jit

    _jit.set_num_threads(threads)
    model, tok = npllm.load(model_path)
    ids = np.array([tok.apply_chat_template([{"role": "user", "content": REQUEST}], add_generation_prompt=True)])

    def run(**kw):
        stamps = []
        out = model.generate(ids, max_new_tokens=new_tokens, temperature=0,
                             streamer=lambda tok: stamps.append(time.perf_counter()), **kw)
        return out[0, ids.shape[1]:].tolist(), stamps[-1] - stamps[0]

    run(), run(prompt_lookup_num_tokens=lookup)  # warm-up: JIT compilation and caches
    return ids[0].tolist(), {"npllm greedy": lambda: run(), "npllm lookup": lambda: run(prompt_lookup_num_tokens=lookup)}


def llama_runs(model_path, threads, lookup, new_tokens, ids):
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    def make(draft):
        return Llama(model_path=model_path, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                     verbose=False, draft_model=draft)

    plain, spec = make(None), make(LlamaPromptLookupDecoding(num_pred_tokens=lookup))

    def run(llm):
        llm.reset()
        out, first = [], None
        for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            if token == llm.token_eos() or len(out) == new_tokens:
                break
            out.append(token)
            first = first or time.perf_counter()
        return out, time.perf_counter() - first

    run(plain), run(spec)
    return {"llama.cpp greedy": lambda: run(plain), "llama.cpp lookup": lambda: run(spec)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: the SmolLM2-135M Q4_1 file)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lookup", type=int, default=10, help="draft tokens per step (both engines)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="16 new tokens, 1 round")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "lookup.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.new_tokens, args.rounds = 16, 1
    from npllm.models import resolve_model

    path = resolve_model(args.model)
    ids, runs = npllm_runs(path, args.threads, args.lookup, args.new_tokens)
    try:
        runs.update(llama_runs(path, args.threads, args.lookup, args.new_tokens, ids))
    except ImportError as e:
        print(f"llama-cpp-python not available ({e}): npllm only", file=sys.stderr)
    rates = {name: [] for name in runs}
    tokens = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            out, seconds = run()
            tokens[name] = out
            rates[name].append((len(out) - 1) / seconds)
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratios = {"npllm lookup / npllm greedy": med["npllm lookup"] / med["npllm greedy"]}
    if "llama.cpp lookup" in med:
        ratios["llama.cpp lookup / llama.cpp greedy"] = med["llama.cpp lookup"] / med["llama.cpp greedy"]
        ratios["npllm lookup / llama.cpp lookup"] = med["npllm lookup"] / med["llama.cpp lookup"]
    result = {
        "model": os.path.basename(path), "threads": args.threads, "lookup": args.lookup,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "prompt_tokens": len(ids),
        "tok_per_s_median": med, "tok_per_s_rounds": rates, "ratios": ratios,
        "new_tokens_generated": {name: len(t) for name, t in tokens.items()},
        "npllm_lookup_equals_greedy": tokens["npllm lookup"] == tokens["npllm greedy"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    for name, v in med.items():
        print(f"{name:18s} {v:8.1f} tok/s")
    for name, v in ratios.items():
        print(f"{name:38s} {v:6.2f}x")
    print("npllm lookup output == greedy output:", result["npllm_lookup_equals_greedy"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
