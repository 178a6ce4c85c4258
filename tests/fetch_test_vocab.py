"""Fetch llama.cpp's tokenizer test vocabularies once: ``python tests/fetch_test_vocab.py``.

llama.cpp keeps vocabulary-only GGUFs of real models in ``models/ggml-vocab-*.gguf``,
each with ``.gguf.inp`` (test strings, each followed by ``"\\n__ggml_vocab_test__\\n"``)
and ``.gguf.out`` (one line of ids per string: what the original model's HF tokenizer,
``tokenizer.json``, gives with ``add_special_tokens=False``; written by llama.cpp's
``convert_hf_to_gguf_update.py`` and checked by its ``tests/test-tokenizer-0``).

The llama-cpp-python sdist on PyPI vendors llama.cpp, files included.  We download
it with pip (``--no-binary :all: --no-deps``: nothing is built or installed), check
its sha256, and extract only the files listed in ``VOCABS`` into
``$NPLLM_CACHE/test-vocab/<sdist>/`` (``NPLLM_CACHE`` defaults to ``~/.cache/npllm``).
The folder appears under its final name only when complete (extracted into a
temporary folder, then renamed), so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MODELS_DIR = "vendor/llama.cpp/models/"  # inside the sdist's top folder
VOCABS = ("llama-spm", "phi-3", "gemma-4", "llama-bpe", "qwen2", "qwen35", "gpt-2", "starcoder", "refact",
          "command-r", "falcon", "deepseek-llm", "deepseek-coder", "mpt")
SUFFIXES = (".gguf", ".gguf.inp", ".gguf.out")


def cache_dir() -> Path:
    return Path(os.environ.get("NPLLM_CACHE") or Path.home() / ".cache" / "npllm")


def vocab_dir() -> Path:
    """The folder holding ``ggml-vocab-<name>.gguf[.inp|.out]`` for every name in VOCABS."""
    final = cache_dir() / "test-vocab" / SDIST_FILE.replace(".tar.gz", "")
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=final.parent))
    try:
        print(f"fetching llama.cpp's test vocabularies from the {SDIST} sdist (PyPI) into {final}",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        "--dest", str(work), SDIST], check=True)
        sdist = work / SDIST_FILE
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256}")
        out = work / "vocab"
        out.mkdir()
        wanted = {f"ggml-vocab-{name}{suffix}" for name in VOCABS for suffix in SUFFIXES}
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                top, _, rest = member.name.partition("/")
                if member.isfile() and rest.startswith(MODELS_DIR) and rest[len(MODELS_DIR):] in wanted:
                    name = rest[len(MODELS_DIR):]
                    with tar.extractfile(member) as src, open(out / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    wanted.discard(name)
        if wanted:
            raise RuntimeError(f"{sdist} lacks {sorted(wanted)}")
        try:
            os.replace(out, final)
        except OSError:  # another process finished first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def read_cases(folder: Path, name: str):
    """[(text, expected ids)] from ``ggml-vocab-<name>.gguf.inp/.out`` (llama.cpp's test-tokenizer-0 format)."""
    sep = "\n__ggml_vocab_test__\n"
    raw = (folder / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")  # keep any "\r" as written
    texts = raw.split(sep)
    if raw.endswith(sep):  # every text is followed by the separator (gemma-4's file lacks the last one)
        texts = texts[:-1]
    lines = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    if len(lines) < len(texts) or any(line.strip() for line in lines[len(texts):]):
        raise ValueError(f"{name}: {len(texts)} test strings but {len(lines)} lines of ids")
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines)]


if __name__ == "__main__":
    print(vocab_dir())
