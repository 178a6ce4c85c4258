"""Streaming text, stop strings and the CLI, on the default model (SmolLM2-135M)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import npllm
from npllm.streaming import StopStringCriteria, TextStreamer, held_back


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return npllm.load(smollm2_gguf)


def test_held_back_is_the_longest_tail_that_starts_a_stop_string():
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello", ["xyz"]) == 0
    assert held_back("ab\n", ["\n\n", "b\nc"]) == 2


def test_streamed_pieces_concatenate_to_decode_of_all_ids(smol):
    model, tok = smol
    # Text with multi-byte characters and spaces: pieces must never split UTF-8 or drop spaces.
    text = "Hello  world 你好 🙂🙂 naïve café\n\n  def f(x):\n\treturn x"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = []
    streamer = TextStreamer(tok, on_text=pieces.append)
    streamer.put(np.array([ids[:1]]))  # the prompt, which the streamer skips
    for i in ids:
        streamer.put(np.array([i]))
        assert "\ufffd" not in "".join(pieces)
    streamer.end()
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)


def test_stop_string_spanning_tokens_is_cut_and_not_printed(smol):
    model, tok = smol
    text = "alpha beta gamma delta"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) >= 4
    pieces = []
    streamer = TextStreamer(tok, stop_strings=["ta gam"], on_text=pieces.append)  # spans 'beta'|' gamma'
    for i in ids:
        streamer.put(np.array([i]))
        if streamer.stopped:
            break
    streamer.end()
    assert streamer.stopped
    assert "".join(pieces) == "alpha be"
    crit = StopStringCriteria(tok, ["ta gam"])
    seq = np.array([[5] + ids])
    assert crit(seq, seq[:, -1], 1).tolist() == [True]
    assert crit(seq[:, :3], seq[:, 2], 1).tolist() == [False]


def test_generate_stops_at_a_stop_string(smol):
    model, tok = smol
    ids = tok.encode("Count: 1, 2, 3, 4, 5,")
    pieces = []
    streamer = TextStreamer(tok, stop_strings=[" 8"], on_text=pieces.append)
    out = model.generate(np.array([ids]), max_new_tokens=16, temperature=0, streamer=streamer,
                         stopping_criteria=[streamer.stopping_criterion()], return_dict_in_generate=True)
    full = tok.decode(out.sequences[0, len(ids):].tolist())
    assert " 8" in full                        # the model does count on (greedy)
    assert "".join(pieces) == full[:full.index(" 8")]
    assert out.stop_reasons == ["stop"]


def run_cli(*args, env=None, input=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "npllm", *args], capture_output=True, text=True,
                          timeout=600, env=e, input=input)


def test_cli_generate_greedy_prints_the_same_text_as_model_generate(smol):
    model, tok = smol
    prompt = "The three laws of thermodynamics are"
    ids = tok.encode(prompt)
    expected = tok.decode(model.generate(np.array([ids]), max_new_tokens=12, temperature=0,
                                         eos_token_id=tok.stop_token_ids)[0, len(ids):].tolist(),
                          skip_special_tokens=True)
    r = run_cli("generate", "--temperature", "0", "--max-new-tokens", "12", "--no-progress", prompt)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"


def test_cli_info_reports_architecture_and_kv_bytes(smol):
    r = run_cli("info", "--context", "1024", "--no-progress")
    assert r.returncode == 0, r.stderr
    model, _ = smol
    kv = npllm.kv_cache_bytes(model.config, 1, 1024, "float16")
    assert "llama" in r.stdout and "Q4_1" in r.stdout and f"{kv:,}" in r.stdout
    assert f"{model.num_parameters():,}" in r.stdout


def test_cli_generate_with_a_chat_template_file_renders_it(smol, tmp_path):
    # --chat-template FILE replaces the model's template (for files that have none, as Gemma-3-270M)
    model, tok = smol
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<|im_start|>user\n{{ m['content'] | upper }}<|im_end|>\n"
                        "{% endfor %}<|im_start|>assistant\n")
    ids = tok.apply_chat_template([{"role": "user", "content": "name a colour"}],
                                  chat_template=template.read_text())
    assert tok.decode(ids).count("NAME A COLOUR") == 1
    expected = tok.decode(model.generate(np.array([ids]), max_new_tokens=6, temperature=0,
                                         eos_token_id=tok.stop_token_ids)[0, len(ids):].tolist(),
                          skip_special_tokens=True)
    r = run_cli("generate", "--temperature", "0", "-n", "6", "--no-progress", "--chat-template", str(template),
                "name a colour")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"
    r = run_cli("generate", "--no-progress", "--chat-template", str(tmp_path / "missing.jinja"), "hi")
    assert r.returncode == 2 and "missing.jinja" in r.stderr and "Traceback" not in r.stderr


def test_cli_info_prints_the_family_knobs(tmp_path):
    # a Gemma-2 GGUF (lesson 08): its knobs, one line each; the per-layer pattern summarised
    from test_families import hf_family_model
    from test_gguf_families import write_family_gguf

    path = tmp_path / "gemma2.gguf"
    write_family_gguf(hf_family_model("gemma2"), "gemma2", path, with_tokenizer=True)
    r = run_cli("info", "--no-progress", "-m", str(path))
    assert r.returncode == 0, r.stderr
    import re

    for knob, value in (("sandwich_norms", "True"), ("attn_logit_softcapping", "3"), ("final_logit_softcapping", "5"),
                        ("sliding_window", "5"), ("layer_types", r"2 sliding, 1 full \(full: layers 1\)"),
                        ("hidden_act", "gelu_pytorch_tanh"), ("norm_weight_offset", "1")):
        assert re.search(rf"^knob {knob} +{value}$", r.stdout, re.M), (knob, r.stdout)
    assert re.search(r"^knobs +none", run_cli("info", "--no-progress").stdout, re.M)


def test_cli_chat_answers_each_turn(smol):
    r = run_cli("chat", "--temperature", "0", "-n", "8", "--no-progress", "--system", "Be brief.",
                input="Hi!\nWhat is 2+2?\n")
    assert r.returncode == 0, r.stderr
    assert len([line for line in r.stdout.splitlines() if line.strip()]) >= 2


@pytest.mark.parametrize("args,needle", [
    (["generate", "--top-p", "1.5", "hi"], "top_p"),
    (["generate", "--temperature", "-1", "hi"], "temperature"),
    (["generate", "--model", "/nonexistent/model.gguf", "hi"], "/nonexistent/model.gguf"),
])
def test_cli_bad_input_prints_one_line_and_exits_nonzero(args, needle):
    r = run_cli(*args, "--no-progress")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines()
             if line.strip() and not line.startswith("npllm: compiling kernels")]  # (a notice, not an error)
    assert len(lines) == 1 and needle in lines[0], r.stderr
