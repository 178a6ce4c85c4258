"""One place for Numba settings (lesson 07).

Every kernel in npllm is decorated with ``njit`` or ``njit_parallel`` from
here, so the fastmath flags are defined once.  They leave out ``nnan`` and
``ninf`` on purpose: attention masks and samplers rely on ``-inf``.

``NUMBA_DISABLE_JIT=1`` turns every kernel back into plain Python, and
``NPLLM_REFERENCE=1`` (or ``npllm._jit.use_reference(True)``) makes the public
ops dispatch to their vectorised NumPy ``*_ref`` twins instead of kernels.
"""

import os

# Numba's OpenMP workers (GNU libgomp) spin ~10 ms after each parallel loop before they sleep.
# Meanwhile they compete with BLAS threads (prefill) and other processes for the cores.  A
# shorter spin (~0.5 ms here) keeps decode's back-to-back kernels fast and frees the cores
# soon after.  libgomp reads this when Numba first loads it; a user's own setting wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numba
from numba import prange  # noqa: F401  (re-exported for kernels)

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

njit = numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
njit_parallel = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)

_state = {"reference": os.environ.get("NPLLM_REFERENCE", "0") not in ("", "0"), "threads_explicit": False}


def use_reference(flag: bool = True) -> None:
    """Route public ops to their NumPy reference implementations (True) or kernels."""
    _state["reference"] = bool(flag)


def reference_mode() -> bool:
    return _state["reference"]


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
