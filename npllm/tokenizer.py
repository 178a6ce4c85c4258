"""Lesson 01 — tokens: text <-> integer ids.

A language model never sees text, only ids into its vocabulary.  SmolLM2 uses
byte-level BPE (as GPT-2): the text's UTF-8 bytes are spelled with 256
printable stand-in characters (a space is ``Ġ``, a newline ``Ċ``), the text
is cut into pre-tokens by a regex, and each pre-token is merged pair by pair
following the learned merge list, best merge first.

``Tokenizer`` wraps HF's ``tokenizers`` library (the Rust implementation
behind ``transformers``' fast tokenizers) and can be built from

- an HF directory (``tokenizer.json`` + ``tokenizer_config.json``), or
- a GGUF file's metadata (``tokenizer.ggml.*``): byte-level BPE or SentencePiece
  BPE (Llama 2, Mistral, Phi-3, Gemma), rebuilt by ``tokenizer_gguf.py`` the way
  llama.cpp reads it.

    tok = Tokenizer.from_pretrained("smollm2-135m-instruct")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    dec = tok.stream_decoder()
    for i in ids: print(dec.push(i), end="")

Pre-tokenizer note: SmolLM2's own ``tokenizer.json`` splits every digit
into its own pre-token (``Digits(individual_digits=True)`` then GPT-2's
byte-level regex), and llama.cpp does the same for ``tokenizer.ggml.pre =
"smollm"``.  transformers 5.x's GGUF loader ignores the ``smollm`` value and
uses the plain GPT-2 regex, which differs only when two or more whitespace
characters precede a digit (``"\\n\\n1."``): there we follow the model's own
tokenizer.  ``Tokenizer.from_gguf(..., pre_tokenizer="gpt2")`` reproduces
transformers exactly.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from .chat import ChatTemplateError, render_chat_template, select_template
from .errors import GenerationParameterError, ModelFormatError, ModelNotFoundError
from .tokenizer_gguf import (  # noqa: F401  (re-exported: the GGUF builders live in tokenizer_gguf.py)
    BYTE_LEVEL_PRE, TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED, TOKEN_USER_DEFINED,
    backend_from_gguf_metadata, byte_alphabet)

Messages = List[Dict[str, Any]]

# End-of-turn markers of common chat formats; stop_token_ids adds the ones the template uses.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class Tokenizer:
    """Text <-> ids, special tokens, the chat template, and streaming decode."""

    def __init__(self, backend, *, bos_token: Optional[str] = None, eos_token: Optional[str] = None,
                 pad_token: Optional[str] = None, unk_token: Optional[str] = None,
                 chat_template=None, extra_eos_token_ids: Sequence[int] = (), name_or_path: str = "",
                 add_bos_token: Optional[bool] = None, add_eos_token: Optional[bool] = None):
        self.backend = backend  # tokenizers.Tokenizer
        self.name_or_path = name_or_path
        # What encode(add_special_tokens=True) adds (None: whatever tokenizer.json's post-processor does).
        self.add_bos_token = add_bos_token
        self.model_vocab_size: Optional[int] = None  # rows of the model's embedding, if more (npllm.load)
        self.add_eos_token = add_eos_token
        self.chat_template = chat_template  # str, or HF's list of {"name", "template"}
        self.special_tokens = {"bos_token": bos_token, "eos_token": eos_token,
                               "pad_token": pad_token, "unk_token": unk_token}
        self._extra_eos = [int(i) for i in extra_eos_token_ids]
        # Where a chat template would have come from (named when there is none).
        self.template_source = "tokenizer.chat_template / tokenizer_config.json"

    # ------------------------------------------------------------ building
    @classmethod
    def from_pretrained(cls, source: Optional[str] = None, **kwargs) -> "Tokenizer":
        """An alias (default ``"smollm2-135m-instruct"``), a ``.gguf`` file or an HF directory."""
        from .models import resolve_model

        path = resolve_model(source)
        if os.path.isdir(path):
            return cls.from_hf_directory(path)
        if _is_gguf(path):
            return cls.from_gguf(path, **kwargs)
        if os.path.basename(path) == "tokenizer.json":
            return cls.from_hf_directory(os.path.dirname(path) or ".")
        raise ModelFormatError(f"{path}: expected a .gguf file or an HF directory with tokenizer.json")

    @classmethod
    def from_gguf(cls, source, pre_tokenizer: Optional[str] = None) -> "Tokenizer":
        """Build the tokenizer a GGUF file describes (a path, a GGUFCheckpoint, or its metadata dict).

        ``pre_tokenizer`` overrides ``tokenizer.ggml.pre`` (e.g. ``"gpt2"`` to match transformers' loader).
        """
        from .io.gguf import GGUFCheckpoint, read_gguf_metadata

        if isinstance(source, GGUFCheckpoint):
            md, where = source.metadata, source.path
        elif isinstance(source, dict):
            md, where = source, "GGUF metadata"
        else:
            where = os.fspath(source)
            md = read_gguf_metadata(where)
        try:
            return _tokenizer_from_gguf_metadata(cls, md, pre_tokenizer, where)
        except ModelFormatError as e:
            raise ModelFormatError(f"{where}: {e}") from None

    @classmethod
    def from_hf_directory(cls, path: str) -> "Tokenizer":
        """``tokenizer.json`` + ``tokenizer_config.json`` (+ ``chat_template.jinja``, ``generation_config.json``)."""
        from tokenizers import Tokenizer as Backend

        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise ModelNotFoundError(f"{path}: no tokenizer.json (npllm needs the fast-tokenizer file)")
        try:
            backend = Backend.from_file(file)
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise ModelFormatError(f"{file}: cannot load tokenizer ({e})") from None
        config = _read_json_if_exists(os.path.join(path, "tokenizer_config.json"))
        special_map = _read_json_if_exists(os.path.join(path, "special_tokens_map.json"))
        tokens = {}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            tokens[name] = _token_content(config.get(name, special_map.get(name)))
        template = config.get("chat_template")
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja_file):
            with open(jinja_file, encoding="utf-8") as f:
                template = f.read()
        gen = _read_json_if_exists(os.path.join(path, "generation_config.json"))
        extra = gen.get("eos_token_id")
        extra = extra if isinstance(extra, list) else ([extra] if isinstance(extra, int) else [])
        add_bos, add_eos = config.get("add_bos_token"), config.get("add_eos_token")
        if add_bos is not None or add_eos is not None:
            _set_bos_eos_processor(backend, tokens, add_bos, add_eos)
        tok = cls(backend, chat_template=template, extra_eos_token_ids=extra, name_or_path=path,
                  add_bos_token=add_bos, add_eos_token=add_eos, **tokens)
        tok.template_source = "chat_template in tokenizer_config.json, no chat_template.jinja"
        return tok

    # ------------------------------------------------------------ ids
    def _id(self, name: str) -> Optional[int]:
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> Optional[int]:
        return self._id("eos_token")

    @property
    def pad_token_id(self) -> Optional[int]:
        return self._id("pad_token")

    @property
    def unk_token_id(self) -> Optional[int]:
        return self._id("unk_token")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def stop_token_ids(self) -> List[int]:
        """Ids that end generation: eos, generation_config's eos list, and the chat end-of-turn token.

        For SmolLM2 these are all ``<|im_end|>`` (id 2): the GGUF's eos is the
        end-of-turn token, as in HF's ``GenerationConfig(eos_token_id=2)``.
        """
        ids: List[int] = []
        candidates = [self.eos_token_id] + self._extra_eos
        template = self.chat_template if isinstance(self.chat_template, str) else ""
        for marker in END_OF_TURN_TOKENS:
            if marker in template:
                candidates.append(self.backend.token_to_id(marker))
        for i in candidates:
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    def token_to_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> Optional[str]:
        """The token's text, or None for an id of the model's padded rows (see ``_check_ids``)."""
        (token_id,) = self._check_ids([token_id])
        return self.backend.id_to_token(token_id)

    # ------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Text -> ids.  Special tokens written in the text (``<|im_start|>``) become one id each.

        ``add_special_tokens`` adds bos/eos only if this tokenizer's post-processor
        does (SmolLM2's GGUF says ``add_bos_token = false``, as HF).
        """
        return self.backend.encode(_check_text(text), add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> List[List[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise GenerationParameterError("texts must be a list of str")
        texts = [_check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text (HF ``decode`` with ``clean_up_tokenization_spaces=False``)."""
        return self.backend.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def _check_ids(self, ids) -> List[int]:
        """Integer ids in [0, vocab); a model whose embedding has more rows than the tokenizer has
        tokens (``model_vocab_size``, set by ``npllm.load``: Qwen2 pads to a multiple of 128) may
        sample ids up to that size: they decode to nothing, as in HF."""
        if hasattr(ids, "reshape"):
            arr = np.asarray(ids)
            if arr.size and arr.dtype.kind not in "iu":
                raise GenerationParameterError(f"ids must be integers, got an array of dtype {arr.dtype}")
            out = arr.reshape(-1).tolist()
        else:
            try:
                out = list(ids)
            except TypeError:
                raise GenerationParameterError(f"ids must be a sequence of integers, got {ids!r:.60}") from None
            for i in out:
                if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                    raise GenerationParameterError(f"ids must be integers, got {i!r:.60} ({type(i).__name__})")
            out = [int(i) for i in out]
        n = max(self.vocab_size, self.model_vocab_size or 0)
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise GenerationParameterError(f"token id {bad[0]} is outside the vocabulary [0, {n})")
        return out

    def stream_decoder(self, skip_special_tokens: bool = False) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------ chat
    def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True, tokenize: bool = True,
                            chat_template: Optional[str] = None, **kwargs) -> Union[List[int], str]:
        """Render the conversation with the model's template (HF ``apply_chat_template``).

        Returns the ids (``tokenize=True``, encoded without adding bos/eos, as HF
        does) or the text.  ``chat_template`` overrides the model's template, or
        names one of several templates in ``tokenizer_config.json``.
        """
        template = chat_template
        if template is None:
            template = select_template(self.chat_template)
        elif isinstance(self.chat_template, list) and "{" not in template:  # a template's name
            template = select_template(self.chat_template, template)
        if template is None:
            raise ChatTemplateError(
                f"{self.name_or_path or 'this tokenizer'} has no chat template (no {self.template_source}); "
                "supply one with apply_chat_template(..., chat_template=TEMPLATE_TEXT), or on the command "
                "line with --chat-template FILE")
        variables = {k: v for k, v in self.special_tokens.items() if v is not None}
        variables.update(kwargs)
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name_or_path!r}, vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
                f"eos={self.eos_token_id}, pad={self.pad_token_id})")


def _check_text(text, where: str = "text") -> str:
    """A str the tokenizer can take: lone surrogates (undecodable bytes smuggled in by Python's
    ``surrogateescape``, or a broken UTF-16 pair) are refused, naming the position."""
    if not isinstance(text, str):
        raise GenerationParameterError(f"{where} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GenerationParameterError(
            f"{where} is not valid Unicode: a lone surrogate {text[e.start]!r} at position {e.start} "
            "(bytes that were not UTF-8?)") from None
    return text


class IncrementalDecoder:
    """Turns ids into text one at a time, for streaming.

    Decoding a single id is not enough: a character can span several byte
    tokens (an emoji is 4 bytes), and some decoders drop the leading space of
    the first token they see.  So we decode a small window of recent ids twice
    (with and without the newest ids) and emit the difference, and we wait
    while the text ends in an incomplete UTF-8 sequence (U+FFFD).
    SentencePiece byte-fallback tokens (``<0xE4>``) are decoded as one run, and
    a later byte can turn the whole run into U+FFFDs, so we also wait while the
    newest token is such a byte.  The pieces concatenate to exactly
    ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: List[int] = []
        self._prefix = 0  # window start: text before it is final
        self._read = 0  # ids before this were emitted
        self._in_byte_run = False
        self._special = {i for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special}

    def _text(self, start: int, end: Optional[int] = None) -> str:
        return self.tokenizer.backend.decode(self.ids[start:end], skip_special_tokens=self.skip_special_tokens)

    def _is_byte_token(self, token_id: int) -> bool:
        t = self.tokenizer.backend.id_to_token(token_id)
        return t is not None and len(t) == 6 and t.startswith("<0x") and t.endswith(">")

    def push(self, token_id: int) -> str:
        """Add one id; return the new text that is now certain ('' if none yet)."""
        (token_id,) = self.tokenizer._check_ids([token_id])
        self.ids.append(token_id)
        if not (self.skip_special_tokens and token_id in self._special):  # skipped ids are invisible
            self._in_byte_run = self._is_byte_token(token_id)
        if self._in_byte_run:
            return ""
        before = self._text(self._prefix, self._read)
        text = self._text(self._prefix)
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        """The text still held back (e.g. an incomplete character at the end)."""
        before = self._text(self._prefix, self._read)
        text = self._text(self._prefix)
        self._prefix = self._read = len(self.ids)
        self._in_byte_run = False
        return text[len(before):]


# ------------------------------------------------------------------ GGUF
def _tokenizer_from_gguf_metadata(cls, md: Dict[str, Any], pre_override: Optional[str], where: str):
    backend, names, add_bos, add_eos = backend_from_gguf_metadata(md, pre_override)
    _set_bos_eos_processor(backend, names, add_bos, add_eos)
    template = md.get("tokenizer.chat_template")
    tok = cls(backend, chat_template=template if isinstance(template, str) else None, name_or_path=where,
              add_bos_token=add_bos, add_eos_token=add_eos, **names)
    tok.template_source = "tokenizer.chat_template in the GGUF metadata"
    return tok


def _set_bos_eos_processor(backend, names, add_bos, add_eos) -> None:
    """A post-processor that adds bos and/or eos as the flags say (both false: adds nothing)."""
    from tokenizers import processors

    bos = names.get("bos_token") if add_bos else None
    eos = names.get("eos_token") if add_eos else None
    single = ([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if eos else [])
    pair = single + ([f"{bos}:1"] if bos else []) + ["$B:1"] + ([f"{eos}:1"] if eos else [])
    special = [(t, backend.token_to_id(t)) for t in {bos, eos} if t]
    if any(i is None for _, i in special):
        raise ModelFormatError("add_bos_token/add_eos_token is set but the token is not in the vocabulary")
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


# ------------------------------------------------------------------ helpers
def _is_gguf(path: str) -> bool:
    if path.endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _read_json_if_exists(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    from .io.safetensors import read_json

    return read_json(path)


def _token_content(value) -> Optional[str]:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
