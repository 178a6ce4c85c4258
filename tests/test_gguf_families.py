"""Model families as GGUF files (lesson 08): the tiny HF models of ``tests/test_families.py`` written
in llama.cpp's layout give HF transformers' logits on the same weights.

The files are written here with ``gguf.GGUFWriter`` the way llama.cpp's ``convert_hf_to_gguf.py``
writes them: its tensor names (``attn_qkv``, ``attn_q_norm``, ``post_ffw_norm``...), its metadata
keys (``{arch}.attention.sliding_window``, ``{arch}.attn_logit_softcapping``, ``rope.scaling.*``),
Llama 3's RoPE scaling as the ``rope_freqs`` tensor and Phi-3's LongRoPE as ``rope_factors_*``,
Q/K rows permuted for ``llama``/``smollm3``, and Gemma's norms stored as ``1 + w``.  The expected
logits are HF's, from the HF model the file was written from.
"""

import math

import numpy as np
import pytest
import torch

from npllm import CausalLM
from npllm.errors import ModelFormatError
from npllm.io.gguf import read_gguf

from _helpers_io import llama_cpp_permute
from test_families import (FAMILIES, LONGROPE_ORIG, WINDOW, assert_logits_close, hf_family_model, hf_logits,
                           left_padded_batch)

gguf = pytest.importorskip("gguf")

ARCH = {"llama3_rope": "llama", "llama_linear": "llama", "llama_yarn": "llama", "mistral_window": "llama",
        "qwen2": "qwen2", "qwen2_window": "qwen2", "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2",
        "gemma3": "gemma3", "phi3": "phi3", "phi3_longrope": "phi3", "smollm3": "smollm3"}
# What GGUF cannot say, the HF models for these files leave at llama.cpp's hard-coded values:
# Gemma's attention scale is 1/sqrt(head_dim) and Gemma 3's window pattern is 5 local : 1 global.
GGUF_OVERRIDES = {"gemma2": dict(query_pre_attn_scalar=16),
                  "gemma3": dict(query_pre_attn_scalar=16, num_hidden_layers=6, layer_types=None)}
# (dynamic NTK RoPE has no GGUF encoding: llama.cpp does not implement it.)

_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
          "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "post_attention_layernorm": "ffn_norm"}
_GEMMA_NAMES = dict(_NAMES, post_attention_layernorm="post_attention_norm",
                    pre_feedforward_layernorm="ffn_norm", post_feedforward_layernorm="post_ffw_norm")


