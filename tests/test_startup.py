"""Start-up (lesson 07): a run that has to compile kernels says so, once, on stderr; a run whose
kernels are all in Numba's on-disk cache prints nothing extra.

Each child gets its own empty ``NUMBA_CACHE_DIR`` (Numba reads it before the in-tree
``__pycache__``), so "empty cache" here is the same state as a fresh install.
"""

import os
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = "compiling kernels (first run only)"

# A small npllm kernel compiled (or loaded from the cache) after announce_compilation().
SNIPPET = """
import numpy as np
from npllm import _jit, sampling
_jit.announce_compilation()
print(sampling.top_p_filter(np.array([[0.0, 1.0, 2.0]], dtype=np.float32), 0.5))
"""


def child_env(cache_dir):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env.pop("NUMBA_DISABLE_JIT", None)
    return env


def run_snippet(cache_dir):
    return subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=300,
                          env=child_env(cache_dir))


def test_the_compile_message_appears_once_with_an_empty_cache_and_not_with_a_warm_one(tmp_path):
    cold = run_snippet(tmp_path)
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.count(MESSAGE) == 1, cold.stderr
    assert "-inf" in cold.stdout  # the kernel did run
    warm = run_snippet(tmp_path)  # the same cache, now filled by the first child
    assert warm.returncode == 0, warm.stderr
    assert MESSAGE not in warm.stderr, warm.stderr
    assert warm.stdout == cold.stdout


def test_compiling_someone_elses_numba_function_says_nothing(tmp_path):
    code = ("import numba\nfrom npllm import _jit\n_jit.announce_compilation()\n"
            "f = numba.njit(lambda x: x + 1)\nprint(f(1))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=child_env(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == "2", r.stderr
    assert MESSAGE not in r.stderr


def test_the_cli_says_it_is_compiling_before_its_first_token_on_an_empty_cache(tmp_path, smollm2_gguf):
    # Only the start matters: read stderr until the line comes, then stop the child.
    p = subprocess.Popen([sys.executable, "-m", "npllm", "generate", "-m", smollm2_gguf, "--no-progress",
                          "-n", "1", "Hello"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=child_env(tmp_path))
    guard = threading.Timer(240, p.kill)  # without the line, the child would run to its end
    guard.start()
    try:
        line = p.stderr.readline()
    finally:
        guard.cancel()
        p.kill()
        p.communicate()
    assert MESSAGE in line, line


def test_running_a_kernel_does_not_import_scipy_linalg_and_numba_dot_still_works(tmp_path):
    # numba.np.arraymath imports scipy.linalg (0.4 s, 17 MB) unless npllm loads it first without.
    code = ("import sys\nimport numpy as np\nimport numba\nfrom npllm import sampling\n"
            "sampling.top_p_filter(np.zeros((1, 4), np.float32), 0.5)\n"
            "print('scipy.linalg' in sys.modules)\n"
            "f = numba.njit(lambda a: np.dot(a, a))\nprint(f(np.arange(3.0)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=child_env(tmp_path))
    assert r.returncode == 0, r.stderr
    pytest.importorskip("scipy")  # (without SciPy there is nothing to avoid, and no np.dot in kernels)
    assert r.stdout.split() == ["False", "5.0"], r.stdout
