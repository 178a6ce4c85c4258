"""Lesson 07 — perplexity, the yardstick that shows a fast path changes no results.

PPL = exp( mean over scored tokens of  -log p(token_i | tokens_<i) )

Default method (llama.cpp's ``perplexity`` tool): cut the token stream into
non-overlapping chunks of ``context`` tokens, start each chunk with BOS (when the
tokenizer adds one), and score only the second half of each chunk, so every
scored token sees at least context/2 tokens of history.

With ``stride`` (HF's sliding-window method): windows of ``context`` tokens move
by ``stride``; each window scores only the tokens not scored before.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from .errors import GenerationParameterError


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float          # mean negative log-likelihood (nats per token)
    n_scored: int
    n_chunks: int


def _token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    # logits: [N, V], targets: [N] -> -log softmax(logits)[targets], in float64
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=-1))
    return logz - z[np.arange(len(targets)), targets]


def perplexity(model, tokenizer, text: str, context: int = 512, stride=None, progress=False):
    if context < 2:
        raise GenerationParameterError(f"context must be >= 2, got {context}")
    if stride is not None and not (0 < stride <= context):
        raise GenerationParameterError(f"stride must be in (0, context={context}], got {stride}")
    limit = getattr(getattr(model, "config", None), "context_length", None)
    if limit is not None and context > limit:
        raise GenerationParameterError(f"context {context} is beyond the model's context of {limit} tokens")
    ids = np.array(tokenizer.encode(text), dtype=np.int64)
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    windows = []   # (chunk ids, first scored position)
    if stride is None:
        for start in range(0, len(ids) - context + 1, context):
            chunk = ids[start:start + context].copy()
            if bos is not None:
                chunk[0] = bos
            windows.append((chunk, context // 2))
    else:
        prev_end = 0
        for begin in range(0, len(ids) - 1, stride):
            end = min(begin + context, len(ids))
            first = max(prev_end - begin, 1) - 1   # logits index predicting the first new target
            windows.append((ids[begin:end], first))
            prev_end = end
            if end == len(ids):
                break
    if not windows:
        raise GenerationParameterError(
            f"the text has {len(ids)} tokens, fewer than one context of {context}")
    iterator = windows
    if progress:
        from tqdm import tqdm
        iterator = tqdm(windows, desc="perplexity", unit="chunk", file=sys.stderr)
    total, count = 0.0, 0
    for chunk, first in iterator:
        logits, _ = model.forward(chunk[None])                        # [1, T, V]
        nll = _token_nll(logits[0, first:-1], chunk[first + 1:])
        total += nll.sum()
        count += len(nll)
    mean = total / count
    return PerplexityResult(float(np.exp(mean)), float(mean), count, len(windows))
