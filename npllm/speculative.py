"""Lesson 10 — speculative decoding: guess several tokens, check them all in one pass.

    draft  d1..dk           (prompt lookup: copied from the context; or an assistant model)
    verify [last, d1..dk]   one forward pass -> the target's logits at k + 1 positions
    accept while the target agrees, then take the target's own token; crop the cache back

Greedy: the target's argmax decides every token, so the output is plain greedy's, token for
token — provided the verify pass computes exactly the logits k + 1 decode steps would.  It
does: ``verify_forward`` runs each row through the decode kernels (``verify_layer`` in
``ops/decode_layer.py``; matrices with ``MATVECR``, the decode matvec per row), only reading
the weights once for all rows.  That is where the speed comes from: decoding one token is
bound by reading the weights, and k + 1 tokens read them once.

Sampling: rejection sampling (Leviathan et al. 2023, Alg. 1).  A draft token d drawn from q
is kept with probability min(1, p(d) / q(d)); on the first rejection the token is drawn from
norm(max(0, p - q)); when all k are kept, one more from p.  Every emitted token then has the
target distribution p exactly.  Prompt lookup has no draft distribution: q is a point mass on
d, so d is kept with probability p(d), and on rejection the token comes from p without d.

HF: ``generate(prompt_lookup_num_tokens=, max_matching_ngram_size=)``
(``PromptLookupCandidateGenerator``) and ``generate(assistant_model=)``
(``AssistedCandidateGenerator``, ``_speculative_sampling``).  Batch size 1, as in HF.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from . import sampling
from .errors import GenerationParameterError

__all__ = ["prompt_lookup_candidates", "verify_forward", "PromptLookup", "AssistantDrafter"]


# ============================================================== the verify pass
def _fast_verify(model) -> bool:
    """Whether every layer has the one-call decode kernel (quantized layers, float32)."""
    from .quant import QuantizedWeight
    from .quant.weight import _use_reference

    layers = getattr(model, "layers", None)
    return (layers is not None and getattr(model, "dtype", None) == np.float32 and not _use_reference()
            and all(getattr(layer, "one_call", None) is not None for layer in layers)
            and isinstance(model.lm_head, (np.ndarray, QuantizedWeight)))


def verify_forward(model, tokens, key_mask, cache, position0):
    """Logits [T, V] for T new tokens of one sequence, bit-equal to T decode steps.

    tokens:    int [T], appended to ``cache`` (a ``KVCache`` with batch 1) at ``cache.length``
    key_mask:  int [1, cache.length + T], 1 for real tokens
    position0: the RoPE position of ``tokens[0]``

    Models whose layers lack the one-call kernel take T ordinary decode steps (exact too,
    without the speed-up).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    T = tokens.shape[0]
    if not _fast_verify(model):
        rows = []
        for t in range(T):
            L = cache.length
            logits, cache = model.forward(tokens[None, t:t + 1], attention_mask=key_mask[:, :L + 1],
                                          past_key_values=cache, use_cache=True,
                                          position_ids=np.array([[position0 + t]]), logits_to_keep=1)
            rows.append(logits[0, -1])
        return np.stack(rows)
    from .ops.decode_layer import verify_layer
    from .quant import QuantizedWeight
    from .quant.kernels import matvec_rows

    if cache.length + T > cache.max_seq_len:
        cache.reserve(cache.length + T)
    x = model._embed(tokens[None])[0]                                            # [T, D]
    # RoPE tables one position at a time, as decode computes them (same rounding)
    per_pos = [model._ropes(np.array([[position0 + t]])) for t in range(T)]
    ropes = {kind: tuple(np.ascontiguousarray(np.concatenate([p[kind][i] for p in per_pos]))
                         for i in (0, 1)) for kind in per_pos[0]}                # [T, 1, Dh] each
    key_mask = np.ascontiguousarray(key_mask, dtype=np.int64)
    for layer in model.layers:
        rope = layer.self_attn.rope
        cos, sin = ropes[rope] if rope is not None else (None, None)
        x = verify_layer(layer.one_call, x, cos, sin, key_mask, cache.keys[layer.idx],
                         cache.values[layer.idx], cache.length)
    cache.advance(T)
    h = model.norm(x[:, None])[:, 0]                                             # [T, D], per row
    head = model.lm_head
    if isinstance(head, QuantizedWeight):
        logits = np.empty((T, head.shape[0]), np.float32)
        matvec_rows(head.ggml_type, head._addresses(), np.ascontiguousarray(h), logits)
    else:
        logits = np.concatenate([h[t:t + 1] @ head.T for t in range(T)])         # decode's gemv per row
    cap = model.config.final_logit_softcapping
    if cap:
        for t in range(T):
            logits[t] = np.tanh(logits[t:t + 1] / cap)[0] * logits.dtype.type(cap)
    return logits
