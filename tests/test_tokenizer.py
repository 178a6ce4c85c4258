"""Tokenizer: token ids equal HF transformers' tokenizer for the same GGUF, streaming decode
equals full decode, special tokens, HF directories, and malformed tokenizer metadata."""

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npllm.chat import ChatTemplateError
from npllm.errors import GenerationParameterError, ModelFormatError
from npllm.tokenizer import Tokenizer

from _helpers_io import write_tiny_gguf

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界！今天天气很好。机器学习是人工智能的一个分支。",
    "emoji 🎉🔥👍🏽 and flags 🇫🇷🇯🇵, a family 👨‍👩‍👧",
    "def square(x):\n    return x ** 2  # note\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "a   b\t\tc\n\n\n  d   \r\n e",
    "   leading spaces", "trailing spaces   ", "  ", "\n", "",
    "it's don't we'll I'M THEY'RE",
    "Ünïcödé ñ café naïve Æsir ß Ωmega Привет мир",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "a<|im_start|>b<|im_end|>c<|endoftext|>",
    "<repo_name>npllm<file_sep>main.py",
    "12345678 3.14159 1e-9 v2.0.1 0xFF",
    "Total: 42 items, 7 left.",
]
# Two or more whitespace characters right before a digit: here SmolLM2's own pre-tokenizer
# (digits split first, as llama.cpp does for pre="smollm") and transformers' GGUF loader
# (plain GPT-2 regex) disagree.
DIGIT_CORPUS = ["\n\n1. first\n  2. second", "x = [1,  2,   3]", "tab\t\t9", "line\n\n\n2024 was"]


@pytest.fixture(scope="module")
def tok(smollm2_gguf):
    return Tokenizer.from_pretrained(smollm2_gguf)


@pytest.fixture(scope="module")
def tok_gpt2(smollm2_gguf):
    return Tokenizer.from_gguf(smollm2_gguf, pre_tokenizer="gpt2")


@pytest.fixture(scope="module")
def hf(smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf),
                                                      gguf_file=os.path.basename(smollm2_gguf))


# ------------------------------------------------------------ parity with HF
@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_hf(tok, hf, text):
    assert tok.encode(text) == hf.encode(text)


@pytest.mark.parametrize("text", CORPUS + DIGIT_CORPUS)
def test_gpt2_pre_tokenizer_reproduces_transformers_everywhere(tok_gpt2, hf, text):
    assert tok_gpt2.encode(text) == hf.encode(text)


def _llama_cpp_reference_ids(hf, text):
    """llama.cpp's procedure for pre='smollm': split on \\p{N}, then GPT-2's regex (text between
    matches kept as pieces), then byte-level BPE with the file's merges (HF's BPE model)."""
    import regex

    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)")

    def split(pattern, pieces):
        out = []
        for piece in pieces:
            pos = 0
            for m in pattern.finditer(piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        return out

    pieces = split(gpt2, split(regex.compile(r"\p{N}"), [text]))
    from npllm.tokenizer import byte_alphabet

    spell = byte_alphabet()
    model = hf.backend_tokenizer.model
    return [t.id for p in pieces for t in model.tokenize("".join(spell[b] for b in p.encode()))]


@pytest.mark.parametrize("text", DIGIT_CORPUS + CORPUS[:8])
def test_default_pre_tokenizer_follows_llama_cpp_smollm(tok, hf, text):
    assert tok.encode(text) == _llama_cpp_reference_ids(hf, text)


def test_the_two_pre_tokenizers_really_differ_on_spaces_before_digits(tok, hf):
    text = "\n\n1. first"
    assert tok.encode(text) != hf.encode(text)  # documents the transformers difference


@pytest.mark.parametrize("text", CORPUS)
def test_decode_matches_hf(tok, hf, text):
    ids = hf.encode(text)
    assert tok.decode(ids) == hf.decode(ids)
    assert tok.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_special_tokens_are_single_ids_and_no_bos_is_added(tok, hf):
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    assert tok.encode("hi")[0] != tok.bos_token_id  # add_bos_token = false in this GGUF
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == \
        (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 2)
    assert tok.vocab_size == len(hf) == 49152


def test_stop_token_is_the_chat_end_of_turn(tok, hf):
    assert tok.id_to_token(hf.eos_token_id) == "<|im_end|>"
    assert tok.stop_token_ids == [hf.eos_token_id]


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好 🎉"},
     {"role": "assistant", "content": "Hello!\n\n  Nice to meet you."}, {"role": "user", "content": "code:\n\tx=1"}],
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_text_and_ids_match_hf(tok, hf, conv, add_generation_prompt):
    text = tok.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert text == hf.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=False)
    expected = hf.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert tok.apply_chat_template(conv, add_generation_prompt=add_generation_prompt) == list(expected)


