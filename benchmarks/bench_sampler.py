"""Lesson 07 (speed): what the sampling chain costs per decode step.

    python benchmarks/bench_sampler.py                  # V = 49152, batch 1 and 8, 7 repeats
    python benchmarks/bench_sampler.py --quick          # a smoke run

The chain is the one ``npllm generate`` runs by default (llama.cpp's defaults):
temperature 0.8 -> top-k 40 -> top-p 0.95 -> min-p 0.05, then one draw per row.  Two ways:

- **chain**: the readable filters one after another (``apply_temperature``,
  ``top_k_filter``, ``top_p_filter``, ``min_p_filter``), each over the whole vocabulary;
- **fused**: ``LogitsProcessorList`` as ``generate`` builds it, which hands this chain to
  ``fused_sampling_filter`` (partial selection of the top-k first, the rest on those few).

Both end with ``sampling.sample``.  The logits are random with a peaked head, like a
language model's.  Each repeat times ``--steps`` calls; the figure is the median over
repeats of the mean µs per step.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from npllm import sampling  # noqa: E402

DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


def fake_logits(batch, vocab, seed=0):
    """[B, V] float32: N(0, 2.5) with a few dozen tokens lifted by 4..9, as a model's head."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, vocab)) * 2.5).astype(np.float32)
    head = rng.integers(0, vocab, size=(batch, 60))
    np.put_along_axis(x, head, np.take_along_axis(x, head, 1) + rng.uniform(4, 9, (batch, 60)).astype(np.float32), 1)
    return x


def chain(x):
    out = sampling.apply_temperature(x, DEFAULTS["temperature"])
    out = sampling.top_k_filter(out, DEFAULTS["top_k"])
    out = sampling.top_p_filter(out, DEFAULTS["top_p"])
    return sampling.min_p_filter(out, DEFAULTS["min_p"])


def time_us(step, x, rng, steps, repeats):
    step(x), sampling.sample(step(x), rng)  # warm-up (compiles the top-p kernel)
    means = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            sampling.sample(step(x), rng)
        means.append((time.perf_counter() - t) / steps * 1e6)
    return float(np.median(means)), means


def measure(batches=(1, 8), vocab=49152, steps=20, repeats=7):
    """{batch: {"chain": µs, "fused": µs}} per decode step (the whole batch), medians."""
    procs = sampling.build_processors(do_sample=True, **DEFAULTS)
    rng = np.random.default_rng(0)
    out = {}
    for B in batches:
        x = fake_logits(B, vocab, seed=B)
        assert np.array_equal(procs(None, x), chain(x)), "the fused chain must equal the readable one"
        out[B] = {name: time_us(fn, x, rng, steps, repeats)[0]
                  for name, fn in (("chain", chain), ("fused", lambda z: procs(None, z)))}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="2 repeats of 3 steps")
    p.add_argument("--out", default=None, help="write the figures to this JSON file")
    a = p.parse_args(argv)
    steps, repeats = (3, 2) if a.quick else (a.steps, a.repeats)
    res = measure(vocab=a.vocab, steps=steps, repeats=repeats)
    print(f"sampling chain {DEFAULTS}, V = {a.vocab}, median of {repeats} repeats of {steps} steps")
    print("| batch | chain (µs/step) | fused (µs/step) | speed-up |\n|---|---|---|---|")
    for B, r in res.items():
        print(f"| {B} | {r['chain']:.0f} | {r['fused']:.0f} | {r['chain'] / r['fused']:.1f}× |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"vocab": a.vocab, "steps": steps, "repeats": repeats, "chain": DEFAULTS,
                       "us_per_step": {str(B): r for B, r in res.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
