"""Micro-benchmark of the quantized matmul kernels (lesson 07), on the default model's shapes.

SmolLM2-135M: 30 layers of Q4_1 linear weights (q 576x576, k/v 192x576, o 576x576,
gate/up 1536x576, down 576x1536) and a tied Q8_0 lm_head 49152x576.  Decode reads
every weight once per token, so the figure of merit is GB/s of weight bytes.

    python benchmarks/bench_quants.py [--threads 2] [--repeat 200] [--json out.json]

On a shared machine, run it with NUMBA_THREADING_LAYER=tbb (pip package ``tbb``): with
OpenMP, a parallel call waits for a worker thread that another process has pushed off its
core (milliseconds per call); TBB's work stealing lets the calling thread do that work.

Prints, after JIT warm-up, the median (and best) time per call for each shape at
N = 1 and N = 8 inputs, the effective GB/s, the same for every quantized type on one
1536x1536 matrix (in cache) and on 24 distinct ones called in turn (19-60 MB by type: from L3
or DRAM), the
cost of an empty parallel launch, and a whole-token estimate that streams 30 distinct
layers (so weights come from DRAM as in real decoding, not from cache).  Timings are
medians: other processes share the cores.

    python benchmarks/bench_quants.py --only types      # just the per-type table
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from npllm.quant.weight import (BLOCK_LAYOUT, DENSE_TYPES, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K,  # noqa: E402
                                Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, QuantizedWeight, type_name)

D, F, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152
LAYER_SHAPES = [("q", D, D), ("k", KV, D), ("v", KV, D), ("o", D, D), ("gate", F, D), ("up", F, D), ("down", D, F)]


# byte offsets of each type's fp16 scales in a block (d, and m or dmin)
SCALE_AT = {Q8_0: (0,), Q4_0: (0,), Q4_1: (0, 2), Q5_0: (0,), Q5_1: (0, 2), IQ4_NL: (0,), Q2_K: (80, 82),
            Q3_K: (108,), Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), IQ4_XS: (0,)}


def random_weight(rows, cols, ggml_type, rng):
    """Random blocks with small finite fp16 scales (timing does not depend on the values, as long
    as they are not NaNs or subnormals)."""
    per_block, block_bytes = BLOCK_LAYOUT[ggml_type]
    raw = rng.integers(0, 256, (rows, cols // per_block * block_bytes), dtype=np.uint8)
    blocks = raw.reshape(-1, block_bytes)
    for at, scale in zip(SCALE_AT[ggml_type], (0.01, -0.02)):
        blocks[:, at:at + 2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    return QuantizedWeight.from_raw(raw, ggml_type, (rows, cols))


def timed(fn, repeat):
    fn()  # warm-up (JIT compile on first use)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def bench_shapes(repeat, rng):
    rows = []
    shapes = LAYER_SHAPES + [("qkv (fused)", D + 2 * KV, D), ("gate+up (fused)", 2 * F, D)]
    for name, r, c in shapes + [("lm_head", VOCAB, D)]:
        t = Q8_0 if name == "lm_head" else Q4_1
        w = random_weight(r, c, t, rng)
        for n in (1, 8):
            x = rng.standard_normal((n, c)).astype(np.float32)
            out = np.empty((n, r), np.float32)
            med, best = timed(lambda: w.matmul(x, out=out), repeat if r < 10000 else max(10, repeat // 10))
            rows.append(dict(name=name, type=type_name(t), shape=[r, c], n=n, us_median=med * 1e6,
                             us_best=best * 1e6, gbs_median=w.nbytes / med / 1e9))
            print(f"{name:16s} {type_name(t)} {r:5d}x{c:<5d} N={n}  {med * 1e6:8.1f} us (best {best * 1e6:7.1f})"
                  f"  {w.nbytes / med / 1e9:6.2f} GB/s")
    return rows


def bench_types(repeat, rng, size=1536, n_stream=24):
    """Every quantized type on one size x size matrix, N = 1 and 8: in cache (the same weight
    each call: the kernel's arithmetic speed) and streamed (n_stream distinct weights, one after
    the other, as decode reads a model's layers: the weights come from L3 or DRAM)."""
    rows = []
    for t in [t for t in BLOCK_LAYOUT if t not in DENSE_TYPES]:
        ws = [random_weight(size, size, t, rng) for _ in range(n_stream)]
        for n in (1, 8):
            x = rng.standard_normal((n, size)).astype(np.float32)
            out = np.empty((n, size), np.float32)
            w = ws[0]
            med, best = timed(lambda: w.matmul(x, out=out), repeat)

            def stream():
                for v in ws:
                    v.matmul(x, out=out)

            med_s, _ = timed(stream, max(5, repeat // 10))
            med_s /= n_stream
            rows.append(dict(type=type_name(t), shape=[size, size], n=n, bits_per_weight=8 * w.nbytes / size ** 2,
                             us_median=med * 1e6, gbs_median=w.nbytes / med / 1e9,
                             us_streamed=med_s * 1e6, gbs_streamed=w.nbytes / med_s / 1e9))
            r = rows[-1]
            print(f"{r['type']:7s} {r['bits_per_weight']:4.2f} bpw  N={n}  in cache {r['us_median']:7.1f} us "
                  f"{r['gbs_median']:6.2f} GB/s   streamed {r['us_streamed']:7.1f} us {r['gbs_streamed']:6.2f} GB/s")
    return rows


def bench_launch(repeat, rng):
    w = random_weight(8, 32, Q4_1, rng)
    x = np.ones((1, 32), np.float32)
    out = np.empty((1, 8), np.float32)
    med, best = timed(lambda: w.matmul(x, out=out), repeat * 10)
    from npllm.quant.kernels import MATVEC1, _run

    pl = w._addresses()
    med_raw, _ = timed(lambda: _run(MATVEC1, Q4_1, pl, x, out, 0, 2), repeat * 10)
    print(f"tiny 8x32 matmul (launch + Python overhead): {med * 1e6:.1f} us; raw kernel call: {med_raw * 1e6:.1f} us")
    return dict(us_matmul_tiny=med * 1e6, us_kernel_call_tiny=med_raw * 1e6)


def bench_stream(repeat):
    """How fast this machine streams 96 MB right now (one float read per 32 bytes, 2 threads):
    the floor for a decode step that reads every weight once.  Others share the memory bus."""
    from numba import prange

    from npllm._jit import njit_parallel

    @njit_parallel
    def touch(a):
        total = 0.0
        for i in prange(a.size // 8):
            total += a[8 * i]
        return total

    a = np.ones(96_000_000 // 4, np.float32)
    med, best = timed(lambda: touch(a), max(5, repeat // 20))
    print(f"stream 96 MB (memory floor): {med * 1e3:.2f} ms (best {best * 1e3:.2f})  {96e6 / med / 1e9:.1f} GB/s")
    return dict(ms_median=med * 1e3, ms_best=best * 1e3, gbs=96e6 / med / 1e9)


def bench_token(repeat, rng, fused):
    """All 30 layers (distinct weights, ~66 MB) + lm_head (~30 MB), as decode would run them."""
    layers = []
    for _ in range(LAYERS):
        ws = {name: random_weight(r, c, Q4_1, rng) for name, r, c in LAYER_SHAPES}
        if fused:
            ws = {"qkv": QuantizedWeight.concat_rows([ws["q"], ws["k"], ws["v"]]), "o": ws["o"],
                  "gate_up": QuantizedWeight.concat_rows([ws["gate"], ws["up"]]), "down": ws["down"]}
        layers.append(ws)
    lm_head = random_weight(VOCAB, D, Q8_0, rng)
    total = sum(w.nbytes for ws in layers for w in ws.values()) + lm_head.nbytes
    result = {}
    for n in (1, 8):
        xs = {c: rng.standard_normal((n, c)).astype(np.float32) for c in (D, F)}
        outs = {}
        for ws in layers[:1]:
            for w in list(ws.values()) + [lm_head]:
                outs[w.shape[0]] = np.empty((n, w.shape[0]), np.float32)

        def token():
            for ws in layers:
                for w in ws.values():
                    w.matmul(xs[w.shape[1]], out=outs[w.shape[0]])
            lm_head.matmul(xs[D], out=outs[VOCAB])

        med, best = timed(token, max(5, repeat // 20))
        calls = sum(len(ws) for ws in layers) + 1
        print(f"token ({'fused qkv, gate+up' if fused else 'separate weights'}, {calls} calls, "
              f"{total / 1e6:.0f} MB) N={n}: {med * 1e3:.2f} ms (best {best * 1e3:.2f})  "
              f"{total / med / 1e9:.1f} GB/s  -> {n / med:.0f} tok/s from matmuls alone")
        result[f"n{n}"] = dict(ms_median=med * 1e3, ms_best=best * 1e3, gbs=total / med / 1e9, calls=calls)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-token", action="store_true", help="skip the 96 MB whole-token estimate")
    ap.add_argument("--only", choices=["shapes", "types"], default=None, help="run one table only")
    args = ap.parse_args()
    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    random_weight(8, 32, Q4_1, rng).matmul(np.ones((1, 32), np.float32))  # starts the thread pool
    layer = numba.threading_layer()
    print(f"numba threads: {numba.get_num_threads()}, threading layer: {layer}")
    report = {"threads": numba.get_num_threads(), "threading_layer": layer}
    if args.only in (None, "shapes"):
        report["shapes"] = bench_shapes(args.repeat, rng)
    if args.only in (None, "types"):
        report["types"] = bench_types(args.repeat, rng)
    if args.only is None:
        report["launch"] = bench_launch(args.repeat, rng)
    if not args.skip_token and args.only is None:
        report["stream"] = bench_stream(args.repeat)
        report["token"] = bench_token(args.repeat, rng, fused=False)
        report["token_fused"] = bench_token(args.repeat, rng, fused=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
