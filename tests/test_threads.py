"""npllm/threads.py: the decode thread count follows the machine's load, and never changes the tokens.

The governor's decisions are checked on simulated machines (fake wall and CPU clocks), where the
right answer is known; the invariance it relies on (decode logits bit-identical for any thread
count) is checked on the real model.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npllm
from npllm import _jit, threads
from npllm.threads import ThreadGovernor


class Machine:
    """A simulated machine: step wall time and CPU efficiency per thread count."""

    def __init__(self, wall, eff):
        self.wall, self.eff = dict(wall), dict(eff)
        self.t = self.cpu = 0.0
        self.n = None
        self.history = []

    def set_threads(self, n):
        self.n = n

    def run(self, gov, steps, batch=1):
        for _ in range(steps):
            t0 = gov.begin(batch)
            n = self.n
            dt = self.wall[n]
            self.t += dt
            self.cpu += dt * n * self.eff[n]
            self.history.append(n)
            gov.end(t0)


def governor(machine, n=2):
    machine.n = n
    return ThreadGovernor(n, clock=lambda: machine.t, cpu_clock=lambda: machine.cpu,
                          set_threads=machine.set_threads)


def test_a_busy_core_moves_decode_to_one_thread_within_a_few_steps():
    # one core taken by another process: 2 threads wait at every barrier (measured here: 5-35 vs 70 tok/s)
    m = Machine(wall={2: 0.040, 1: 0.014}, eff={2: 0.55, 1: 1.0})
    gov = governor(m)
    m.run(gov, 20)
    assert gov.current == 1
    m.run(gov, 200)
    assert m.history[-100:].count(1) >= 95          # stays, apart from rare probes upwards


def test_a_quiet_machine_never_probes_fewer_threads():
    m = Machine(wall={2: 0.008, 1: 0.014}, eff={2: 0.97, 1: 1.0})
    gov = governor(m)
    m.run(gov, 2000)
    assert gov.current == 2 and gov.probes == 0 and set(m.history) == {2}


def test_low_efficiency_without_a_gain_backs_off():
    # the efficiency looks low but 2 threads are still faster: probes get rarer (interval doubles)
    m = Machine(wall={2: 0.008, 1: 0.014}, eff={2: 0.6, 1: 1.0})
    gov = governor(m)
    m.run(gov, 4000)
    assert gov.current == 2
    assert gov.probes <= 12                          # 8, 16, 32, ... 1024 steps apart
    assert m.history.count(1) <= 4 * 12


def test_when_the_load_leaves_it_goes_back_to_all_threads():
    m = Machine(wall={2: 0.040, 1: 0.014}, eff={2: 0.55, 1: 1.0})
    gov = governor(m)
    m.run(gov, 50)
    assert gov.current == 1
    m.wall[2], m.eff[2] = 0.008, 0.97                # the other process ends
    m.run(gov, 200)
    assert gov.current == 2


def test_a_batch_size_change_starts_the_measurement_over():
    m = Machine(wall={2: 0.040, 1: 0.014}, eff={2: 0.55, 1: 1.0})
    gov = governor(m)
    m.run(gov, 5, batch=1)
    m.run(gov, 5, batch=8)
    assert gov.batch == 8 and len(gov.times) <= 5


@settings(max_examples=100, deadline=None)
@given(w2=st.floats(0.002, 0.1), w1=st.floats(0.002, 0.1), e2=st.floats(0.3, 1.0))
def test_it_ends_on_the_faster_count_when_one_is_clearly_faster(w2, w1, e2):
    # the property: after long enough, the governor runs the faster of the two counts, whenever
    # the difference is beyond its margin and the slower one's efficiency says so
    m = Machine(wall={2: w2, 1: w1}, eff={2: e2, 1: 1.0})
    gov = governor(m)
    m.run(gov, 3000)
    if w1 < 0.8 * w2 and e2 < threads.LOW_EFFICIENCY:
        assert gov.current == 1
    if w2 < 0.8 * w1:
        assert gov.current == 2
    assert m.n == 2                                  # outside a step, the full count is restored


def test_ladder():
    assert threads._ladder(8) == [8, 4, 2, 1] and threads._ladder(3) == [3, 1] and threads._ladder(1) == [1]


# --------------------------------------------------------------- on the real model
@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return npllm.load(smollm2_gguf)


def test_decode_logits_are_bit_identical_for_any_thread_count(smol):
    """What makes the governor safe: each decode kernel's output element is computed by one thread
    in a fixed order, so the thread count cannot change a logit (prefill is not governed)."""
    import copy

    import numba

    model, tok = smol
    ids = np.array([tok.encode("The three laws of thermodynamics are")] * 3)
    before = numba.get_num_threads()
    try:
        cache0 = model.new_cache(3, 64)
        _, cache0 = model.forward(ids, use_cache=True, past_key_values=cache0)
        runs = []
        for n in (numba.config.NUMBA_NUM_THREADS, 1):
            numba.set_num_threads(n)
            cache, t, steps = copy.deepcopy(cache0), np.array([[5], [6], [7]]), []
            for i in range(4):
                mask = np.ones((3, ids.shape[1] + i + 1), dtype=np.int64)
                logits, cache = model.forward(t, attention_mask=mask, past_key_values=cache, use_cache=True)
                steps.append(logits[:, -1])
                t = logits[:, -1].argmax(-1)[:, None]
            runs.append(np.stack(steps))
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(runs[0], runs[1])


def test_generate_with_a_governor_that_switches_every_step_gives_the_same_tokens(smol, monkeypatch):
    model, tok = smol
    ids = np.array([tok.encode("Once upon a time")])
    monkeypatch.setenv("NPLLM_ADAPTIVE_THREADS", "0")
    plain = model.generate(ids, max_new_tokens=24, temperature=0)

    class Flip(ThreadGovernor):          # the worst case: a different count at every step
        def begin(self, batch):
            self._n = 1 if self.steps % 2 else self.ladder[0]
            import numba
            numba.set_num_threads(self._n)
            return 0.0

        def end(self, t0):
            import numba
            self.steps += 1
            numba.set_num_threads(self.ladder[0])

    monkeypatch.setenv("NPLLM_ADAPTIVE_THREADS", "1")
    monkeypatch.setattr(_jit, "threads_explicit", lambda: False)
    model._thread_governor = Flip(max(2, __import__("numba").get_num_threads()))
    try:
        flipped = model.generate(ids, max_new_tokens=24, temperature=0)
        assert model._thread_governor.steps >= 20
    finally:
        del model._thread_governor
    assert np.array_equal(plain, flipped)


def test_an_explicit_thread_count_turns_it_off(monkeypatch):
    monkeypatch.setattr(_jit, "_state", dict(_jit._state, threads_explicit=False))
    monkeypatch.delenv("NPLLM_NUM_THREADS", raising=False)
    monkeypatch.delenv("NPLLM_ADAPTIVE_THREADS", raising=False)
    assert threads.enabled()
    monkeypatch.setenv("NPLLM_ADAPTIVE_THREADS", "0")
    assert not threads.enabled()
    monkeypatch.delenv("NPLLM_ADAPTIVE_THREADS")
    monkeypatch.setenv("NPLLM_NUM_THREADS", "2")
    assert not threads.enabled()
    monkeypatch.delenv("NPLLM_NUM_THREADS")
    _jit.set_num_threads(_jit.set_num_threads())     # an explicit count (the one in force)
    assert not threads.enabled()
