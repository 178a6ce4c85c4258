"""Lesson 07 (speed): peak memory while generating at a long context.

    python benchmarks/bench_memory.py                   # default model, 2048-token context
    python benchmarks/bench_memory.py --context 4096 --model M.gguf

A fresh child process imports npllm, loads the model, and generates greedily until the
context holds ``--context`` tokens (a prompt of context - new_tokens tokens, then
``--new-tokens`` more, through ``npllm.generate`` with its preallocated KV cache).  It
reports the resident set size (VmRSS) after each phase and the peak (VmHWM, the same
figure as ``ru_maxrss``), plus the KV cache's share from ``npllm.kv_cache_bytes`` in the dtype
the model stores it in (``model.kv_dtype``: float16 for the default, quantized model).
The Numba cache is warmed first in a separate process, so compilation is not counted.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _status():
    with open("/proc/self/status") as f:
        d = dict(line.split(":", 1) for line in f)
    return {"rss_mb": int(d["VmRSS"].split()[0]) / 1024, "peak_mb": int(d["VmHWM"].split()[0]) / 1024}


def child(args):
    sys.path.insert(0, ROOT)
    import numpy as np

    import npllm

    phases = {"imported": _status()}
    model, tok = npllm.load(args.model)
    phases["loaded"] = _status()
    text = "The history of the printing press is a story of many inventions. " * 400
    ids = tok.encode(text)[: args.context - args.new_tokens]
    t = time.perf_counter()
    out = model.generate(np.array([ids]), max_new_tokens=args.new_tokens, temperature=0,
                         min_new_tokens=args.new_tokens)
    seconds = time.perf_counter() - t
    phases["generated"] = _status()
    cfg = model.config
    kv = npllm.kv_cache_bytes(cfg, 1, out.shape[1], model.kv_dtype)
    return {"context": int(out.shape[1]), "prompt_tokens": len(ids), "new_tokens": args.new_tokens,
            "seconds": seconds, "phases": phases, "peak_rss_mb": phases["generated"]["peak_mb"],
            "kv_cache_mb": kv / 2**20, "kv_dtype": str(model.kv_dtype)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="alias, GGUF file or HF directory (default: the default model)")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--out", default=os.path.join(HERE, "results", "memory.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.context <= args.new_tokens or args.new_tokens < 1:
        p.error("--context must be larger than --new-tokens >= 1")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--context", str(args.context),
           "--new-tokens", str(args.new_tokens)] + (["--model", args.model] if args.model else [])
    subprocess.run(cmd[:3] + ["--context", "64", "--new-tokens", "8"] + cmd[7:],
                   check=True, capture_output=True)                     # warm the Numba cache
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    res["command"] = "python benchmarks/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name, st in res["phases"].items():
        print(f"{name:10s} RSS {st['rss_mb']:6.0f} MB   peak so far {st['peak_mb']:6.0f} MB")
    print(f"peak RSS generating to a {res['context']}-token context: {res['peak_rss_mb']:.0f} MB "
          f"({res['kv_dtype']} KV cache {res['kv_cache_mb']:.0f} MB; {res['new_tokens']} tokens in {res['seconds']:.1f} s)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
