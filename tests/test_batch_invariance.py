"""Batch invariance (lesson 09): a row's decode arithmetic does not depend on the other rows.

* The quantized N > 1 matmul (``MATVECN``) gives every input bitwise the same result whatever
  the batch size (N > 1) and wherever the input sits in it; in ``kernels.batch_invariant()`` mode
  N > 1 takes ``MATVECR``, which gives every input bitwise what ``MATVEC1`` gives it alone.
* The decode attention kernel with per-row cache rows and lengths (a server's slots) equals the
  masked-softmax reference computed row by row on each row's own prefix.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm.quant import QuantizedWeight, kernels
from npllm.quant.formats import F16, Q4_0, Q4_1, Q4_K, Q6_K, Q8_0

TYPES = [Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, F16]


def _weight(qtype, rows, cols, seed):
    # random bytes are valid blocks once every fp16 scale is a sane finite number (test_quants.py)
    from test_quants import random_blocks

    raw = random_blocks(qtype, rows, cols, np.random.default_rng(seed)) if qtype != F16 else \
        np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    return QuantizedWeight.from_raw(raw, qtype, (rows, cols))


@pytest.fixture(scope="module")
def weights():
    return {t: _weight(t, 37, 256, t) for t in TYPES}


@settings(max_examples=30, deadline=None)
@given(qtype=st.sampled_from(TYPES), n=st.integers(1, 15), data=st.data())
def test_in_batch_invariant_mode_each_input_is_computed_as_if_alone(weights, qtype, n, data):
    w = weights[qtype]
    pos = data.draw(st.integers(0, n - 1))
    seed = data.draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
    alone = w.matmul(x[pos:pos + 1])                         # MATVEC1, in or out of the mode
    with kernels.batch_invariant():
        assert np.array_equal(w.matmul(x[pos:pos + 1]), alone)
        together = w.matmul(x)
    assert np.array_equal(alone[0], together[pos])


@settings(max_examples=30, deadline=None)
@given(qtype=st.sampled_from(TYPES), n=st.integers(2, 15), data=st.data())
def test_each_input_of_matvecn_is_computed_alike_for_any_batch_of_two_or_more(weights, qtype, n, data):
    w = weights[qtype]
    pos = data.draw(st.integers(0, n - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
    pair = np.stack([x[pos], x[(pos + 1) % n]])
    assert np.array_equal(w.matmul(x)[pos], w.matmul(pair)[0])


def test_batch_invariant_mode_is_per_thread_and_restored(weights):
    assert kernels.op_for_many() == kernels.MATVECN
    with kernels.batch_invariant():
        assert kernels.op_for_many() == kernels.MATVECR
        seen = []
        import threading
        t = threading.Thread(target=lambda: seen.append(kernels.op_for_many()))
        t.start()
        t.join()
        assert seen == [kernels.MATVECN]
    assert kernels.op_for_many() == kernels.MATVECN


def test_decode_attention_with_per_row_lengths_equals_attention_on_each_prefix():
    from npllm.ops.attention import _decode_attention_kernel, attention_ref
    from npllm.ops.rope import apply_rope_ref, rope_cos_sin

    rng = np.random.default_rng(0)
    N, H, Hkv, Dh, S_max = 5, 6, 2, 8, 16
    rows = np.array([3, 0, 4], np.int64)            # batch row b lives in cache row rows[b]
    lengths = np.array([9, 2, 13], np.int64)        # ... which holds lengths[b] positions
    B = len(rows)
    q, k, v = (rng.normal(size=(B, n * Dh)) for n in (H, Hkv, Hkv))
    cos, sin = rope_cos_sin(lengths[:, None], Dh, 10000.0, np.float64)
    kc, vc = rng.normal(size=(N, Hkv, S_max, Dh)), rng.normal(size=(N, Hkv, S_max, Dh))
    kc0, vc0 = kc.copy(), vc.copy()
    mask = np.ones((B, lengths.max() + 1), np.int64)
    out = np.empty_like(q)
    _decode_attention_kernel(q, k, v, cos, sin, kc, vc, rows, lengths, mask, out, Dh ** -0.5, 0.0, 0)
    for b, (r, n) in enumerate(zip(rows, lengths)):
        qb = apply_rope_ref(q[b].reshape(1, H, 1, Dh), cos[b:b + 1], sin[b:b + 1])
        kb = apply_rope_ref(k[b].reshape(1, Hkv, 1, Dh), cos[b:b + 1], sin[b:b + 1])
        keys = np.concatenate([kc0[r:r + 1, :, :n], kb], axis=2)
        vals = np.concatenate([vc0[r:r + 1, :, :n], v[b].reshape(1, Hkv, 1, Dh)], axis=2)
        want = attention_ref(qb, keys, vals, np.ones((1, 1, n + 1), bool)).reshape(H * Dh)
        assert np.allclose(out[b], want, atol=1e-12)
        assert np.allclose(kc[r, :, n], kb[0, :, 0]) and np.allclose(vc[r, :, n], v[b].reshape(Hkv, Dh))
    untouched = [i for i in range(N) if i not in rows]
    assert np.array_equal(kc[untouched], kc0[untouched])   # other slots' rows are never written
