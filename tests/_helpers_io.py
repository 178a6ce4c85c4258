"""Test helpers for the GGUF / safetensors / tokenizer tests: tiny files written with the
``gguf`` package's own writer, and llama.cpp's Q/K permutation written from its converter."""

from __future__ import annotations

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_level_alphabet():
    """GPT-2 bytes_to_unicode, spelled out here independently of npllm."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, n = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return chars


def tiny_vocab():
    tokens = SPECIALS + byte_level_alphabet() + ["Ġt", "he"]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q_proj/k_proj rows of llama models:
    within each head, interleave the two rotary halves."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def tiny_hf_weights(arch="llama", n_layers=2, d=64, f=96, n_head=4, n_kv=2, vocab=261, tied=False, seed=0):
    """Random float32 weights in HF order ([out, in]) keyed by HF names."""
    rng = np.random.default_rng(seed)
    dh = d // n_head
    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, d), dtype=np.float32),
         "model.norm.weight": rng.standard_normal(d, dtype=np.float32)}
    if not tied:
        w["lm_head.weight"] = rng.standard_normal((vocab, d), dtype=np.float32)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
                  "self_attn.q_proj.weight": (n_head * dh, d), "self_attn.k_proj.weight": (n_kv * dh, d),
                  "self_attn.v_proj.weight": (n_kv * dh, d), "self_attn.o_proj.weight": (d, n_head * dh),
                  "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f)}
        if arch == "qwen2":
            shapes.update({"self_attn.q_proj.bias": (n_head * dh,), "self_attn.k_proj.bias": (n_kv * dh,),
                           "self_attn.v_proj.bias": (n_kv * dh,)})
        for k, s in shapes.items():
            w[p + k] = rng.standard_normal(s, dtype=np.float32)
    return w


_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(key: str) -> str:
    if key in _GGUF_NAMES:
        return _GGUF_NAMES[key]
    _, _, layer, rest = key.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_NAMES[module]}.{kind}"


def write_tiny_gguf(path, arch="llama", n_layers=2, d=64, f=96, n_head=4, n_kv=2, tied=False, seed=0,
                    quant=None, drop=(), reshape=None, metadata=None, skip_metadata=(), pre="smollm",
                    tokenizer_model="gpt2", merges=None, weights=None):
    """Write a small but complete GGUF file the way llama.cpp's converter would.

    ``quant``: a GGMLQuantizationType for the 2-D weights (None -> F32).
    ``drop``: GGUF tensor names to leave out; ``reshape``: {gguf name: array} replacements.
    Returns the HF-order float32 weights that went in (before permutation/quantization).
    """
    import gguf

    tokens, types = tiny_vocab()
    w = weights if weights is not None else tiny_hf_weights(arch, n_layers, d, f, n_head, n_kv, len(tokens),
                                                           tied, seed)
    writer = gguf.GGUFWriter(str(path), arch)
    a = arch + "."
    md = {
        a + "block_count": ("uint32", n_layers), a + "context_length": ("uint32", 256),
        a + "embedding_length": ("uint32", d), a + "feed_forward_length": ("uint32", f),
        a + "attention.head_count": ("uint32", n_head), a + "attention.head_count_kv": ("uint32", n_kv),
        a + "rope.freq_base": ("float32", 10000.0), a + "attention.layer_norm_rms_epsilon": ("float32", 1e-5),
        a + "rope.dimension_count": ("uint32", d // n_head),
        "tokenizer.ggml.model": ("string", tokenizer_model), "tokenizer.ggml.pre": ("string", pre),
        "tokenizer.ggml.bos_token_id": ("uint32", 1), "tokenizer.ggml.eos_token_id": ("uint32", 2),
        "tokenizer.ggml.padding_token_id": ("uint32", 2), "tokenizer.ggml.add_bos_token": ("bool", False),
        "tokenizer.chat_template": ("string", CHAT_TEMPLATE),
    }
    md.update(metadata or {})
    for key, (kind, value) in md.items():
        if key in skip_metadata:
            continue
        getattr(writer, "add_" + kind)(key, value)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES if merges is None else merges)
    for key, value in w.items():
        name = gguf_name(key)
        if name in drop:
            continue
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            value = llama_cpp_permute(value, n_head if ".attn_q." in name else n_kv)
        if reshape and name in reshape:
            value = reshape[name]
        if quant is not None and value.ndim == 2:
            q = gguf.quants.quantize(value, quant)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=quant)
        else:
            writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return w


# Byte offsets of the fp16 numbers (d, and m or dmin) in a block of each quantized GGML type id.
FP16_FIELDS = {8: (0,), 2: (0,), 3: (0, 2), 6: (0,), 7: (0, 2), 20: (0,),  # Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL
               10: (80, 82), 11: (108,), 12: (0, 2), 13: (0, 2), 14: (208,), 23: (0,)}  # Q2_K..Q6_K, IQ4_XS


def gguf_can_quantize(qtype) -> bool:
    """Whether gguf-py has a quantizer for qtype (it has none for K-quants and IQ types)."""
    import gguf

    try:
        gguf.quants.quantize(np.zeros((1, 256), np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def random_blocks_quantize(value, qtype):
    """A stand-in for ``gguf.quants.quantize`` where gguf-py has no quantizer: random blocks of
    the right size (every bit pattern of the quants) with small finite fp16 scales, so that a
    model made of them computes finite logits.  Seeded by the shape: deterministic."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = value.shape
    rng = np.random.default_rng(rows * cols + int(qtype))
    raw = rng.integers(0, 256, (rows, cols // block, type_size), dtype=np.uint8)
    for at in FP16_FIELDS[int(qtype)]:
        scale = (rng.uniform(0.5, 1.0, raw.shape[:2]) * rng.choice([-1, 1], raw.shape[:2]) * 1e-2).astype(np.float16)
        raw[:, :, at:at + 2] = scale.view(np.uint8).reshape(rows, -1, 2)
    return raw.reshape(rows, -1)
