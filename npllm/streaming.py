"""Lesson 06 — streaming text and stop strings.

A stop string ("\\n\\n", "User:") is text, not a token: it can start in the
middle of one token and end in another.  So we work on decoded text:

* ``TextStreamer`` turns each new token into the text that is now certain
  (``Tokenizer.stream_decoder`` never splits a UTF-8 character and never drops
  a space), then holds back any tail that could still grow into a stop string.
  When a stop string appears, everything before it is printed, the stop text
  itself is not, and ``stopped`` becomes True.
* ``StopStringCriteria`` is the batch form for ``generate(stopping_criteria=...)``:
  a row stops once its generated text contains a stop string.

Without stop strings the pieces a ``TextStreamer`` emits concatenate to
exactly ``tokenizer.decode(generated_ids, skip_special_tokens=True)``.
"""

from __future__ import annotations

import sys
from typing import Callable, List, Optional, Sequence

import numpy as np

from .errors import GenerationParameterError
from .stopping import StoppingCriteria


def _check_stop_strings(stop_strings) -> List[str]:
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    stops = list(stop_strings or [])
    for s in stops:
        if not isinstance(s, str) or s == "":
            raise GenerationParameterError(f"stop strings must be non-empty str, got {s!r}")
    return stops


def held_back(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is the start of some stop string."""
    best = 0
    for s in stop_strings:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-k:]):
                best = k
                break
    return best


class TextStreamer:
    """``generate(streamer=...)`` object for one sequence: prints text as it becomes certain.

    on_text: called with each new piece of text (default: write to stdout)
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str] = (), on_text: Optional[Callable] = None,
                 skip_special_tokens: bool = True):
        self.decoder = tokenizer.stream_decoder(skip_special_tokens=skip_special_tokens)
        self.stop_strings = _check_stop_strings(stop_strings)
        self.on_text = on_text or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        self.pending = ""      # decoded but not yet emitted (may start a stop string)
        self.text = ""         # everything emitted so far
        self.stopped = False
        self._prompt_seen = False

    def _emit(self, piece: str) -> None:
        if piece:
            self.text += piece
            self.on_text(piece)

    def put(self, token_ids) -> None:
        ids = np.asarray(token_ids)
        if not self._prompt_seen and ids.ndim == 2:   # generate sends the prompt first: skip it
            self._prompt_seen = True
            return
        self._prompt_seen = True
        if ids.size != 1:
            raise GenerationParameterError("TextStreamer handles one sequence (batch size 1)")
        if self.stopped:
            return
        self.pending += self.decoder.push(int(ids.reshape(-1)[0]))
        self._release(final=False)

    def end(self) -> None:
        if not self.stopped:
            self.pending += self.decoder.flush()
            self._release(final=True)

    def _release(self, final: bool) -> None:
        hits = [i for i in (self.pending.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            self._emit(self.pending[:min(hits)])
            self.pending, self.stopped = "", True
            return
        keep = 0 if final else held_back(self.pending, self.stop_strings)
        cut = len(self.pending) - keep
        self._emit(self.pending[:cut])
        self.pending = self.pending[cut:]

    def stopping_criterion(self) -> "StoppingCriteria":
        """A criterion that ends generation once this streamer has seen a stop string."""
        streamer = self

        class _StreamerStop(StoppingCriteria):
            reason = "stop"

            def __call__(self, input_ids, new_token_ids, prompt_length):
                return np.full(np.shape(input_ids)[0], streamer.stopped)

        return _StreamerStop()


class StopStringCriteria(StoppingCriteria):
    """Stop a row once its generated text contains one of ``stop_strings`` (any token boundaries)."""

    reason = "stop"

    def __init__(self, tokenizer, stop_strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop_strings = _check_stop_strings(stop_strings)
        # A character takes at most 4 byte-tokens, so this many trailing tokens
        # always cover the longest stop string plus the token that completed it.
        self.window = 4 * max((len(s) for s in self.stop_strings), default=1) + 4

    def __call__(self, input_ids, new_token_ids, prompt_length):
        ids = np.asarray(input_ids)[:, prompt_length:]
        out = np.zeros(ids.shape[0], dtype=bool)
        for b in range(ids.shape[0]):
            tail = self.tokenizer.decode(ids[b, -self.window:].tolist(), skip_special_tokens=True)
            out[b] = any(s in tail for s in self.stop_strings)
        return out
