"""HF directory reader: tiny random llama/mistral/qwen2 models saved by transformers (single file,
sharded, fp32 and bf16) read back exactly; pickles are refused without being unpickled; malformed
files fail with npllm errors."""

import json
import os
import struct

import numpy as np
import pytest

from npllm.errors import ConfigError, ModelFormatError, ModelNotFoundError
from npllm.io.safetensors import read_hf_directory, read_safetensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _model(kind, **overrides):
    torch.manual_seed(0)
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    return model_cls(cfg_cls(**{**SMALL, **overrides})).eval()


def _save(model, path, dtype=torch.float32, shard=None):
    model = model.to(dtype)
    if shard:
        model.save_pretrained(path, max_shard_size=shard)
    else:
        model.save_pretrained(path)
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind,overrides", [("llama", {}), ("mistral", {}), ("qwen2", {"tie_word_embeddings": True}),
                                            ("llama", {"attention_bias": True})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shard", [None, "20KB"], ids=["single", "sharded"])
def test_directory_round_trip(tmp_path, kind, overrides, dtype, shard):
    model = _model(kind, **overrides)
    expected = _save(model, tmp_path, dtype, shard)
    if shard:
        assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    ck = read_hf_directory(tmp_path)
    c, hc = ck.config, model.config
    assert c.model_type == kind
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "tie_word_embeddings"):
        assert getattr(c, name) == getattr(hc, name), name
    # qwen2 always has q/k/v biases; mistral has none
    assert c.attention_bias == (kind == "qwen2" or getattr(hc, "attention_bias", False))
    if c.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    assert set(ck.tensors) == set(expected)
    for key, value in expected.items():
        got = ck.tensors[key]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, value, err_msg=key)  # bf16 -> f32 widening is exact


def test_generation_config_sets_default_eos_and_pad(tmp_path):
    _save(_model("llama"), tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7], "pad_token_id": 0}))
    ck = read_hf_directory(tmp_path)
    assert ck.config.eos_token_ids == [2, 7] and ck.config.pad_token_id == 0


def test_generation_config_out_of_vocab_is_named(tmp_path):
    _save(_model("llama"), tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 5000}))
    with pytest.raises(ConfigError, match="eos_token_id"):
        read_hf_directory(tmp_path)


# ------------------------------------------------------------------ pickles
class _Boom:
    """Unpickling this creates a marker file: proof that nothing was unpickled if it is absent."""

    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pytorch_bin_is_refused_without_unpickling(tmp_path):
    import pickle

    _save(_model("llama"), tmp_path)
    os.remove(tmp_path / "model.safetensors")
    marker = tmp_path / "UNPICKLED"
    boom = _Boom()
    boom.marker = str(marker)
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(boom))
    with pytest.raises(ModelFormatError, match="safetensors") as e:
        read_hf_directory(tmp_path)
    assert "pytorch_model.bin" in str(e.value)
    with pytest.raises(ModelFormatError, match="(?i)convert"):
        read_hf_directory(tmp_path / "pytorch_model.bin")
    assert not marker.exists()


def _pickle_bomb(path, marker):
    import pickle

    boom = _Boom()
    boom.marker = str(marker)
    path.write_bytes(pickle.dumps(boom))


@pytest.mark.parametrize("name", ["x.bin", "model.pt", "weights.pth"])
def test_npllm_load_refuses_a_pickle_file_without_unpickling(tmp_path, name):
    import npllm

    marker = tmp_path / "UNPICKLED"
    _pickle_bomb(tmp_path / name, marker)
    with pytest.raises(ModelFormatError, match="(?i)pickle.*refused.*safetensors") as e:
        npllm.load(str(tmp_path / name))
    assert name in str(e.value) and isinstance(e.value, ValueError)
    assert not marker.exists()


def test_npllm_load_refuses_a_directory_of_pickles_without_unpickling(tmp_path):
    import npllm

    _save(_model("llama"), tmp_path)
    os.remove(tmp_path / "model.safetensors")
    marker = tmp_path / "UNPICKLED"
    _pickle_bomb(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(ModelFormatError, match="pytorch_model.bin.*(?i:convert)"):
        npllm.load(str(tmp_path))
    assert not marker.exists()


def test_cli_refuses_a_pickle_in_one_line_without_traceback(tmp_path):
    """``python -m npllm generate --model x.bin hi``: one line on stderr, non-zero exit, no traceback."""
    import subprocess
    import sys

    marker = tmp_path / "UNPICKLED"
    _pickle_bomb(tmp_path / "x.bin", marker)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "npllm", "generate", "--model", "x.bin", "hi"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "x.bin" in lines[0] and "pickle" in lines[0] and "safetensors" in lines[0]
    assert proc.stdout == "" and not marker.exists()


# ------------------------------------------------------------------ malformed
def test_missing_directory_and_config(tmp_path):
    with pytest.raises(ModelNotFoundError):
        read_hf_directory(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        read_hf_directory(tmp_path)


def test_invalid_config_json(tmp_path):
    _save(_model("llama"), tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="config.json"):
        read_hf_directory(tmp_path)


def test_unsupported_model_type_is_named(tmp_path):
    _save(_model("llama"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="gpt_neox"):
        read_hf_directory(tmp_path)


def test_shape_mismatch_is_named(tmp_path):
    _save(_model("llama"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=r"mlp\.\w+_proj\.weight.*expected"):
        read_hf_directory(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    _save(_model("llama"), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        read_hf_directory(tmp_path)


def test_shard_outside_the_directory_is_refused(tmp_path):
    _save(_model("llama"), tmp_path, shard="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../evil.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="evil"):
        read_hf_directory(tmp_path)


def test_huge_header_length_is_refused(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(ModelFormatError, match="header length"):
        read_safetensors(str(p))


def test_truncated_safetensors_fail_cleanly(tmp_path):
    _save(_model("llama"), tmp_path / "src", dtype=torch.bfloat16)
    data = (tmp_path / "src" / "model.safetensors").read_bytes()
    for i, cut in enumerate(np.linspace(0, len(data) - 1, 25).astype(int)):
        p = tmp_path / f"cut{i}.safetensors"
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError):
            read_safetensors(str(p))


def test_integer_tensors_are_refused(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "ints.safetensors"
    save_file({"model.norm.weight": np.arange(4, dtype=np.int32)}, str(p))
    with pytest.raises(ModelFormatError, match="I32"):
        read_safetensors(str(p))
