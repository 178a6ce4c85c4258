"""Lesson 05 — when does a row stop generating? (seed section 3.6)

A stopping criterion is a small object (or any callable) called after every
decode step::

    criterion(input_ids, new_token_ids, prompt_length) -> bool [B]

    input_ids      int64 [B, S]  every token so far: left-padded prompt + generated
    new_token_ids  int64 [B]     the token just appended to each row
    prompt_length  int           S of the (padded) prompt; input_ids[:, prompt_length:]
                                 are the generated tokens

It answers, per row, "stop now?".  Its ``reason`` attribute ("eos", "length",
"stop"; plain callables count as "stop") becomes the row's stop reason.
``generate`` ignores answers for rows that have already stopped.

The built-in criteria mirror HF transformers' ``MaxLengthCriteria``,
``EosTokenCriteria`` and ``StopStringCriteria`` (on token ids), and add the
seed's exercise 5 (stop when the output starts looping) and a JSON criterion.

Shape legend: B batch, S tokens so far.
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import GenerationParameterError

__all__ = ["StoppingCriteria", "MaxNewTokensCriteria", "EosTokenCriteria", "StopSequenceCriteria",
           "RepetitionCriteria", "JsonCompleteCriteria", "StoppingCriteriaList", "json_is_complete"]


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise GenerationParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class StoppingCriteria:
    """Base class: subclasses implement ``__call__`` and may set ``reason``."""

    reason = "stop"

    def __call__(self, input_ids: np.ndarray, new_token_ids: np.ndarray, prompt_length: int) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - interface

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class MaxNewTokensCriteria(StoppingCriteria):
    """Stop once ``max_new_tokens`` tokens have been generated (the prompt does not count)."""

    reason = "length"

    def __init__(self, max_new_tokens: int):
        self.max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)

    def __call__(self, input_ids, new_token_ids, prompt_length):
        B, S = np.shape(input_ids)
        return np.full(B, S - prompt_length >= self.max_new_tokens)


class EosTokenCriteria(StoppingCriteria):
    """Stop a row when it emits one of ``eos_token_id`` (an int or a list, as in HF configs)."""

    reason = "eos"

    def __init__(self, eos_token_id):
        ids = [eos_token_id] if isinstance(eos_token_id, Integral) else list(eos_token_id)
        self.eos_token_ids = [_check_int("eos_token_id", e, 0) for e in ids]

    def __call__(self, input_ids, new_token_ids, prompt_length):
        return np.isin(np.asarray(new_token_ids), self.eos_token_ids)


class StopSequenceCriteria(StoppingCriteria):
    """Stop a row when its generated tokens end with one of ``sequences`` (lists of ids).

    The stop sequence stays in the output, as with HF's ``StopStringCriteria``.
    Only generated tokens are matched: a sequence never straddles the prompt.
    """

    def __init__(self, sequences: Iterable[Sequence[int]]):
        seqs = []
        for seq in sequences:
            seq = [seq] if isinstance(seq, Integral) else list(seq)
            if not seq:
                raise GenerationParameterError("stop_token_sequences must not contain an empty sequence")
            seqs.append([_check_int("stop_token_sequences", t, 0) for t in seq])
        self.sequences = seqs

    def __call__(self, input_ids, new_token_ids, prompt_length):
        generated = np.asarray(input_ids)[:, prompt_length:]  # [B, n]
        stop = np.zeros(generated.shape[0], dtype=bool)
        for seq in self.sequences:
            if len(seq) <= generated.shape[1]:
                stop |= np.all(generated[:, -len(seq):] == np.asarray(seq), axis=1)
        return stop


class RepetitionCriteria(StoppingCriteria):
    """The seed's exercise 5: stop a row whose output has started to loop.

    A row stops when its last ``n * min_repeats`` generated tokens are the same
    n-gram repeated ``min_repeats`` times, for some n in 1..``max_ngram_size``.
    With the defaults, "a b c a b c a b c" (n=3) or "x x x x" (n=1) stop a row.
    """

    def __init__(self, max_ngram_size: int = 4, min_repeats: int = 3):
        self.max_ngram_size = _check_int("max_ngram_size", max_ngram_size, 1)
        self.min_repeats = _check_int("min_repeats", min_repeats, 2)

    def __call__(self, input_ids, new_token_ids, prompt_length):
        generated = np.asarray(input_ids)[:, prompt_length:]  # [B, n]
        B, n_gen = generated.shape
        k = self.min_repeats
        stop = np.zeros(B, dtype=bool)
        for n in range(1, self.max_ngram_size + 1):
            if n * k > n_gen:
                break
            tail = generated[:, n_gen - n * k:].reshape(B, k, n)  # k copies of the last n-gram?
            stop |= np.all(tail == tail[:, -1:, :], axis=(1, 2))
        return stop


def json_is_complete(text: str) -> bool:
    """True when ``text`` holds a JSON object or array whose brackets have closed.

    Scans from the first ``{`` or ``[``, counting brackets outside of strings
    (string escapes respected).  It checks structure, not full JSON validity.
    """
    depth, in_string, escaped, started = 0, False, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch in "{[":
            depth += 1
            started = True
        elif ch in "}]" and started:
            depth -= 1
            if depth == 0:
                return True
        elif ch == '"' and started:
            in_string = True
    return False


class JsonCompleteCriteria(StoppingCriteria):
    """Stop a row once its generated text contains a complete JSON object (braces balanced).

    ``decode`` maps a list of token ids to text, e.g. ``tokenizer.decode``.
    """

    def __init__(self, decode: Callable[[List[int]], str]):
        if not callable(decode):
            raise GenerationParameterError(f"decode must be callable (e.g. tokenizer.decode), got {decode!r}")
        self.decode = decode

    def __call__(self, input_ids, new_token_ids, prompt_length):
        generated = np.asarray(input_ids)[:, prompt_length:]
        return np.array([json_is_complete(self.decode(row.tolist())) for row in generated], dtype=bool)


class StoppingCriteriaList(list):
    """Criteria checked in order; the first that fires gives a row its stop reason."""

    def __call__(self, input_ids, new_token_ids, prompt_length) -> Tuple[np.ndarray, List[Optional[str]]]:
        """Returns (stop bool [B], reason per row or None)."""
        B = np.shape(input_ids)[0]
        stop = np.zeros(B, dtype=bool)
        reasons: List[Optional[str]] = [None] * B
        for criterion in self:
            fired = np.asarray(criterion(input_ids, new_token_ids, prompt_length), dtype=bool)
            if fired.shape not in ((), (B,)):
                raise GenerationParameterError(
                    f"stopping criterion {criterion!r} returned shape {fired.shape}, expected ({B},) or a bool")
            fired = np.broadcast_to(fired, (B,))
            for b in np.nonzero(fired & ~stop)[0]:
                reasons[b] = getattr(criterion, "reason", "stop")
            stop |= fired
        return stop, reasons
