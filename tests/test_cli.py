"""The CLI's promise on careless and hostile input: one line on stderr, exit status 2, no traceback;
and llama-cli's conventions (``-f FILE``, escape processing in the prompt and the stop strings).

The expected behaviours come from llama.cpp's ``llama-cli`` (``common/arg.cpp``: ``-f/--file``,
``--escape`` on by default, ``string_process_escapes``) and from the issue's defect list.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import npllm
from npllm.cli import process_escapes


COMPILING = "npllm: compiling kernels"  # npllm._jit.announce_compilation's line


def run_cli(*args, env=None, input=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "npllm", *args], capture_output=True, timeout=600, env=e,
                          input=input)


def assert_one_line_error(r, *needles):
    err = r.stderr.decode("utf-8", "replace")
    # (a first run with an empty kernel cache also says it is compiling: a notice, not an error)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(COMPILING)]
    assert r.returncode == 2, (r.returncode, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return npllm.load(smollm2_gguf)


@pytest.fixture(scope="module")
def bare_hf_dir(tmp_path_factory):
    """An HF directory as save_pretrained writes it for a model alone: no tokenizer.json."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2)
    path = tmp_path_factory.mktemp("bare")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------ escapes (llama-cli)
@pytest.mark.parametrize("raw,expected", [
    (r"\n\n", "\n\n"), (r"a\tb", "a\tb"), (r"\\n", "\\n"), (r"\"q\"", '"q"'), (r"\'", "'"),
    (r"\x41\x7a", "Az"), (r"\r", "\r"), (r"\a", "\a"), (r"\?", "?"), (r"end\\", "end\\"),
    (r"keep \q and \x4", r"keep \q and \x4"), ("plain", "plain"), ("\\", "\\"),
])
def test_escapes_are_processed_as_llama_cli_does(raw, expected):
    assert process_escapes(raw) == expected


def test_stop_with_an_escaped_newline_stops_at_a_blank_line(smol):
    model, tok = smol
    prompt = r"Here is a short poem about the sea.\n\n"   # (escapes processed: a real blank line)
    full = run_cli("generate", "--temperature", "0", "-n", "80", "--no-progress", prompt)
    text = full.stdout.decode()
    assert full.returncode == 0 and "\n\n" in text.rstrip("\n"), text   # the model does write a blank line
    cut = run_cli("generate", "--temperature", "0", "-n", "80", "--no-progress", "--stop", r"\n\n", prompt)
    assert cut.returncode == 0
    assert cut.stdout.decode() == text[:text.index("\n\n")] + "\n"


def test_prompt_escapes_and_no_escape(smol):
    model, tok = smol
    expected_ids = tok.encode("Line one\nLine two")
    expected = tok.decode(model.generate(np.array([expected_ids]), max_new_tokens=6, temperature=0,
                                         eos_token_id=tok.stop_token_ids)[0, len(expected_ids):].tolist(),
                          skip_special_tokens=True)
    r = run_cli("generate", "--temperature", "0", "-n", "6", "--no-progress", r"Line one\nLine two")
    assert r.returncode == 0 and r.stdout.decode() == expected + "\n"
    raw_ids = tok.encode(r"Line one\nLine two")
    raw = tok.decode(model.generate(np.array([raw_ids]), max_new_tokens=6, temperature=0,
                                    eos_token_id=tok.stop_token_ids)[0, len(raw_ids):].tolist(),
                     skip_special_tokens=True)
    r = run_cli("generate", "--temperature", "0", "-n", "6", "--no-progress", "--no-escape", r"Line one\nLine two")
    assert r.returncode == 0 and r.stdout.decode() == raw + "\n"


def test_prompt_from_a_file(smol, tmp_path):
    model, tok = smol
    text = "The three laws of thermodynamics are"
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    ids = tok.encode(text)
    expected = tok.decode(model.generate(np.array([ids]), max_new_tokens=8, temperature=0,
                                         eos_token_id=tok.stop_token_ids)[0, len(ids):].tolist(),
                          skip_special_tokens=True)
    r = run_cli("generate", "--temperature", "0", "-n", "8", "--no-progress", "-f", str(tmp_path / "p.txt"))
    assert r.returncode == 0 and r.stdout.decode() == expected + "\n"
    assert_one_line_error(run_cli("generate", "--no-progress", "-f", str(tmp_path / "missing.txt")), "missing.txt")
    assert_one_line_error(run_cli("generate", "--no-progress", "-f", str(tmp_path / "p.txt"), "another prompt"),
                          "-f")


