"""Lesson 09 — continuous batching: one engine thread serves many requests at once.

Decoding one token reads every weight once (lesson 07: memory-bound), so eight requests that
decode together cost little more than one.  The engine turns concurrent requests into batches:

    one thread owns the model and a KV pool with one row per slot (``SlotCache``)
    loop:
      admit      waiting requests take free slots (a bounded queue; full -> ``QueueFullError``)
      prefill    one chunk of ``PREFILL_CHUNK`` prompt tokens of one admitted request, alone
      decode     one batched step: one new token for every generating slot
      sample     each request with its own processors, seeded RNG, stop strings and logprobs
      stream     each new piece of text goes to the request's queue; a finished or cancelled
                 request frees its slot at once

Batch invariance: a request's greedy tokens are the same whether it runs alone or beside
others.  Prefill rows never share a matmul with decode rows, a prompt is cut into the same
chunks whatever else runs, each decode row writes and reads only its own cache row
(``SlotCache.batch``), and the engine thread decodes in ``kernels.batch_invariant()`` mode,
where every row of a quantized matmul gets the single-row kernel's arithmetic (MATVEC1 alone,
MATVECR for several).  A prefill, always alone, takes the faster several-input kernel.

The engine knows nothing of HTTP (``npllm.serve`` is its web face), so tests drive it
directly: ``engine.submit(prompt_ids, SamplingParams(...))`` returns a ``Request`` whose
``events`` queue yields ``Token`` objects and then one ``Finished``.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from . import sampling
from .cache import SlotCache
from .errors import GenerationParameterError, NpllmError
from .generation import PREFILL_CHUNK
from .quant import kernels
from .streaming import TextStreamer

__all__ = ["Engine", "SamplingParams", "Request", "Token", "Finished", "QueueFullError"]


class QueueFullError(NpllmError):
    """Every slot is busy and the waiting queue is full (HTTP 429): retry later."""


@dataclass
class SamplingParams:
    """One request's decoding settings (OpenAI names; temperature 0 = greedy)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: Sequence[str] = ()
    seed: Optional[int] = None
    logprobs: Optional[int] = None  # None: off; k >= 0: the chosen token's and the k best
    ignore_eos: bool = False
    # extra processors ``(input_ids [1, S], scores [1, V]) -> scores`` run after the built-in ones
    logits_processors: Sequence = ()
    # structured output (``response_format``): an ``npllm.structured.Constraint`` used as a template
    # (each request gets a fresh ``copy()``); its mask comes first, before penalties and filters
    constraint: Optional[object] = None


@dataclass
class Token:
    """One generated token and the text it made certain ("" while a stop string may begin)."""

    token_id: int
    text: str
    logprob: Optional[float] = None
    top_logprobs: Optional[List[tuple]] = None  # [(token_id, logprob)], best first


