"""Lesson 10 (三、结构化输出) — constrained decoding: a grammar becomes a token mask.

A JSON schema, a regex or a grammar describes the set of texts that are allowed.
At every step llguidance (MIT, no PyTorch) walks its parser over the tokenizer's
token trie and answers, for each of the V tokens, "can the text go on with it?".
That answer is a bit mask: the logits of the forbidden tokens become ``-inf``
*before* penalties, temperature and the top-k/top-p/min-p filters, so the
filters only ever choose among allowed tokens.  Then the chosen token advances
the parser.  EOS is allowed exactly when the text so far is complete.

    logits [V] --mask (-inf where the grammar forbids)--> penalties -> filters -> select
                                                           token --consume--> parser state

The public object, for ``generate`` and for a server (one per request or row)::

    from npllm.structured import Constraint
    c = Constraint(tokenizer, json_schema={"type": "object"}, eos_token_id=2)  # or regex=, grammar=
    for each step:
        c.mask(logits_row)          # in place: -inf on forbidden tokens (float [V])
        if not c.can_continue: ...  # no token at all is allowed: stop with reason "grammar"
        token = sample(logits_row)
        c.consume(token)            # False if the token was not allowed
    c.accepting / c.stopped / c.error
    c.copy()                        # a fresh matcher for another row (the compiled grammar is shared)

For OpenAI's ``response_format``: ``{"type": "json_object"}`` is ``json_schema={"type": "object"}``;
``{"type": "json_schema", "json_schema": {"schema": S, "strict": true}}`` is ``json_schema=S`` (strict
mode wants ``"additionalProperties": false`` in S, as OpenAI requires).

``grammar`` is Lark (llguidance's dialect) or GBNF (llama.cpp's); GBNF is
recognised by its ``::=`` rules and translated to Lark.  An invalid schema,
regex or grammar raises ``GrammarError`` (a ``GenerationParameterError``)
naming the parameter, when the ``Constraint`` is built, before any token.
JSON is compact by default (no free whitespace between tokens: a small model
given free whitespace may emit newlines until it runs out of tokens); a schema's
``"x-guidance": {"whitespace_flexible": true}`` restores JSON's free whitespace.

A GGUF tokenizer is handed to llguidance as the ``tokenizer.json`` text of the
``tokenizers`` object npllm builds from the GGUF metadata
(``Tokenizer.backend.to_str()``); the llguidance tokenizer is cached on the
npllm ``Tokenizer`` (one per vocabulary size and EOS set: built once, reused by every request).
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import GenerationParameterError, GrammarError

__all__ = ["Constraint", "GrammarError", "grammar_kind"]


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise GenerationParameterError(
            "structured output (json_schema / regex / grammar) needs llguidance: "
            "pip install 'npllm[structured]'") from None
    return llguidance


def grammar_kind(text: str) -> str:
    """"gbnf" when the grammar has a ``name ::= ...`` rule (llama.cpp's GBNF), else "lark"."""
    import re

    return "gbnf" if re.search(r"^\s*[A-Za-z_][\w-]*\s*::=", text, re.M) else "lark"


def _grammar_text(json_schema, regex, grammar) -> Tuple[str, str]:
    """(parameter name, llguidance grammar) for the one constraint given."""
    llg = _llguidance()
    given = [n for n, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar)) if v is not None]
    if len(given) != 1:
        raise GenerationParameterError(
            f"give exactly one of json_schema, regex or grammar, got {', '.join(given) or 'none'}")
    name = given[0]
    if name == "json_schema":
        if isinstance(json_schema, str):
            try:
                json_schema = json.loads(json_schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"json_schema is not valid JSON: {e}") from None
        if not isinstance(json_schema, (dict, bool)):
            raise GrammarError(
                f"json_schema must be a JSON object (dict or JSON text), got {type(json_schema).__name__}")
        try:
            # compact JSON unless the schema's "x-guidance" says otherwise: a small model given
            # free whitespace can emit newlines until max_new_tokens
            text = llg.LLMatcher.grammar_from_json_schema(json.dumps(json_schema),
                                                          defaults={"whitespace_flexible": False})
        except (ValueError, TypeError) as e:  # TypeError: a value json.dumps cannot write
            raise GrammarError(f"json_schema is invalid: {e}") from None
    elif name == "regex":
        if not isinstance(regex, str):
            raise GrammarError(f"regex must be a string, got {type(regex).__name__}")
        text = llg.LLMatcher.grammar_from_regex(regex)
    else:
        if not isinstance(grammar, str):
            raise GrammarError(f"grammar must be a string (Lark or GBNF), got {type(grammar).__name__}")
        lark = grammar
        if grammar_kind(grammar) == "gbnf":
            from llguidance.gbnf_to_lark import gbnf_to_lark

            try:
                lark = gbnf_to_lark(grammar)
            except Exception as e:  # the converter raises plain exceptions on bad GBNF
                raise GrammarError(f"grammar (GBNF) is invalid: {e}") from None
        text = llg.LLMatcher.grammar_from_lark(lark)
    return name, text


