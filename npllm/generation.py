"""Lesson 05 — the generate loop (seed section 4.1), matching HF ``GenerationMixin.generate``.

    prompt [B, T0] --prefill--> logits of the last position
    repeat:  process (penalties, temperature, top-k, ...)  -> select (greedy | sample)
             -> append, check the stopping criteria -> feed only the new token [B, 1]

The seed's three pitfalls, handled here:

1. one preallocated KV cache for the whole run (``model.new_cache``), written in place; it starts
   at the prompt plus ``CACHE_CHUNK`` positions and doubles when full (``KVCache.reserve``);
2. after the prefill, only the new token goes through the model;
3. the attention mask grows by one column per step, and positions come from it,
   so left-padded rows count positions from their first real token.

Batches are left-padded (``attention_mask`` 0 on the left).  A row that has
stopped receives ``pad_token_id`` while the others continue, exactly as in HF.
Every row records why it stopped: "eos", "length", "stop", or "grammar" (structured output:
the row's grammar admits no further token).

Structured output (``json_schema=``, ``regex=``, ``grammar=`` with ``tokenizer=``, or prebuilt
``npllm.structured.Constraint`` objects): one matcher per row masks the logits to the tokens its
grammar allows, first, before every penalty and filter (lesson 10, ``npllm/structured.py``).

``model`` is anything with ``config.vocab_size`` and
``forward(input_ids, attention_mask, past_key_values, use_cache, position_ids)
-> (logits [B, T, V], past_key_values)``; ``new_cache(batch, max_len)`` is used
when present (otherwise the cache grows by concatenation), and a cache with
``reserve(max_len)`` (``KVCache``) starts small and doubles when full.
``CausalLM.generate(input_ids, **kw)`` calls ``generate(self, input_ids, **kw)``.

Shape legend: B batch, T0 prompt length (with padding), S tokens so far, V vocabulary.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from numbers import Integral
from typing import List, Optional, Tuple

import numpy as np

from . import sampling
from .errors import GenerationParameterError, NpllmError
from .sampling import _check_float, _check_int, _integer
from .stopping import (EosTokenCriteria, MaxNewTokensCriteria, RepetitionCriteria, StopSequenceCriteria,
                       StoppingCriteriaList)

__all__ = ["generate", "GenerateOutput", "NonFiniteLogitsError"]

INF = float("inf")


class NonFiniteLogitsError(NpllmError, FloatingPointError):
    """The model produced NaN or infinite logits during generation."""


@dataclass
class GenerateOutput:
    """What ``generate(..., return_dict_in_generate=True)`` returns."""

    sequences: np.ndarray  # int64 [B, T0 + n]: prompt and generated tokens
    stop_reasons: List[str]  # per row: "eos", "length", "stop" or "grammar"
    scores: Optional[Tuple[np.ndarray, ...]] = None  # n x float32 [B, V], processed scores (HF ``scores``)
    logprobs: Optional[np.ndarray] = None  # float32 [B, n]: log-prob of each chosen token (0 for padding)
    num_new_tokens: Optional[np.ndarray] = None  # int64 [B]: tokens before padding (stop token included)
    top_logprobs: Optional[np.ndarray] = None  # float32 [B, n, N]: the N best log-probs per step, best first
    top_logprob_ids: Optional[np.ndarray] = None  # int64 [B, n, N]: their token ids (-1 for padding)


# ============================================================== validation
def _as_prompt(input_ids, vocab_size):
    try:
        ids = np.asarray(input_ids)
    except ValueError:  # ragged nested lists
        raise GenerationParameterError(
            "input_ids rows have different lengths: left-pad them and pass an attention_mask") from None
    if ids.dtype == object:
        raise GenerationParameterError(
            "input_ids rows have different lengths: left-pad them and pass an attention_mask")
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise GenerationParameterError(f"input_ids must be a non-empty prompt [B, T0], got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise GenerationParameterError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise GenerationParameterError(
            f"input_ids has token ids outside the vocabulary [0, {vocab_size}): min {ids.min()}, max {ids.max()}")
    return ids.astype(np.int64)


def _as_mask(attention_mask, shape):
    if attention_mask is None:
        return np.ones(shape, dtype=np.int64)
    mask = np.asarray(attention_mask)
    if mask.ndim == 1 and shape[0] == 1:
        mask = mask[None, :]
    if mask.shape != shape:
        raise GenerationParameterError(f"attention_mask must have the shape of input_ids {shape}, got {mask.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise GenerationParameterError("attention_mask must contain only 0 (padding) and 1 (token)")
    mask = mask.astype(np.int64)
    if (mask.sum(axis=1) == 0).any():
        raise GenerationParameterError("attention_mask has a row with no tokens (an empty prompt)")
    if (np.diff(mask, axis=1) < 0).any():
        raise GenerationParameterError(
            "attention_mask must be left-padded (zeros only before the first token): "
            "generation appends to the right")
    return mask


def _token_list(name, value, vocab_size):
    """One token id or a sequence of them, of any integer type (0-d arrays too) -> [int] in [0, V)."""
    one = _integer(value)
    if one is not None:
        values = [one]
    elif isinstance(value, (str, bytes)) or not np.iterable(value):
        values = [None]
    else:
        values = [_integer(v) for v in value]
    if any(v is None or not 0 <= v < vocab_size for v in values):
        raise GenerationParameterError(f"{name} must be integer token ids in [0, {vocab_size}), got {value!r}")
    return values


def _resolve_special_ids(model, eos_token_id, pad_token_id, vocab_size):
    """HF defaults: EOS from the model config; padding = pad id, else the first EOS id."""
    config = getattr(model, "config", None)
    if eos_token_id is None:
        eos_token_id = list(getattr(config, "eos_token_ids", []) or [])
    eos = _token_list("eos_token_id", eos_token_id, vocab_size)
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    pad = _token_list("pad_token_id", pad_token_id, vocab_size)
    if len(pad) != 1:
        raise GenerationParameterError(f"pad_token_id must be one token id, got {pad_token_id!r}")
    return eos, pad[0]


def _build_criteria(max_new_tokens, eos, stop_token_sequences, repetition_stop, stopping_criteria, vocab_size):
    """Checked in this order, so a final-step EOS reports "eos" rather than "length"."""
    criteria = StoppingCriteriaList()
    if eos:
        criteria.append(EosTokenCriteria(eos))
    if stop_token_sequences is not None:
        criteria.append(StopSequenceCriteria(
            [_token_list("stop_token_sequences", s, vocab_size) for s in stop_token_sequences]))
    if stopping_criteria is not None:
        user = [stopping_criteria] if callable(stopping_criteria) else list(stopping_criteria)
        for c in user:
            if not callable(c):
                raise GenerationParameterError(f"stopping_criteria must be callables, got {c!r}")
        criteria.extend(user)
    if repetition_stop is not None and repetition_stop is not False:
        if isinstance(repetition_stop, RepetitionCriteria):
            criteria.append(repetition_stop)
        elif repetition_stop is True:
            criteria.append(RepetitionCriteria())
        else:
            try:
                n, k = repetition_stop
            except (TypeError, ValueError):
                raise GenerationParameterError(
                    f"repetition_stop must be (max_ngram_size, min_repeats), True or a RepetitionCriteria, "
                    f"got {repetition_stop!r}") from None
            criteria.append(RepetitionCriteria(n, k))
    criteria.append(MaxNewTokensCriteria(max_new_tokens))
    return criteria


# ============================================================== the loop's helpers
class _CheckedProcessor:
    """A user's logits processor, whose result is checked: float scores [B, V] without NaN."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, input_ids, scores):
        out = self.processor(input_ids, scores)
        if not isinstance(out, np.ndarray) or not np.issubdtype(out.dtype, np.floating) \
                or out.shape != scores.shape:
            what = (f"an array of shape {out.shape} dtype {out.dtype}" if isinstance(out, np.ndarray)
                    else f"{type(out).__name__}")
            raise GenerationParameterError(
                f"logits_processor {self.processor!r} returned {what}; it must return the processed scores, "
                f"a float array of shape {scores.shape}")
        if np.isnan(out).any():
            raise GenerationParameterError(f"logits_processor {self.processor!r} returned NaN scores")
        return out

    def __repr__(self):
        return repr(self.processor)


