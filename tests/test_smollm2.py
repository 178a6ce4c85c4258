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