@dataclass
class Finished:
    """The last event of a request: why it stopped ("stop" or "length", or "cancelled")."""

    reason: str
    text: str = ""  # text held back until the end (a stop string that never completed)
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class Request:
    prompt: List[int]
    params: SamplingParams
    events: "queue.Queue" = field(default_factory=queue.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: Optional[float] = None  # perf_counter time of the first token
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop this request; the engine frees its slot (or drops it from the queue) next step."""
        self.cancelled = True


class _Slot:
    """What one busy slot holds: the request, its tokens so far and its sampling state."""

    def __init__(self, index, req, tokenizer, eos):
        p = req.params
        self.index, self.req = index, req
        self.ids = list(req.prompt)                    # prompt + generated tokens
        self.done = 0                                  # prompt tokens already in the cache
        self.n_new = 0
        self.next = None                               # the token to feed at the next decode step
        self.do_sample = p.temperature > 0
        self.processors = sampling.build_processors(
            do_sample=self.do_sample, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
            repetition_penalty=p.repetition_penalty, frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty, prompt_length=len(req.prompt))
        self.processors.extend(p.logits_processors)
        self.constraint = p.constraint.copy() if p.constraint is not None else None
        self.rng = np.random.default_rng(p.seed)
        self.eos = () if p.ignore_eos else tuple(eos)
        self.pieces: List[str] = []
        self.streamer = TextStreamer(tokenizer, p.stop, on_text=self.pieces.append)


class Engine:
    """Continuous batching over ``n_slots`` slots of ``ctx_per_slot`` tokens each.

    model, tokenizer: as ``npllm.load()`` returns them
    max_queue:        requests that may wait for a slot; one more raises ``QueueFullError``
    """

    def __init__(self, model, tokenizer, n_slots: int = 4, ctx_per_slot: int = 2048, max_queue: int = 64,
                 threads: Optional[int] = None):
        limit = model.config.context_length
        if n_slots < 1:
            raise GenerationParameterError(f"n_slots (-np/--parallel) must be >= 1, got {n_slots}")
        if not 2 <= ctx_per_slot:
            raise GenerationParameterError(f"ctx_per_slot (-c/--ctx-size per slot) must be >= 2, got {ctx_per_slot}")
        self.model, self.tokenizer = model, tokenizer
        self.n_slots, self.ctx = n_slots, min(ctx_per_slot, limit)
        self.max_queue, self.threads = max_queue, threads
        self.eos = list(tokenizer.stop_token_ids or model.config.eos_token_ids or [])
        self.pool = SlotCache(model.config, n_slots, self.ctx, model.kv_dtype)
        self.slots: List[Optional[_Slot]] = [None] * n_slots
        self.waiting: "collections.deque[Request]" = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="npllm-engine", daemon=True)
        self.steps = 0  # decode steps run (for tests and metrics)

    # ------------------------------------------------------------------ public
    def start(self) -> "Engine":
        self._thread.start()
        return self

    def submit(self, prompt: Sequence[int], params: SamplingParams, events=None) -> Request:
        """Queue a request; raises ``QueueFullError`` when the queue is full, and
        ``GenerationParameterError`` when the prompt does not fit a slot.  ``events``: where the
        engine puts the request's ``Token``s and its ``Finished`` (anything with ``put``; default a
        new ``queue.Queue``)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise GenerationParameterError("prompt is empty")
        if len(prompt) >= self.ctx:
            raise GenerationParameterError(
                f"the prompt has {len(prompt)} tokens; a slot holds {self.ctx} (-c/--ctx-size / -np), and at "
                "least one must be left for the answer")
        req = Request(prompt, params) if events is None else Request(prompt, params, events)
        with self._wake:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are waiting for a slot; retry later")
            self.waiting.append(req)
            self._wake.notify()
        return req

    def warm_up(self) -> None:
        """Run each path once (a long and a short prefill, decode steps of 1 and 2 rows), so the
        first request does not pay for loading compiled kernels and faulting in the weights."""
        n = min(PREFILL_CHUNK, 24, self.ctx - 3)
        with kernels.batch_invariant():
            for i, T in enumerate((n, min(4, n))):
                if i >= self.n_slots:
                    break
                ids = np.full((1, T), self.eos[0] if self.eos else 0, dtype=np.int64)
                with kernels.batch_invariant(False):     # as _prefill_step
                    self.model.forward(ids, past_key_values=self.pool.row(i), use_cache=True,
                                       position_ids=np.arange(T)[None, :], logits_to_keep=1)
            for rows in ([0], [0, 1][:self.n_slots]):
                cache = self.pool.batch(rows)
                self.model.forward(np.zeros((len(rows), 1), np.int64),
                                   attention_mask=np.ones((len(rows), cache.length + 1), np.int64),
                                   past_key_values=cache, use_cache=True,
                                   position_ids=self.pool.lengths[rows][:, None].copy(), logits_to_keep=1)
        for i in range(self.n_slots):
            self.pool.free(i)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def busy_slots(self) -> int:
        return sum(s is not None for s in self.slots)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop admitting, cancel what still waits or runs, and join the engine thread."""
        with self._wake:
            self._stopping = True
            for req in self.waiting:
                req.cancel()
            for s in self.slots:
                if s is not None:
                    s.req.cancel()
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run(self, until=None) -> None:
        """Run the loop in the calling thread (instead of ``start()``) until ``shutdown()`` has
        drained it, or ``until()`` is true while idle.  ``npllm serve`` runs it in the main thread:
        Numba's OpenMP kernels launched from another thread ran 1.6-2.6x slower on this machine
        (engine alone, greedy: 65 vs 170 tok/s for one request, 211 vs 336 for eight)."""
        self._run(until)

    # ------------------------------------------------------------------ the loop
    def _run(self, until=None) -> None:
        from . import _jit

        if self.threads:
            _jit.set_num_threads(self.threads)  # Numba's thread count is per calling thread
        with kernels.batch_invariant():
            while True:
                with self._wake:
                    self._admit()
                    idle = not self.waiting and self.busy_slots == 0
                    if idle and (self._stopping or (until is not None and until())):
                        return
                    if self.busy_slots == 0:
                        self._wake.wait(0.5)
                        continue
                self._drop_cancelled()
                try:
                    self._prefill_step()
                    self._decode_step()
                except Exception as e:  # never let one bad step kill the server
                    for s in self.slots:
                        if s is not None:
                            s.req.events.put(Finished("error", text=f"{type(e).__name__}: {e}"))
                            self._free(s)

    def _admit(self) -> None:
        while self.waiting:
            if self.waiting[0].cancelled:
                self.waiting.popleft().events.put(Finished("cancelled"))
                continue
            free = [i for i, s in enumerate(self.slots) if s is None]
            if not free:
                return
            req = self.waiting.popleft()
            self.slots[free[0]] = _Slot(free[0], req, self.tokenizer, self.eos)
        # (requests cancelled while waiting behind a full pool are dropped once they reach the front)

    def _drop_cancelled(self) -> None:
        for s in self.slots:
            if s is not None and s.req.cancelled:
                s.req.events.put(Finished("cancelled", prompt_tokens=len(s.req.prompt), completion_tokens=s.n_new))
                self._free(s)
        with self._wake:  # cancelled requests anywhere in the queue leave it now
            kept = collections.deque(r for r in self.waiting if not r.cancelled)
            for r in self.waiting:
                if r.cancelled:
                    r.events.put(Finished("cancelled"))
            self.waiting = kept

    def _free(self, s: _Slot) -> None:
        self.pool.free(s.index)
        self.slots[s.index] = None

    def _prefill_step(self) -> None:
        """One chunk of one prompt (the oldest admitted), alone in its matmuls."""
        todo = [s for s in self.slots if s is not None and s.next is None]
        if not todo:
            return
        s = min(todo, key=lambda s: s.req.submitted)
        end = min(s.done + PREFILL_CHUNK, len(s.ids))
        chunk = np.asarray(s.ids[s.done:end], dtype=np.int64)[None, :]           # [1, T]
        positions = np.arange(s.done, end, dtype=np.int64)[None, :]
        # A prompt is always prefilled alone, in the same chunks, whatever else runs: its
        # arithmetic cannot depend on the batch, so it takes the faster several-input kernel
        # (MATVECN) rather than MATVECR's decode arithmetic per row.
        with kernels.batch_invariant(False):
            logits, _ = self.model.forward(chunk, past_key_values=self.pool.row(s.index), use_cache=True,
                                           position_ids=positions, logits_to_keep=1)
        s.done = end
        if end == len(s.ids):
            self._sample([s], np.asarray(logits)[:, -1, :])

    def _decode_step(self) -> None:
        """One new token for every generating slot, in one batched forward."""
        live = [s for s in self.slots if s is not None and s.next is not None]
        if not live:
            return
        rows = [s.index for s in live]
        cache = self.pool.batch(rows)
        tok = np.array([[s.next] for s in live], dtype=np.int64)                    # [B, 1]
        pos = self.pool.lengths[rows][:, None].copy()                                # [B, 1]
        mask = np.ones((len(live), cache.length + 1), dtype=np.int64)
        logits, _ = self.model.forward(tok, attention_mask=mask, past_key_values=cache, use_cache=True,
                                       position_ids=pos, logits_to_keep=1)
        self.steps += 1
        self._sample(live, np.asarray(logits)[:, -1, :])

    def _sample(self, slots: List[_Slot], logits: np.ndarray) -> None:
        """Each slot's next token from its logits row [V], with its own processors and RNG."""
        for s, row in zip(slots, logits):
            if s.req.cancelled:
                continue
            try:
                self._sample_one(s, row)
            except Exception as e:  # this request fails alone; the others go on
                s.req.events.put(Finished("error", text=f"{type(e).__name__}: {e}"))
                self._free(s)

    def _sample_one(self, s: _Slot, row: np.ndarray) -> None:
        """Process, select, record and stream one slot's next token; free the slot when it is done."""
        p = s.req.params
        ids = np.asarray(s.ids, dtype=np.int64)[None, :]
        row = row[None, :].astype(np.float32, copy=False)                           # [1, V]
        if s.constraint is not None:  # the grammar's mask first (a copy: never a model buffer)
            row = np.array(row)
            s.constraint.mask(row[0])
            if not s.constraint.can_continue or not np.isfinite(row).any():
                self._finish(s, "stop")  # the grammar admits nothing more
                return
        scores = s.processors(ids, row)                                             # [1, V]
        if not np.isfinite(scores).any():
            raise GenerationParameterError("every token was filtered out; relax top_p / min_p / top_k")
        tok = int(sampling.sample(scores, s.rng)[0] if s.do_sample else sampling.greedy(scores)[0])
        event = Token(tok, "")
        if p.logprobs is not None:
            lp = sampling.log_softmax(scores)[0]
            event.logprob = float(lp[tok])
            if p.logprobs > 0:
                best = np.argsort(-lp, kind="stable")[:p.logprobs]
                event.top_logprobs = [(int(i), float(lp[i])) for i in best]
        if s.req.first_token is None:
            s.req.first_token = time.perf_counter()
        s.ids.append(tok)
        s.n_new += 1
        reason = None
        if tok in s.eos:
            reason = "stop"
        else:
            s.streamer.put(np.array([tok]))
            event.text = "".join(s.pieces)
            s.pieces.clear()
            if s.streamer.stopped:
                reason = "stop"
        if reason is None and s.constraint is not None and (not s.constraint.consume(tok)
                                                            or not s.constraint.can_continue):
            reason = "stop"  # the grammar is complete (or, with a user processor, broken)
        if reason is None and (s.n_new >= p.max_tokens or len(s.ids) >= self.ctx):
            reason = "length"
        s.req.events.put(event)
        if reason is None:
            s.next = tok
            return
        self._finish(s, reason)

    def _finish(self, s: _Slot, reason: str) -> None:
        if not s.streamer.stopped:
            s.streamer.end()  # flush text held back for a stop string that never completed
        s.req.events.put(Finished(reason, "".join(s.pieces), len(s.req.prompt), s.n_new))
        self._free(s)
