"""The causal LM (lesson 05): parity with reference/ (PyTorch), cache forms, state dict, config."""

import numpy as np
import pytest
import torch

from npllm import CausalLM, KVCache, ModelConfig, kv_cache_bytes
from npllm.config import llama_7b_config, tiny_config
from npllm.errors import ConfigError, ModelFormatError
from reference.model import CausalLM as TorchCausalLM

CONFIGS = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa_8_2": dict(num_attention_heads=8, num_key_value_heads=2),
    "gqa_9_3": dict(num_attention_heads=9, num_key_value_heads=3, hidden_size=72),
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "untied": dict(tie_word_embeddings=False),
    "layernorm": dict(use_rms_norm=False),
    "qkv_bias": dict(attention_bias=True, o_proj_bias=False),
    "all_bias": dict(attention_bias=True),
}


def make_config(**overrides):
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.1)
    base.update(overrides)
    return ModelConfig(**base)


def randomize(model, seed):
    """Give norms/biases random values too, so they are really tested."""
    rng = np.random.default_rng(seed)
    sd = {k: (v + rng.normal(scale=0.1, size=v.shape)).astype(v.dtype) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    return sd


def torch_twin(config, state_dict, dtype):
    ref = TorchCausalLM(config).to(dtype)
    missing = ref.load_state_dict({k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in state_dict.items()},
                                  strict=False)
    assert missing.unexpected_keys == []
    assert all(k == "lm_head.weight" for k in missing.missing_keys)  # tied head shares the embedding
    return ref.eval()


def left_padded_batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_match_reference_pytorch(name, dtype):
    config = make_config(**CONFIGS[name])
    model = CausalLM(config, seed=1, dtype=dtype)
    sd = randomize(model, 2)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    ref = torch_twin(config, sd, tdtype)
    ids, mask = left_padded_batch(config.vocab_size)
    logits, _ = model.forward(ids, attention_mask=mask)
    with torch.no_grad():
        expected, _ = ref(torch.from_numpy(ids), torch.from_numpy(mask))
    real = mask.astype(bool)  # padded query positions carry no meaning
    diff = np.abs(logits - expected.numpy())[real].max()
    assert diff <= (1e-10 if dtype == np.float64 else 1e-5), diff


@pytest.mark.parametrize("cache_form", ["concat", "static"])
@pytest.mark.parametrize("name", ["gqa_8_2", "layernorm", "qkv_bias"])
def test_incremental_decoding_reproduces_the_full_forward(cache_form, name):
    config = make_config(**CONFIGS[name])
    model = CausalLM(config, seed=3, dtype=np.float64)
    randomize(model, 4)
    ids, mask = left_padded_batch(config.vocab_size, seed=5)
    full, _ = model.forward(ids, attention_mask=mask)
    prefill = 4
    past = model.new_cache(3, ids.shape[1]) if cache_form == "static" else None
    logits, past = model.forward(ids[:, :prefill], attention_mask=mask[:, :prefill],
                                 past_key_values=past, use_cache=True)
    steps = [logits]
    for t in range(prefill, ids.shape[1]):
        logits, past = model.forward(ids[:, t:t + 1], attention_mask=mask[:, :t + 1],
                                     past_key_values=past, use_cache=True)
        steps.append(logits)
    inc = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    assert np.abs(inc - full)[real].max() < 1e-10
    if cache_form == "concat":
        assert len(past) == config.num_hidden_layers
        assert past[0][0].shape == (3, config.num_key_value_heads, ids.shape[1], config.head_dim)
    else:
        assert isinstance(past, KVCache) and past.length == ids.shape[1]


def test_both_cache_forms_give_identical_logits():
    config = make_config()
    model = CausalLM(config, seed=6)
    ids = np.random.default_rng(7).integers(0, config.vocab_size, size=(2, 6))
    concat, static = None, model.new_cache(2, 6)
    for t in range(6):
        a, concat = model.forward(ids[:, t:t + 1], past_key_values=concat, use_cache=True)
        b, static = model.forward(ids[:, t:t + 1], past_key_values=static, use_cache=True)
        # fp32: the fused decode kernel sums in another order, so equal up to rounding
        assert np.abs(a - b).max() <= 1e-5


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    config = make_config()
    model = CausalLM(config, seed=8)
    ids = np.random.default_rng(9).integers(0, config.vocab_size, size=(1, 8))
    a, _ = model.forward(ids)
    ids2 = ids.copy()
    ids2[0, 5] = (ids2[0, 5] + 1) % config.vocab_size
    b, _ = model.forward(ids2)
    assert np.array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_left_padding_does_not_change_a_rows_logits():
    config = make_config()
    model = CausalLM(config, seed=10, dtype=np.float64)
    ids = np.random.default_rng(11).integers(1, config.vocab_size, size=(1, 5))
    alone, _ = model.forward(ids)
    padded = np.concatenate([np.zeros((1, 3), np.int64), ids], axis=1)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1]])
    batched, _ = model.forward(padded, attention_mask=mask)
    assert np.abs(batched[:, 3:] - alone).max() < 1e-12


