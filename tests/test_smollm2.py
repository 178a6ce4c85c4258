"""The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), against HF transformers.

HF loads the same GGUF and dequantizes it to fp32 — the numerical reference.
npllm keeps the weights quantized and multiplies block by block.
"""

import os

import numpy as np
import pytest
import torch

import npllm

PROMPTS_RAW = [
    "The three laws of thermodynamics are",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]
PROMPTS_CHAT = [
    "What is the capital of France? Answer in one sentence.",
    "Give me three tips for learning a new language.",
]
N_NEW = 48


@pytest.fixture(scope="module")
def hf(smollm2_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(smollm2_gguf)
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
    return npllm.load(smollm2_gguf)


def prompt_ids(kind, text, tok):
    if kind == "chat":
        return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return tok.encode(text)


def all_prompts():
    return [("raw", p) for p in PROMPTS_RAW] + [("chat", p) for p in PROMPTS_CHAT]


def test_prompt_ids_match_hf(hf, ours):
    hf_model, hf_tok = hf
    _, tok = ours
    for kind, text in all_prompts():
        if kind == "chat":
            expected = hf_tok.apply_chat_template([{"role": "user", "content": text}],
                                                  add_generation_prompt=True, tokenize=True)
            expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        else:
            expected = hf_tok(text)["input_ids"]
        assert prompt_ids(kind, text, tok) == list(expected)


def test_last_position_logits_match_hf(hf, ours):
    hf_model, _ = hf
    model, tok = ours
    worst = 0.0
    for kind, text in all_prompts():
        ids = np.array([prompt_ids(kind, text, tok)])
        with torch.no_grad():
            expected = hf_model(torch.from_numpy(ids)).logits[0, -1].numpy()
        logits, _ = model.forward(ids, logits_to_keep=1)
        worst = max(worst, float(np.abs(logits[0, -1] - expected).max()))
    assert worst <= 2e-3, worst


def test_greedy_continuations_are_token_identical_to_hf(hf, ours):
    hf_model, _ = hf
    model, tok = ours
    for kind, text in all_prompts():
        ids = np.array([prompt_ids(kind, text, tok)])
        with torch.no_grad():
            expected = hf_model.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                                         max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False,
                                         eos_token_id=tok.stop_token_ids, pad_token_id=tok.pad_token_id)[0].numpy()
        got = model.generate(ids, max_new_tokens=N_NEW, min_new_tokens=N_NEW, temperature=0,
                             eos_token_id=tok.stop_token_ids)[0]
        assert len(got) == ids.shape[1] + N_NEW
        assert got.tolist() == expected.tolist(), (kind, text)


# A multi-paragraph text (written for this test) for perplexity: about 500 tokens.
PPL_TEXT = """\
The lighthouse stood at the end of a long stone pier, and for most of the year nobody went \
there except the keeper. She climbed the spiral stairs twice a day, once at dusk to light the \
lamp and once at dawn to put it out, and in between she wrote letters that she never sent. The \
letters were about small things: the colour of the water after a storm, a gull that had learned \
to knock on the window, the way the fog arrived from the east like a slow grey tide.

In the village, people said the keeper had once been a mathematician. Some claimed she had \
worked on the theory of waves, others that she had simply grown tired of cities. When children \
asked her, she only smiled and showed them how to measure the height of a cliff with a stick \
and a shadow. If the stick is one metre tall and its shadow is two metres long, she explained, \
then a cliff whose shadow is eighty metres long must be forty metres high.

Every spring the supply boat brought flour, oil, paraffin and a bundle of newspapers. The \
keeper read the papers in order, one each morning, so that the news arrived a day at a time as \
it would have for everyone else, only a few months late. By the time she learned who had won \
an election, the winners had already disappointed the people who voted for them, and she found \
this oddly comforting.

One winter a storm broke the great lens. The light still burned, but without the lens it \
reached only a short way into the dark. The keeper wrote to the harbour authority, then to the \
ministry, and finally to a glassmaker in the north whose name she found in an old catalogue. \
The glassmaker wrote back within a week. He could not make a new lens, he said, but he could \
teach her how to repair the old one, if she was patient and did not mind cutting her fingers.

So through the coldest months she worked at the kitchen table with resin, clamps and a small \
grinding wheel. She fitted the broken prisms together piece by piece, checking each angle \
against the drawings he sent. When the lens was whole again, she carried it up the stairs, \
set it in its frame and waited for night. The beam swept across the water as far as the \
horizon, and somewhere out there, she supposed, a ship changed its course a little and went \
safely home.
"""


def test_perplexity_fast_path_equals_fp32_reference_path_and_hf(hf, ours, smollm2_gguf):
    # The fast path (quantized kernels, blocked attention, BLAS tiles) against the readable one:
    # fp32 dequantized weights through the NumPy references (HF's way of loading a GGUF), and
    # against HF transformers' own logits on the same chunks.  Issue 5: within 0.1%.
    from npllm import _jit
    from npllm.perplexity import _token_nll, perplexity

    model, tok = ours
    context = 128
    fast = perplexity(model, tok, PPL_TEXT, context=context)
    assert fast.n_chunks >= 3 and fast.n_scored == fast.n_chunks * (context // 2 - 1)
    dense = npllm.CausalLM.from_pretrained(smollm2_gguf, dequantize=True)
    _jit.use_reference(True)
    try:
        ref = perplexity(dense, tok, PPL_TEXT, context=context)
    finally:
        _jit.use_reference(False)
    assert abs(fast.perplexity / ref.perplexity - 1) < 1e-3, (fast, ref)

    hf_model, _ = hf
    ids = np.array(tok.encode(PPL_TEXT))
    total, count = 0.0, 0
    for start in range(0, len(ids) - context + 1, context):
        chunk = ids[start:start + context]
        with torch.no_grad():
            logits = hf_model(torch.from_numpy(chunk[None])).logits[0].numpy()
        nll = _token_nll(logits[context // 2:-1], chunk[context // 2 + 1:])
        total, count = total + nll.sum(), count + len(nll)
    assert count == fast.n_scored
    hf_ppl = float(np.exp(total / count))
    assert abs(fast.perplexity / hf_ppl - 1) < 1e-3, (fast.perplexity, hf_ppl)
    assert 1.0 < fast.perplexity < 100.0  # an English story, not noise


def test_reference_paths_give_the_same_greedy_tokens(ours, smollm2_gguf):
    # Issue 5: the pure-NumPy path (npllm's switch, and Numba switched off altogether in a
    # fresh process) generates the same tokens as the kernels.
    import json
    import subprocess
    import sys

    from npllm import _jit

    model, tok = ours
    ids = np.array([tok.encode("The three laws of thermodynamics are")])
    fast = model.generate(ids, max_new_tokens=8, temperature=0)[0].tolist()
    _jit.use_reference(True)
    try:
        ref = model.generate(ids, max_new_tokens=8, temperature=0)[0].tolist()
    finally:
        _jit.use_reference(False)
    assert ref == fast
    code = ("import json, sys, numpy as np, npllm; m, t = npllm.load(sys.argv[1]); "
            "ids = np.array([t.encode('The three laws of thermodynamics are')]); "
            "print(json.dumps(m.generate(ids, max_new_tokens=4, temperature=0)[0].tolist()))")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run([sys.executable, "-c", code, smollm2_gguf], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == fast[:ids.shape[1] + 4]
