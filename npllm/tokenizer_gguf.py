"""Lesson 01 — rebuilding a tokenizer from a GGUF file's vocabulary.

A GGUF file has no ``tokenizer.json``.  It carries the raw material under
``tokenizer.ggml.*`` and llama.cpp rebuilds the tokenizer from it at load
time; npllm rebuilds the same tokenizer as an HF ``tokenizers`` object.  Two
kinds of vocabulary are common:

- **byte-level BPE** (``tokenizer.ggml.model = "gpt2"``: GPT-2, Llama 3, Qwen2,
  SmolLM2, StarCoder, Falcon, DeepSeek, Command-R, ...).  Tokens are spelled in
  GPT-2's byte alphabet (a space is ``Ġ``), ``tokenizer.ggml.merges`` lists the
  merges best first, and ``tokenizer.ggml.pre`` names the regexes that cut the
  text into pre-tokens before merging (``BYTE_LEVEL_PRE``).
- **SentencePiece BPE** (``tokenizer.ggml.model = "llama"``: Llama 2,
  TinyLlama, Mistral, Phi-3, Gemma).  Tokens spell a space as "▁" (U+2581),
  every token has a score, and there is no merge list: SentencePiece merges
  the adjacent pair whose concatenation has the best score, again and again,
  so the merges are all the ways to cut a token in two, ordered by that
  token's score (``merges_from_scores``).  A character the vocabulary lacks
  becomes its UTF-8 bytes, the tokens ``<0x00>``..``<0xFF>`` ("byte
  fallback").  ``tokenizer.ggml.add_space_prefix`` (default true) puts a "▁"
  in front of the text, and llama.cpp does so again after every special token.
  Gemma 4 (``model = "gemma4"``) is the same kind of tokenizer with its merges
  written out.

Which behaviour is followed.  The references are llama.cpp's tokenizer on the
same file (``src/llama-vocab.cpp``) and the original model's ``tokenizer.json``
(whose ids llama.cpp's ``models/ggml-vocab-*.gguf.out`` files record); the tests
compare against both.  transformers 5.x's own GGUF loader deviates from them in
a few places, and npllm does not follow it there:

- SentencePiece ``add_space_prefix``: transformers prepends "▁" only at the very
  start and never doubles it (``" Hello"`` -> ``▁Hello``), SentencePiece gives
  ``▁▁Hello``; after a special token transformers adds no "▁" (llama.cpp does).
  transformers' phi3 builder matches SentencePiece here.
- Gemma: transformers respells the user-defined whitespace tokens ("  ", "   ")
  as "▁" runs reached by merges; llama.cpp matches them whole in the text, as
  npllm does (they differ on runs longer than the longest such token, and on
  a literal "▁" next to spaces).
- Phi-3: llama.cpp (and Phi-3's tokenizer.json) strip the whitespace after
  the chat tokens (``<|user|>\\n``); transformers keeps it.
- ``llama-bpe`` and ``tekken``: the models' tokenizer.json and llama.cpp emit a
  pre-token that is itself a token whole (``ignore_merges``); transformers
  merges it.
- ``qwen2``: Qwen2's tokenizer.json applies Unicode NFC first; transformers and
  llama.cpp do not (they differ on decomposed accents such as ``e\\u0301``).
- ``smollm``, ``starcoder``, ``refact``, ``command-r``, ``falcon``, ``deepseek-llm``,
  ``deepseek-coder``: transformers knows none of these and uses GPT-2's regex
  (they split digits first, or have their own splits).
- BOS: SentencePiece files without ``add_bos_token`` add BOS (as llama.cpp and
  transformers do); ``llama-bpe`` and ``tekken`` files without it add BOS too
  (llama.cpp and Llama 3's tokenizer.json do; transformers does not).
  transformers drops control tokens not spelled in the byte alphabet, so for
  DeepSeek it adds a new BOS token past the vocabulary.

Where npllm differs from llama.cpp (following ``tokenizer.json``): Qwen2's NFC;
llama.cpp treats the text ``</s>`` (and other end-of-generation spellings) as a
control token even where the vocabulary says it is ordinary text; Phi-3's
rstrip removes any Unicode whitespace (llama.cpp: ASCII only); when special
tokens overlap in the text, ``tokenizers`` takes the leftmost-longest one and
llama.cpp the longest; SentencePiece joins equal-scored pairs leftmost first,
the merge list ranks them by token id.  Special tokens are always matched
whole in the text (as ``tokenizers`` and llama.cpp with ``parse_special=true``
do); llama.cpp's default tokenizes a control token's text as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import ModelFormatError

# llama.cpp's token types (tokenizer.ggml.token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # "▁", SentencePiece's visible space
_MAX_VOCAB = 1 << 22


# ------------------------------------------------------------------ byte-level pre-tokenizers
# Each entry is the list of steps the model's tokenizer.json applies before BPE, written with
# the regexes llama.cpp copied from those files (llama-vocab.cpp, llm_tokenizer_bpe):
#   ("split", regex)  every match and every gap between matches becomes a piece
#   ("digits", one)   runs of digits (one=True: each digit) become pieces
#   ("punct",)        runs of punctuation become pieces
#   ("bytes", regex)  respell in the byte alphabet; regex=True also applies GPT-2's regex
_GPT2 = ("bytes", True)
_BYTES = ("bytes", False)
_ONE_DIGIT = ("digits", True)
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek's character classes, as code point ranges (letters of many scripts; ASCII and full-width
# punctuation; CJK ideographs, everything from U+0800 to U+4E00, and Hangul).
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+")


@dataclass(frozen=True)
class BytePre:
    """How one ``tokenizer.ggml.pre`` value cuts text before byte-level BPE."""
    steps: Tuple[tuple, ...]
    ignore_merges: bool = False  # a pre-token that is itself a token is emitted whole
    nfc: bool = False  # the model's tokenizer.json normalizes to Unicode NFC first
    add_bos: bool = False  # llama.cpp's default when the file has no add_bos_token


# Checked against a real vocabulary's reference ids (tests/test_tokenizer_families.py): gpt-2, mpt,
# starcoder, refact, command-r, falcon, deepseek-llm, deepseek-coder, qwen2, qwen35, llama-bpe.
# phi-2, olmo, codeshell, llama3, llama-v3, falcon3 and deepseek-r1-qwen get a checked entry's steps,
# as in llama.cpp; tekken follows llama.cpp, unchecked.  "default" (also a missing value) and "gpt2"
# (npllm's name for transformers' choice) mean GPT-2's regex, as in transformers; llama.cpp has a
# falcon-like fallback list for "default" instead (an old file without the value is ambiguous).
_STARCODER = BytePre((_ONE_DIGIT, _GPT2))
_QWEN2_PRE = BytePre((("split", _QWEN2), _BYTES), nfc=True)
_LLAMA3_PRE = BytePre((("split", _LLAMA3), _BYTES), ignore_merges=True, add_bos=True)
BYTE_LEVEL_PRE: Dict[str, BytePre] = {
    "gpt-2": BytePre((_GPT2,)), "gpt2": BytePre((_GPT2,)), "default": BytePre((_GPT2,)),
    "mpt": BytePre((_GPT2,)), "phi-2": BytePre((_GPT2,)), "olmo": BytePre((_GPT2,)),
    "smollm": _STARCODER, "starcoder": _STARCODER, "refact": _STARCODER, "command-r": _STARCODER,
    "codeshell": _STARCODER,
    "falcon": BytePre((("punct",), _GPT2, ("digits", False), ("split", "[0-9][0-9][0-9]"))),
    "deepseek-llm": BytePre((("split", "[\r\n]"), ("split", _DEEPSEEK_LETTERS), ("split", _DEEPSEEK_PUNCT),
                             ("split", r"\s+$"), ("split", _CJK), ("split", r"\p{N}+"), _BYTES)),
    "deepseek-coder": BytePre((("split", "[\r\n]"), ("split", r"\s?\p{L}+"), ("split", r"\s?\p{P}+"),
                               ("split", _CJK), _ONE_DIGIT, _BYTES)),
    "qwen2": _QWEN2_PRE, "deepseek-r1-qwen": BytePre((("split", _QWEN2), _BYTES)),  # (its NFC is unverified)
    "qwen35": BytePre((("split", _QWEN35), _BYTES)),
    "llama-bpe": _LLAMA3_PRE, "llama3": _LLAMA3_PRE, "llama-v3": _LLAMA3_PRE, "falcon3": _LLAMA3_PRE,
    "tekken": BytePre((("split", _TEKKEN), _BYTES), ignore_merges=True, add_bos=True),
}


def byte_level_pre_tokenizer(pre: BytePre):
    """The ``tokenizers`` pre-tokenizer for one ``BYTE_LEVEL_PRE`` entry."""
    from tokenizers import Regex, pre_tokenizers as pt

    steps = []
    for step in pre.steps:
        kind = step[0]
        if kind == "split":
            steps.append(pt.Split(Regex(step[1]), behavior="isolated"))
        elif kind == "digits":
            steps.append(pt.Digits(individual_digits=step[1]))
        elif kind == "punct":
            steps.append(pt.Punctuation(behavior="contiguous"))
        else:
            steps.append(pt.ByteLevel(add_prefix_space=False, use_regex=step[1]))
    return steps[0] if len(steps) == 1 else pt.Sequence(steps)


def byte_alphabet() -> Dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls,
    space, ...) are given the characters 256, 257, ... in byte order, so a space
    (0x20) becomes 'Ġ' (U+0120) and a newline 'Ċ'.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# ------------------------------------------------------------------ SentencePiece merges
def merges_from_scores(tokens: Sequence[str], scores: Sequence[float]) -> List[Tuple[str, str]]:
    """SentencePiece BPE as an ordered merge list: every cut of a token into two tokens, best score first.

    SentencePiece (and llama.cpp's ``llm_tokenizer_spm``) start from single
    characters and repeatedly join the adjacent pair whose concatenation is the
    token with the highest score.  A BPE with the merges ``(left, right)`` for
    every token ``left + right`` whose halves are tokens too, ranked by the
    score of ``left + right``, does the same.  Equal scores are ranked by token
    id (SentencePiece takes the leftmost pair there; the vocabularies tested
    have no such ties that matter).

        >>> merges_from_scores(["a", "b", "c", "bc", "abc"], [0, 0, 0, -1, -2])
        [('b', 'c'), ('a', 'bc')]
    """
    if isinstance(scores, np.ndarray):  # as read from a file: Python floats sort faster than NumPy scalars
        scores = scores.tolist()
    index = {t: i for i, t in enumerate(tokens)}
    found = []  # (-score, token id, cut, left, right): the sort never reaches the strings
    for i, (piece, score) in enumerate(zip(tokens, scores)):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                found.append((-score, i, cut, left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


# ------------------------------------------------------------------ the builders
def backend_from_gguf_metadata(md: Dict[str, Any], pre_override: Optional[str] = None):
    """``(tokenizers.Tokenizer, special token names, add_bos, add_eos)`` for a GGUF's metadata.

    ``pre_override`` replaces ``tokenizer.ggml.pre`` of a byte-level vocabulary.
    """
    kind = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not 0 < len(tokens) <= _MAX_VOCAB or \
            not all(isinstance(t, str) for t in tokens):
        raise ModelFormatError("tokenizer.ggml.tokens must be a non-empty list of strings")
    if "tokenizer.ggml.token_type" in md:
        types = _numbers(md, "tokenizer.ggml.token_type", len(tokens), "iu",
                         f"tokenizer.ggml.token_type must list one type per token ({len(tokens)})").tolist()
    else:
        types = [TOKEN_NORMAL] * len(tokens)
    if kind == "gpt2":
        backend, add_bos = _byte_level_bpe(md, tokens, types, pre_override)
        defaults = {}
    elif kind == "llama":
        backend = _sentencepiece_bpe(md, tokens, types, _merges_from_scores_field(md, tokens), space_prefix=True)
        add_bos = True  # llama.cpp's and transformers' default for SentencePiece files
        defaults = {"bos_token": 1, "eos_token": 2, "unk_token": 0}  # llama.cpp's
    elif kind == "gemma4":  # Gemma 4: the same SentencePiece-style BPE, with its merges written out
        backend = _sentencepiece_bpe(md, tokens, types, _merges_field(md, tokens, split_at=1), space_prefix=False)
        add_bos, defaults = True, {}
    else:
        raise ModelFormatError(
            f"tokenizer.ggml.model = {kind!r} is not supported (npllm builds 'gpt2', byte-level BPE, and "
            "'llama'/'gemma4', SentencePiece BPE; for other tokenizers use an HF directory with tokenizer.json)")
    names = _special_token_names(md, backend, len(tokens), defaults)
    add_bos = _flag(md, "tokenizer.ggml.add_bos_token", add_bos)
    add_eos = _flag(md, "tokenizer.ggml.add_eos_token", False)
    return backend, names, add_bos, add_eos


def _byte_level_bpe(md, tokens, types, pre_override):
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as Backend

    pre_name = pre_override or md.get("tokenizer.ggml.pre") or "default"
    if pre_name not in BYTE_LEVEL_PRE:
        raise ModelFormatError(f"tokenizer.ggml.pre = {pre_name!r} is not supported "
                               f"(known: {', '.join(sorted(BYTE_LEVEL_PRE))})")
    pre = BYTE_LEVEL_PRE[pre_name]

    # Normal tokens are spelled in the byte alphabet; respell any that are not
    # (as transformers does), unless the respelled form is another token already
    # (Command-R lists "🇸" and its byte spelling: the raw one can never be produced,
    # as in its tokenizer.json).  Control/user-defined tokens keep their text: they
    # are matched whole in the input, never produced by merges.
    spell = byte_alphabet()
    alphabet = set(spell.values())
    specials = [t for t, ttype in zip(tokens, types) if ttype == TOKEN_CONTROL]
    added = [t for t, ttype in zip(tokens, types) if ttype == TOKEN_USER_DEFINED]
    vocab: Dict[str, int] = dict(zip(tokens, range(len(tokens))))
    normal = (t for t, ttype in zip(tokens, types) if ttype not in (TOKEN_CONTROL, TOKEN_USER_DEFINED))
    if len(vocab) < len(tokens) or not set("".join(normal)) <= alphabet:
        # (the usual vocabulary is unique and spelled in the alphabet: the dict above, built at C
        # speed, is then the loop's result; otherwise the loop respells and names a duplicate)
        as_written = set(tokens)
        vocab = {}
        for i, (tok, ttype) in enumerate(zip(tokens, types)):
            if ttype not in (TOKEN_CONTROL, TOKEN_USER_DEFINED) and not set(tok) <= alphabet:
                respelled = "".join(spell[b] for b in tok.encode("utf-8"))
                tok = tok if respelled in as_written else respelled
            if tok in vocab:
                raise ModelFormatError(f"tokenizer.ggml.tokens: token {tok!r} appears twice "
                                       f"(ids {vocab[tok]} and {i})")
            vocab[tok] = i
    pairs = _merges_field(md, vocab)
    try:
        backend = Backend(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=pre.ignore_merges))
    except Exception as e:  # tokenizers raises a bare Exception
        raise ModelFormatError(f"cannot build the BPE tokenizer ({e})") from None
    if pre.nfc:
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = byte_level_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return backend, pre.add_bos


def _sentencepiece_bpe(md, tokens, types, merges, space_prefix: bool):
    """SentencePiece BPE: "▁" for spaces, byte fallback, control and user-defined tokens matched whole.

    ``space_prefix`` is the default of ``tokenizer.ggml.add_space_prefix``.
    """
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as Backend

    vocab = _unique_vocab(tokens)
    unk = _token_at(md, "tokenizer.ggml.unknown_token_id", tokens)
    if unk is None:
        unk = next((t for t, ty in zip(tokens, types) if ty == TOKEN_UNKNOWN), None)
    try:
        backend = Backend(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    except Exception as e:  # tokenizers raises a bare Exception
        raise ModelFormatError(f"cannot build the SentencePiece tokenizer ({e})") from None

    space_prefix = _flag(md, "tokenizer.ggml.add_space_prefix", space_prefix)
    # Normalizers run on each piece of text between special tokens, so Prepend puts "▁" at the
    # start of the text and after every special token, as llama.cpp does.
    escape = normalizers.Replace(" ", SPACE)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), escape]) if space_prefix else escape
    backend.pre_tokenizer = None  # SentencePiece merges across words: the whole piece is one "word"
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))

    # Phi-3's chat tokens swallow the whitespace after them (its tokenizer.json says rstrip, and
    # llama.cpp sets it for Phi-3 files), except <unk>, <s> and <|endoftext|>.
    rstrip = md.get("general.architecture") == "phi3"
    keep_space = {"<unk>", "<s>", "<|endoftext|>"}
    special, added = [], []
    for tok, ttype in zip(tokens, types):
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
            token = AddedToken(tok, special=ttype != TOKEN_USER_DEFINED, normalized=False,
                               rstrip=rstrip and tok not in keep_space)
            (added if ttype == TOKEN_USER_DEFINED else special).append(token)
    backend.add_special_tokens(special)
    backend.add_tokens(added)
    return backend


# ------------------------------------------------------------------ helpers
def _numbers(md, key, n: int, kinds: str, message: str) -> np.ndarray:
    """A metadata array of ``n`` numbers as a 1-D NumPy array: a GGUF file's reader hands out
    NumPy arrays of the file's item type; a metadata dict written by hand may hold a list.
    ``kinds`` are the allowed NumPy dtype kinds ("iu": integers, "iuf": any real number)."""
    value = md.get(key)
    allowed = (int, float) if "f" in kinds else int
    if isinstance(value, (list, tuple)) and not any(isinstance(v, bool) or not isinstance(v, allowed)
                                                    for v in value):
        try:
            value = np.asarray(value, dtype=np.float64 if "f" in kinds else np.int64)
        except OverflowError:  # an int beyond int64
            raise ModelFormatError(message) from None
    if not isinstance(value, np.ndarray) or value.ndim != 1 or len(value) != n or value.dtype.kind not in kinds:
        raise ModelFormatError(message)
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ModelFormatError(message)
    return value


def _merges_from_scores_field(md, tokens) -> List[Tuple[str, str]]:
    scores = _numbers(md, "tokenizer.ggml.scores", len(tokens), "iuf",
                      f"tokenizer.ggml.scores must list one finite number per token ({len(tokens)}); "
                      "SentencePiece vocabularies rank their merges by it")
    return merges_from_scores(tokens, scores)


def _unique_vocab(tokens) -> Dict[str, int]:
    vocab: Dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise ModelFormatError(f"tokenizer.ggml.tokens: token {tok!r} appears twice (ids {vocab[tok]} and {i})")
        vocab[tok] = i
    return vocab


def _merges_field(md, vocab, split_at: int = 0) -> List[Tuple[str, str]]:
    """``tokenizer.ggml.merges`` as pairs; each ``"left right"`` must join two tokens into a third.

    ``split_at=1`` cuts at the first space after the first character, as llama.cpp
    does (a Gemma 4 token may be a real space).
    """
    if isinstance(vocab, list):
        vocab = _unique_vocab(vocab)
    merges = md.get("tokenizer.ggml.merges")
    if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
        raise ModelFormatError("tokenizer.ggml.merges must be a list of strings")
    if not split_at:  # the usual case at C speed: every merge is "left right" of known tokens
        pairs = [tuple(m.split(" ")) for m in merges]
        if all(len(pair) == 2 and pair[0] for pair in pairs):
            lefts, rights = [left for left, _ in pairs], [right for _, right in pairs]
            if set(lefts) <= vocab.keys() and set(rights) <= vocab.keys() and \
                    all(map(vocab.__contains__, map(str.__add__, lefts, rights))):
                return pairs
    pairs = []  # the loop finds the first invalid merge, for the message
    for m in merges:
        cut = m.find(" ", split_at)
        left, right = (m[:cut], m[cut + 1:]) if cut > 0 else (m, "")
        if (not split_at and " " in right) or left not in vocab or right not in vocab or left + right not in vocab:
            raise ModelFormatError(f"tokenizer.ggml.merges: invalid merge {m!r}")
        pairs.append((left, right))
    return pairs


def _flag(md, key, default: bool) -> bool:
    value = md.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelFormatError(f"{key} = {value!r} must be a bool")
    return value


def _token_at(md, key, tokens) -> Optional[str]:
    value = md.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(tokens):
        raise ModelFormatError(f"{key} = {value!r} is not a token id in [0, {len(tokens)})")
    return tokens[value]


def _special_token_names(md, backend, n, defaults) -> Dict[str, Optional[str]]:
    """bos/eos/pad/unk as token strings (as the backend spells them), from the file or llama.cpp's defaults."""
    names = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("pad_token", "padding_token_id"), ("unk_token", "unknown_token_id")):
        key = "tokenizer.ggml." + key
        value = md.get(key, defaults.get(name))
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n):
            if key not in md:  # a default that this small vocabulary does not reach
                value = None
            else:
                raise ModelFormatError(f"{key} = {value!r} is not a token id in [0, {n})")
        names[name] = None if value is None else backend.id_to_token(value)
    return names
