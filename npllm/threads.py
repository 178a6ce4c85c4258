"""Lesson 07 — choosing the decode thread count by measuring it, so a busy machine does not stall decode.

A decode step is a chain of parallel kernels, each ending at a barrier: every thread waits for the
slowest.  When another process takes one of the cores, the thread that lands on it runs only part
of the time, and every barrier waits for it.  On this 2-core machine, batch-1 decode with 2 threads
then falls from ~130 to 5-35 tok/s, while 1 thread keeps ~70.  A fixed setting cannot be right on
both a quiet and a busy machine, and the load changes while a model runs.

``ThreadGovernor`` decides from what it measures around each decode step:

- the step's wall time, and its *CPU efficiency*: process CPU time / (wall time x threads).  The
  threads spin while they wait at a barrier, so on a quiet machine the efficiency is high (on this
  2-core machine: median 0.78 per step, 10th percentile 0.58); a thread that has lost its core is
  not running, and the efficiency drops (median 0.50, 90th percentile 0.57, with 2 threads beside
  one busy-looping process).
- While the median efficiency of the last ``WINDOW`` steps is below ``LOW_EFFICIENCY``, every
  ``DOWN_EVERY`` steps it *probes*: ``WINDOW`` steps at the next lower count of the ladder
  n, n/2, ..., 1.  When running below n, it probes the next higher count every ``UP_EVERY``
  steps, to notice that the load has gone.
- If the probe's median step time is at most ``MARGIN`` times the current median, it switches.
  Otherwise that probe's interval doubles, up to ``PROBE_MAX``, so a machine where the
  efficiency looks low but all threads still pay costs few probes.  A quiet machine never probes.
- Step times are only compared for one batch size: a change of batch size starts the windows over.

The decode kernels give bit-identical results for any thread count (each output element is
computed by one thread, in a fixed order; ``tests/test_threads.py`` checks it), so the governor
changes speed, never tokens.  Prefill is not governed.

It is on by default, and off when the thread count was set explicitly (``--threads``,
``NPLLM_NUM_THREADS``, ``npllm.set_num_threads``), or with ``NPLLM_ADAPTIVE_THREADS=0``.
The count is set with ``numba.set_num_threads``, which holds for the calling thread only.
"""

from __future__ import annotations

import os
import time
from typing import Callable, List, Optional

import numba

from . import _jit

WINDOW = 4           # steps per median (current and probe)
WARMUP = 2           # steps ignored at the start and after a batch-size change (caches, compile)
LOW_EFFICIENCY = 0.65  # CPU time / (wall time x threads) below this: a thread is losing its core
DOWN_EVERY = 8       # steps between probes of fewer threads while the efficiency stays low
UP_EVERY = 32        # steps between probes of more threads, when running below the maximum
PROBE_MAX = 1024     # the longest interval: a failed probe doubles its interval up to this
MARGIN = 0.85        # switch when probe median <= MARGIN * current median


def _ladder(n: int) -> List[int]:
    out = [n]
    while out[-1] > 1:
        out.append(max(1, out[-1] // 2))
    return out


def _median(xs):
    s = sorted(xs)
    k = len(s)
    return s[k // 2] if k % 2 else 0.5 * (s[k // 2 - 1] + s[k // 2])


class ThreadGovernor:
    """Picks the Numba thread count for decode steps from their measured times (see module doc).

    Use: ``t0 = gov.begin(batch)`` before a step, ``gov.end(t0)`` after it.  ``clock``,
    ``cpu_clock`` and ``set_threads`` can be replaced (tests use fake clocks).
    """

    def __init__(self, max_threads: int, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.process_time,
                 set_threads: Callable[[int], None] = numba.set_num_threads):
        self.ladder = _ladder(max(1, int(max_threads)))
        self.clock, self.cpu_clock, self._set = clock, cpu_clock, set_threads
        self.current = self.ladder[0]
        self.down_interval, self.up_interval = DOWN_EVERY, UP_EVERY
        self.switches = self.probes = self.steps = 0
        self._running = self.current
        self._reset(None)

    def _reset(self, batch) -> None:
        self.batch = batch
        self.warm = 0
        self.times: List[float] = []      # recent step times at ``current``
        self.effs: List[float] = []       # and their CPU efficiencies
        self.probe: Optional[int] = None  # the count being probed, if any
        self.probe_times: List[float] = []
        self.since_probe = 0

    def begin(self, batch: int) -> float:
        if batch != self.batch:
            self._reset(batch)
        n = self.probe if self.probe is not None else self.current
        if n != self._running:
            self._set(n)
            self._running = n
        self._cpu0 = self.cpu_clock()
        return self.clock()

    def end(self, t0: float) -> None:
        dt = self.clock() - t0
        dc = self.cpu_clock() - self._cpu0
        n = self._running
        if n != self.ladder[0]:
            self._set(self.ladder[0])     # prefill and everything else keep the full count
            self._running = self.ladder[0]
        self.steps += 1
        if self.warm < WARMUP:
            self.warm += 1
            return
        if self.probe is not None:
            self.probe_times.append(dt)
            if len(self.probe_times) >= WINDOW:
                self._decide()
            return
        self.times = (self.times + [dt])[-WINDOW:]
        self.effs = (self.effs + [dc / (dt * n) if dt > 0 else 1.0])[-WINDOW:]
        self.since_probe += 1
        if len(self.ladder) < 2 or len(self.times) < WINDOW:
            return
        i = self.ladder.index(self.current)
        if (i + 1 < len(self.ladder) and _median(self.effs) < LOW_EFFICIENCY
                and self.since_probe >= self.down_interval):
            self._start(self.ladder[i + 1])
        elif i > 0 and self.since_probe >= self.up_interval:
            self._start(self.ladder[i - 1])

    def _start(self, n: int) -> None:
        self.probe, self.probe_times = n, []
        self.probes += 1

    def _decide(self) -> None:
        down = self.probe < self.current
        if _median(self.probe_times) <= MARGIN * _median(self.times):
            self.current, self.times, self.effs = self.probe, list(self.probe_times), []
            self.down_interval, self.up_interval = DOWN_EVERY, UP_EVERY
            self.switches += 1
        elif down:
            self.down_interval = min(PROBE_MAX, 2 * self.down_interval)
        else:
            self.up_interval = min(PROBE_MAX, 2 * self.up_interval)
        self.probe, self.probe_times, self.since_probe = None, [], 0


def enabled() -> bool:
    """Adapt unless the user fixed the thread count or set NPLLM_ADAPTIVE_THREADS=0."""
    if os.environ.get("NPLLM_ADAPTIVE_THREADS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return not _jit.threads_explicit()


def governor_for(owner) -> Optional[ThreadGovernor]:
    """The governor of ``owner`` (a model), made on first use; None when adapting is off
    or there is one thread to use."""
    if not enabled():
        return None
    gov = owner.__dict__.get("_thread_governor")
    if gov is None:
        n = numba.get_num_threads()
        if n < 2:
            return None
        gov = owner._thread_governor = ThreadGovernor(n)
    return gov
