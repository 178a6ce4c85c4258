"""npllm — a LLaMA-family causal language model written from scratch in NumPy.

Start with ``lessons/README.md``.  The public names:

    ModelConfig, CausalLM, kv_cache_bytes, Tokenizer, load,
    npllm.sampling (filters), npllm.generation (decode loop), npllm.errors,
    npllm.structured (JSON schema / regex / grammar constraints, ``Constraint``)
"""

from . import errors
from .cache import KVCache, kv_cache_bytes
from .config import ModelConfig
from .model import CausalLM

__version__ = "0.1.0"

__all__ = ["ModelConfig", "CausalLM", "KVCache", "kv_cache_bytes", "errors", "Tokenizer", "load",
           "__version__"]


def __getattr__(name):
    # Heavier pieces (tokenizers, gguf) load only when first used.
    if name == "Tokenizer":
        from .tokenizer import Tokenizer
        return Tokenizer
    if name == "load":
        from .loading import load
        return load
    if name in ("sampling", "generation", "stopping", "structured"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'npllm' has no attribute {name!r}")