# --------------------------------------------------------------------------- weights
def test_tied_head_is_the_embedding_array_itself():
    model = CausalLM(make_config(tie_word_embeddings=True))
    assert model.lm_head is model.embed_tokens
    assert "lm_head.weight" not in model.state_dict()


def test_tying_saves_the_vocab_times_hidden_parameters():
    tied = CausalLM(tiny_config.replace(num_hidden_layers=1, tie_word_embeddings=True))
    untied = CausalLM(tiny_config.replace(num_hidden_layers=1, tie_word_embeddings=False))
    V, D = tiny_config.vocab_size, tiny_config.hidden_size
    assert untied.num_parameters() - tied.num_parameters() == V * D
    # Embedding + head are most of this tiny model: tying saves close to half of them.
    assert tied.num_parameters() < 0.6 * untied.num_parameters()


def test_init_is_seeded_normal_with_initializer_range():
    config = make_config(initializer_range=0.05, hidden_size=128, vocab_size=2000)
    a, b, c = CausalLM(config, seed=1), CausalLM(config, seed=1), CausalLM(config, seed=2)
    w = a.embed_tokens
    assert np.array_equal(w, b.embed_tokens) and not np.array_equal(w, c.embed_tokens)
    assert abs(w.std() - 0.05) < 0.002 and abs(w.mean()) < 0.002
    assert np.all(a.params["model.norm.weight"] == 1)


def test_tied_model_loads_with_or_without_lm_head_key():
    config = make_config()
    src = CausalLM(config, seed=1)
    sd = dict(src.state_dict())
    dst = CausalLM(config, seed=2)
    dst.load_state_dict(sd)
    assert np.array_equal(dst.embed_tokens, src.embed_tokens)
    dst.load_state_dict({**sd, "lm_head.weight": sd["model.embed_tokens.weight"]})
    assert dst.lm_head is dst.embed_tokens


def test_load_state_dict_reports_all_problems_at_once():
    config = make_config()
    model = CausalLM(config)
    sd = dict(model.state_dict())
    del sd["model.norm.weight"]
    sd["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    sd["model.bogus"] = np.zeros(1)
    with pytest.raises(ModelFormatError) as e:
        model.load_state_dict(sd)
    msg = str(e.value)
    assert "model.norm.weight" in msg and "model.bogus" in msg and "q_proj" in msg
    assert isinstance(e.value, ValueError)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs,field", [
    (dict(hidden_size=65, num_attention_heads=4), "hidden_size"),
    (dict(num_attention_heads=8, num_key_value_heads=3), "num_key_value_heads"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(num_hidden_layers=-1), "num_hidden_layers"),
    (dict(intermediate_size=0), "intermediate_size"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(hidden_act="gelu"), "hidden_act"),
])
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_config(**kwargs)
    assert isinstance(e.value, ValueError)