def test_chat_template_override(tok):
    ids = tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template="[{{ messages[0].content }}]")
    assert tok.decode(ids) == "[x]"


# ------------------------------------------------------------------ streaming
@given(st.lists(st.one_of(st.integers(0, 49151), st.integers(17, 400), st.integers(0, 20)),
                min_size=1, max_size=40), st.booleans())
def test_streamed_pieces_concatenate_to_decode(tok, ids, skip):
    dec = tok.stream_decoder(skip_special_tokens=skip)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("text", CORPUS)
def test_streaming_valid_text_never_emits_broken_utf8(tok, text):
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    out = ""
    for i in ids:
        piece = dec.push(i)
        assert "\ufffd" not in piece
        out += piece
        assert text.startswith(out)  # spaces are never dropped or delayed past their text
    assert out + dec.flush() == text


def test_emoji_is_held_until_complete(tok):
    ids = tok.encode("🎉")
    assert len(ids) > 1  # several byte tokens
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🎉"


# ------------------------------------------------------------------ HF directory
def test_hf_directory_tokenizer_matches_hf(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    t = Tokenizer.from_pretrained(str(tmp_path))
    for text in CORPUS + DIGIT_CORPUS:
        assert t.encode(text) == hf.encode(text)
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (1, 2, 2)
    conv = CONVERSATIONS[1]
    assert t.apply_chat_template(conv, tokenize=False) == hf.apply_chat_template(
        conv, tokenize=False, add_generation_prompt=True)


def test_hf_directory_generation_config_adds_stop_ids(hf, tmp_path):
    import json

    hf.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    assert Tokenizer.from_pretrained(str(tmp_path)).stop_token_ids == [2, 0]


def test_alias_loads_the_default_model():
    t = Tokenizer.from_pretrained("smollm2-135m-instruct")
    assert t.encode("Hello") == [19556]


# ------------------------------------------------------------------ errors
def test_bad_inputs_are_named(tok):
    with pytest.raises(GenerationParameterError, match="text"):
        tok.encode(123)
    with pytest.raises(GenerationParameterError, match="49152"):
        tok.decode([5, 49152])
    with pytest.raises(GenerationParameterError):
        tok.stream_decoder().push(-1)


@pytest.mark.parametrize("ids", [[1.5], [2.0], np.array([1.0]), ["3"], [True], [None], 7])
def test_decode_refuses_ids_that_are_not_integers(tok, ids):
    with pytest.raises(GenerationParameterError, match="integer"):
        tok.decode(ids)


def test_decode_takes_integers_of_any_integer_type(tok, hf):
    ids = [int(i) for i in tok.encode("The quick brown fox")]
    expected = hf.decode(ids)
    assert tok.decode(np.array(ids, np.int32)) == tok.decode([np.int64(i) for i in ids]) == expected
    assert tok.decode(np.array(ids[0])) == hf.decode(ids[:1])            # a 0-d array is one id


@pytest.mark.parametrize("text", ["a\udcffb", "\ud83d", "caf\udce9"])
def test_encode_names_a_lone_surrogate(tok, text):
    with pytest.raises(GenerationParameterError, match="surrogate"):
        tok.encode(text)
    with pytest.raises(GenerationParameterError, match="surrogate"):
        tok.encode_batch(["fine", text])


@pytest.mark.parametrize("token_id", [-1, 49152, 10**12, 1.5])
def test_id_to_token_outside_the_vocabulary_is_named(tok, token_id):
    with pytest.raises(GenerationParameterError):
        tok.id_to_token(token_id)
    assert tok.id_to_token(0) == "<|endoftext|>"


def test_padded_model_vocab_ids_decode_to_nothing_and_stream(tmp_path):
    # Qwen2-like: the embedding has more rows (300) than the tokenizer has tokens (261). HF decodes
    # such ids to nothing; streaming must not abort on one (the model may legally sample it).
    import npllm
    from npllm.streaming import TextStreamer

    from _helpers_io import tiny_hf_weights

    path = tmp_path / "padded.gguf"
    write_tiny_gguf(path, weights=tiny_hf_weights(vocab=300), metadata={"llama.vocab_size": ("uint32", 300)})
    model, t = npllm.load(str(path))
    assert model.config.vocab_size == 300 and t.vocab_size == 261 and t.model_vocab_size == 300
    ids = t.encode("the the") + [299, 270] + t.encode(" he")
    assert t.decode(ids) == t.decode(t.encode("the the")) + t.decode(t.encode(" he"))
    pieces = []
    streamer = TextStreamer(t, on_text=pieces.append)
    streamer.put(np.array([ids[:1]]))
    for i in ids:
        streamer.put(np.array([i]))
    streamer.end()
    assert "".join(pieces) == t.decode(ids)
    with pytest.raises(GenerationParameterError, match="300"):
        t.decode([300])


def test_tiny_gguf_tokenizer_builds(tmp_path):
    p = tmp_path / "tiny.gguf"
    write_tiny_gguf(p)
    t = Tokenizer.from_pretrained(str(p))
    ids = t.encode("<|im_start|>the")
    assert ids[0] == 1 and t.decode(ids) == "<|im_start|>the"
    assert t.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).endswith("assistant\n")


