"""Tokenizers rebuilt from GGUF vocabularies of many model families equal their references.

References, in order of authority:

1. llama.cpp's ``models/ggml-vocab-<name>.gguf.out``: the ids the original model's HF
   tokenizer (its ``tokenizer.json``) gives for every string in ``.gguf.inp``
   (multilingual, whitespace runs, emoji, code, digits), ``add_special_tokens=False``.
   The vocabularies are real models' (Llama 2, Phi-3, Gemma 4, Llama 3, Qwen2, Qwen3.5,
   GPT-2, StarCoder, Refact, Command-R, Falcon, DeepSeek LLM/Coder, MPT);
   ``fetch_test_vocab.py`` downloads them once.
2. llama.cpp's tokenizer on the same file: the few ids written out below were produced by
   llama-cpp-python 0.3.36 (``Llama(model_path, vocab_only=True).tokenize(text, add_bos, special=True)``)
   while this was written; the tests do not need llama.cpp.
3. transformers 5.24's own GGUF tokenizer (``AutoTokenizer.from_pretrained(dir, gguf_file=)``),
   where it does not deviate from 1 and 2; where it does, the deviation is pinned here.
4. An independent SentencePiece BPE written below from the algorithm's definition
   (join the best-scored adjacent pair, leftmost first), run on vocabularies read with gguf-py.
"""

import json
import os
import unicodedata
from functools import lru_cache

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from npllm.errors import ModelFormatError
from npllm.tokenizer import Tokenizer
from npllm.tokenizer_gguf import merges_from_scores

from fetch_test_vocab import VOCABS, read_cases

SPM = ("llama-spm", "phi-3", "gemma-4")  # SentencePiece-style: "▁" for spaces, byte fallback
NFC = {"qwen2"}  # Qwen2's tokenizer.json normalizes to NFC first


@pytest.fixture(scope="session")
def tok(test_vocab_dir):
    """tok(name) -> npllm's Tokenizer for ggml-vocab-<name>.gguf (built once)."""
    @lru_cache(maxsize=None)
    def build(name):
        return Tokenizer.from_gguf(str(test_vocab_dir / f"ggml-vocab-{name}.gguf"))
    return build


@pytest.fixture(scope="session")
def cases(test_vocab_dir):
    return lru_cache(maxsize=None)(lambda name: read_cases(test_vocab_dir, name))


# ------------------------------------------------------------------ 1. the models' own tokenizers
@pytest.mark.parametrize("name", VOCABS)
def test_ids_equal_the_models_own_tokenizer_on_every_reference_string(tok, cases, name):
    t, reference = tok(name), cases(name)
    assert len(reference) >= 46  # the whole file was read
    wrong = [(text, ids, t.encode(text, add_special_tokens=False)) for text, ids in reference
             if t.encode(text, add_special_tokens=False) != ids]
    assert not wrong, f"{name}: {len(wrong)} of {len(reference)} differ, first: {wrong[0]}"


@pytest.mark.parametrize("name", VOCABS)
def test_reference_ids_decode_to_the_reference_strings(tok, cases, name):
    t = tok(name)
    for text, ids in cases(name):
        expected = unicodedata.normalize("NFC", text) if name in NFC else text
        assert t.decode(ids) == expected
        assert t.decode(t.encode(text, add_special_tokens=False)) == expected


def test_the_reference_set_is_multilingual_whitespace_heavy_and_has_code(cases):
    texts = [text for text, _ in cases("llama-spm")]
    assert any("нещо" in t for t in texts) and any("我想" in t for t in texts) and any("ក" in t for t in texts)
    assert "    Hello\n    Hello" in texts and "\t\n" in texts and any("```" in t for t in texts)


def test_llama3_emits_a_pre_token_that_is_a_token_whole(tok, cases):
    """ignore_merges: with merges alone "Cửa Việt" becomes 5 ids, the models' tokenizer gives 3."""
    (ids,) = [ids for text, ids in cases("llama-bpe") if text == "Cửa Việt"]
    assert len(ids) == 3 and tok("llama-bpe").encode("Cửa Việt", add_special_tokens=False) == ids


def test_qwen2_normalizes_to_nfc_first(tok, cases):
    """Qwen2's tokenizer.json composes first (NFC): decomposed text gives the composed text's ids."""
    composed = [(text, ids) for text, ids in cases("qwen2") if unicodedata.normalize("NFD", text) != text]
    assert any("Việt" in text for text, _ in composed)
    for text, ids in composed:
        assert unicodedata.normalize("NFC", text) == text
        assert tok("qwen2").encode(unicodedata.normalize("NFD", text), add_special_tokens=False) == ids


