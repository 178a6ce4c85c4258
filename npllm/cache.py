"""Lesson 05 — the KV cache (seed section 2).

Two forms that give the same logits (up to float32 rounding: the preallocated
cache takes the fused decode kernel, which sums in another order):

* The seed's teaching form: ``past_key_values`` is a list with one
  ``(key, value)`` pair per layer, each ``[B, Hkv, S, Dh]``, grown by
  ``np.concatenate`` at every step (``concat_update``).  Simple, but every
  step copies the whole cache.
* ``KVCache``: one preallocated buffer per layer, ``[B, Hkv, S_max, Dh]``,
  written in place.  This is what ``generate`` uses; ``reserve`` grows it
  (``generate`` doubles it when full, so a run that stops early never holds a
  whole context).

Memory (seed section 2.4):
    2 x num_layers x batch x num_kv_heads x seq_len x head_dim x sizeof(dtype)
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .errors import ConfigError, GenerationParameterError
from .ops import half


def kv_cache_bytes(config, batch_size: int, seq_len: int, dtype="float16") -> int:
    """Bytes held by a full KV cache: 2 x L x B x Hkv x S x Dh x sizeof(dtype).

    >>> from npllm.config import llama_7b_config
    >>> kv_cache_bytes(llama_7b_config, 1, 4096, "float16") == 2 * 1024**3
    True
    """
    itemsize = np.dtype(dtype).itemsize
    return (2 * config.num_hidden_layers * batch_size * config.num_key_value_heads
            * seq_len * config.head_dim * itemsize)


def concat_update(layer_past, k, v) -> Tuple[np.ndarray, np.ndarray]:
    """The seed's cache step: append this step's k, v [B, Hkv, T, Dh] along the sequence axis."""
    if layer_past is None:
        return k, v
    past_k, past_v = layer_past
    return np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)


class KVCache:
    """Preallocated per-layer K/V buffers, written in place.

    ``length`` is how many positions are stored; ``forward`` writes the next T
    positions of every layer and then advances ``length`` by T.  ``max_seq_len``
    is how many positions the buffers hold; ``reserve(n)`` grows them (a copy of
    the stored positions), which is how ``generate`` avoids allocating a whole
    context for a run that stops early.
    """

    def __init__(self, config, batch_size: int, max_seq_len: int, dtype=np.float32):
        if max_seq_len <= 0:
            raise GenerationParameterError(f"max_seq_len must be > 0, got {max_seq_len}")
        if batch_size <= 0:
            raise GenerationParameterError(f"batch_size must be > 0, got {batch_size}")
        shape = (batch_size, config.num_key_value_heads, max_seq_len, config.head_dim)
        self.keys: List[np.ndarray] = [np.zeros(shape, dtype) for _ in range(config.num_hidden_layers)]
        self.values: List[np.ndarray] = [np.zeros(shape, dtype) for _ in range(config.num_hidden_layers)]
        self.length = 0
        self.max_seq_len = max_seq_len

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    def reserve(self, max_seq_len: int) -> None:
        """Make the buffers hold at least ``max_seq_len`` positions (never shrinks them).

        Each layer's buffers are reallocated [B, Hkv, S_max, Dh] and the stored
        positions copied, one layer at a time, so the peak is one layer's extra copy.
        """
        if max_seq_len <= self.max_seq_len:
            return
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = np.zeros(old.shape[:2] + (max_seq_len,) + old.shape[3:], old.dtype)
                new[:, :, :self.length] = old[:, :, :self.length]
                buffers[i] = new
        self.max_seq_len = max_seq_len

    def update(self, layer: int, k: np.ndarray, v: np.ndarray):
        """Write k, v [B, Hkv, T, Dh] after the stored positions; return all of it, in k's dtype:
        views of the buffers, or for an fp16 cache float32 copies of the stored (rounded) values."""
        T = k.shape[2]
        end = self.length + T
        if end > self.max_seq_len:
            raise ConfigError(f"KV cache is full: {self.length} + {T} positions exceed "
                              f"max_seq_len={self.max_seq_len} (KVCache.reserve grows it)")
        half.store(self.keys[layer], self.length, k)
        half.store(self.values[layer], self.length, v)
        return half.widen(self.keys[layer], end, k.dtype), half.widen(self.values[layer], end, v.dtype)

    def advance(self, T: int) -> None:
        self.length += T

    @property
    def decode_at(self):
        """Where a decode step writes: ``length`` for every row (a ``SlotCache`` batch: per row)."""
        return self.length

    def reorder(self, rows) -> None:
        """Keep only the given batch rows, in the given order (to drop finished sequences, or
        beam search's ``beam_idx``: row i becomes the old row ``rows[i]``; rows may repeat)."""
        self.keys = [np.ascontiguousarray(k[rows]) for k in self.keys]
        self.values = [np.ascontiguousarray(v[rows]) for v in self.values]

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding's rejected drafts).
        The buffers keep their size; the next ``update`` overwrites the dropped positions."""
        if not 0 <= length <= self.length:
            raise GenerationParameterError(f"crop length must be in [0, {self.length}], got {length}")
        self.length = length


class ConcatCache:
    """Adapter giving the seed's list-of-(k, v) form the same ``update`` as ``KVCache``."""

    def __init__(self, past_key_values=None):
        self.layers = list(past_key_values) if past_key_values is not None else None
        self.present: list = []

    def update(self, layer: int, k: np.ndarray, v: np.ndarray):
        past = self.layers[layer] if self.layers is not None else None
        k_all, v_all = concat_update(past, k, v)
        self.present.append((k_all, v_all))
        return k_all, v_all


class SlotCache:
    """A server's KV pool (lesson 09): one row per slot, each row with its own length.

    ``keys[layer]``/``values[layer]`` are [N, Hkv, S_max, Dh]; ``lengths[i]`` is how many
    positions slot i holds.  ``row(i)`` is a batch-1 ``KVCache`` over slot i's row (views, no
    copy) for its prefill; ``batch(slots)`` is a ``KVCache`` over several slots for one decode
    step, where each row is written at its own length.  ``free(i)`` forgets slot i at once.
    """

    def __init__(self, config, n_slots: int, max_seq_len: int, dtype=np.float32):
        pool = KVCache(config, n_slots, max_seq_len, dtype)
        self.keys, self.values, self.max_seq_len = pool.keys, pool.values, max_seq_len
        self.lengths = np.zeros(n_slots, dtype=np.int64)

    def row(self, i: int) -> KVCache:
        return _SlotView(self, np.array([i], dtype=np.int64), rows_view=True)

    def batch(self, slots) -> KVCache:
        return _SlotView(self, np.asarray(slots, dtype=np.int64), rows_view=False)

    def free(self, i: int) -> None:
        self.lengths[i] = 0


class _SlotView(KVCache):
    """``SlotCache.row``/``batch``: a ``KVCache`` whose rows are some of the pool's slots."""

    def __init__(self, pool: SlotCache, slots: np.ndarray, rows_view: bool):
        self.pool, self.slots, self.rows_view = pool, slots, rows_view
        i = int(slots[0])
        # A prefill (one slot) writes through row views; a decode step takes the whole pool and
        # the kernel writes row slots[b] at lengths[slots[b]].
        self.keys = [k[i:i + 1] for k in pool.keys] if rows_view else pool.keys
        self.values = [v[i:i + 1] for v in pool.values] if rows_view else pool.values
        self.max_seq_len = pool.max_seq_len
        self.length = int(pool.lengths[slots].max())

    @property
    def decode_at(self):
        if self.rows_view:  # one slot's row: like any KVCache
            return self.length
        return self.slots, self.pool.lengths[self.slots]

    def advance(self, T: int) -> None:
        self.length += T
        self.pool.lengths[self.slots] += T

    def reserve(self, max_seq_len: int) -> None:
        if max_seq_len > self.max_seq_len:
            raise ConfigError(f"a slot holds at most {self.max_seq_len} positions (-c/--ctx-size)")


def cache_length(past_key_values) -> int:
    """Positions already stored, for either cache form."""
    if past_key_values is None:
        return 0
    if isinstance(past_key_values, KVCache):
        return past_key_values.length
    return past_key_values[0][0].shape[2]