@pytest.mark.parametrize("kwargs,match", [
    ({"tokenizer_model": "bert"}, "tokenizer.ggml.model"),
    ({"tokenizer_model": "llama"}, "tokenizer.ggml.scores"),  # SentencePiece needs its scores
    ({"pre": "mystery-pre"}, "mystery-pre"),
    ({"merges": ["Ġ t", "q zzz"]}, "merge"),
    ({"metadata": {"tokenizer.ggml.eos_token_id": ("uint32", 99999)}}, "eos_token_id"),
])
def test_bad_tokenizer_metadata_is_named(tmp_path, kwargs, match):
    p = tmp_path / "bad.gguf"
    write_tiny_gguf(p, **kwargs)
    with pytest.raises(ModelFormatError, match=match):
        Tokenizer.from_gguf(str(p))


def test_no_template_is_a_clear_error(tmp_path):
    p = tmp_path / "notpl.gguf"
    write_tiny_gguf(p, skip_metadata={"tokenizer.chat_template"})
    t = Tokenizer.from_gguf(str(p))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        t.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
def metaspace_tok():
    """A small SentencePiece-style (Metaspace, byte fallback) BPE: its decoder drops the leading
    space of the first token, which naive per-token streaming gets wrong."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"] + alphabet)
    backend.train_from_iterator(["the cat sat on the mat", "hello world, hello there", "a b c d e f g"] * 20,
                                trainer)
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>")


@given(st.lists(st.integers(0, 399), min_size=1, max_size=30), st.booleans())
def test_streaming_keeps_spaces_with_a_metaspace_decoder(metaspace_tok, ids, skip):
    ids = [i for i in ids if i < metaspace_tok.vocab_size] or [3]
    dec = metaspace_tok.stream_decoder(skip_special_tokens=skip)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == metaspace_tok.decode(ids, skip_special_tokens=skip)


def test_metaspace_streaming_of_real_text(metaspace_tok):
    text = "hello world, the cat sat 🎉 there"
    ids = metaspace_tok.encode(text)
    dec = metaspace_tok.stream_decoder()
    assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == metaspace_tok.decode(ids) == text