def llama3_rope_freqs(theta, dim, p):
    """llama.cpp's converter: one divisor per frequency for Llama 3's RoPE scaling."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    lo_wl, hi_wl = p["original_max_position_embeddings"] / p["low_freq_factor"], \
        p["original_max_position_embeddings"] / p["high_freq_factor"]
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(p["factor"])
        else:
            s = (p["original_max_position_embeddings"] / wl - p["low_freq_factor"]) / \
                (p["high_freq_factor"] - p["low_freq_factor"])
            out.append(1 / ((1 - s) / p["factor"] + s))
    return np.array(out, np.float32)


def write_family_gguf(hf, name, path, qtype=None, with_tokenizer=False):
    """``hf`` (a transformers model) as a GGUF of architecture ARCH[name], in llama.cpp's layout.
    ``with_tokenizer``: also a small byte-level vocabulary of the model's size (for ``npllm.load``)."""
    arch, c = ARCH[name], hf.config
    a = arch + "."
    w = gguf.GGUFWriter(str(path), arch)
    Dh = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = c.rope_parameters
    full = rope.get("full_attention", rope)
    w.add_uint32(a + "block_count", c.num_hidden_layers)
    w.add_uint32(a + "context_length", c.max_position_embeddings)
    w.add_uint32(a + "embedding_length", c.hidden_size)
    w.add_uint32(a + "feed_forward_length", c.intermediate_size)
    w.add_uint32(a + "attention.head_count", c.num_attention_heads)
    w.add_uint32(a + "attention.head_count_kv", c.num_key_value_heads)
    w.add_uint32(a + "attention.key_length", Dh)
    w.add_uint32(a + "attention.value_length", Dh)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_float32(a + "rope.freq_base", full["rope_theta"])
    w.add_uint32(a + "vocab_size", c.vocab_size)
    if with_tokenizer:
        from _helpers_io import byte_level_alphabet

        chars = byte_level_alphabet()[:c.vocab_size - 4]
        tokens = ["<pad>", "<eos>", "<bos>"] + chars + [chars[0] + chars[1]]
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", "gpt2")
        w.add_token_list(tokens)
        w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
        w.add_token_merges([f"{chars[0]} {chars[1]}"])
        w.add_uint32("tokenizer.ggml.bos_token_id", 2)
        w.add_uint32("tokenizer.ggml.eos_token_id", 1)
    tensors = {}
    kind = full.get("rope_type", "default")
    if kind == "llama3":
        tensors["rope_freqs.weight"] = llama3_rope_freqs(full["rope_theta"], Dh, full)
    elif kind == "linear":
        w.add_string(a + "rope.scaling.type", "linear")
        w.add_float32(a + "rope.scaling.factor", full["factor"])
    elif kind == "yarn":
        w.add_string(a + "rope.scaling.type", "yarn")
        w.add_float32(a + "rope.scaling.factor", full["factor"])
        w.add_uint32(a + "rope.scaling.original_context_length", full["original_max_position_embeddings"])
    elif kind == "longrope":
        orig = full["original_max_position_embeddings"]
        scale = c.max_position_embeddings / orig
        w.add_uint32(a + "rope.scaling.original_context_length", orig)
        w.add_float32(a + "rope.scaling.attn_factor", math.sqrt(1 + math.log(scale) / math.log(orig)))
        tensors["rope_factors_long.weight"] = np.array(full["long_factor"], np.float32)
        tensors["rope_factors_short.weight"] = np.array(full["short_factor"], np.float32)
    if "sliding_attention" in rope:
        w.add_float32(a + "rope.freq_base_swa", rope["sliding_attention"]["rope_theta"])
    window = getattr(c, "sliding_window", None)
    if window is not None and "sliding_attention" in (getattr(c, "layer_types", None) or ["sliding_attention"]):
        w.add_uint32(a + "attention.sliding_window", window)
        if arch == "qwen2":  # per-layer pattern (newer converters' bool array)
            w.add_array(a + "attention.sliding_window_pattern", [t == "sliding_attention" for t in c.layer_types])
    if arch == "gemma2":
        w.add_float32(a + "attn_logit_softcapping", c.attn_logit_softcapping)
        w.add_float32(a + "final_logit_softcapping", c.final_logit_softcapping)
    names = _GEMMA_NAMES if arch in ("gemma2", "gemma3") else _NAMES
    for key, value in hf.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        v = value.detach().float().numpy()
        if key == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif key == "model.norm.weight":
            gname = "output_norm.weight"
        elif key == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, layer, rest = key.split(".", 3)
            module, kind_ = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{names[module]}.{kind_}"
        if arch in ("llama", "smollm3") and (".attn_q." in gname or ".attn_k." in gname) and v.ndim == 2:
            v = llama_cpp_permute(v, c.num_attention_heads if ".attn_q." in gname else c.num_key_value_heads)
        if arch.startswith("gemma") and key.endswith("norm.weight"):
            v = v + 1  # llama.cpp stores Gemma's norm weights as 1 + w
        tensors[gname] = v
    for gname, v in tensors.items():
        if qtype is not None and v.ndim == 2:
            q = gguf.quants.quantize(np.ascontiguousarray(v, np.float32), qtype)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=qtype)
        else:
            w.add_tensor(gname, np.ascontiguousarray(v, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module", params=list(ARCH))
def gguf_family(request, tmp_path_factory):
    name = request.param
    hf = _overridden(name)
    path = tmp_path_factory.mktemp(name) / f"{name}.gguf"
    write_family_gguf(hf, name, path)
    return name, hf, path


def _overridden(name, **more):
    return hf_family_model(name, **{**GGUF_OVERRIDES.get(name, {}), **more})


def test_gguf_logits_match_hf_on_the_same_weights(gguf_family):
    name, hf, path = gguf_family
    ours = CausalLM.from_pretrained(str(path))
    ids, mask = left_padded_batch()
    logits, _ = ours.forward(ids, attention_mask=mask)
    assert_logits_close(logits, hf_logits(hf, ids, mask), mask)


def test_gguf_config_has_the_hf_knobs(gguf_family):
    name, hf, path = gguf_family
    c = read_gguf(path).config
    assert set(c.knobs()) >= FAMILIES[name][3] - {"query_pre_attn_scalar"}
    hf_types = getattr(hf.config, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
    if name == "mistral_window":
        hf_types = ["sliding_attention"] * c.num_hidden_layers   # HF's Mistral slides on every layer
    assert [c.layer_window(i) for i in range(c.num_hidden_layers)] == \
        [WINDOW if t == "sliding_attention" else None for t in hf_types]


def test_gguf_greedy_generate_equals_hf(gguf_family):
    name, hf, path = gguf_family
    ours = CausalLM.from_pretrained(str(path))
    ids, mask = left_padded_batch(seed=2)
    with torch.no_grad():
        expected = hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                               do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=None,
                               top_k=None, top_p=None, temperature=None).numpy()
    out = ours.generate(ids, attention_mask=mask, max_new_tokens=6, temperature=0, pad_token_id=0, eos_token_id=[])
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", ["gemma3", "qwen3", "phi3"])
def test_quantized_gguf_runs_the_one_call_decode_and_matches_the_dequantized_model(tmp_path, name):
    hf = _overridden(name, hidden_size=64, intermediate_size=96)   # rows of whole Q8_0 blocks (32)
    path = tmp_path / "q8.gguf"
    write_family_gguf(hf, name, path, qtype=gguf.GGMLQuantizationType.Q8_0)
    fast = CausalLM.from_pretrained(str(path))
    exact = CausalLM.from_pretrained(str(path), dequantize=True)
    assert all(layer.one_call is not None for layer in fast.layers)
    ids, mask = left_padded_batch(seed=6)
    kw = dict(attention_mask=mask, max_new_tokens=8, temperature=0, pad_token_id=0, eos_token_id=[],
              return_dict_in_generate=True, output_scores=True)
    b = exact.generate(ids, **kw)
    assert fast.kv_dtype == np.float16 and exact.kv_dtype == np.float32   # the defaults
    for kv, bound in ((np.float32, 1e-3), (np.float16, 5e-3)):            # fp16 storage: ~2**-11 relative
        fast.kv_dtype = kv
        a = fast.generate(ids, **kw)
        np.testing.assert_array_equal(a.sequences, b.sequences)
        assert max(np.abs(x - y).max() for x, y in zip(a.scores, b.scores)) < bound


def test_phi3_longrope_gguf_past_the_original_context(tmp_path):
    hf = hf_family_model("phi3_longrope")
    path = tmp_path / "phi3.gguf"
    write_family_gguf(hf, "phi3_longrope", path)
    ours = CausalLM.from_pretrained(str(path))
    ids, mask = left_padded_batch(seed=4, lengths=(LONGROPE_ORIG + 6, LONGROPE_ORIG - 3))
    assert_logits_close(ours.forward(ids, attention_mask=mask)[0], hf_logits(hf, ids, mask), mask)


# ------------------------------------------------------------------ what is refused
def _tiny_llama_gguf(path, **metadata):
    hf = hf_family_model("llama_linear")
    write_family_gguf(hf, "llama_linear", path)
    reader = gguf.GGUFReader(str(path))
    w = gguf.GGUFWriter(str(path) + ".2", "llama")
    for field in reader.fields.values():
        if field.name.startswith(("GGUF.", "general.architecture")) or field.name in metadata:
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.STRING:
            w.add_string(field.name, value)
        elif kind == gguf.GGUFValueType.FLOAT32:
            w.add_float32(field.name, value)
        else:
            w.add_uint32(field.name, value)
    for key, (kind, value) in metadata.items():
        getattr(w, "add_" + kind)(key, value)
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path) + ".2"


@pytest.mark.parametrize("metadata,named", [
    ({"llama.rope.scaling.type": ("string", "su")}, "rope.scaling.type"),
    ({"llama.rope.scaling.type": ("string", "yarn"), "llama.rope.scaling.factor": ("float32", 4.0),
      "llama.rope.scaling.original_context_length": ("uint32", 32),
      "llama.rope.scaling.yarn_log_multiplier": ("float32", 0.1)}, "yarn_log_multiplier"),
    ({"llama.rope.dimension_count": ("uint32", 4)}, "partial rotary"),
])
def test_a_gguf_knob_npllm_does_not_implement_is_an_error_naming_it(tmp_path, metadata, named):
    path = _tiny_llama_gguf(tmp_path / "x.gguf", **metadata)
    with pytest.raises(ModelFormatError, match=named):
        read_gguf(path)


def test_an_unknown_tensor_of_a_new_family_is_named(tmp_path):
    hf = hf_family_model("qwen3")
    path = tmp_path / "q.gguf"
    write_family_gguf(hf, "qwen3", path)
    reader = gguf.GGUFReader(str(path))
    w = gguf.GGUFWriter(str(tmp_path / "q2.gguf"), "qwen3")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        (w.add_float32 if field.types[0] == gguf.GGUFValueType.FLOAT32 else w.add_uint32)(field.name, field.contents())
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.add_tensor("blk.0.attn_sinks.weight", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFormatError, match="attn_sinks"):
        read_gguf(tmp_path / "q2.gguf")
