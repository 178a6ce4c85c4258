"""Lesson 09 (appendix) — ``npllm batch --ray``: the same batches on a Ray Data actor pool.

The driver plans the batches exactly as the in-process run does (``npllm.batch.plan_batches``),
turns each into one row of a Ray Dataset, and maps them through a pool of ``workers`` actors
(``map_batches`` with a callable class, one of our batches per call).  Each actor loads the model
once, with ``NPLLM_NUM_THREADS`` set to its share of the CPUs, and runs ``generate_batch``, the
function the in-process run uses, so a record's output does not depend on where it ran.

Ray Data restarts an actor that dies and retries its batch (at-least-once), so a batch may come
back twice: the driver's ``Writer`` writes each id once.  Results stream back as batches finish
and are appended, flushed, line by line, as in-process.  Ray is the extra ``npllm[ray]``.
"""

from __future__ import annotations

import json
import os
from typing import List


def _pack(batch) -> str:
    return json.dumps([{"id": r.id, "prompt": r.prompt, "messages": r.messages,
                        "params": {**r.params, "stop": list(r.params["stop"]) if r.params["stop"] else None}}
                       for r in batch])


class BatchWorker:
    """A Ray actor: loads the model once, then generates one planned batch per call."""

    def __init__(self, model, threads: int):
        # Before npllm (and Numba) load: the threads this actor may use.
        os.environ["NPLLM_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
        from .loading import load

        self.model, self.tok = load(model)

    def __call__(self, rows):
        from .batch import Record, encode, generate_batch

        out = []
        for packed in rows["batch"]:
            records = [Record(d["id"], d["prompt"], d["messages"],
                              {**d["params"], "stop": tuple(d["params"]["stop"]) if d["params"]["stop"] else None})
                       for d in json.loads(packed)]
            out.append(json.dumps(generate_batch(self.model, self.tok, records,
                                                 [encode(self.tok, r) for r in records])))
        return {"rows": out}


def connect(address: str = "local", num_cpus=None):
    """``ray.init`` for a local Ray (``"local"``) or a cluster address, unless Ray is already up."""
    try:
        import ray
    except ImportError:
        raise ImportError("npllm batch --ray needs Ray: pip install 'npllm[ray]'") from None
    if not ray.is_initialized():
        if address in (None, "local"):
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


def run_on_ray(model, batches: List[list], writer, summary, stop_requested, progress=None, *,
               address: str = "local", workers: int = 2) -> None:
    """Map the planned ``batches`` over ``workers`` actors and write what comes back."""
    ray = connect(address)
    import logging

    for name in ("ray", "ray.data"):  # npllm's own bar shows the progress
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    cpus = max(1, int(ray.cluster_resources().get("CPU", workers) // workers))
    ds = ray.data.from_items([{"batch": _pack(b)} for b in batches], override_num_blocks=max(1, len(batches)))
    results = ds.map_batches(BatchWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                             num_cpus=cpus, fn_constructor_kwargs={"model": model, "threads": cpus})
    for row in results.iter_rows():
        if stop_requested():
            summary.interrupted = True
            break
        rows = json.loads(row["rows"])
        for r in rows:
            if writer.write(r):
                summary.written += 1
                summary.completion_tokens += r["usage"]["completion_tokens"]
        if progress is not None:
            progress.update(len(rows))