def _forward(model, ids, mask, cache, positions, keep_last):
    """One forward call; only the last position's logits are needed."""
    kw = {"logits_to_keep": 1} if keep_last else {}
    logits, cache = model.forward(ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                                  position_ids=positions, **kw)
    return np.asarray(logits)[:, -1, :], cache  # [B, V]


PREFILL_CHUNK = 256


def _prefill(model, ids, mask, cache, positions, keep_last):
    """Run the prompt through the cache, ``PREFILL_CHUNK`` tokens at a time.

    Chunking gives the same logits and caps the attention scores at
    [B, H, chunk, S] instead of [B, H, T0, T0] (1.4 GB for a 2k prompt).
    """
    T0 = ids.shape[1]
    rope = getattr(getattr(model, "config", None), "rope_scaling", None) or {}
    if cache is None or T0 <= PREFILL_CHUNK or rope.get("rope_type") in ("dynamic", "longrope"):
        # (dynamic and LongRoPE frequencies depend on the longest position of the call: one call)
        return _forward(model, ids, mask, cache, positions, keep_last)
    for start in range(0, T0, PREFILL_CHUNK):
        end = min(start + PREFILL_CHUNK, T0)
        logits, cache = _forward(model, ids[:, start:end], mask[:, :end], cache, positions[:, start:end],
                                 keep_last)
    return logits, cache


