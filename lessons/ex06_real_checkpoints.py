"""Lesson 06 example: GGUF and safetensors layouts byte by byte, quantization blocks, the HF
directory round trip, chat templates, and the quantized model against its dequantized twin.

Run: python -m lessons 6   (or python -m lessons.ex06_real_checkpoints [--quick])
Reads: npllm/io/gguf.py (read_gguf, gguf_to_hf_key, unpermute_qk_rows), npllm/quant/weight.py
(BLOCK_LAYOUT, dequantize, QuantizedWeight), npllm/quant/formats.py (IQ4_VALUES),
npllm/io/safetensors.py (read_hf_directory),
npllm/loading.py (load), npllm/chat.py (render_chat_template, ChatTemplateError).
"""

import json
import os
import struct
import sys
import tempfile

import numpy as np

import npllm
from npllm import CausalLM, ModelConfig
from npllm.quant import weight as quants
from npllm.io.gguf import gguf_to_hf_key, read_gguf
from npllm.models import resolve_model

from ._common import default_model, heading, human_bytes, show, table


# ============================================================== GGUF
def gguf_anatomy(path):
    heading("[6.1] a GGUF file, from its first bytes")
    with open(path, "rb") as f:
        head = f.read(24)
    magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", head)
    print(f"{os.path.basename(path)}: {human_bytes(os.path.getsize(path))}")
    print(f"bytes 0-23: {head.hex(' ')}")
    print(f"magic {magic!r}, version {version}, tensor_count {n_tensors}, metadata kv_count {n_kv}")
    ckpt = read_gguf(path)
    md = ckpt.metadata
    rows = []
    for k, v in md.items():
        if isinstance(v, list):
            v = f"[list of {len(v)}] {v[:3]}..."
        elif isinstance(v, str) and len(v) > 60:
            v = repr(v[:57]) + "..."
        rows.append((k, v))
    table(["metadata key", "value"], rows)
    c = ckpt.config
    print(f"-> ModelConfig: vocab_size={c.vocab_size} hidden_size={c.hidden_size} "
          f"intermediate_size={c.intermediate_size} num_hidden_layers={c.num_hidden_layers} "
          f"num_attention_heads={c.num_attention_heads} num_key_value_heads={c.num_key_value_heads} "
          f"head_dim={c.head_dim} rope_theta={c.rope_theta} rms_norm_eps={c.rms_norm_eps} "
          f"tie_word_embeddings={c.tie_word_embeddings} max_position_embeddings={c.max_position_embeddings}")
    return ckpt


def gguf_tensors(ckpt):
    heading("[6.2] tensors: GGUF names -> HF keys, types and sizes")
    rows = []
    for key, t in list(ckpt.tensors.items())[:12]:
        rows.append((t.name, key, t.type_name, t.shape, t.nbytes, t.unpermuted))
    table(["GGUF name", "HF key", "type", "shape (HF order)", "bytes", "Q/K rows unpermuted"], rows)
    print(f"gguf_to_hf_key('blk.7.ffn_gate.weight') = {gguf_to_hf_key('blk.7.ffn_gate.weight')!r}")
    by_type = {}
    for t in ckpt.tensors.values():
        n, b = by_type.get(t.type_name, (0, 0))
        by_type[t.type_name] = (n + 1, b + t.nbytes)
    n_params = sum(int(np.prod(t.shape)) for t in ckpt.tensors.values())
    total = sum(b for _, b in by_type.values())
    table(["type", "tensors", "bytes", "share of bytes"],
          [(k, n, b, f"{100 * b / total:.1f}%") for k, (n, b) in sorted(by_type.items())])
    print(f"{n_params:,} parameters in {human_bytes(total)} -> {8 * total / n_params:.2f} bits per parameter "
          f"on average; as float32 they would take {human_bytes(4 * n_params)}")


