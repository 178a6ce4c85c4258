"""Small helpers shared by the lesson examples: headings, tables, optional plots, the default model."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numpy as np

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
DEFAULT_MODEL = "smollm2-135m-instruct"


def heading(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def todo(message: str) -> None:
    """Mark a part of an example whose npllm code has not landed yet."""
    print(f"[TODO] {message}", flush=True)


def table(headers, rows, floatfmt: str = ".4g") -> None:
    """Print rows as an aligned plain-text table."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return str(v)

    cells = [[fmt(h) for h in headers]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def show(name: str, a) -> None:
    """Print an array's name, shape, dtype and (if small) its values."""
    a = np.asarray(a)
    head = f"{name}: shape {a.shape} {a.dtype}"
    if a.size <= 48:
        with np.printoptions(precision=4, suppress=True, linewidth=110):
            body = np.array2string(a, prefix="    ")
        print(head + "\n    " + body)
    else:
        print(head + f"  (min {a.min():.4g}, max {a.max():.4g}, mean {a.mean():.4g})")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@contextmanager
def timer(result: dict, key: str = "seconds"):
    t0 = time.perf_counter()
    yield
    result[key] = time.perf_counter() - t0


_NO_PLOTS = []


def save_plot(name: str, draw) -> str | None:
    """Call ``draw(plt)`` and save ``lessons/out/<name>.png`` if matplotlib is installed; else say once
    that figures need it (``make lessons`` / ``pip install -e ".[lessons]"`` installs it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _NO_PLOTS:
            _NO_PLOTS.append(name)
            print('(no figures: matplotlib is not installed; `make lessons` or `pip install -e ".[lessons]"` '
                  "installs it)")
        return None
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, name + ".png")
    plt.figure(figsize=(7, 4.5))
    draw(plt)
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close("all")
    print(f"(plot saved: lessons/out/{name}.png)")
    return path


_MODEL = {}


def default_model():
    """``npllm.load("smollm2-135m-instruct")`` once per process -> (model, tokenizer), or None.

    None only while a part of npllm that loading needs has not landed yet (a
    missing ``npllm.*`` module); any other error propagates.
    """
    if "pair" not in _MODEL:
        import npllm
        t0 = time.perf_counter()
        try:
            _MODEL["pair"] = npllm.load(DEFAULT_MODEL)
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("npllm"):
                raise
            todo(f"npllm.load needs {e.name}, which has not landed yet; skipping the real-model part")
            _MODEL["pair"] = None
            return None
        print(f"(loaded {DEFAULT_MODEL} in {time.perf_counter() - t0:.1f} s)")
    return _MODEL["pair"]


def have_module(name: str) -> bool:
    """True if ``npllm.<name>`` exists (parts of npllm land over time)."""
    import importlib.util
    return importlib.util.find_spec(f"npllm.{name}") is not None
