"""Lessons 02 and 08 — scaled dot-product attention with causal and padding masks; MHA, GQA, MQA.

    att = softmax(q k^T / sqrt(Dh) + mask) v

Two family knobs live here (lesson 08): ``scale`` (Gemma: query_pre_attn_scalar**-0.5
instead of 1/sqrt(Dh)) and ``softcap`` (Gemma 2: scores -> c * tanh(scores / c), applied
*before* the mask).  A sliding window (Mistral, Gemma) is part of the mask: see
``causal_padding_mask``.

GQA: H query heads share Hkv key/value heads in groups of G = H // Hkv
(G = 1 is MHA, Hkv = 1 is MQA).  Instead of copying K/V G times (HF's
``repeat_kv``), the reference reshapes q to [B, Hkv, G, T, Dh] and lets
matmul broadcast K/V over the group axis; the kernel simply reads K/V head
``h // G``.  Matches HF ``LlamaAttention`` (eager).
"""

import numpy as np

from .._jit import njit, njit_parallel, prange, reference_mode
from .fastexp import exp32
from .half import h2f, kernel_view, to_elem
from .softmax import softmax_ref


def causal_padding_mask(attention_mask: np.ndarray, past_len: int, T: int, window=None) -> np.ndarray:
    """Which keys each new query may see.

    attention_mask: [B, S] (1 = real token, 0 = padding; S = past_len + T)
    returns allowed: [B, T, S] bool — key s is visible to query t iff s <= past_len + t
    (causal), key s is not padding, and, with a sliding ``window`` W, s > past_len + t - W
    (the query sees its last W cache slots, itself included; HF's ``sliding_window_overlay``).
    """
    S = attention_mask.shape[1]
    q_pos = past_len + np.arange(T)[:, None]          # [T, 1]
    k_pos = np.arange(S)[None, :]                     # [1, S]
    causal = k_pos <= q_pos                           # [T, S]
    if window is not None:
        causal &= k_pos > q_pos - window
    return causal[None] & (attention_mask[:, None, :] != 0)


def attention_ref(q, k, v, allowed, scale=None, softcap=None):
    # q: [B, H, T, Dh], k, v: [B, Hkv, S, Dh], allowed: [B, T, S] -> [B, H, T, Dh]
    B, H, T, Dh = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    scale = 1 / np.sqrt(Dh) if scale is None else scale
    k, v = k.astype(q.dtype, copy=False), v.astype(q.dtype, copy=False)  # an fp16 cache: math in q's dtype
    qg = q.reshape(B, Hkv, G, T, Dh)                                   # group query heads
    scores = qg @ k[:, :, None].swapaxes(-1, -2) * scale                # [B, Hkv, G, T, S]
    if softcap:                                                         # Gemma 2: before the mask
        scores = np.tanh(scores / softcap) * softcap
    scores = np.where(allowed[:, None, None], scores, -np.inf)
    att = softmax_ref(scores)                                           # masked rows -> 0
    return (att @ v[:, :, None]).reshape(B, H, T, Dh)                   # [B, H, T, Dh]


