"""Lesson 07 example: the roofline of this machine, the bytes and FLOPs of one decode token,
measured prefill/decode speed, kernels vs NumPy references, perplexity through both paths, Python
overhead, thread-pool waiting, the thread governor on a busy core, and the benchmark table from benchmarks/results/latest.json.

Run: python -m lessons 7   (or python -m lessons.ex07_speed [--quick])
Reads: npllm/_jit.py (njit, use_reference, set_num_threads), npllm/threads.py (ThreadGovernor), npllm/quant/weight.py (QuantizedWeight.matmul),
npllm/quant/kernels.py, npllm/ops/*.py (the *_ref / kernel pairs), npllm/perplexity.py,
npllm/sampling.py (fused_sampling_filter), benchmarks/bench_generate.py.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

from npllm import CausalLM, ModelConfig, _jit, kv_cache_bytes, sampling
from npllm.ops import apply_rope, attention, causal_padding_mask, rms_norm, rope_cos_sin, swiglu

from ._common import default_model, heading, human_bytes, table, todo

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "benchmarks", "results", "latest.json")


def best_of(fn, repeats):
    """Minimum wall time of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ============================================================== roofline
def roofline(quick):
    heading("[7.1] this machine: memory bandwidth and matrix-multiply throughput")
    n = (32 if quick else 128) * 2**20 // 4
    a = np.ones(n, np.float32)
    b = np.empty_like(a)
    t_read = best_of(lambda: a.sum(), 3 if quick else 5)
    t_copy = best_of(lambda: np.copyto(b, a), 3 if quick else 5)
    read_bw = a.nbytes / t_read / 1e9
    copy_bw = 2 * a.nbytes / t_copy / 1e9
    m = 512 if quick else 1024
    x = np.random.default_rng(0).normal(size=(m, m)).astype(np.float32)
    x @ x
    t_mm = best_of(lambda: x @ x, 3 if quick else 5)
    gflops = 2 * m ** 3 / t_mm / 1e9
    table(["measurement", "size", "best time (ms)", "result"],
          [("read: a.sum()", human_bytes(a.nbytes), 1e3 * t_read, f"{read_bw:.1f} GB/s"),
           ("copy: np.copyto(b, a)", human_bytes(a.nbytes), 1e3 * t_copy, f"{copy_bw:.1f} GB/s (read+write)"),
           ("sgemm: x @ x", f"{m}x{m}", 1e3 * t_mm, f"{gflops:.0f} GFLOP/s")], ".3g")
    print(f"(CPU count {os.cpu_count()}; best of several runs; other processes on the machine lower these)")
    return read_bw, gflops


def token_budget(model, read_bw, gflops):
    heading("[7.2] one decode token of the default model: bytes read, FLOPs, and the two ceilings")
    c = model.config
    q_bytes = sum(getattr(v, "nbytes", 0) for v in model.params.values())
    n_params = model.num_parameters()
    embed = c.vocab_size * c.hidden_size
    flops = 2 * (n_params - embed + c.vocab_size * c.hidden_size)          # every matrix once; head = embedding
    fp32_bytes = 4 * n_params
    rows = []
    for name, nbytes in (("quantized (as loaded)", q_bytes), ("float32 weights", fp32_bytes)):
        rows.append((name, human_bytes(nbytes), flops / nbytes, read_bw * 1e9 / nbytes, gflops * 1e9 / flops))
    table(["weights", "bytes per token", "FLOPs per byte", "bandwidth ceiling (tok/s)",
           "compute ceiling (tok/s)"], rows, ".3g")
    kv = kv_cache_bytes(c, 1, 1, "float32")
    print(f"FLOPs per token ~ {flops / 1e6:.0f} M; the KV cache adds {kv} bytes per token of context "
          f"to read (e.g. {human_bytes(kv * 1024)} at 1024 tokens)")
    print(f"prefill of T tokens reads the weights once for all T: FLOPs per byte grow ~T times, "
          f"so prefill hits the compute ceiling ({gflops:.0f} GFLOP/s -> ~{gflops * 1e9 / flops:.0f} tok/s)")
    return q_bytes, flops


