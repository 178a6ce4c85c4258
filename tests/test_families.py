"""Model families (lesson 08): a random tiny HF model of each family, saved with ``save_pretrained``
and loaded from the directory, gives HF transformers' logits on a left-padded batch longer than the
sliding window, and HF's greedy ``generate`` tokens.

The expected values come from HF transformers 5.24 (``*ForCausalLM`` in eager attention), fed the
same weights.  The knobs each family turns are listed next to it; ``FAMILIES`` is also what the
GGUF tests (``tests/test_gguf_families.py``) write in llama.cpp's layout.
"""

import numpy as np
import pytest
import torch
import transformers

from npllm import CausalLM, ModelConfig
from npllm.errors import ConfigError

V, D, F, H, HKV, L, CTX = 97, 48, 64, 4, 2, 3, 128
WINDOW = 5
LONGROPE_ORIG = 16


def _longrope(n):
    rng = np.random.default_rng(7)
    return dict(rope_type="longrope", short_factor=[float(x) for x in 1 + rng.random(n)],
                long_factor=[float(x) for x in 2 + 4 * rng.random(n)])


# name -> (config class, model class, config fields, knobs npllm must report)
FAMILIES = {
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM",
                    dict(rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                                              high_freq_factor=4.0, original_max_position_embeddings=64)),
                    {"rope_scaling"}),
    "llama_linear": ("LlamaConfig", "LlamaForCausalLM",
                     dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0)), {"rope_scaling"}),
    "llama_dynamic": ("LlamaConfig", "LlamaForCausalLM",
                      dict(max_position_embeddings=12, rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0,
                                                                            factor=2.0)), {"rope_scaling"}),
    "llama_yarn": ("LlamaConfig", "LlamaForCausalLM",
                   dict(rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                             original_max_position_embeddings=32)), {"rope_scaling"}),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW), {"sliding_window"}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(), {"attention_bias"}),
    "qwen2_window": ("Qwen2Config", "Qwen2ForCausalLM",
                     dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
                     {"sliding_window", "layer_types"}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24), {"qk_norm", "head_dim"}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=16),
              {"hidden_act", "norm_weight_offset", "embed_scale", "head_dim"}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, attn_logit_softcapping=3.0,
                    final_logit_softcapping=5.0),
               {"hidden_act", "norm_weight_offset", "sandwich_norms", "embed_scale", "query_pre_attn_scalar",
                "attn_logit_softcapping", "final_logit_softcapping", "sliding_window", "layer_types", "head_dim"}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(head_dim=16, query_pre_attn_scalar=20, sliding_window=WINDOW,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    rope_parameters={"full_attention": dict(rope_type="linear", factor=2.0, rope_theta=1e6),
                                     "sliding_attention": dict(rope_type="default", rope_theta=1e4)}),
               {"hidden_act", "norm_weight_offset", "qk_norm", "sandwich_norms", "embed_scale", "sliding_window",
                "layer_types", "rope_local_base_freq", "rope_scaling", "query_pre_attn_scalar", "head_dim"}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(pad_token_id=0, bos_token_id=1, eos_token_id=2),
             {"fused_qkv", "fused_gate_up"}),
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM",
                      dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=CTX,
                           original_max_position_embeddings=LONGROPE_ORIG,
                           rope_parameters=dict(_longrope(D // H // 2), rope_theta=10000.0)),
                      {"fused_qkv", "fused_gate_up", "rope_scaling"}),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM",
                dict(num_hidden_layers=4, pad_token_id=0, bos_token_id=1, eos_token_id=2), {"no_rope_layers"}),
}


def hf_family_model(name, seed=0, **overrides):
    cfg_name, model_name, extra, _ = FAMILIES[name]
    torch.manual_seed(seed)
    fields = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
                  num_key_value_heads=HKV, max_position_embeddings=CTX, rms_norm_eps=1e-6, initializer_range=0.1,
                  tie_word_embeddings=name in ("qwen2", "gemma2", "smollm3"), attn_implementation="eager")
    fields.update(extra)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    for k in [k for k, v in overrides.items() if v is None]:
        fields.pop(k, None)
    config = getattr(transformers, cfg_name)(**fields)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # non-trivial norms (Gemma's start at 0 = a scale of 1) and biases
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def left_padded_batch(seed=1, lengths=(14, 9, 12)):
    """3 rows of different lengths, longer than the sliding window, left-padded (pad id 0)."""
    rng = np.random.default_rng(seed)
    T = max(lengths)
    ids = np.zeros((len(lengths), T), np.int64)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = rng.integers(3, V, n)
        mask[b, T - n:] = 1
    return ids, mask


def hf_logits(model, ids, mask):
    pos = np.where(mask == 0, 1, np.cumsum(mask, 1) - 1)  # what HF generate passes
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=torch.from_numpy(pos)).logits.numpy()


def assert_logits_close(ours, expected, mask):
    real = mask.astype(bool)
    err = np.abs(ours - expected)[real] / np.maximum(1.0, np.abs(expected)[real])
    assert err.max() <= 1e-4, err.max()
    assert np.abs(expected).max() > 0.1  # not a comparison of near-zero logits


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, HF model, npllm model loaded from the HF model's save_pretrained directory)."""
    name = request.param
    hf = hf_family_model(name)
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path)
    return name, hf, CausalLM.from_pretrained(str(path))


