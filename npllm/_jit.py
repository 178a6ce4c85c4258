"""One place for Numba settings (lesson 07).

Every kernel in npllm is decorated with ``njit`` or ``njit_parallel`` from
here, so the fastmath flags are defined once.  They leave out ``nnan`` and
``ninf`` on purpose: attention masks and samplers rely on ``-inf``.

``NUMBA_DISABLE_JIT=1`` turns every kernel back into plain Python, and
``NPLLM_REFERENCE=1`` (or ``npllm._jit.use_reference(True)``) makes the public
ops dispatch to their vectorised NumPy ``*_ref`` twins instead of kernels.
"""

import os
import sys

# Numba's OpenMP workers (GNU libgomp) spin ~10 ms after each parallel loop before they sleep.
# Meanwhile they compete with BLAS threads (prefill) and other processes for the cores.  A
# shorter spin (~0.5 ms here) keeps decode's back-to-back kernels fast and frees the cores
# soon after.  libgomp reads this when Numba first loads it; a user's own setting wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numba
from numba import prange  # noqa: F401  (re-exported for kernels)


def _load_numba_without_scipy() -> None:
    """Import ``numba.np.arraymath`` (Numba's first compile or cache load does) without SciPy.

    That module imports ``scipy.linalg`` when SciPy is installed, only to choose how a kernel's
    ``np.correlate`` multiplies: 0.4 s and 17 MB of start-up for npllm, whose kernels never
    call BLAS (dense matmuls are NumPy's ``@``).  ``np.dot`` in a kernel still works: Numba's
    linalg imports SciPy itself when such a kernel compiles.  Skipped once scipy.linalg is loaded.
    """
    blocked = "scipy.linalg.cython_blas"
    if "scipy.linalg" in sys.modules or "numba.np.arraymath" in sys.modules:
        return
    sys.modules[blocked] = None  # makes `import scipy.linalg.cython_blas` raise ImportError
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if sys.modules.get(blocked, 0) is None:
            del sys.modules[blocked]


_load_numba_without_scipy()

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

njit = numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
njit_parallel = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)

_state = {"reference": os.environ.get("NPLLM_REFERENCE", "0") not in ("", "0"), "threads_explicit": False}


def use_reference(flag: bool = True) -> None:
    """Route public ops to their NumPy reference implementations (True) or kernels."""
    _state["reference"] = bool(flag)


def reference_mode() -> bool:
    return _state["reference"]


_announced = {"listener": None}


def announce_compilation(stream=None, message="npllm: compiling kernels (first run only)\u2026") -> None:
    """Print ``message`` on ``stream`` (default stderr) once, when Numba starts compiling an npllm
    kernel because its on-disk cache has no version for it: a fresh install, a new Numba, a
    changed kernel, or a new type signature.  Kernels loaded from the cache print nothing.

    Numba emits a ``numba:compile`` event only on a cache miss (a cache hit loads the
    machine code), so this costs nothing when the cache is warm.  The CLI calls it.
    """
    if _announced["listener"] is not None:
        return
    from numba.core import event

    class _Once(event.Listener):
        done = False

        def on_start(self, ev):
            func = getattr(ev.data.get("dispatcher"), "py_func", None)
            if not self.done and getattr(func, "__module__", "").startswith("npllm"):
                self.done = True
                out = sys.stderr if stream is None else stream
                print(message, file=out, flush=True)

        def on_end(self, ev):
            pass

    _announced["listener"] = _Once()
    event.register("numba:compile", _announced["listener"])


def threads_explicit() -> bool:
    """True once a thread count was given (``set_num_threads(n)`` or $NPLLM_NUM_THREADS)."""
    return _state["threads_explicit"] or bool(os.environ.get("NPLLM_NUM_THREADS", "").strip())


def set_num_threads(n=None) -> int:
    """Use ``n`` threads for Numba kernels and BLAS (default: $NPLLM_NUM_THREADS, else all cores).

    Returns the number in force.  Threads can only be lowered below Numba's
    launch-time maximum (``NUMBA_NUM_THREADS``), so the CLI calls this early.
    """
    if n is None:
        env = os.environ.get("NPLLM_NUM_THREADS")
        if env:
            if not env.strip().isdigit() or int(env) < 1:
                from .errors import ConfigError

                raise ConfigError(f"NPLLM_NUM_THREADS must be a positive integer, got {env!r}")
            n = int(env)
    if n is None:
        return numba.get_num_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        from .errors import ConfigError

        raise ConfigError(f"the number of threads must be a positive integer, got {n!r}")
    _state["threads_explicit"] = True   # a fixed count: npllm.threads does not adapt it
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n)
    except ImportError:  # threadpoolctl is optional at runtime
        pass
    return n
