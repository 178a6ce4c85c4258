"""Gemma 3 270M's SentencePiece vocabulary (the real Q4_K_M GGUF): npllm's tokenizer equals
transformers 5.24's GGUF tokenizer and llama.cpp's.

transformers' ``AutoTokenizer.from_pretrained(folder, gguf_file=...)`` takes about a minute on
two cores, so its ids for the whole test set are computed once per session.  It deviates from
llama.cpp in two places (a literal "▁" next to spaces, and runs of more than 31 spaces, which it
rebuilds from "▁" merges where llama.cpp matches the file's whitespace tokens whole); there the
expected ids are llama.cpp's (llama-cpp-python 0.3.36, ``tokenize(text, add_bos=False,
special=True)``, run while this was written: npllm also equalled llama.cpp on 325 strings
including all of TEXTS).
"""

import os
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from npllm.chat import ChatTemplateError
from npllm.tokenizer import Tokenizer

TEXTS = [
    "Hello", " Hello", "  Hello", "Hello, world!", "The capital of France is",
    "你好，世界！今天天气很好。机器学习是人工智能的一个分支。", "日本語のテキスト、カタカナとひらがな。", "한국어 문장입니다.",
    "Привет, мир! Ünïcödé ñ café naïve Æsir ß Ωmega", "مرحبا بالعالم", "नमस्ते दुनिया", "ภาษาไทย",
    "emoji 🎉🔥👍🏽 and flags 🇫🇷🇯🇵, a family 👨‍👩‍👧", "\u00a0non-breaking\u2003em space\u200bzero width",
    "a  b   c    d" + " " * 31 + "e", "tab\tand\t\ttabs\t\t\t\t", "\n", "\n\n", "line\n\n\n\nnext\r\nwindows\r\n",
    "    indented\n        more\n\t\tmixed \t \n",
    "def square(x):\n    return x ** 2  # note\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "x = {'a': [1, 2, 3], \"b\": None}",
    "<table><tr><td>1</td><td>2</td></tr></table>", "<h1>Title</h1><p>para <b>bold</b> <i>it</i></p><br>",
    "<div class=\"x\">\n  <span>hi</span>\n</div>", "</iframe>", "[multimodal]",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<bos>text<eos>", "<pad><unk><mask>", "<start_of_image>", "<unused0> <unused1>",
    "12345678 3.14159 1e-9 v2.0.1 0xFF", "it's don't we'll I'M THEY'RE", "", " ", "   ", "x" * 300,
]
rng = random.Random(0)
_ALPHABET = "ab cdé\n\t  你好🎉<>/\r0123!"
TEXTS += ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 30))) for _ in range(200)]

# Where transformers deviates; llama.cpp's ids.
LLAMA_CPP = {
    " " * 40 + "x": [167, 145, 236781],  # 31 spaces, 9 spaces, x (transformers: 15 + 24 spaces)
    "x" + " " * 33: [236781, 167, 138],
    "a\u2581  b": [236746, 236743, 138, 236763],  # a ▁ "  " b (transformers joins ▁ with the spaces)
}
# Special and user-defined tokens, llama.cpp's ids (transformers agrees).
LLAMA_CPP_SPECIAL = {
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n": [105, 2364, 107, 2202, 106, 107, 105, 4368, 107],
    "<table><tr><td>1</td></tr></table>": [168, 173, 175, 236770, 183, 181, 176],
}


@pytest.fixture(scope="module")
def tok(gemma3_gguf):
    return Tokenizer.from_pretrained(gemma3_gguf)


@pytest.fixture(scope="session")
def hf_reference(gemma3_gguf):
    """transformers' GGUF tokenizer on every test string, computed once: {text: (ids, ids with BOS)}."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    hf = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gemma3_gguf),
                                                    gguf_file=os.path.basename(gemma3_gguf))
    ids = {t: (hf.encode(t, add_special_tokens=False), hf.encode(t)) for t in TEXTS + list(LLAMA_CPP)}
    decoded = {t: (hf.decode(i), hf.decode(j, skip_special_tokens=True)) for t, (i, j) in ids.items()}
    return ids, decoded, len(hf)


def test_ids_equal_transformers_gguf_tokenizer(tok, hf_reference):
    ids, _, _ = hf_reference
    wrong = [(t, ids[t][0], tok.encode(t, add_special_tokens=False)) for t in TEXTS
             if tok.encode(t, add_special_tokens=False) != ids[t][0]]
    assert not wrong, f"{len(wrong)} of {len(TEXTS)} differ, first: {wrong[0]}"


def test_bos_is_added_like_transformers_and_llama_cpp(tok, hf_reference):
    ids, _, n = hf_reference
    assert all(tok.encode(t) == ids[t][1] for t in TEXTS)
    assert tok.encode("hi") == [2, 2202]  # llama.cpp, add_bos=True
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (2, 1, 0, 3)
    assert tok.vocab_size == n == 262144


def test_decode_equals_transformers(tok, hf_reference):
    ids, decoded, _ = hf_reference
    for t in TEXTS + list(LLAMA_CPP):
        assert tok.decode(ids[t][0]) == decoded[t][0]
        assert tok.decode(ids[t][1], skip_special_tokens=True) == decoded[t][1]
        if t not in LLAMA_CPP:
            assert tok.decode(tok.encode(t, add_special_tokens=False)) == t


@pytest.mark.parametrize("text", sorted(LLAMA_CPP))
def test_where_transformers_deviates_ids_follow_llama_cpp(tok, hf_reference, text):
    ids, _, _ = hf_reference
    assert tok.encode(text, add_special_tokens=False) == LLAMA_CPP[text]
    assert ids[text][0] != LLAMA_CPP[text]  # the deviation is real
    if "\u2581" not in text:
        assert tok.decode(LLAMA_CPP[text]) == text


def test_ids_equal_llama_cpp_on_its_recorded_strings(tok):
    """data/llama_cpp_ids.json (see data/make_llama_cpp_ids.py): 144 strings, incl. runs of 40 spaces."""
    import json

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "llama_cpp_ids.json"),
              encoding="utf-8") as f:
        reference = json.load(f)["vocabularies"]["gemma3-270m"]
    assert len(reference) >= 100
    assert [tok.encode(t, add_special_tokens=False) for t, _ in reference] == [ids for _, ids in reference]


@pytest.mark.parametrize("text", sorted(LLAMA_CPP_SPECIAL))
def test_control_and_user_defined_tokens_match_whole(tok, text):
    assert tok.encode(text, add_special_tokens=False) == LLAMA_CPP_SPECIAL[text]


def test_no_chat_template_is_an_error_that_says_how_to_supply_one(tok):
    with pytest.raises(ChatTemplateError) as e:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert "tokenizer.chat_template" in str(e.value)
    assert "chat_template=" in str(e.value) and "--chat-template FILE" in str(e.value)
    template = "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template,
                                   add_generation_prompt=False) == [105, 2364, 107, 2202, 106, 107]


@given(text=st.text(max_size=60))
def test_decode_inverts_encode_on_any_text(tok, text):
    assume("\u2581" not in text and "<" not in text and "[multimodal]" not in text)
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


@given(ids=st.lists(st.one_of(st.integers(0, 262143), st.integers(0, 400), st.integers(236000, 262143)),
                    min_size=1, max_size=30), skip=st.booleans())
def test_streamed_pieces_concatenate_to_decode(tok, ids, skip):
    dec = tok.stream_decoder(skip_special_tokens=skip)
    assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == tok.decode(ids, skip_special_tokens=skip)