def test_logits_match_hf_on_a_left_padded_batch_longer_than_the_window(family):
    name, hf, ours = family
    ids, mask = left_padded_batch()
    assert ids.shape[1] > WINDOW
    logits, _ = ours.forward(ids, attention_mask=mask)
    assert_logits_close(logits, hf_logits(hf, ids, mask), mask)


def test_the_family_knobs_are_read_from_config_json(family):
    name, hf, ours = family
    assert set(ours.config.knobs()) >= FAMILIES[name][3]
    assert ours.config.model_type == hf.config.model_type


def test_greedy_generate_equals_hf_token_for_token(family):
    name, hf, ours = family
    ids, mask = left_padded_batch(seed=2)
    n_new = 10  # phi3_longrope crosses its original context (16) while generating: long factors
    with torch.no_grad():
        expected = hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                               do_sample=False, max_new_tokens=n_new, pad_token_id=0, eos_token_id=None,
                               top_k=None, top_p=None, temperature=None).numpy()
    out = ours.generate(ids, attention_mask=mask, max_new_tokens=n_new, temperature=0, pad_token_id=0,
                        eos_token_id=[])
    np.testing.assert_array_equal(out, expected)


def test_incremental_decoding_equals_the_full_forward(family):
    # the decode path (one token at a time, preallocated cache) against the whole sequence at once
    name, hf, ours = family
    ids, mask = left_padded_batch(seed=3)
    full, _ = ours.forward(ids, attention_mask=mask)
    cache = ours.new_cache(ids.shape[0], ids.shape[1])
    T0 = 7
    steps = [ours.forward(ids[:, :T0], attention_mask=mask[:, :T0], past_key_values=cache, use_cache=True)[0]]
    for t in range(T0, ids.shape[1]):
        steps.append(ours.forward(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache,
                                  use_cache=True)[0])
    inc = np.concatenate(steps, axis=1)
    if name in ("llama_dynamic", "phi3_longrope"):
        # their frequencies depend on the call's longest position: only the last step sees all of them
        return
    real = mask.astype(bool)
    assert np.abs(inc - full)[real].max() < 1e-4


def test_longrope_switches_to_the_long_factors_past_the_original_context():
    hf = hf_family_model("phi3_longrope")
    ours = CausalLM.from_pretrained(_saved(hf))
    ids, mask = left_padded_batch(seed=4, lengths=(LONGROPE_ORIG + 6, LONGROPE_ORIG - 3))
    assert_logits_close(ours.forward(ids, attention_mask=mask)[0], hf_logits(hf, ids, mask), mask)


def test_dynamic_rope_beyond_max_position_embeddings_matches_hf():
    hf = hf_family_model("llama_dynamic")  # max_position_embeddings 12: the batch of 14 is beyond it
    ours = CausalLM.from_pretrained(_saved(hf))
    ids, mask = left_padded_batch(seed=5)
    assert_logits_close(ours.forward(ids, attention_mask=mask)[0], hf_logits(hf, ids, mask), mask)


_SAVED = {}


def _saved(hf):
    import tempfile

    path = tempfile.mkdtemp(prefix="npllm-family-")
    hf.save_pretrained(path)
    _SAVED[path] = hf
    return path


# ------------------------------------------------------------------ what is refused
BASE = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H)


@pytest.mark.parametrize("fields,named", [
    (dict(model_type="llama", mlp_bias=True), "mlp_bias"),
    (dict(model_type="llama", rope_scaling=dict(rope_type="mrope", mrope_section=[2, 2])), "mrope"),
    (dict(model_type="llama", rope_scaling=dict(rope_type="linear")), "factor"),
    (dict(model_type="llama", rope_scaling=dict(rope_type="linear", factor=2.0, beta=3)), "beta"),
    (dict(model_type="phi3", partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(model_type="gemma3_text", use_bidirectional_attention=True), "use_bidirectional_attention"),
    (dict(model_type="gemma3", text_config={}), "gemma3"),
    (dict(model_type="falcon"), "model_type"),
    (dict(model_type="llama", hidden_act="gelu"), "hidden_act"),
    (dict(model_type="gemma2", layer_types=["sliding_attention"]), "layer_types"),
    (dict(model_type="smollm3", no_rope_layers=[1, 1]), "no_rope_layers"),
    (dict(model_type="phi3", rope_scaling=dict(type="longrope", short_factor=[1.0] * 3, long_factor=[1.0] * 3),
          original_max_position_embeddings=16), "short_factor"),
])
def test_a_knob_npllm_does_not_implement_is_an_error_naming_it(fields, named):
    with pytest.raises(ConfigError, match=named) as e:
        ModelConfig.from_dict({**BASE, **fields})
    assert isinstance(e.value, ValueError)


def test_to_dict_round_trips_every_family(family):
    name, hf, ours = family
    assert ModelConfig.from_dict(ours.config.to_dict()) == ours.config