def test_qwen35_keeps_decomposed_text(tok, cases):
    """Qwen3.5's reference strings include decomposed accents; its tokenizer does not compose them."""
    decomposed = [(text, ids) for text, ids in cases("qwen35") if unicodedata.normalize("NFC", text) != text]
    assert len(decomposed) >= 3
    for text, ids in decomposed:
        assert tok("qwen35").encode(text, add_special_tokens=False) == ids
        assert tok("qwen35").encode(unicodedata.normalize("NFC", text), add_special_tokens=False) != ids


# ------------------------------------------------------------------ 2. llama.cpp on the same file
# llama.cpp 0.3.36: Llama(path, vocab_only=True).tokenize(b"Hello", add_bos=True)[0], None if no BOS is added.
LLAMA_CPP_BOS = {"llama-spm": 1, "phi-3": 1, "gemma-4": 2, "llama-bpe": 128000, "qwen2": None, "qwen35": None,
                 "gpt-2": None, "starcoder": None, "refact": None, "command-r": 5, "falcon": None,
                 "deepseek-llm": 100000, "deepseek-coder": 32013, "mpt": None}

# llama.cpp 0.3.36, tokenize(text, add_bos=False, special=True): the space SentencePiece puts
# before the text comes back after every special token, Phi-3's chat tokens eat the whitespace
# after them, user-defined tokens ("</s>" in Phi-3, "  " in Gemma) match whole.
LLAMA_CPP_SPECIAL = {
    "llama-spm": {"<s>hi</s> there": [1, 7251, 2, 29871, 727], "a</s>b": [263, 2, 289], " <unk>x": [259, 0, 921]},
    "phi-3": {"<|user|>\nHi<|end|>\n<|assistant|>\n": [32010, 6324, 32007, 32001],
              "<|system|>  x</s>  y": [32006, 921, 2, 343], "<s> z<|endoftext|> w": [1, 29871, 503, 32000, 29871, 281]},
    "gemma-4": {"<|turn>user\nhi<turn|>\n": [105, 2364, 107, 2202, 106, 107],
                "a  b   c": [236746, 138, 236763, 139, 236755]},
}