def test_from_dict_reads_hf_llama_mistral_qwen2():
    base = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6)
    llama = ModelConfig.from_dict({**base, "model_type": "llama", "rope_theta": 500000.0})
    assert llama.rope_theta == 500000.0 and not llama.attention_bias
    new_style = ModelConfig.from_dict({**base, "model_type": "llama",
                                       "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert new_style.rope_theta == 1e6
    qwen = ModelConfig.from_dict({**base, "model_type": "qwen2"})
    assert qwen.attention_bias and not qwen.o_proj_bias
    mistral = ModelConfig.from_dict({**base, "model_type": "mistral", "head_dim": None})
    assert mistral.head_dim == 16 and mistral.num_key_value_groups == 2
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig.from_dict({**base, "model_type": "gpt2"})
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelConfig.from_dict({k: v for k, v in base.items() if k != "hidden_size"})


def test_kv_cache_bytes_uses_the_seeds_formula():
    assert kv_cache_bytes(llama_7b_config, 1, 4096, "float16") == 2 * 1024 ** 3
    gqa = llama_7b_config.replace(num_key_value_heads=8)
    assert kv_cache_bytes(gqa, 1, 4096, "float16") == 512 * 1024 ** 2
    config = make_config()
    cache = CausalLM(config).new_cache(3, 17)
    assert cache.nbytes == kv_cache_bytes(config, 3, 17, "float32")


def test_presets_match_the_seed():
    assert (tiny_config.hidden_size, tiny_config.num_hidden_layers, tiny_config.num_attention_heads,
            tiny_config.intermediate_size, tiny_config.vocab_size) == (128, 4, 4, 512, 32000)
    assert (llama_7b_config.hidden_size, llama_7b_config.num_hidden_layers,
            llama_7b_config.intermediate_size, llama_7b_config.max_position_embeddings) == (4096, 32, 11008, 4096)


@pytest.mark.parametrize("name", ["gqa_8_2", "mqa", "qkv_bias"])
def test_fused_decode_step_equals_the_readable_path(name):
    """forward(T=1, KVCache) takes the fused decode path; the concat cache takes the readable one."""
    check_decode_paths({**CONFIGS, **KNOB_CONFIGS}[name])


@pytest.mark.parametrize("name", ["gemma_knobs", "nope_layer", "fused_checkpoint"])
def test_fused_decode_step_with_family_knobs_equals_the_readable_path(name):
    check_decode_paths({**CONFIGS, **KNOB_CONFIGS}[name])


def check_decode_paths(overrides):
    config = make_config(**overrides)
    model = CausalLM(config, seed=12, dtype=np.float64)
    randomize(model, 13)
    ids, mask = left_padded_batch(config.vocab_size, seed=14)
    full, _ = model.forward(ids, attention_mask=mask)
    static, concat = model.new_cache(3, ids.shape[1]), None
    for t in range(ids.shape[1]):
        a, static = model.forward(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=static,
                                  use_cache=True)
        b, concat = model.forward(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=concat,
                                  use_cache=True)
        rows = mask[:, t].astype(bool)
        assert np.abs(a - b)[rows].max() < 1e-12
        assert np.abs(a[:, 0] - full[:, t])[rows].max() < 1e-10   # and both equal the full forward


# Family knobs (lesson 08) the decode paths must carry: Gemma 3's (GELU, 1 + w norms, q/k norms,
# sandwich norms, scale, softcap, sliding window on some layers, a local RoPE base), NoPE layers.
KNOB_CONFIGS = {
    "gemma_knobs": dict(hidden_act="gelu_pytorch_tanh", norm_weight_offset=1.0, qk_norm=True, sandwich_norms=True,
                        query_pre_attn_scalar=20.0, attn_logit_softcapping=3.0, sliding_window=3,
                        layer_types=["sliding_attention", "full_attention"], rope_local_base_freq=100.0,
                        embed_scale=8.0, final_logit_softcapping=4.0),
    "nope_layer": dict(no_rope_layers=[1, 0], num_attention_heads=8, num_key_value_heads=2),
    "fused_checkpoint": dict(fused_qkv=True, fused_gate_up=True, attention_bias=True, o_proj_bias=False),
}


@pytest.mark.parametrize("kv", ["float32", "float16"])
@pytest.mark.parametrize("name,qtype", [("gqa_8_2", "Q4_1"), ("qkv_bias", "Q8_0"), ("mqa", "Q4_0"),
                                        ("gemma_knobs", "Q8_0"), ("nope_layer", "Q4_0"),
                                        ("fused_checkpoint", "Q4_1"), ("qkv_bias", "Q4_0+v:Q8_0")])
def test_one_call_decode_layer_equals_the_op_by_op_decode(name, qtype, kv):
    """ops/decode_layer.py runs a quantized layer's decode step in one Numba call; it must give
    what TransformerBlock.decode's op-by-op path gives (the same kernels), on a left-padded batch,
    and both must agree with the readable concat-cache path on the dequantized weights (an fp16
    cache: with the dequantized model decoding through an fp16 ``KVCache`` of its own)."""
    import gguf

    from npllm.quant import QuantizedWeight

    config = make_config(**{**CONFIGS, **KNOB_CONFIGS}[name], hidden_size=64, intermediate_size=96)
    model = CausalLM(config, seed=21)
    sd = randomize(model, 22)
    main, _, v_type = qtype.partition("+v:")   # "+v:T": v_proj of another type (q|k|v not fusable)

    def quantize(k, v):
        t = gguf.GGMLQuantizationType[v_type if v_type and ".v_proj." in k else main]
        return QuantizedWeight.from_raw(np.asarray(gguf.quants.quantize(v, t)).view(np.uint8), int(t), v.shape)

    quantized = {k: (quantize(k, v) if v.ndim == 2 and k != "model.embed_tokens.weight" else v)
                 for k, v in sd.items()}
    qmodel = CausalLM(config, init=False)
    qmodel.load_state_dict(quantized)
    one_call = [layer.one_call for layer in qmodel.layers]
    assert all(args is not None for args in one_call)
    dense = CausalLM(config, init=False)
    dense.load_state_dict({k: (v.dequantize() if isinstance(v, QuantizedWeight) else v) for k, v in quantized.items()})
    ids, mask = left_padded_batch(config.vocab_size, seed=23)
    assert qmodel.kv_dtype == np.float16 and dense.kv_dtype == np.float32   # the defaults
    one, ops = qmodel.new_cache(3, ids.shape[1], dtype=kv), qmodel.new_cache(3, ids.shape[1], dtype=kv)
    concat = None if kv == "float32" else dense.new_cache(3, ids.shape[1], dtype=kv)
    for step in range(ids.shape[1]):
        args = dict(attention_mask=mask[:, :step + 1], use_cache=True)
        a, one = qmodel.forward(ids[:, step:step + 1], past_key_values=one, **args)
        for layer in qmodel.layers:
            layer.one_call = None
        b, ops = qmodel.forward(ids[:, step:step + 1], past_key_values=ops, **args)
        for layer, saved in zip(qmodel.layers, one_call):
            layer.one_call = saved
        c, concat = dense.forward(ids[:, step:step + 1], past_key_values=concat, **args)
        rows = mask[:, step].astype(bool)
        assert np.abs(a - b)[rows].max() <= 1e-6
        # fp16: two fp32 keys one ulp apart may round to fp16 values one fp16 ulp (2**-11) apart
        assert np.abs(a - c)[rows].max() <= (1e-4 if kv == "float32" else 2e-3)


def test_decode_attention_kernel_equals_reference(rng):
    from npllm.ops.attention import _decode_attention_kernel, cache_rows, decode_attention_ref
    from npllm.ops.rope import rope_cos_sin

    B, H, Hkv, Dh, S_max, length = 2, 6, 2, 8, 10, 6
    q, k, v = rng.normal(size=(B, H * Dh)), rng.normal(size=(B, Hkv * Dh)), rng.normal(size=(B, Hkv * Dh))
    cos, sin = rope_cos_sin(np.array([[6], [4]]), Dh, 10000.0, np.float64)
    kc, vc = rng.normal(size=(B, Hkv, S_max, Dh)), rng.normal(size=(B, Hkv, S_max, Dh))
    mask = np.ones((B, length + 1), np.int64)
    mask[1, :2] = 0
    kc2, vc2 = kc.copy(), vc.copy()
    expected = decode_attention_ref(q, k, v, cos, sin, kc, vc, length, mask)
    out = np.empty_like(q)
    _decode_attention_kernel(q, k, v, cos, sin, kc2, vc2, *cache_rows(B, length), mask, out, Dh ** -0.5, 0.0, 0)
    assert np.allclose(out, expected, atol=1e-12)
    assert np.allclose(kc2, kc) and np.allclose(vc2, vc)   # both wrote the same cache entries


@pytest.mark.parametrize("window", [0, 1, 3, 6, 50])
@pytest.mark.parametrize("scale,softcap", [(0.5, 0.0), (0.2, 2.0)])
@pytest.mark.parametrize("rope", [True, False])
def test_decode_attention_kernel_knobs_equal_reference(rng, window, scale, softcap, rope):
    # sliding window, Gemma's scale and softcap, and a NoPE layer (no rotation), for one new token
    from npllm.ops.attention import _decode_attention_kernel, cache_rows, decode_attention_ref, no_rope
    from npllm.ops.rope import rope_cos_sin

    B, H, Hkv, Dh, S_max, length = 2, 6, 2, 8, 12, 8
    q, k, v = rng.normal(size=(B, H * Dh)), rng.normal(size=(B, Hkv * Dh)), rng.normal(size=(B, Hkv * Dh))
    cos, sin = rope_cos_sin(np.array([[8], [5]]), Dh, 10000.0, np.float64) if rope else (None, None)
    kc, vc = rng.normal(size=(B, Hkv, S_max, Dh)), rng.normal(size=(B, Hkv, S_max, Dh))
    mask = np.ones((B, length + 1), np.int64)
    mask[1, :3] = 0
    kc2, vc2 = kc.copy(), vc.copy()
    expected = decode_attention_ref(q, k, v, cos, sin, kc, vc, length, mask, scale, softcap or None, window or None)
    out = np.empty_like(q)
    kcos, ksin = (cos, sin) if rope else no_rope(B, np.float64)
    _decode_attention_kernel(q, k, v, kcos, ksin, kc2, vc2, *cache_rows(B, length), mask, out, scale, softcap,
                             window)
    assert np.allclose(out, expected, atol=1e-12)
    assert np.allclose(kc2, kc) and np.allclose(vc2, vc)


@pytest.mark.parametrize("window,softcap,rope", [(0, 0.0, True), (3, 2.0, False), (50, 0.0, True)])
def test_decode_attention_with_an_fp16_cache_equals_the_reference(rng, window, softcap, rope):
    # An fp16 KV cache (npllm/ops/half.py): the kernel, working on the cache's uint16 view, stores
    # what NumPy's reference stores (the float32 values rounded to fp16) and attends over the
    # stored values read back into float32.
    from npllm.ops.attention import decode_attention, decode_attention_ref
    from npllm.ops.rope import rope_cos_sin

    B, H, Hkv, Dh, S_max, length = 2, 6, 2, 8, 12, 8
    f32 = np.float32
    q, k, v = (rng.normal(size=(B, n * Dh)).astype(f32) for n in (H, Hkv, Hkv))
    cos, sin = rope_cos_sin(np.array([[8], [5]]), Dh, 10000.0, f32) if rope else (None, None)
    kc, vc = (rng.normal(size=(B, Hkv, S_max, Dh)).astype(np.float16) for _ in range(2))
    mask = np.ones((B, length + 1), np.int64)
    mask[1, :3] = 0
    kc2, vc2 = kc.copy(), vc.copy()
    knobs = dict(scale=0.4, softcap=softcap or None, window=window or None)
    expected = decode_attention_ref(q, k, v, cos, sin, kc, vc, length, mask, **knobs)
    got = decode_attention(q, k, v, cos, sin, kc2, vc2, length, mask, **knobs)
    assert kc2.dtype == np.float16 and got.dtype == f32
    assert np.array_equal(vc2.view(np.uint16), vc.view(np.uint16))       # v: the same rounding, bit for bit
    assert np.allclose(kc2.astype(f32), kc.astype(f32), rtol=2 ** -10, atol=0)  # k: RoPE'd in float32 first
    assert np.abs(got - expected).max() <= 1e-5
    assert np.array_equal(vc2[0, :, length].reshape(-1), v[0].astype(np.float16))   # the new position


@pytest.mark.parametrize("T", [3, 40])   # the kernel (T <= 16) and blocked prefill attention
def test_prefill_attention_over_an_fp16_cache_equals_the_reference_on_its_values(rng, T):
    from npllm.ops import attention, attention_ref, causal_padding_mask

    B, H, Hkv, Dh, past = 2, 4, 2, 8, 5
    q = rng.normal(size=(B, H, T, Dh)).astype(np.float32)
    k, v = (rng.normal(size=(B, Hkv, past + T, Dh)).astype(np.float16) for _ in range(2))
    mask = np.ones((B, past + T), np.int64)
    mask[1, :2] = 0
    allowed = causal_padding_mask(mask, past, T)
    expected = attention_ref(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), allowed)
    got = attention(q, k, v, allowed)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5


def test_kv_dtype_is_fp16_for_quantized_weights_and_the_model_dtype_otherwise():
    import gguf

    from npllm.quant import QuantizedWeight

    config = make_config(**CONFIGS["gqa_8_2"], hidden_size=64, intermediate_size=96)
    dense = CausalLM(config, seed=3)
    assert dense.kv_dtype == np.float32 and dense.new_cache(1, 4).keys[0].dtype == np.float32
    assert dense.astype(np.float64).kv_dtype == np.float64
    t = gguf.GGMLQuantizationType.Q8_0
    q = {k: (QuantizedWeight.from_raw(np.asarray(gguf.quants.quantize(v, t)).view(np.uint8), int(t), v.shape)
             if v.ndim == 2 and k != "model.embed_tokens.weight" else v) for k, v in randomize(dense, 4).items()}
    qmodel = CausalLM(config, init=False)
    qmodel.load_state_dict(q)
    assert qmodel.kv_dtype == np.float16
    cache = qmodel.new_cache(2, 16)
    assert cache.keys[0].dtype == np.float16 and cache.nbytes == kv_cache_bytes(config, 2, 16, "float16")
    qmodel.kv_dtype = "float32"
    assert qmodel.new_cache(1, 4).values[0].dtype == np.float32
    qmodel.kv_dtype = None
    assert qmodel.kv_dtype == np.float16
    for bad in ("int8", "q8_0", np.int32, 3):
        with pytest.raises(ConfigError, match="kv_dtype"):
            qmodel.kv_dtype = bad


@pytest.mark.parametrize("field,value", [
    ("hidden_size", "32"), ("hidden_size", -1), ("rms_norm_eps", "nan"), ("rms_norm_eps", float("nan")),
    ("rope_theta", "x"), ("tie_word_embeddings", "yes"), ("eos_token_id", "x"), ("num_hidden_layers", 2.5),
    ("hidden_size", None),
])
def test_from_dict_names_a_field_of_the_wrong_type(field, value):
    d = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, model_type="llama")
    d[field] = value
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_dict(d)
