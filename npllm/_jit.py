"""One place for Numba settings (lesson 07).

Every kernel in npllm is decorated with ``njit`` or ``njit_parallel`` from
here, so the fastmath flags are defined once.  They leave out ``nnan`` and
``ninf`` on purpose: attention masks and samplers rely on ``-inf``.

``NUMBA_DISABLE_JIT=1`` turns every kernel back into plain Python, and
``NPLLM_REFERENCE=1`` (or ``npllm._jit.use_reference(True)``) makes the public
ops dispatch to their vectorised NumPy ``*_ref`` twins instead of kernels.
"""

import os

import numba
from numba import prange  # noqa: F401  (re-exported for kernels)

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

njit = numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
njit_parallel = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)

_state = {"reference": os.environ.get("NPLLM_REFERENCE", "0") not in ("", "0")}


def use_reference(flag: bool = True) -> None:
    """Route public ops to their NumPy reference implementations (True) or kernels."""
    _state["reference"] = bool(flag)


def reference_mode() -> bool:
    return _state["reference"]