# ------------------------------------------------------------------ one line, exit 2, no traceback
def test_bad_utf8_prompt_as_an_argument_on_stdin_in_a_file_and_in_chat(tmp_path):
    bad = b"caf\xe9 \xff"   # Latin-1, not UTF-8
    assert_one_line_error(run_cli("generate", "--no-progress", "-n", "2", os.fsdecode(bad)), "UTF-8")
    assert_one_line_error(run_cli("generate", "--no-progress", "-n", "2", input=bad), "UTF-8")
    (tmp_path / "bad.txt").write_bytes(bad)
    assert_one_line_error(run_cli("generate", "--no-progress", "-n", "2", "-f", str(tmp_path / "bad.txt")),
                          "UTF-8", "bad.txt")
    assert_one_line_error(run_cli("chat", "--no-progress", "-n", "2", input=b"hello\n" + bad + b"\n"), "UTF-8")


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_bad_thread_count_in_the_environment_is_named(value):
    assert_one_line_error(run_cli("info", "--no-progress", env={"NPLLM_NUM_THREADS": value}), "NPLLM_NUM_THREADS")


@pytest.mark.parametrize("args,needle", [
    (["info", "-c", "-1"], "--context"), (["info", "-c", "0"], "--context"), (["info", "-c", "x"], "--context"),
    (["generate", "-n", "-5", "hi"], "--max-new-tokens"), (["generate", "-t", "0", "hi"], "--threads"),
    (["perplexity", "-c", "1", "/etc/hostname"], "--context"), (["generate", "--bogus", "hi"], "--bogus"),
])
def test_bad_numbers_and_flags_are_one_line(args, needle):
    assert_one_line_error(run_cli(*args, "--no-progress"), needle)


@pytest.mark.parametrize("command", [["info"], ["generate", "hi"], ["chat"], ["perplexity", "/etc/hostname"]])
def test_an_hf_directory_without_a_tokenizer(bare_hf_dir, command):
    r = run_cli(*command, "--no-progress", "-m", bare_hf_dir, input=b"hi\n")
    if command == ["info"]:   # info needs no tokenizer: it says there is none
        assert r.returncode == 0, r.stderr
        assert "no tokenizer" in r.stdout.decode()
    else:
        assert_one_line_error(r, "tokenizer.json")


def test_perplexity_context_beyond_the_model_is_refused(smol, tmp_path):
    (tmp_path / "t.txt").write_text("word " * 50)
    assert_one_line_error(run_cli("perplexity", "--no-progress", "-c", "100000", str(tmp_path / "t.txt")),
                          "-c", "8192")


def test_perplexity_reads_the_text_with_dash_f_as_llama_perplexity_does(tmp_path):
    # llama-perplexity takes the text as -f FILE; the positional form stays; both at once is ambiguous.
    (tmp_path / "t.txt").write_text("word " * 50)
    r = run_cli("perplexity", "--no-progress", "-c", "100000", "-f", str(tmp_path / "t.txt"))
    assert_one_line_error(r, "-c", "8192")            # got past argument parsing to the context check
    assert_one_line_error(run_cli("perplexity", "--no-progress"), "-f")
    assert_one_line_error(run_cli("perplexity", "--no-progress", "-f", "a.txt", "b.txt"), "-f")


# ------------------------------------------------------------------ chat past the context
def test_chat_drops_the_oldest_turns_past_the_context_and_says_so(tmp_path):
    # A tiny context (-c 120): a few turns fill it; the chat goes on, dropping the oldest turns.
    turns = b"".join(b"Tell me a fact about the number %d.\n" % i for i in range(8))
    r = run_cli("chat", "--no-progress", "--temperature", "0", "-n", "12", "-c", "120", "--system", "Be brief.",
                input=turns)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "Traceback" not in err
    assert "dropped" in err and "oldest" in err, err
    assert len([line for line in r.stdout.decode().splitlines() if line.strip()]) >= 8


def test_chat_message_longer_than_the_context_is_one_line():
    r = run_cli("chat", "--no-progress", "-n", "4", "-c", "64", input=("word " * 200 + "\n").encode())
    assert_one_line_error(r, "context")
    assert "truncate_prompt" not in r.stderr.decode()   # no Python-only advice for a CLI user


def test_cache_type_flags_choose_the_kv_cache_dtype_and_name_a_conflict():
    # llama.cpp's -ctk/-ctv: the default model (quantized) stores fp16; f32 doubles the bytes, which
    # `info` computes with kv_cache_bytes' formula (2 x 30 layers x 3 kv heads x 2048 x 64 x sizeof)
    fp16_bytes = 2 * 30 * 3 * 2048 * 64 * 2
    for flags, dtype, size in (([], "float16", fp16_bytes), (["-ctk", "f32"], "float32", 2 * fp16_bytes),
                               (["--cache-type-v", "f32"], "float32", 2 * fp16_bytes),
                               (["-ctk", "f16", "-ctv", "f16"], "float16", fp16_bytes)):
        r = run_cli("info", "--no-progress", *flags)
        line = next(x for x in r.stdout.decode().splitlines() if x.startswith("KV cache for 2048 tokens"))
        assert f"{size:,} bytes as run ({dtype}" in line, (flags, line)
    assert_one_line_error(run_cli("info", "--no-progress", "-ctk", "f32", "-ctv", "f16"),
                          "-ctk/--cache-type-k f32", "-ctv/--cache-type-v f16")
    r = run_cli("generate", "-ctk", "q8_0", "hi")
    assert r.returncode == 2 and b"q8_0" in r.stderr    # argparse names the bad choice