@njit
def _attend_one(q, k, v, allowed, out, scores, softcap):
    # One query against its keys. q: [Dh], already scaled (1/sqrt(Dh) or Gemma's); k, v: [S, Dh];
    # allowed: [S]; out: [Dh]; scores: scratch [>= S]; softcap: c > 0 caps the scores at c
    # (c * tanh(score / c), Gemma 2), 0 leaves them.  k, v may be an fp16 cache's uint16 view:
    # h2f converts each value as it is read (for float arrays it is the identity; half.py).
    # Each inner loop runs over a contiguous row, which LLVM vectorises; four keys go together,
    # so four independent sums hide the latency of each other's additions.  Every value stays in
    # q's dtype (exp32: lesson 07).
    S, Dh = k.shape
    s = 0
    while s + 4 <= S:                    # scores = k q
        d0 = q[0] * h2f(k[s, 0])
        d1 = q[0] * h2f(k[s + 1, 0])
        d2 = q[0] * h2f(k[s + 2, 0])
        d3 = q[0] * h2f(k[s + 3, 0])
        for d in range(1, Dh):
            d0 += q[d] * h2f(k[s, d])
            d1 += q[d] * h2f(k[s + 1, d])
            d2 += q[d] * h2f(k[s + 2, d])
            d3 += q[d] * h2f(k[s + 3, d])
        scores[s], scores[s + 1], scores[s + 2], scores[s + 3] = d0, d1, d2, d3
        s += 4
    for s in range(s, S):
        dot = q[0] * h2f(k[s, 0])
        for d in range(1, Dh):
            dot += q[d] * h2f(k[s, d])
        scores[s] = dot
    if softcap > 0:
        for s in range(S):
            scores[s] = np.tanh(scores[s] / softcap) * softcap
    m = scores[0]                        # the max over the visible keys
    seen = False
    for s in range(S):
        if allowed[s] and (not seen or scores[s] > m):
            m = scores[s]
            seen = True
    out[:] = 0
    if not seen:                         # fully masked query: output zeros
        return
    total = m - m
    for s in range(S):                   # softmax numerators (masked keys weigh 0)
        if allowed[s]:
            p = exp32(scores[s] - m)
            total += p
            scores[s] = p
        else:
            scores[s] = 0
    s = 0
    while s + 4 <= S:                    # out = sum_s p_s v_s / sum_s p_s
        p0, p1, p2, p3 = scores[s], scores[s + 1], scores[s + 2], scores[s + 3]
        for d in range(Dh):
            out[d] += p0 * h2f(v[s, d]) + p1 * h2f(v[s + 1, d]) + p2 * h2f(v[s + 2, d]) + p3 * h2f(v[s + 3, d])
        s += 4
    for s in range(s, S):
        p = scores[s]
        for d in range(Dh):
            out[d] += p * h2f(v[s, d])
    inv = 1 / total
    for d in range(Dh):
        out[d] *= inv


@njit_parallel
def _attention_kernel(q, k, v, allowed, out, scale, softcap):
    # q, out: [B, H, T, Dh]; k, v: [B, Hkv, S, Dh]; allowed: [B, T, S]
    B, H, T, Dh = q.shape
    G = H // k.shape[1]
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        kh = h // G                      # the K/V head this query head reads
        qs = np.empty(Dh, dtype=q.dtype)
        scores = np.empty(k.shape[2], dtype=q.dtype)
        for t in range(T):
            for d in range(Dh):
                qs[d] = q[b, h, t, d] * scale
            _attend_one(qs, k[b, kh], v[b, kh], allowed[b, t], out[b, h, t], scores, softcap)


def attention_blocked(q, k, v, allowed, block: int = 96, scale=None, softcap=None):
    """The reference's math for many queries (prefill), in blocks of ``block`` queries.

    A block of queries t0..t1 only needs the keys from the first to the last one any of them
    may see (for a causal mask: up to past_len + t1; a sliding window also cuts the start), so
    about half of the T x S scores are never computed.  Per
    block and K/V head: scores = q k^T (BLAS, the G query heads stacked), mask, softmax with
    NumPy's vectorised exp in place, then att v (BLAS) scaled by 1 / row sum.
    """
    B, H, T, Dh = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    # An fp16 cache: its keys and values in q's dtype, once per call (BLAS works in fp32)
    k, v = k.astype(q.dtype, copy=False), v.astype(q.dtype, copy=False)
    out = np.empty(q.shape, dtype=q.dtype)
    scale = q.dtype.type(1.0 / np.sqrt(Dh) if scale is None else scale)
    for b in range(B):
        for t0 in range(0, T, block):
            t1 = min(T, t0 + block)
            seen = np.flatnonzero(allowed[b, t0:t1].any(axis=0))     # keys any query here sees
            if seen.size == 0:                                       # every query fully masked
                out[b, :, t0:t1] = 0.0
                continue
            s0, S = seen[0], seen[-1] + 1
            hidden = ~allowed[b, t0:t1, s0:S]                        # [Tb, S - s0]
            for kh in range(Hkv):
                heads = slice(kh * G, (kh + 1) * G)
                scores = (q[b, heads, t0:t1] * scale) @ k[b, kh, s0:S].T   # [G, Tb, S - s0]
                if softcap:
                    np.tanh(scores / softcap, out=scores)
                    scores *= softcap
                np.copyto(scores, -np.inf, where=hidden)
                m = scores.max(axis=-1, keepdims=True)               # [G, Tb, 1]
                m[m == -np.inf] = 0.0                                # fully masked row -> zeros
                np.subtract(scores, m, out=scores)
                np.exp(scores, out=scores)
                total = scores.sum(axis=-1, keepdims=True)
                total[total == 0] = 1.0
                y = out[b, heads, t0:t1]                             # [G, Tb, Dh] view
                np.matmul(scores, v[b, kh, s0:S], out=y)
                y /= total
    return out


