"""Parity with HF transformers: random tiny Llama / Mistral / Qwen2 models, left-padded batch."""

import numpy as np
import pytest
import torch
import transformers

import npllm
from npllm import CausalLM, ModelConfig

ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(attention_bias=False)),
    "llama_bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(attention_bias=True)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(sliding_window=None)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict()),
}


def hf_model(arch, tie, seed=0):
    cfg_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    cfg = cfg_cls(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=tie,
                  initializer_range=0.1, **extra)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def load_into_npllm(model):
    config = ModelConfig.from_dict(model.config.to_dict())
    ours = CausalLM(config, init=False)
    ours.load_state_dict(model.state_dict())
    return ours


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_hf_on_a_left_padded_batch(arch, tie):
    model = hf_model(arch, tie)
    ours = load_into_npllm(model)
    assert ours.config.tie_word_embeddings == tie
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 101, size=(3, 10))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    pos = np.where(mask == 0, 1, np.cumsum(mask, 1) - 1)  # what HF generate passes
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         position_ids=torch.from_numpy(pos)).logits.numpy()
    logits, _ = ours.forward(ids, attention_mask=mask)
    real = mask.astype(bool)
    diff = np.abs(logits - expected)[real].max()
    assert diff <= 1e-4, diff
    assert np.abs(expected).max() > 0.1  # the comparison is not between near-zero logits


def test_hf_incremental_cache_matches_npllm_static_cache():
    model = hf_model("llama", True, seed=3)
    ours = load_into_npllm(model)
    ids = np.random.default_rng(2).integers(0, 101, size=(1, 7))
    with torch.no_grad():
        out = model(torch.from_numpy(ids[:, :4]), use_cache=True)
        past = out.past_key_values
        hf_steps = [out.logits.numpy()]
        for t in range(4, 7):
            out = model(torch.from_numpy(ids[:, t:t + 1]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            hf_steps.append(out.logits.numpy())
    cache = ours.new_cache(1, 7)
    steps = [ours.forward(ids[:, :4], past_key_values=cache, use_cache=True)[0]]
    for t in range(4, 7):
        steps.append(ours.forward(ids[:, t:t + 1], past_key_values=cache, use_cache=True)[0])
    assert np.abs(np.concatenate(steps, 1) - np.concatenate(hf_steps, 1)).max() <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("shard", [None, "30KB"], ids=["single", "sharded"])
def test_save_pretrained_directory_loads_with_from_pretrained(tmp_path, arch, shard):
    model = hf_model(arch, tie=(arch == "qwen2"), seed=4)
    model.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    ours = CausalLM.from_pretrained(str(tmp_path))
    ids = np.random.default_rng(3).integers(0, 101, size=(2, 8))
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).logits.numpy()
    logits, _ = ours.forward(ids)
    assert np.abs(logits - expected).max() <= 1e-4
    model2, tok = npllm.load(str(tmp_path))      # no tokenizer files in a bare save_pretrained
    assert tok is None and model2.config == ours.config