@lru_cache(maxsize=None)
def llama_cpp_ids():
    """data/llama_cpp_ids.json: llama.cpp's ids for 144 extra strings per vocabulary (curated multilingual,
    whitespace and code strings, and seeded random ones); see data/make_llama_cpp_ids.py."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "llama_cpp_ids.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)["vocabularies"]


@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "gemma-4", "llama-bpe", "qwen2", "gpt-2", "deepseek-llm",
                                  "falcon"])
def test_ids_equal_llama_cpp_on_extra_strings(tok, name):
    t, reference = tok(name), llama_cpp_ids()[name]
    assert len(reference) >= 100
    wrong = [(text, ids, t.encode(text, add_special_tokens=False)) for text, ids in reference
             if t.encode(text, add_special_tokens=False) != ids]
    assert not wrong, f"{name}: {len(wrong)} of {len(reference)} differ, first: {wrong[0]}"


@pytest.mark.parametrize("name", VOCABS)
def test_bos_is_added_as_llama_cpp_adds_it(tok, name):
    t = tok(name)
    plain = t.encode("Hello", add_special_tokens=False)
    with_special = t.encode("Hello")
    bos = LLAMA_CPP_BOS[name]
    assert with_special == ([bos] if bos is not None else []) + plain
    assert t.add_bos_token == (bos is not None)
    if bos is not None:
        assert t.bos_token_id == bos


@pytest.mark.parametrize("name,text,ids", [(n, t, i) for n, d in LLAMA_CPP_SPECIAL.items() for t, i in d.items()])
def test_special_tokens_in_text_follow_llama_cpp(tok, name, text, ids):
    assert tok(name).encode(text, add_special_tokens=False) == ids


# ------------------------------------------------------------------ 3. transformers' GGUF tokenizer
# Where transformers 5.24's GGUF loader deviates from the models' own tokenizers on the reference
# strings (npllm follows the reference, see npllm/tokenizer_gguf.py):
#   llama-spm: its Metaspace(prepend_scheme="first") neither doubles a leading space nor honours
#              add_space_prefix, so every string that starts with " " differs;
#   llama-bpe: no ignore_merges;
#   deepseek-coder, starcoder: GPT-2's regex instead of the model's splits (digits first), which
#              shows on "½" (a number that is not a digit) in these strings.
# (It cannot load command-r, refact, mpt or gemma-4 files; on falcon, GPT-2's regex differs on 9.)
HF_DEVIATES = {
    "llama-spm": lambda text: text.startswith(" "),
    "llama-bpe": lambda text: text == "Cửa Việt",
    "deepseek-coder": lambda text: text == "ied 4 ½ months",
    "starcoder": lambda text: text == "ied 4 ½ months",
    "phi-3": lambda text: False, "gpt-2": lambda text: False, "qwen2": lambda text: False,
    "qwen35": lambda text: False,
}
# The BOS transformers adds.  It adds none for Llama 3 and a new token 32257 for DeepSeek Coder
# (it skips the control token <｜begin▁of▁sentence｜>, id 32013, whose text is not byte-level).
HF_BOS = {"llama-spm": 1, "phi-3": 1, "gpt-2": None, "qwen2": None, "qwen35": None, "starcoder": None,
          "llama-bpe": None, "deepseek-coder": 32257}


@pytest.fixture(scope="session")
def hf_gguf(test_vocab_dir):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()

    @lru_cache(maxsize=None)
    def load(name):
        return transformers.AutoTokenizer.from_pretrained(str(test_vocab_dir), gguf_file=f"ggml-vocab-{name}.gguf")
    return load


@pytest.mark.parametrize("name", sorted(HF_DEVIATES))
def test_transformers_gguf_tokenizer_agrees_except_where_documented(tok, hf_gguf, cases, name):
    t, hf, deviates = tok(name), hf_gguf(name), HF_DEVIATES[name]
    for text, ids in cases(name):
        theirs = hf.encode(text, add_special_tokens=False)
        if deviates(text):
            assert theirs != ids, f"{name}: transformers no longer deviates on {text!r}"
        else:
            assert t.encode(text, add_special_tokens=False) == theirs
        assert t.decode(ids) == hf.decode(ids)
        assert t.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    assert any(deviates(text) for text, _ in cases(name)) == \
        (name in ("llama-spm", "llama-bpe", "deepseek-coder", "starcoder"))
    added = hf.encode("Hello")[:-len(hf.encode("Hello", add_special_tokens=False))]
    assert added == ([HF_BOS[name]] if HF_BOS[name] is not None else [])
    if HF_BOS[name] == LLAMA_CPP_BOS[name]:
        assert t.encode("Hello") == hf.encode("Hello")


# ------------------------------------------------------------------ 4. SentencePiece by definition
def _gguf_fields(path, *keys):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return [reader.fields[k].contents() if k in reader.fields else None for k in keys]


@pytest.fixture(scope="session")
def spm_reference(test_vocab_dir):
    """spm_reference(name)(text) -> ids, SentencePiece BPE computed naively from gguf-py's reading."""
    @lru_cache(maxsize=None)
    def make(name):
        tokens, scores, types = _gguf_fields(test_vocab_dir / f"ggml-vocab-{name}.gguf", "tokenizer.ggml.tokens",
                                             "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
        vocab = {t: i for i, t in enumerate(tokens)}

        def encode(text):
            syms = list("\u2581" + text.replace(" ", "\u2581")) if text else []
            while True:  # join the adjacent pair that makes the best-scored token, leftmost on ties
                best = None
                for i in range(len(syms) - 1):
                    j = vocab.get(syms[i] + syms[i + 1])
                    if j is not None and (best is None or scores[j] > best[0]):
                        best = (scores[j], i)
                if best is None:
                    break
                i = best[1]
                syms[i:i + 2] = [syms[i] + syms[i + 1]]
            ids = []
            for s in syms:  # a character outside the vocabulary becomes its UTF-8 bytes
                ids.extend([vocab[s]] if s in vocab else [vocab[f"<0x{b:02X}>"] for b in s.encode("utf-8")])
            return ids
        specials = [t for t, ty in zip(tokens, types) if ty in (2, 3, 4)]
        return encode, specials
    return make


TEXT = st.text(alphabet=st.one_of(st.sampled_from(list(" \n\t  abcdeilnorstuHTW.,'!?-0123456789éßñ你好世界"
                                                       "Привет🎉👍🏽ก")), st.characters(codec="utf-8")), max_size=40)


@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
@given(text=TEXT)
def test_sentencepiece_merges_from_scores_equal_the_algorithm(tok, spm_reference, name, text):
    encode, specials = spm_reference(name)
    assume("\u2581" not in text and not any(s in text for s in specials))
    assert tok(name).encode(text, add_special_tokens=False) == encode(text)


def test_merges_from_scores_ranks_by_the_merged_tokens_score():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    # "bc" outranks "ab", so "abc" is reached as a + bc; both cuts of "abc" are merges
    assert merges_from_scores(tokens, [0, 0, 0, -5, -1, -3]) == [("b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")]


# ------------------------------------------------------------------ properties
@lru_cache(maxsize=None)
def _added_tokens(t):
    return tuple(a.content for a in t.backend.get_added_tokens_decoder().values())


def _plain(t, text):
    """No literal "▁" (SentencePiece reads it as a space) and no special token's text."""
    return "\u2581" not in text and not any(a in text for a in _added_tokens(t))


@pytest.mark.parametrize("name", SPM)
@given(text=st.text(max_size=60))
def test_sentencepiece_decode_inverts_encode_on_any_text(tok, name, text):
    """Byte fallback makes every string encodable; only a literal "▁" cannot come back (it is a space)."""
    t = tok(name)
    assume(_plain(t, text))
    assert t.decode(t.encode(text, add_special_tokens=False)) == text
    assert t.decode(t.encode(text), skip_special_tokens=True) == text


# (Falcon's, StarCoder's and Refact's vocabularies lack some bytes' tokens, e.g. 0x1E or 0xF1, so
# not every text survives them, in their own tokenizers as well.)
@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "gpt-2", "mpt", "deepseek-llm", "command-r"])
@given(text=st.text(max_size=60))
def test_byte_level_decode_inverts_encode_on_any_text(tok, name, text):
    t = tok(name)
    assume(not any(a in text for a in _added_tokens(t)))
    expected = unicodedata.normalize("NFC", text) if name in NFC else text
    assert t.decode(t.encode(text, add_special_tokens=False)) == expected