def attention(q, k, v, allowed, scale=None, softcap=None):
    """Masked multi-head attention; see the module docstring for shapes.

    ``scale`` multiplies q k^T (default 1/sqrt(Dh)); ``softcap`` c caps the scores at
    c * tanh(score / c) before the mask.  The Numba kernel serves few queries (decode); prefill
    with many queries goes through ``attention_blocked`` (BLAS on blocks of queries, skipping
    keys no query can see).
    """
    if reference_mode():
        return attention_ref(q, k, v, allowed, scale, softcap)
    if q.shape[2] > 16:
        return attention_blocked(q, k, v, allowed, scale=scale, softcap=softcap)
    out = np.empty(q.shape, dtype=q.dtype)
    scale = 1 / np.sqrt(q.shape[3]) if scale is None else scale
    # k, v may be views into a preallocated cache: the kernel reads them in place, no copy
    # (an fp16 cache as its uint16 bits, converted as they are read).
    _attention_kernel(q, kernel_view(k), kernel_view(v), allowed, out, q.dtype.type(scale),
                      q.dtype.type(softcap or 0))
    return out


# ----------------------------------------------------------------------------------------------
# Decode (one new token per row, preallocated cache): RoPE + cache write + attention in one call.
# Same math as apply_rope + KVCache.update + attention; used by TransformerBlock.decode.

def decode_attention_ref(q, k, v, cos, sin, k_cache, v_cache, length, key_mask, scale=None, softcap=None,
                         window=None):
    """q: [B, H*Dh], k, v: [B, Hkv*Dh] (projections of the new token, before RoPE);
    cos, sin: [B, 1, Dh], or None for a layer without RoPE (NoPE);
    k_cache, v_cache: [B, Hkv, S_max, Dh], written at ``length``;
    key_mask: [B, >= length + 1] (1 = real token); ``window``: the query sees its last W slots.
    ``length`` may also be a pair ``(rows, lengths)`` of int64 [B] arrays: batch row b then
    uses cache row ``rows[b]``, written at ``lengths[b]`` (a server's slots, lesson 09).
    Returns [B, H*Dh]."""
    from .rope import apply_rope_ref

    B = q.shape[0]
    Hkv, Dh = k_cache.shape[1], k_cache.shape[3]
    H = q.shape[1] // Dh
    rows, lengths = cache_rows(B, length)
    q, k = q.reshape(B, H, 1, Dh), k.reshape(B, Hkv, 1, Dh)
    if cos is not None:
        q, k = apply_rope_ref(q, cos, sin), apply_rope_ref(k, cos, sin)          # [B, H|Hkv, 1, Dh]
    out = np.empty((B, H * Dh), q.dtype)
    for b, (r, n) in enumerate(zip(rows, lengths)):                              # each row on its own
        k_cache[r, :, n] = k[b, :, 0]
        v_cache[r, :, n] = v[b].reshape(Hkv, Dh)
        allowed = causal_padding_mask(key_mask[b:b + 1, :n + 1], n, 1, window)  # [1, 1, S]
        y = attention_ref(q[b:b + 1], k_cache[r:r + 1, :, :n + 1], v_cache[r:r + 1, :, :n + 1], allowed,
                          scale, softcap)
        out[b] = y.reshape(H * Dh)
    return out


def cache_rows(B, length):
    """``length`` (one int for every row) or ``(rows, lengths)`` -> two int64 [B] arrays."""
    if isinstance(length, tuple):
        return length
    return np.arange(B, dtype=np.int64), np.full(B, length, dtype=np.int64)