def _check_finite(logits, live, step):
    bad = live & ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise NonFiniteLogitsError(
            f"the model produced NaN/inf logits at generation step {step} for batch rows "
            f"{np.nonzero(bad)[0].tolist()}; check the weights and the inputs (e.g. a float16 overflow)")


def _select(scores, live, do_sample, rng, pad, step):
    """Next token per row: pad for finished rows, greedy or sampled for the others."""
    tok = np.full(scores.shape[0], pad, dtype=np.int64)
    rows = np.nonzero(live)[0]
    dead = np.isneginf(scores[rows]).all(axis=1)
    if dead.any():
        raise GenerationParameterError(
            f"every token was filtered out at step {step} for rows {rows[dead].tolist()}; relax "
            "no_repeat_ngram_size / min_new_tokens or the custom processors")
    tok[rows] = sampling.sample(scores[rows], rng) if do_sample else sampling.greedy(scores[rows])
    return tok


def _chosen_logprobs(scores, tok, live, top_n=0):
    """Log-probs under the processed scores, the distribution the token was drawn from.

    Returns float32 [B] for the chosen tokens (0 for padding), and, when ``top_n``, the ``top_n``
    best (float32 [B, N] best first, -inf for padding; int64 [B, N] ids, -1 for padding).
    Equal log-probs are ordered by token id.
    """
    B = scores.shape[0]
    lp = np.zeros(B, dtype=np.float32)
    top = np.full((B, top_n), -INF, dtype=np.float32)
    top_ids = np.full((B, top_n), -1, dtype=np.int64)
    rows = np.nonzero(live)[0]
    if rows.size == 0:
        return lp, top, top_ids
    logp = sampling.log_softmax(scores[rows])  # float64 [b, V]
    lp[rows] = logp[np.arange(rows.size), tok[rows]]
    n = min(top_n, logp.shape[1])
    for i, row in enumerate(logp):
        if n == 0:
            break
        cut = np.partition(row, row.size - n)[row.size - n]  # the n-th largest value
        cand = np.nonzero(row >= cut)[0]  # every tie at the cut too, so the order is deterministic
        best = cand[np.lexsort((cand, -row[cand]))][:n]  # by log-prob descending, then by id
        top[rows[i], :n], top_ids[rows[i], :n] = row[best], best
    return lp, top, top_ids