# ============================================================== quant blocks
def blocks_by_hand(ckpt):
    heading("[6.3] block layouts and one block decoded by hand")
    table(["type", "values per block", "bytes per block", "bits per weight"],
          [(quants.type_name(t), n, b, 8 * b / n) for t, (n, b) in quants.BLOCK_LAYOUT.items()], ".3g")

    t = ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]
    raw = np.asarray(t.data)
    block = raw[0, :20]                                            # the first Q4_1 block of row 0
    print(f"{t.name} ({t.type_name}), row 0, first block: {block.tobytes().hex(' ')}")
    d = float(block[0:2].view("<f2")[0])
    m = float(block[2:4].view("<f2")[0])
    qs = block[4:20]
    q = np.concatenate([qs & 15, qs >> 4])                         # low nibbles: values 0-15, high: 16-31
    w = d * q + m
    print(f"d = {d:.6g} (f16 bytes {block[0:2].tobytes().hex()}), m = {m:.6g}; 4-bit q = {q.tolist()}")
    ours = quants.dequantize(raw[:1], t.ggml_type, (1, t.shape[1]))[0, :32]
    import gguf.quants
    theirs = gguf.quants.dequantize(raw[:1], t.ggml_type).reshape(-1)[:32]
    show("w = d * q + m (by hand)", w)
    print(f"max |by hand - npllm.quant.dequantize| = {np.abs(w - ours).max():.3g}; "
          f"max |by hand - gguf.quants.dequantize| = {np.abs(w - theirs).max():.3g}")

    e = ckpt.tensors["model.embed_tokens.weight"]
    eb = np.asarray(e.data)[0, :34]
    d8 = float(eb[0:2].view("<f2")[0])
    q8 = eb[2:34].view(np.int8)
    print(f"{e.name} ({e.type_name}) first block: d = {d8:.6g}, int8 q = {q8[:8].tolist()}...; "
          f"w = d * q -> {[round(d8 * int(v), 5) for v in q8[:4]]}... npllm: "
          f"{[round(float(v), 5) for v in quants.dequantize(np.asarray(e.data)[:1], e.ggml_type, (1, e.shape[1]))[0, :4]]}")


def iq4_nl_by_hand(w):
    """The simplest IQ4_NL quantizer: per block of 32, d = (the largest-magnitude w) / -127 and each
    value becomes the nearest of the 16 codebook levels d * IQ4_VALUES[q].  llama.cpp also tries a
    few other scales per block; this is enough to compare the codebook with Q4_0's uniform grid."""
    from npllm.quant.formats import IQ4_VALUES
    levels = np.array(IQ4_VALUES, np.float32)
    b = w.reshape(-1, 32)
    big = b[np.arange(len(b)), np.abs(b).argmax(axis=1)][:, None]
    d = (big / -127).astype(np.float16)                            # stored as fp16
    scaled = b / np.where(d == 0, 1, d).astype(np.float32)
    q = np.abs(scaled[:, :, None] - levels).argmin(axis=2).astype(np.uint8)  # [blocks, 32] indices
    qs = q[:, :16] | (q[:, 16:] << 4)                              # low nibbles: values 0-15
    return np.concatenate([d.view(np.uint8), qs], axis=1).reshape(w.shape[0], -1)


def quantization_error(quick):
    heading("[6.4] what quantization costs: error vs bits per weight (random Gaussian weights)")
    import gguf.quants
    rng = np.random.default_rng(0)
    rows_n = 64 if quick else 512
    w = rng.normal(0, 0.02, size=(rows_n, 576)).astype(np.float32)
    w[rng.random(w.shape) < 0.001] *= 20                           # a few outliers, as real weights have
    x = rng.normal(size=(8, 576)).astype(np.float32)
    rows = []
    for name in ("Q8_0", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL"):
        t = int(getattr(gguf.quants.GGMLQuantizationType, name))
        if name == "IQ4_NL":                                       # gguf has no IQ4_NL quantizer
            raw = iq4_nl_by_hand(w)
        else:
            raw = gguf.quants.quantize(w, t)                       # the gguf package's quantizer
        qw = quants.QuantizedWeight.from_raw(raw, t, shape=w.shape)
        back = qw.dequantize()
        err = np.sqrt(np.mean((back - w) ** 2)) / np.sqrt(np.mean(w ** 2))
        y_err = np.abs(qw.matmul(x) - x @ w.T).max() / np.abs(x @ w.T).max()
        rows.append((name, 8 * qw.nbytes / w.size, err, y_err))
    table(["type", "bits per weight", "relative RMS error of W", "max relative error of x @ W.T"], rows, ".3g")


# ============================================================== safetensors
def safetensors_by_hand():
    heading("[6.5] safetensors: an 8-byte length, a JSON header, raw little-endian bytes")
    from safetensors.numpy import save_file
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "model.safetensors")
        save_file({"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b.bias": np.ones(2, np.float16)},
                  file, metadata={"format": "np"})
        data = open(file, "rb").read()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        print(f"file {len(data)} bytes; header length {n}; header = {json.dumps(header)}")
        start = 8 + n
        off = header["a.weight"]["data_offsets"]
        a = np.frombuffer(data[start + off[0]:start + off[1]], dtype="<f4").reshape(header["a.weight"]["shape"])
        show("a.weight read by hand", a)

        bad = os.path.join(tmp, "pickled")
        os.makedirs(bad)
        open(os.path.join(bad, "pytorch_model.bin"), "wb").write(b"\x80\x04 not really a pickle")
        try:
            CausalLM.from_pretrained(os.path.join(bad, "pytorch_model.bin"))
        except npllm.errors.ModelFormatError as e:
            print(f"a PyTorch .bin is refused without being opened: {e}")