@njit
def _rotate(x, cos, sin, out, scale):
    # out = rope(x) * scale for one head (x, out: [Dh]; cos, sin: [Dh]); cos of size 0: no RoPE.
    # out may be a row of an fp16 cache's uint16 view (to_elem rounds to fp16; half.py).
    Dh = x.shape[0]
    if cos.shape[0] == 0:
        for d in range(Dh):
            out[d] = to_elem(out, x[d] * scale)
        return
    half = Dh // 2
    for i in range(half):
        x1 = x[i]
        x2 = x[i + half]
        out[i] = to_elem(out, (x1 * cos[i] - x2 * sin[i]) * scale)
        out[i + half] = to_elem(out, (x2 * cos[i + half] + x1 * sin[i + half]) * scale)


@njit_parallel
def _decode_attention_kernel(q, k, v, cos, sin, k_cache, v_cache, rows, lengths, key_mask, out, scale, softcap,
                             window):
    # cos, sin: [B, 1, Dh], or [B, 1, 0] for no RoPE; window 0: no sliding window.
    # rows, lengths: int64 [B]: batch row b lives in cache row rows[b], which holds lengths[b]
    # positions; its new k, v go there and its query sees only them (lesson 09: slots).
    # k_cache, v_cache: float, or an fp16 cache's uint16 views (kernel_view; half.py).
    B = q.shape[0]
    Hkv, Dh = k_cache.shape[1], k_cache.shape[3]
    H = q.shape[1] // Dh
    G = H // Hkv
    one = q.dtype.type(1.0)
    for b in range(B):                       # 1. rotate k and append k, v to the cache
        r, n = rows[b], lengths[b]
        for h in range(Hkv):
            base = h * Dh
            _rotate(k[b, base:base + Dh], cos[b, 0], sin[b, 0], k_cache[r, h, n], one)
            for d in range(Dh):
                v_cache[r, h, n, d] = to_elem(v_cache, v[b, base + d])
    for bh in prange(B * H):                 # 2. each query head attends over its row's cache
        b = bh // H
        h = bh % H
        r = rows[b]
        S = lengths[b] + 1
        s0 = max(0, S - window) if window > 0 else 0  # the first key the new query may see
        base = h * Dh
        qr = np.empty(Dh, dtype=q.dtype)     # q rotated and scaled
        y = np.empty(Dh, dtype=q.dtype)
        scores = np.empty(S - s0, dtype=q.dtype)
        _rotate(q[b, base:base + Dh], cos[b, 0], sin[b, 0], qr, scale)
        kh = h // G
        _attend_one(qr, k_cache[r, kh, s0:S], v_cache[r, kh, s0:S], key_mask[b, s0:S], y, scores, softcap)
        out[b, base:base + Dh] = y


_NO_ROPE = {}


def no_rope(B, dtype):
    """The (cos, sin) the decode kernels take for a layer without RoPE: empty tables [B, 1, 0]."""
    key = (B, np.dtype(dtype))
    if key not in _NO_ROPE:
        _NO_ROPE[key] = (np.zeros((B, 1, 0), dtype), np.zeros((B, 1, 0), dtype))
    return _NO_ROPE[key]


def decode_attention(q, k, v, cos, sin, k_cache, v_cache, length, key_mask, out=None, scale=None,
                     softcap=None, window=None):
    """RoPE, cache append and attention for one new token per row (see ``decode_attention_ref``;
    ``length``: one int, or ``(rows, lengths)``)."""
    if reference_mode():
        return decode_attention_ref(q, k, v, cos, sin, k_cache, v_cache, length, key_mask, scale, softcap,
                                    window)
    if out is None:
        out = np.empty(q.shape, dtype=q.dtype)
    if cos is None:
        cos, sin = no_rope(q.shape[0], q.dtype)
    t = q.dtype.type
    scale = 1 / np.sqrt(k_cache.shape[3]) if scale is None else scale
    rows, lengths = cache_rows(q.shape[0], length)
    _decode_attention_kernel(q, k, v, cos, sin, kernel_view(k_cache), kernel_view(v_cache), rows, lengths,
                             key_mask, out, t(scale), t(softcap or 0), window or 0)
    return out