# ============================================================== generate
def generate(model, input_ids, max_new_tokens: int = 100, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, repetition_penalty: float = 1.0, eos_token_id=None, pad_token_id=None,
             attention_mask=None, do_sample: Optional[bool] = None, min_p: float = 0.0,
             typical_p: float = 1.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
             no_repeat_ngram_size: int = 0, min_new_tokens: int = 0, seed=None, stopping_criteria=None,
             stop_token_sequences=None, repetition_stop=None, streamer=None,
             return_dict_in_generate: bool = False, output_scores: bool = False,
             output_logprobs: bool = False, logits_processor=None, truncate_prompt: bool = False,
             top_logprobs: int = 0, json_schema=None, regex=None, grammar=None, tokenizer=None,
             constraint=None, num_beams: int = 1, length_penalty: float = 1.0, early_stopping=False,
             num_return_sequences: int = 1, prompt_lookup_num_tokens: Optional[int] = None,
             max_matching_ngram_size: Optional[int] = None, assistant_model=None,
             num_assistant_tokens: int = 20):
    """Autoregressive generation with a KV cache.

    input_ids:        int [B, T0] (or [T0]), left-padded when rows differ in length
    attention_mask:   [B, T0], 0 on left padding; default all ones
    max_new_tokens:   new tokens at most (the prompt does not count)
    do_sample:        None -> sample iff temperature > 0.  temperature == 0 always means greedy
    temperature, top_k (0 = off), top_p (1 = off), min_p (0 = off), typical_p (1 = off):
                      sampling filters, used only when sampling (as in HF)
    repetition_penalty (HF, prompt included), frequency_penalty / presence_penalty
                      (OpenAI, generated tokens only), no_repeat_ngram_size, min_new_tokens:
                      applied in greedy decoding too
    eos_token_id:     int or list; None -> ``model.config`` EOS ids ([] disables EOS)
    pad_token_id:     fills finished rows; None -> config pad id, else the first EOS id, else 0
    seed:             int or ``np.random.Generator`` for reproducible sampling
    stopping_criteria: a callable or list of them ``(input_ids, new_ids, prompt_length) -> bool[B]``
    stop_token_sequences: lists of ids; a row stops when its output ends with one
    repetition_stop:  (max_ngram_size, min_repeats), True, or a ``RepetitionCriteria``
    streamer:         callable ``f(new_ids [B])`` per step, or an HF-style object:
                      ``put(prompt [B, T0])`` once, ``put(new_ids [B])`` per step, ``end()``
    logits_processor: extra processors ``(input_ids, scores) -> scores`` run after the built-in ones
    output_logprobs:  ``logprobs`` [B, n]: the log-prob of each chosen token under the processed scores
                      (log_softmax of ``scores``: the distribution it was drawn from, as in OpenAI's API;
                      under greedy decoding, the processed scores without the sampling filters)
    top_logprobs:     N > 0 (needs output_logprobs): also ``top_logprobs`` [B, n, N] and
                      ``top_logprob_ids`` [B, n, N], the N most likely tokens of that same distribution per
                      step, best first (ties by token id; tokens filtered out have -inf)
    json_schema, regex, grammar: structured output (one of them; ``grammar`` is Lark or GBNF), with
                      ``tokenizer`` the model's npllm Tokenizer.  The mask is applied first; EOS is allowed
                      exactly when the text is complete; a row whose grammar admits nothing more stops
                      with reason "grammar".  An invalid one raises ``GrammarError`` before any token
    constraint:       instead: an ``npllm.structured.Constraint`` (a template: each row gets a fresh copy)
                      or a list of B of them, used as given (None: an unconstrained row); build them
                      for the same EOS ids as ``eos_token_id``
    truncate_prompt:  a prompt longer than ``max_position_embeddings`` raises an error naming both
                      lengths, unless True: then only its last tokens are kept (room is left for
                      ``max_new_tokens`` when possible).  Generation never runs past that limit:
                      ``max_new_tokens`` is capped and such rows stop with reason "length".
    num_beams, length_penalty, early_stopping (True | False | "never"), num_return_sequences:
                      beam search as HF (``npllm.beam``, lesson 10); the dict output then carries
                      ``sequences_scores`` (with output_scores) and ``beam_indices``
    prompt_lookup_num_tokens, max_matching_ngram_size (default 2): speculative decoding with
                      drafts copied from the context (HF prompt lookup; ``npllm.speculative``)
    assistant_model, num_assistant_tokens (default 20): speculative decoding with drafts from a
                      smaller npllm model with the same vocabulary.  Both: batch size 1; greedy
                      output equals plain greedy token for token, sampling keeps its distribution

    Returns int64 [B, T0 + n], or a ``GenerateOutput`` when return_dict_in_generate.
    """
    config = getattr(model, "config", None)
    V = getattr(config, "vocab_size", None)
    if not isinstance(V, Integral) or V <= 0:
        raise GenerationParameterError("model.config.vocab_size must be a positive integer")
    ids = _as_prompt(input_ids, V)
    B, T0 = ids.shape
    mask = _as_mask(attention_mask, ids.shape)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)
    limit = getattr(config, "context_length", getattr(config, "max_position_embeddings", None))
    if isinstance(limit, Integral) and T0 > limit:
        if not truncate_prompt:
            what = (f"max_position_embeddings={limit}" if limit == getattr(config, "max_position_embeddings", limit)
                    else f"the model's context {limit} (max_position_embeddings x the dynamic RoPE factor)")
            raise GenerationParameterError(
                f"the prompt has {T0} tokens, more than {what}; shorten it "
                "or pass truncate_prompt=True to keep only its last tokens")
        keep = max(1, limit - max_new_tokens)
        ids, mask, T0 = ids[:, -keep:], mask[:, -keep:], keep
    if isinstance(limit, Integral):
        max_new_tokens = min(max_new_tokens, limit - T0)
    temperature = _check_float("temperature", temperature, 0.0, INF, high_open=True)
    top_k = _check_int("top_k", top_k, 0)
    top_p = _check_float("top_p", top_p, 0.0, 1.0, low_open=True)
    min_p = _check_float("min_p", min_p, 0.0, 1.0)
    typical_p = _check_float("typical_p", typical_p, 0.0, 1.0, low_open=True)
    repetition_penalty = _check_float("repetition_penalty", repetition_penalty, 0.0, INF, True, True)
    frequency_penalty = _check_float("frequency_penalty", frequency_penalty, -INF, INF, True, True)
    presence_penalty = _check_float("presence_penalty", presence_penalty, -INF, INF, True, True)
    no_repeat_ngram_size = _check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    min_new_tokens = _check_int("min_new_tokens", min_new_tokens, 0)
    if do_sample not in (None, True, False):
        raise GenerationParameterError(f"do_sample must be None, True or False, got {do_sample!r}")
    do_sample = (temperature > 0) if do_sample is None else (do_sample and temperature > 0)
    if isinstance(seed, np.random.Generator):
        rng = seed
    else:
        rng = np.random.default_rng(None if seed is None else _check_int("seed", seed, 0))
    if streamer is not None and not (hasattr(streamer, "put") or callable(streamer)):
        raise GenerationParameterError(f"streamer must be a callable or have put()/end(), got {streamer!r}")
    eos, pad = _resolve_special_ids(model, eos_token_id, pad_token_id, V)
    top_logprobs = _check_int("top_logprobs", top_logprobs, 0)
    if top_logprobs and not output_logprobs:
        raise GenerationParameterError("top_logprobs needs output_logprobs=True")
    grammar_rows = None
    if constraint is not None or json_schema is not None or regex is not None or grammar is not None:
        from .structured import row_constraints

        grammar_rows = row_constraints(B, tokenizer, V, eos, json_schema=json_schema, regex=regex,
                                       grammar=grammar, constraint=constraint)

    num_beams = _check_int("num_beams", num_beams, 1)
    num_return_sequences = _check_int("num_return_sequences", num_return_sequences, 1)
    processors = sampling.build_processors(
        do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        typical_p=typical_p, repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        min_new_tokens=min_new_tokens, eos_token_ids=eos, prompt_length=T0,
        prompt_ignore_length=np.repeat(np.argmax(mask == 1, axis=1), num_beams))  # HF: padding is not "seen"
    if logits_processor is not None:
        user = ([logits_processor] if callable(logits_processor) or not np.iterable(logits_processor)
                else list(logits_processor))
        for proc in user:
            if not callable(proc):
                raise GenerationParameterError(
                    f"logits_processor must be a callable (input_ids, scores) -> scores or a list of them, "
                    f"got {proc!r}")
        processors.extend(_CheckedProcessor(proc) for proc in user)
    criteria = _build_criteria(max_new_tokens, eos, stop_token_sequences, repetition_stop,
                               stopping_criteria, V)

    if grammar_rows is not None and (num_beams > 1 or num_return_sequences > 1 or assistant_model is not None
                                     or prompt_lookup_num_tokens):
        raise GenerationParameterError("json_schema / regex / grammar / constraint work with plain decoding only, "
                                       "not with num_beams, num_return_sequences or speculative decoding")
    if top_logprobs and (num_beams > 1 or num_return_sequences > 1 or assistant_model is not None
                         or prompt_lookup_num_tokens):
        raise GenerationParameterError("top_logprobs works with plain decoding only, not with num_beams, "
                                       "num_return_sequences or speculative decoding")
    drafter = _speculative_drafter(model, B, num_beams, prompt_lookup_num_tokens, max_matching_ngram_size,
                                   assistant_model, num_assistant_tokens, processors, do_sample, rng, eos)
    if num_beams > 1 or num_return_sequences > 1:
        from .beam import beam_search

        if streamer is not None:
            raise GenerationParameterError("streamer is not supported with num_beams > 1 (as in HF)")
        out = beam_search(model, ids, mask, max_new_tokens, processors, criteria, do_sample, rng, pad, eos,
                          num_beams, _check_float("length_penalty", length_penalty, -INF, INF, True, True),
                          early_stopping, num_return_sequences, output_scores)
        return out if return_dict_in_generate else out.sequences
    if streamer is not None and hasattr(streamer, "put"):
        streamer.put(ids.copy())  # HF streamers receive the prompt first
    if drafter is not None:
        from .speculative import speculative_loop

        out = speculative_loop(model, ids, mask, max_new_tokens, processors, criteria, do_sample, rng, pad,
                               streamer, output_scores, output_logprobs, drafter, drafter.num_tokens)
    else:
        out = _decode_loop(model, ids, mask, max_new_tokens, processors, criteria, do_sample, rng, pad,
                           streamer, output_scores, output_logprobs, top_logprobs, grammar_rows)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    return out if return_dict_in_generate else out.sequences