@pytest.mark.parametrize("name", SPM)
@given(ids=st.lists(st.one_of(st.integers(0, 31999), st.integers(3, 258), st.integers(0, 300)), min_size=1,
                    max_size=40), skip=st.booleans())
def test_sentencepiece_streamed_pieces_concatenate_to_decode(tok, name, ids, skip):
    t = tok(name)
    dec = t.stream_decoder(skip_special_tokens=skip)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == t.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("name", SPM + ("llama-bpe",))
@given(text=st.text(max_size=40))
def test_streaming_encoded_text_gives_back_the_text(tok, name, text):
    t = tok(name)
    assume(_plain(t, text))
    dec = t.stream_decoder()
    out = "".join(dec.push(i) for i in t.encode(text, add_special_tokens=False)) + dec.flush()
    assert out == text


# ------------------------------------------------------------------ errors
def _spm_metadata(**over):
    md = {"general.architecture": "llama", "tokenizer.ggml.model": "llama",
          "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a", "b", "\u2581", "\u2581a", "ab"],
          "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0],
          "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1]}
    md.update(over)
    return md


def test_a_tiny_sentencepiece_vocabulary_builds_and_prefixes_a_space():
    t = Tokenizer.from_gguf(_spm_metadata())
    assert t.encode("ab a") == [1, 6, 4, 6]  # <s> ▁a b ▁a: "▁a" (score -4) is joined before "ab" (-5)
    assert t.decode([1, 6, 4, 6], skip_special_tokens=True) == "ab a"
    no_prefix = Tokenizer.from_gguf(_spm_metadata(**{"tokenizer.ggml.add_space_prefix": False}))
    assert no_prefix.encode("ab a", add_special_tokens=False) == [7, 6]


@pytest.mark.parametrize("over,match", [
    ({"tokenizer.ggml.scores": [0.0] * 3}, "tokenizer.ggml.scores"),
    ({"tokenizer.ggml.scores": [0.0] * 7 + [float("nan")]}, "tokenizer.ggml.scores"),
    ({"tokenizer.ggml.tokens": ["a"] * 8}, "appears twice"),
    ({"tokenizer.ggml.add_space_prefix": "yes"}, "add_space_prefix"),
    ({"tokenizer.ggml.unknown_token_id": 99}, "unknown_token_id"),
    ({"tokenizer.ggml.model": "t5"}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.model": "gemma4", "tokenizer.ggml.merges": ["a c"]}, "merge"),
])
def test_bad_sentencepiece_metadata_is_named(over, match):
    with pytest.raises(ModelFormatError, match=match):
        Tokenizer.from_gguf(_spm_metadata(**over))


@pytest.mark.parametrize("pre", ["mystery", "gpt-4o", "chatglm-bpe"])
def test_unknown_byte_level_pre_tokenizers_are_refused_by_name(tok, pre):
    from npllm.io.gguf import read_gguf_metadata

    md = dict(read_gguf_metadata(os.fspath(tok("gpt-2").name_or_path)))
    md["tokenizer.ggml.pre"] = pre
    with pytest.raises(ModelFormatError, match=f"tokenizer.ggml.pre = '{pre}'"):
        Tokenizer.from_gguf(md)