def hf_directory_round_trip():
    heading("[6.6] an HF directory: config.json + model.safetensors with HF keys")
    from safetensors.numpy import save_file
    config = ModelConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
                         initializer_range=0.2)
    model = CausalLM(config, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        hf = {k: v for k, v in config.to_dict().items() if v is not None and k != "use_rms_norm"}
        hf["architectures"] = ["LlamaForCausalLM"]
        json.dump(hf, open(os.path.join(tmp, "config.json"), "w"))
        save_file(dict(model.state_dict()), os.path.join(tmp, "model.safetensors"))
        print("files:", sorted(os.listdir(tmp)), "; keys:", list(model.state_dict())[:4], "...")
        loaded = CausalLM.from_pretrained(tmp)
        ids = np.array([[1, 5, 9, 77]])
        a, _ = model.forward(ids)
        b, _ = loaded.forward(ids)
        print(f"CausalLM.from_pretrained(dir): {loaded.num_parameters():,} parameters; "
              f"max |logits - original| = {np.abs(a - b).max():.3g}")


# ============================================================== chat templates
def chat_templates(tok, ckpt):
    heading("[6.7] chat templates: Jinja code shipped with the model, rendered in a sandbox")
    template = ckpt.chat_template
    print(f"tokenizer.chat_template ({len(template)} characters), first lines:\n" +
          "\n".join("    " + line for line in template.splitlines()[:4]))
    conv = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    print("rendered:\n" + tok.apply_chat_template(conv, tokenize=False))
    from npllm.chat import ChatTemplateError, render_chat_template
    for hostile in ("{{ ''.__class__.__mro__ }}", "{% for i in range(10**9) %}x{% endfor %}"):
        try:
            render_chat_template(hostile, conv)
            print(f"{hostile!r}: rendered (unexpected)")
        except ChatTemplateError as e:
            print(f"{hostile!r} -> ChatTemplateError: {str(e)[:110]}")


def quantized_vs_dequantized(model, tok, quick):
    heading("[6.8] the quantized model vs the same weights dequantized to float32")
    path = resolve_model("smollm2-135m-instruct")
    ref = CausalLM.from_pretrained(path, dequantize=True)
    q_bytes = sum(getattr(v, "nbytes", 0) for v in model.params.values())
    f_bytes = sum(v.nbytes for v in ref.params.values())
    print(f"weights in memory: quantized model {human_bytes(q_bytes)}, dequantized twin {human_bytes(f_bytes)}")
    ids = np.array([tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])])
    a, _ = model.forward(ids, logits_to_keep=1)
    b, _ = ref.forward(ids, logits_to_keep=1)
    print(f"last-position logits: max |quantized path - dequantized fp32 path| = {np.abs(a - b).max():.3g} "
          f"(logits range {b.min():.1f} .. {b.max():.1f}); same argmax: {a.argmax() == b.argmax()}")


def main(quick: bool = False) -> None:
    path = resolve_model("smollm2-135m-instruct")
    ckpt = gguf_anatomy(path)
    gguf_tensors(ckpt)
    blocks_by_hand(ckpt)
    quantization_error(quick)
    safetensors_by_hand()
    hf_directory_round_trip()
    pair = default_model()
    if pair is None:
        return
    model, tok = pair
    chat_templates(tok, ckpt)
    if not quick:
        quantized_vs_dequantized(model, tok, quick)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