def _speculative_drafter(model, B, num_beams, lookup, max_ngram, assistant, n_assistant, processors,
                         do_sample, rng, eos):
    """The drafter for speculative decoding (``npllm.speculative``), or None; arguments checked."""
    if lookup is None and assistant is None:
        if max_ngram is not None:
            raise GenerationParameterError("max_matching_ngram_size needs prompt_lookup_num_tokens")
        return None
    from .speculative import AssistantDrafter, PromptLookup

    if lookup is not None and assistant is not None:
        raise GenerationParameterError("pass prompt_lookup_num_tokens or assistant_model, not both")
    if B != 1:
        raise GenerationParameterError(
            f"prompt_lookup_num_tokens / assistant_model need batch size 1 (as in HF), got {B} rows")
    if num_beams != 1:
        raise GenerationParameterError("prompt_lookup_num_tokens / assistant_model need num_beams=1")
    if getattr(model.config, "rope_switch_length", None) is not None:
        raise GenerationParameterError(
            "prompt_lookup_num_tokens / assistant_model do not support LongRoPE models (rope_switch_length)")
    if lookup is not None:
        lookup = _check_int("prompt_lookup_num_tokens", lookup, 1)
        max_ngram = 2 if max_ngram is None else _check_int("max_matching_ngram_size", max_ngram, 1)
        return PromptLookup(lookup, max_ngram, eos)
    if max_ngram is not None:
        raise GenerationParameterError("max_matching_ngram_size needs prompt_lookup_num_tokens")
    if not hasattr(assistant, "forward") or not hasattr(assistant, "new_cache"):
        raise GenerationParameterError(f"assistant_model must be an npllm model, got {type(assistant).__name__}")
    if getattr(assistant.config, "vocab_size", None) != model.config.vocab_size:
        raise GenerationParameterError(
            f"assistant_model has vocab_size {getattr(assistant.config, 'vocab_size', None)}, the model "
            f"{model.config.vocab_size}: they must share the vocabulary")
    return AssistantDrafter(assistant, _check_int("num_assistant_tokens", n_assistant, 1), processors,
                            do_sample, rng)