def _one_line(message: str) -> str:
    """llguidance's message without its source excerpt and carets: the first line and the "error:" line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    detail = [line for line in lines[1:] if line.lower().startswith("error:")]
    return " ".join(lines[:1] + [d.split(":", 1)[1].strip() for d in detail[:1]])


def _ll_tokenizer(tokenizer, vocab_size: int, eos: Tuple[int, ...]):
    """llguidance's tokenizer for an npllm ``Tokenizer`` (cached on it): built from ``tokenizer.json`` text."""
    llg = _llguidance()
    cache: Dict = tokenizer.__dict__.setdefault("_llguidance_tokenizers", {})
    key = (vocab_size, eos)
    if key not in cache:
        try:  # the backend is a tokenizers.Tokenizer, from tokenizer.json or from GGUF metadata
            cache[key] = llg.LLTokenizer(tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=list(eos))
        except (ValueError, RuntimeError) as e:
            raise GenerationParameterError(f"llguidance cannot read this tokenizer: {e}") from None
    return cache[key]


class Constraint:
    """One row's grammar matcher: masks logits, consumes the chosen tokens.

    tokenizer:     an npllm ``Tokenizer`` (GGUF or HF directory)
    json_schema:   dict or JSON text;  regex: str;  grammar: Lark or GBNF text (exactly one of them)
    eos_token_id:  int or list: the ids that end the text; allowed exactly when the grammar accepts.
                   None -> the tokenizer's EOS; [] -> never (the row then stops when the grammar is
                   complete: ``can_continue`` becomes False)
    vocab_size:    the model's V (>= the tokenizer's; padded rows are never allowed); None -> tokenizer's
    """

    def __init__(self, tokenizer, *, json_schema=None, regex=None, grammar=None, eos_token_id=None,
                 vocab_size: Optional[int] = None):
        llg = _llguidance()
        if vocab_size is None:
            vocab_size = getattr(tokenizer, "model_vocab_size", None) or tokenizer.vocab_size
        if eos_token_id is None:
            eos_token_id = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        eos = tuple(int(e) for e in ([eos_token_id] if np.ndim(eos_token_id) == 0 else eos_token_id))
        self.vocab_size, self.eos_token_ids = int(vocab_size), eos
        # llguidance needs some EOS id; with none, its EOS bit is cleared from every mask
        ll_eos = eos or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else (0,))
        self._ll_tok = _ll_tokenizer(tokenizer, self.vocab_size, ll_eos)
        self.parameter, self._grammar = _grammar_text(json_schema, regex, grammar)
        problem = llg.LLMatcher.validate_grammar(self._grammar, self._ll_tok)
        if problem:
            raise GrammarError(f"{self.parameter} is invalid: {_one_line(problem)}")
        self._new_matcher()
        self._clear = np.array([] if eos else ll_eos, dtype=np.int64)  # EOS bits to clear
        self._bits = np.full((1, (self.vocab_size + 31) // 32), -1, dtype=np.int32)  # 32 tokens per word

    def _new_matcher(self):
        self._matcher = _llguidance().LLMatcher(self._ll_tok, self._grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"{self.parameter} is invalid: {self._matcher.get_error()}")

    def copy(self) -> "Constraint":
        """A fresh matcher (at the start of the text) sharing this one's compiled grammar and tokenizer."""
        twin = object.__new__(Constraint)
        twin.__dict__.update(self.__dict__)
        twin._bits = np.full_like(self._bits, -1)
        twin._new_matcher()
        return twin

    # ------------------------------------------------------------ state
    @property
    def accepting(self) -> bool:
        """The text so far is complete (EOS would be allowed)."""
        return self._matcher.is_accepting()

    @property
    def stopped(self) -> bool:
        """The grammar admits no more tokens (only EOS, if any); also True after an error."""
        return self._matcher.is_stopped()

    @property
    def error(self) -> Optional[str]:
        """llguidance's message when a forbidden token was consumed, else None."""
        return self._matcher.get_error() or None

    @property
    def can_continue(self) -> bool:
        """Some token may still come: False after an error, or when complete with no EOS to end on."""
        return not self._matcher.is_error() and not (self._matcher.is_stopped() and not self.eos_token_ids)

    # ------------------------------------------------------------ one step
    def allowed(self) -> np.ndarray:
        """bool [V]: the tokens that may come next."""
        import llguidance.numpy as llnp

        llnp.fill_next_token_bitmask(self._matcher, self._bits, 0)
        ok = np.unpackbits(self._bits.view(np.uint8), axis=1, bitorder="little")[0, :self.vocab_size]
        ok = ok.astype(bool)
        ok[self._clear] = False
        return ok

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """Set the logits [V] of forbidden tokens to -inf, in place; returns them."""
        np.copyto(logits, -np.inf, where=~self.allowed())
        return logits

    def consume(self, token_id: int) -> bool:
        """Advance past the chosen token; False (and ``error`` set) if the grammar forbids it."""
        return bool(self._matcher.consume_token(int(token_id)))

    def __repr__(self):
        return f"Constraint({self.parameter}, accepting={self.accepting}, stopped={self.stopped})"


class RowConstraints:
    """One ``Constraint`` per batch row, as ``generate`` drives them (rows may be None: unconstrained)."""

    def __init__(self, rows: Sequence[Optional[Constraint]]):
        self.rows = list(rows)

    def mask(self, scores: np.ndarray, live: np.ndarray) -> np.ndarray:
        """-inf on every live row's forbidden tokens (scores [B, V], in place); returns bool [B]
        "blocked": the live rows on which no token at all is allowed."""
        blocked = np.zeros(len(self.rows), dtype=bool)
        for b, c in enumerate(self.rows):
            if c is not None and live[b]:
                ok = c.allowed()
                np.copyto(scores[b], -np.inf, where=~ok)  # (a view: in place)
                blocked[b] = not c.can_continue or not ok.any()
        return blocked

    def consume(self, tokens: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Advance every live row past its token; returns bool [B]: rows whose grammar cannot continue."""
        done = np.zeros(len(self.rows), dtype=bool)
        for b, c in enumerate(self.rows):
            if c is None or not live[b] or int(tokens[b]) in c.eos_token_ids:
                continue
            done[b] = not c.consume(tokens[b]) or not c.can_continue
        return done


def row_constraints(B: int, tokenizer, vocab_size: int, eos: Sequence[int], json_schema=None, regex=None,
                    grammar=None, constraint=None) -> Optional[RowConstraints]:
    """``generate``'s structured-output arguments -> ``RowConstraints`` for B rows (None when unconstrained).

    ``constraint`` is a ``Constraint`` (a template: each row gets a fresh ``copy()``, the object itself is
    left untouched) or a list of B (``Constraint`` or None) used as given, so a caller can read their state.
    """
    if constraint is None and json_schema is None and regex is None and grammar is None:
        return None
    if constraint is not None:
        if json_schema is not None or regex is not None or grammar is not None:
            raise GenerationParameterError("give either constraint or json_schema / regex / grammar, not both")
        if isinstance(constraint, Constraint):  # a template: every row gets a fresh copy
            rows = [constraint.copy() for _ in range(B)]
        else:
            rows = list(constraint) if np.iterable(constraint) else [constraint]
            if len(rows) != B or not all(c is None or isinstance(c, Constraint) for c in rows):
                raise GenerationParameterError(
                    f"constraint must be a Constraint or a list of {B} (one per row) Constraint or None")
        for c in rows:
            if c is not None and c.vocab_size != vocab_size:
                raise GenerationParameterError(
                    f"constraint was built for vocab_size={c.vocab_size}, the model has {vocab_size}")
            if c is not None and set(c.eos_token_ids) != set(eos):
                raise GenerationParameterError(
                    f"constraint was built for eos_token_id={list(c.eos_token_ids)}, generate uses {list(eos)}: "
                    "build it with the same EOS ids")
        return RowConstraints(rows)
    if tokenizer is None:
        raise GenerationParameterError(
            "json_schema / regex / grammar need tokenizer= (the model's npllm Tokenizer)")
    first = Constraint(tokenizer, json_schema=json_schema, regex=regex, grammar=grammar,
                       eos_token_id=list(eos), vocab_size=vocab_size)
    return RowConstraints([first] + [first.copy() for _ in range(B - 1)])
