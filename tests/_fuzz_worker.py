"""Fuzz worker (used by tests/test_fuzz.py): loads one model file per stdin line, one JSON line out.

It runs in its own process, with its address space capped (``RLIMIT_AS``), so that a crash, a
hang or a huge allocation in the loaders fails one fuzz case instead of the test run.

For each path it runs what a user would: ``npllm.load(path)`` (``read_checkpoint``,
``CausalLM.from_tensors`` and the tokenizer), a forward pass, a 2-token greedy ``generate``, and, if the tokenizer came with a
chat template, a render.  It reports

    {"case": ..., "outcome": "loaded" | "npllm_error" | "not_found" | "bad", "stage": ...,
     "error": exception class, "message": ..., "finite": bool, "seconds": ...}

A line holding a JSON object instead of a path runs ``run_quant_case``, or, if it has a
``"template"``, ``run_template_case`` (a chat template rendered, with its time and peak memory).

``bad`` means an exception escaped that is not an ``npllm.errors`` ``ValueError`` (or the
forward pass gave non-finite logits that generation did not flag); the parent fails on it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

MEMORY_LIMIT = int(os.environ.get("NPLLM_FUZZ_MEMORY_LIMIT", 4 << 30))


def run_case(path: str) -> dict:
    import numpy as np

    import npllm
    from npllm.errors import ModelNotFoundError, NpllmError
    from npllm.generation import NonFiniteLogitsError, generate

    result = {"case": path, "outcome": "loaded", "stage": "load", "error": None, "message": "", "finite": None}
    try:
        model, tok = npllm.load(path)
        result["stage"] = "forward"
        V = model.config.vocab_size
        ids = np.array([[1, 5, 7, 9]], dtype=np.int64) % V  # [B=1, T=4]
        logits, _ = model.forward(ids)
        if np.shape(logits) != (1, 4, V):
            raise AssertionError(f"logits shape {np.shape(logits)}, expected (1, 4, {V})")
        result["finite"] = bool(np.isfinite(logits).all())
        result["stage"] = "generate"  # a decode step too (the N=1 kernels)
        try:
            generate(model, ids, max_new_tokens=2, temperature=0.0)
        except NonFiniteLogitsError:
            if result["finite"]:
                raise
        else:
            if not result["finite"]:  # garbage weights: generation must refuse to sample from them
                raise AssertionError("non-finite logits were not reported by generate")
        if tok is not None:
            result["stage"] = "tokenizer"
            tok.decode(tok.encode("Hello world 123"))
            if tok.chat_template is not None:
                result["stage"] = "chat"
                tok.apply_chat_template([{"role": "user", "content": "hi"}])
    except ModelNotFoundError as e:
        result.update(outcome="not_found", error=type(e).__name__, message=str(e))
    except NpllmError as e:
        ok = isinstance(e, ValueError) or isinstance(e, NonFiniteLogitsError)
        result.update(outcome="npllm_error" if ok else "bad", error=type(e).__name__, message=str(e))
    except BaseException as e:  # noqa: BLE001 - everything else is what the fuzzer hunts
        result.update(outcome="bad", error=type(e).__name__, message=str(e)[:500],
                      traceback=traceback.format_exc()[-3000:])
    return result


def run_quant_case(spec: dict) -> dict:
    """``{"raw": hex, "ggml_type": int, "shape": [...], "api": name}``: the quantized-tensor entry
    points a loader feeds with numbers read from a file."""
    import numpy as np

    from npllm.errors import NpllmError
    from npllm.quant import weight as quants

    result = {"case": "quant", "outcome": "loaded", "stage": spec["api"], "error": None, "message": ""}
    raw = np.frombuffer(bytes.fromhex(spec["raw"]), np.uint8)
    shape = tuple(spec["shape"])
    try:
        if spec["api"] == "dequantize":
            out = quants.dequantize(raw, spec["ggml_type"], shape)
        elif spec["api"] == "from_raw":
            w = quants.QuantizedWeight.from_raw(raw, spec["ggml_type"], shape)
            out = w.matmul(np.ones((2, w.shape[1]), np.float32))
            shape = (2, w.shape[0])
        else:
            out = quants.as_array_or_quantized(raw, spec["ggml_type"], shape)
            out = out if isinstance(out, np.ndarray) else out.dequantize()
        if out.shape != shape or out.dtype != np.float32:
            raise AssertionError(f"got {out.dtype} {out.shape}, expected float32 {shape}")
    except NpllmError as e:
        result.update(outcome="npllm_error" if isinstance(e, ValueError) else "bad", error=type(e).__name__,
                      message=str(e))
    except BaseException as e:  # noqa: BLE001
        result.update(outcome="bad", error=type(e).__name__, message=str(e)[:500],
                      traceback=traceback.format_exc()[-3000:])
    return result


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def run_template_case(spec: dict) -> dict:
    """``{"template": ..., "name": ...}``: render it for a one-message chat.  ``peak_growth`` is how
    far this process's peak RSS rose above its RSS before the render (Linux; the peak is reset
    first through /proc/self/clear_refs), in bytes."""
    from npllm.chat import ChatTemplateError, render_chat_template

    messages = spec.get("messages") or [{"role": "user", "content": "hi"}]
    result = {"case": spec.get("name", "template"), "outcome": "rendered", "stage": "render", "error": None,
              "message": "", "peak_growth": None}
    measure = os.path.exists("/proc/self/clear_refs")
    if measure:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _rss_kb("VmRSS")
    start = time.perf_counter()
    try:
        result["chars"] = len(render_chat_template(spec["template"], messages))
    except ChatTemplateError as e:
        result.update(outcome="refused", error=type(e).__name__, message=str(e)[:500])
    except BaseException as e:  # noqa: BLE001
        result.update(outcome="bad", error=type(e).__name__, message=str(e)[:500],
                      traceback=traceback.format_exc()[-3000:])
    result["render_seconds"] = time.perf_counter() - start
    if measure:
        result["peak_growth"] = (_rss_kb("VmHWM") - before) << 10
    return result


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    out = os.fdopen(os.dup(1), "w", buffering=1)  # results go to the real stdout...
    os.dup2(2, 1)  # ...and anything the library prints goes to stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        path = line.rstrip("\n")
        if not path:
            continue
        start = time.perf_counter()
        if path.startswith("{"):
            spec = json.loads(path)
            result = run_template_case(spec) if "template" in spec else run_quant_case(spec)
        else:
            result = run_case(path)
        result["seconds"] = round(time.perf_counter() - start, 4)
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