CACHE_CHUNK = 256  # positions allocated past the prompt at first; then the buffers double as needed


def _room(now, needed, total):
    """The next buffer length: double the current one, at least ``needed``, at most ``total``."""
    return min(total, max(needed, 2 * now))


def _widen(a, cols, fill):
    """``a`` [B, n] copied into a new [B, cols] buffer (the new columns hold ``fill``)."""
    out = np.full((a.shape[0], cols), fill, dtype=a.dtype)
    out[:, :a.shape[1]] = a
    return out


def _new_cache(model, B, n, total):
    """A KV cache with room for ``n`` positions and ``CACHE_CHUNK`` more, growable to ``total``.

    A cache without ``reserve`` (a duck-typed model's) gets all ``total`` positions at once;
    None when the model has no ``new_cache`` (its forward then concatenates).
    """
    if not hasattr(model, "new_cache"):
        return None
    cache = model.new_cache(B, min(total, n + CACHE_CHUNK))
    return cache if hasattr(cache, "reserve") else model.new_cache(B, total)


def _decode_loop(model, ids, mask, max_new_tokens, processors, criteria, do_sample, rng, pad,
                 streamer, output_scores, output_logprobs, top_logprobs=0, grammar_rows=None) -> GenerateOutput:
    """Prefill once, then one token per step through the preallocated cache.

    The token and mask buffers and the KV cache start at the prompt plus
    ``CACHE_CHUNK`` positions and double when full, up to ``T0 + max_new_tokens``
    (already capped at the model's context): a run that stops early never holds
    memory for the positions it did not reach.
    """
    B, T0 = ids.shape
    total = T0 + max_new_tokens
    # Tokens and mask grow to the right, one column per step.
    cols = min(total, T0 + CACHE_CHUNK)
    seqs = _widen(ids, cols, pad)  # [B, cols]
    full_mask = _widen(mask, cols, 1)  # [B, cols]
    live = np.ones(B, dtype=bool)  # rows still generating
    reasons: List[Optional[str]] = ["length"] * B if max_new_tokens == 0 else [None] * B
    new_counts = np.zeros(B, dtype=np.int64)
    all_scores, all_logprobs, all_top, all_top_ids = [], [], [], []
    n = 0
    if max_new_tokens > 0:
        keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        cache = _new_cache(model, B, T0, total)
        # LongRoPE (Phi-3): past this length every position uses the long factors (HF recomputes)
        switch = getattr(getattr(model, "config", None), "rope_switch_length", None)
        positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)  # [B, T0] as HF
        logits, cache = _prefill(model, ids, mask, cache, positions, keep_last)
        for step in range(max_new_tokens):
            S = T0 + step
            _check_finite(logits, live, step)
            scores = logits.astype(np.float32, copy=False)  # [B, V]
            if grammar_rows is not None:  # the grammar's mask comes first, before penalties and filters
                scores = np.array(scores)  # a copy: never mask a model buffer
                blocked = grammar_rows.mask(scores, live)
                for b in np.nonzero(blocked)[0]:
                    reasons[b] = "grammar"
                live &= ~blocked
                if not live.any():
                    break
            scores = processors(seqs[:, :S], scores)  # [B, V]
            tok = _select(scores, live, do_sample, rng, pad, step)  # [B]
            if S == seqs.shape[1]:
                cols = _room(cols, S + 1, total)
                seqs, full_mask = _widen(seqs, cols, pad), _widen(full_mask, cols, 1)
            seqs[:, S] = tok
            new_counts += live
            n = step + 1
            if output_scores:
                all_scores.append(np.array(scores, dtype=np.float32))  # a copy: never a model buffer
            if output_logprobs:
                lp, top, top_ids = _chosen_logprobs(scores, tok, live, top_logprobs)
                all_logprobs.append(lp)
                all_top.append(top)
                all_top_ids.append(top_ids)
            if streamer is not None:
                (streamer.put if hasattr(streamer, "put") else streamer)(tok.copy())

            stop, why = criteria(seqs[:, :S + 1], tok, T0)
            if grammar_rows is not None:
                done = grammar_rows.consume(tok, live) & ~stop
                why = [("grammar" if done[b] else w) for b, w in enumerate(why)]
                stop = stop | done
            for b in np.nonzero(stop & live)[0]:
                reasons[b] = why[b]
            live &= ~stop
            if not live.any():
                break
            if S == switch:  # the sequence passes LongRoPE's original context: recompute it all
                m = full_mask[:, :S + 1]
                positions = np.where(m == 0, 1, np.cumsum(m, axis=1) - 1)
                logits, cache = _prefill(model, seqs[:, :S + 1], m, _new_cache(model, B, S + 1, total),
                                         positions, keep_last)
                continue
            if cache is not None and hasattr(cache, "reserve") and S + 1 > cache.max_seq_len:
                cache.reserve(_room(cache.max_seq_len, S + 1, total))  # copies the stored positions
            # A contiguous mask: the kernels compile one version per memory layout, and the two
            # may round differently; this way the logits never depend on the buffers' widths.
            m = np.ascontiguousarray(full_mask[:, :S + 1])  # [B, S + 1]
            pos = m.sum(axis=1, keepdims=True) - 1  # [B, 1] position of the new token
            logits, cache = _forward(model, tok[:, None], m, cache, pos, keep_last)

    return GenerateOutput(
        sequences=seqs[:, :T0 + n], stop_reasons=list(reasons),
        scores=tuple(all_scores) if output_scores else None,
        logprobs=(np.stack(all_logprobs, axis=1) if n else np.zeros((B, 0), np.float32))
        if output_logprobs else None,
        num_new_tokens=new_counts,
        top_logprobs=(np.stack(all_top, axis=1) if n else np.zeros((B, 0, top_logprobs), np.float32))
        if top_logprobs else None,
        top_logprob_ids=(np.stack(all_top_ids, axis=1) if n else np.zeros((B, 0, top_logprobs), np.int64))
        if top_logprobs else None)