def measured_speed(model, tok, quick, q_bytes, flops, read_bw, gflops):
    heading("[7.3] measured: prefill and decode of the default model")
    P = 12 if quick else 256
    N = 8 if quick else 64
    prompt = np.array([(tok.encode("The history of science is long. " * 64))[:P]])
    W = min(P, 32)                       # warm-up: compile/load both paths (N >= 16 tiles, N = 1 matvec)
    cache = model.new_cache(1, W + 1)
    model.forward(prompt[:, :W], past_key_values=cache, use_cache=True, logits_to_keep=1)
    model.forward(prompt[:, :1], past_key_values=cache, use_cache=True)
    cache = model.new_cache(1, P + N)
    t0 = time.perf_counter()
    logits, cache = model.forward(prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    t_prefill = time.perf_counter() - t0
    tok_id = logits[:, -1].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(N):
        logits, cache = model.forward(tok_id[:, None], past_key_values=cache, use_cache=True)
        tok_id = logits[:, -1].argmax(-1)
    t_decode = time.perf_counter() - t0
    pre = P / t_prefill
    dec = N / t_decode
    table(["phase", "tokens", "seconds", "tok/s", "achieved", "share of its ceiling"],
          [("prefill", P, t_prefill, pre, f"{pre * flops / 1e9:.1f} GFLOP/s", f"{pre / (gflops * 1e9 / flops):.0%}"),
           ("decode (batch 1)", N, t_decode, dec, f"{dec * q_bytes / 1e9:.2f} GB/s of weights",
            f"{dec / (read_bw * 1e9 / q_bytes):.0%}")], ".3g")
    print(f"{1e3 * t_decode / N:.1f} ms per decode token over {model.config.num_hidden_layers} layers")


# ============================================================== kernels vs references
def kernels_vs_refs(model, quick):
    heading("[7.4] the same op, kernel vs NumPy reference, at decode shapes")
    rng = np.random.default_rng(0)
    c = model.config
    D, F, H, Hkv, Dh = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    S = 512
    x = rng.normal(size=(1, 1, D)).astype(np.float32)
    w = np.ones(D, np.float32)
    g, u = rng.normal(size=(1, F)).astype(np.float32), rng.normal(size=(1, F)).astype(np.float32)
    q = rng.normal(size=(1, H, 1, Dh)).astype(np.float32)
    k, v = rng.normal(size=(1, Hkv, S, Dh)).astype(np.float32), rng.normal(size=(1, Hkv, S, Dh)).astype(np.float32)
    allowed = causal_padding_mask(np.ones((1, S), np.int64), S - 1, 1)
    cos, sin = rope_cos_sin(np.array([[S - 1]]), Dh, c.rope_theta)
    wq = model.layers[0].gate_proj                                     # a real quantized [F, D] matrix
    xq = rng.normal(size=(1, D)).astype(np.float32)
    ops = [("rms_norm [1,1,D]", lambda: rms_norm(x, w, 1e-5)),
           ("swiglu [1,F]", lambda: swiglu(g, u)),
           ("apply_rope q [1,H,1,Dh]", lambda: apply_rope(q, cos, sin)),
           (f"attention T=1, S={S}", lambda: attention(q, k, v, allowed)),
           (f"{getattr(wq, 'type_name', 'f32')} matmul [1,D] x [F,D]^T", lambda: np.asarray(wq.matmul(xq)))]
    reps = 20 if quick else 200
    rows = []
    for name, fn in ops:
        _jit.use_reference(False)
        fn()
        t_k = best_of(fn, reps)
        out_k = fn()
        _jit.use_reference(True)
        try:
            fn()
            t_r = best_of(fn, max(3, reps // 10))
            out_r = fn()
        finally:
            _jit.use_reference(False)
        rows.append((name, 1e6 * t_k, 1e6 * t_r, t_r / t_k, np.abs(np.asarray(out_k) - np.asarray(out_r)).max()))
    table(["op", "kernel (us)", "NumPy reference (us)", "reference / kernel", "max |diff|"], rows, ".3g")


def python_overhead(quick):
    heading("[7.5] per-token overhead: a 30-layer model so small that compute is negligible")
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=30,
                         num_attention_heads=4, num_key_value_heads=2)
    model = CausalLM(config, seed=0)
    steps = 10 if quick else 50
    cache = model.new_cache(1, steps + 2)
    model.forward(np.array([[1]]), past_key_values=cache, use_cache=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.forward(np.array([[1]]), past_key_values=cache, use_cache=True)
    dt = (time.perf_counter() - t0) / steps
    print(f"{1e3 * dt:.2f} ms per token = {1e6 * dt / 30:.0f} us per layer for ~{2 * model.num_parameters() / 1e3:.0f} "
          f"kFLOPs: this time is Python, NumPy dispatch and kernel launches, paid by every model")


def sampler_chain(quick):
    heading("[7.9] the sampling chain of `npllm generate` (T 0.8, top-k 40, top-p 0.95, min-p 0.05), V = 49152")
    V, chain_args = 49152, dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
    procs = sampling.build_processors(do_sample=True, **chain_args)

    def one_by_one(x):  # the readable filters, each over the whole vocabulary
        for proc in procs:
            x = proc(None, x)
        return x

    rng = np.random.default_rng(0)
    rows = []
    for B in (1, 8):
        x = (rng.standard_normal((B, V)) * 2.5).astype(np.float32)
        x[:, rng.integers(0, V, 60)] += 6.0  # a peaked head, as a model's logits have
        slow, fast = one_by_one(x), procs(None, x)  # (the list fuses the chain)
        same = np.array_equal(slow, fast)
        reps = 3 if quick else 15
        t_slow = best_of(lambda: sampling.sample(one_by_one(x), rng), reps)
        t_fast = best_of(lambda: sampling.sample(procs(None, x), rng), reps)
        kept = np.isfinite(fast).sum(axis=1)
        rows.append((B, round(1e6 * t_slow), round(1e6 * t_fast), t_slow / t_fast, f"{kept.min()}-{kept.max()}",
                     same))
    table(["batch", "filter by filter (us/step)", "fused (us/step)", "speed-up", "tokens kept", "same logits"],
          rows, ".3g")


WAIT_SNIPPET = """
import time, numpy as np
from npllm import CausalLM, ModelConfig
m = CausalLM(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2))
c = m.new_cache(1, 64)
m.forward(np.array([[1]]), past_key_values=c, use_cache=True)
t = time.perf_counter()
for _ in range(40):
    m.forward(np.array([[1]]), past_key_values=c, use_cache=True)
print((time.perf_counter() - t) / 40 * 1e3)
"""


def thread_waiting():
    heading("[7.6] oversubscription: how thread pools wait (Numba/OpenMP) and how many BLAS threads help")
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for policy in ("active", "passive"):
        env = dict(os.environ, OMP_WAIT_POLICY=policy, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", WAIT_SNIPPET], env=env, capture_output=True, text=True,
                             timeout=300)
        try:
            rows.append((policy, f"{float(out.stdout.strip()):.3f}"))
        except ValueError:
            rows.append((policy, out.stderr.strip()[-200:]))
    table(["OMP_WAIT_POLICY", "ms per decode step"], rows)
    rng = np.random.default_rng(0)
    x = rng.random((256, 576), dtype=np.float32)
    w = rng.random((1536, 576), dtype=np.float32)
    flops = 2 * x.shape[0] * x.shape[1] * w.shape[0]
    rows = []
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    for n in (1, 2):
        if threadpool_limits is None:
            break
        with threadpool_limits(limits=n, user_api="blas"):
            x @ w.T
            t = best_of(lambda: x @ w.T, 10)
        rows.append((n, 1e3 * t, flops / t / 1e9))
    if rows:
        table(["BLAS threads", "x[256,576] @ W[1536,576]^T (ms)", "GFLOP/s"], rows, ".3g")
    print(f"(load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; both gaps appear when "
          f"other processes keep the cores busy, and shrink or vanish on an idle machine)")


GOVERNOR_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, npllm
model, tok = npllm.load()
ids = np.array([tok.encode("The three laws of thermodynamics are")])
model.generate(ids, max_new_tokens=8, temperature=0)          # warm up
t0 = time.perf_counter()
model.generate(ids, max_new_tokens=64, temperature=0)
gov = getattr(model, "_thread_governor", None)
print(64 / (time.perf_counter() - t0), gov.current if gov else "-", gov.switches if gov else 0)
"""


def thread_governor(quick):
    heading("[7.10] a busy core: the decode thread count chosen by measuring (npllm/threads.py)")
    from npllm.threads import ThreadGovernor

    rows = []
    machines = {"quiet (2 threads faster, efficiency 0.97)": ({2: 0.008, 1: 0.014}, {2: 0.97, 1: 1.0}),
                "one core busy (efficiency 0.55 with 2 threads)": ({2: 0.040, 1: 0.014}, {2: 0.55, 1: 1.0})}
    for name, (wall, eff) in machines.items():
        clock = {"t": 0.0, "cpu": 0.0, "n": 2}
        gov = ThreadGovernor(2, clock=lambda: clock["t"], cpu_clock=lambda: clock["cpu"],
                             set_threads=lambda n: clock.__setitem__("n", n))
        used = []
        for _ in range(500):
            t0 = gov.begin(1)
            n = clock["n"]
            clock["t"] += wall[n]
            clock["cpu"] += wall[n] * n * eff[n]
            used.append(n)
            gov.end(t0)
        first = next((i for i, n in enumerate(used) if n == 1), None)
        rows.append((name, gov.current, gov.probes, used.count(1), "-" if first is None else first))
    table(["simulated machine, 500 steps", "ends at threads", "probes", "steps at 1 thread",
           "first step at 1 thread"], rows)
    if quick or (os.cpu_count() or 1) < 2:
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows = []
    try:
        for adaptive in ("0", "1"):
            env = dict(os.environ, NPLLM_ADAPTIVE_THREADS=adaptive)
            env.pop("NPLLM_NUM_THREADS", None)
            out = subprocess.run([sys.executable, "-c", GOVERNOR_CHILD, root], env=env, capture_output=True,
                                 text=True, timeout=600)
            try:
                tps, current, switches = out.stdout.split()
                rows.append(("on" if adaptive == "1" else "off", f"{float(tps):.1f}", current, switches))
            except ValueError:
                rows.append((adaptive, out.stderr.strip()[-200:], "", ""))
    finally:
        busy.kill()
        busy.wait()
    table(["governor (one busy process beside)", "decode tok/s, 64 greedy", "threads at the end", "switches"],
          rows)
    print(f"(load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


PPL_TEXT = (
    "The river town woke slowly in winter. Before dawn the baker lit his ovens, and the smell of bread "
    "drifted along the quay where the fishing boats were tied two and three deep. The ferryman checked "
    "the ropes, the schoolteacher walked her dog along the embankment, and the clock on the town hall "
    "struck seven as the first light touched the roofs. Most people in the town worked with their hands. "
    "There were carpenters and net menders, a blacksmith who now mostly repaired bicycles, and a family of "
    "potters whose bowls were sold in cities far away. In the evenings they gathered in the square to talk "
    "about the weather, the price of grain, and the new bridge that the council had promised for ten years."
)


def perplexity_section(model, tok, quick):
    heading("[7.8] perplexity: the fast path and the NumPy reference path score a text the same")
    from npllm.perplexity import perplexity

    context = 32 if quick else 64
    ids = tok.encode(PPL_TEXT)
    rows = []
    for name, ref in (("kernels (fast path)", False), ("NumPy reference path", True)):
        _jit.use_reference(ref)
        try:
            t0 = time.perf_counter()
            r = perplexity(model, tok, PPL_TEXT, context=context)
            dt = time.perf_counter() - t0
        finally:
            _jit.use_reference(False)
        rows.append((name, r.perplexity, r.nll, r.n_scored, r.n_chunks, dt))
    table(["path", "perplexity", "mean NLL (nats)", "tokens scored", "chunks", "seconds"], rows, ".6g")
    print(f"{len(ids)} tokens of text, chunks of {context} (llama.cpp's method: the second half of each "
          f"chunk is scored); relative difference of the two perplexities: "
          f"{abs(rows[0][1] / rows[1][1] - 1):.2g}")
    strided = perplexity(model, tok, PPL_TEXT, context=context, stride=context // 4)
    print(f"HF's sliding window (stride {context // 4}): perplexity {strided.perplexity:.6g} over "
          f"{strided.n_scored} tokens in {strided.n_chunks} windows (every token but the first is scored, "
          "the early ones with little history: not comparable with the chunked number)")


def benchmark_table():
    heading("[7.7] the benchmark table (benchmarks/results/latest.json)")
    if not os.path.isfile(RESULTS):
        todo("benchmarks/results/latest.json does not exist yet: run `make bench` "
             "(or python benchmarks/bench_generate.py) to create it")
        return
    with open(RESULTS) as f:
        res = json.load(f)
    print(res.get("table_markdown", "(no table_markdown in the JSON)"))


def main(quick: bool = False) -> None:
    read_bw, gflops = roofline(quick)
    pair = default_model()
    if pair is not None:
        model, tok = pair
        q_bytes, flops = token_budget(model, read_bw, gflops)
        measured_speed(model, tok, quick, q_bytes, flops, read_bw, gflops)
        kernels_vs_refs(model, quick)
        perplexity_section(model, tok, quick)
    python_overhead(quick)
    sampler_chain(quick)
    if not quick:
        thread_waiting()
    thread_governor(quick)
    benchmark_table()


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
