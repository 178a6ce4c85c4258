"""Ops (lessons 02–04): kernel == NumPy reference == PyTorch, plus Hypothesis properties."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from npllm import _jit
from npllm.ops import attention, attention_ref, causal_padding_mask, layer_norm, rms_norm, softmax
from npllm.ops.attention import _attention_kernel, attention_blocked
from npllm.ops.mlp import swiglu, swiglu_ref
from npllm.ops.norm import layer_norm_ref, rms_norm_ref
from npllm.ops.rope import apply_rope, apply_rope_ref, rope_cos_sin
from npllm.ops.softmax import softmax_ref
from reference.model import rope as torch_rope
from reference.model import rotate_half

finite = st.floats(-30, 30, allow_nan=False, width=32)


def rows(max_rows=4, max_cols=50):
    return st.integers(1, max_rows).flatmap(
        lambda r: st.integers(1, max_cols).flatmap(
            lambda c: arrays(np.float64, (r, c), elements=finite)))


# --------------------------------------------------------------------------- softmax
@given(rows())
def test_softmax_sums_to_one(x):
    assert np.allclose(softmax(x).sum(-1), 1.0, atol=1e-12)


@given(rows(), st.floats(-100, 100))
def test_softmax_is_invariant_to_adding_a_constant(x, c):
    assert np.allclose(softmax(x), softmax(x + c), atol=1e-9)


@given(rows())
def test_softmax_kernel_equals_reference_and_torch(x):
    expected = torch.softmax(torch.from_numpy(x), -1).numpy()
    assert np.allclose(softmax(x), expected, atol=1e-12)
    assert np.allclose(softmax_ref(x), expected, atol=1e-12)


def test_softmax_of_a_row_with_one_finite_entry_is_one_hot():
    x = np.full((2, 5), -np.inf)
    x[0, 3] = 7.0
    out = softmax(x)
    assert out[0].tolist() == [0, 0, 0, 1, 0]
    assert np.all(out[1] == 0) and not np.isnan(out).any()  # all -inf: zeros, never NaN
    assert np.array_equal(softmax_ref(x), out)


# --------------------------------------------------------------------------- norms
@given(rows(), st.floats(0.01, 100))
def test_rms_norm_is_scale_invariant(x, scale):
    w = np.linspace(0.5, 1.5, x.shape[1])
    x = x + 0.5  # keep rows away from all-zero
    assert np.allclose(rms_norm(x * scale, w, 1e-12), rms_norm(x, w, 1e-12), atol=1e-6)


@given(rows())
def test_norm_kernels_equal_reference_and_torch(x):
    rng = np.random.default_rng(x.size)
    w, b = rng.normal(size=x.shape[1]), rng.normal(size=x.shape[1])
    tx = torch.from_numpy(x)
    t_rms = (tx * torch.rsqrt(tx.pow(2).mean(-1, keepdim=True) + 1e-5) * torch.from_numpy(w)).numpy()
    t_ln = F.layer_norm(tx, (x.shape[1],), torch.from_numpy(w), torch.from_numpy(b), 1e-5).numpy()
    assert np.allclose(rms_norm(x, w, 1e-5), t_rms, atol=1e-10)
    assert np.allclose(rms_norm_ref(x, w, 1e-5), t_rms, atol=1e-10)
    assert np.allclose(layer_norm(x, w, b, 1e-5), t_ln, atol=1e-9)
    assert np.allclose(layer_norm_ref(x, w, b, 1e-5), t_ln, atol=1e-9)


# --------------------------------------------------------------------------- SwiGLU
@given(rows(max_rows=40), rows(max_rows=40))
def test_swiglu_kernel_equals_reference_and_torch(g, u):
    # up to 15 rows: the fused Numba loop; 16 and more (prefill): in-place NumPy passes
    u = np.resize(u, g.shape)
    expected = (F.silu(torch.from_numpy(g)) * torch.from_numpy(u)).numpy()
    assert np.allclose(swiglu(g, u), expected, atol=1e-10)
    assert np.allclose(swiglu_ref(g, u), expected, atol=1e-10)


@given(rows(max_rows=20), st.integers(1, 3))
def test_fused_gate_up_swiglu_equals_torch(gu, dims):
    # [gate | up] as one array (the fused gate|up weight's output) -> silu(gate) * up
    from npllm.ops.mlp import swiglu_fused

    gu = np.concatenate([gu, gu[:, ::-1] * 0.5], axis=-1)                  # even last axis
    if dims == 3:
        gu = gu[None]
    half = gu.shape[-1] // 2
    expected = (F.silu(torch.from_numpy(gu[..., :half])) * torch.from_numpy(gu[..., half:])).numpy()
    assert np.allclose(swiglu_fused(gu), expected, atol=1e-10)
    got32 = swiglu_fused(gu.astype(np.float32))
    assert got32.dtype == np.float32
    assert np.allclose(got32, expected, rtol=1e-5, atol=1e-5 * (1 + np.abs(gu).max()))


def test_exp32_is_within_two_ulps_of_exp():
    # The vectorisable float32 exp (npllm/ops/fastexp.py) against float64 exp, rounded.
    from npllm._jit import njit
    from npllm.ops.fastexp import exp32

    @njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = exp32(x[i])

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-110, 88.72, 400_000), rng.uniform(-1, 1, 100_000),
                        [0.0, -0.0, 88.72283, -87.33, -103.9, 1e-30, -1e-30]]).astype(np.float32)
    got = np.empty_like(x)
    apply(x, got)
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(got - exact) <= 2 * ulp)
    special = np.array([np.nan, np.inf, -np.inf, 89.0, 1000.0, -104.0, -1000.0], np.float32)
    out = np.empty_like(special)
    apply(special, out)
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == 0.0
    assert np.all(out[3:5] == np.inf) and np.all(out[5:] == 0.0)
    assert exp32(np.float64(1.0)) == np.exp(1.0)                            # float64: NumPy's exp


def test_fp16_conversions_equal_numpy_on_every_bit_pattern_and_on_random_floats():
    # npllm/ops/half.py: h2f (fp16 bits -> float32) and to_elem (float32 -> fp16 bits, stored into
    # a uint16 view) against NumPy's astype, the reference: all 65,536 patterns one way; random
    # floats over 30 decades, every exact fp16 value, every midpoint (ties to even), overflow and
    # the subnormal range the other way.
    from npllm._jit import njit
    from npllm.ops.half import h2f, to_elem

    @njit
    def widen(u, out):
        for i in range(u.shape[0]):
            out[i] = h2f(u[i])

    @njit
    def narrow(x, u):
        for i in range(x.shape[0]):
            u[i] = to_elem(u, x[i])

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    ref = bits.view(np.float16).astype(np.float32)
    got = np.empty(65536, np.float32)
    widen(bits, got)
    nan = np.isnan(ref)
    assert np.isnan(got[nan]).all()
    assert np.array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))   # -0.0 included

    rng = np.random.default_rng(0)
    exact = ref[~nan & np.isfinite(ref)]
    exact = np.sort(exact[exact >= 0])
    x = np.concatenate([rng.standard_normal(200_000) * 10.0 ** rng.integers(-12, 7, 200_000),
                        exact, -exact, (exact[:-1] + exact[1:]) / 2, -(exact[:-1] + exact[1:]) / 2,
                        [65504.0, 65519.0, 65520.0, 1e6, np.inf, -np.inf, 2.0 ** -25, 2.0 ** -24 * 1.5]])
    x = x.astype(np.float32)
    u = np.empty(x.shape[0], np.uint16)
    narrow(x, u)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(u, expected)
    f = np.empty(3, np.float32)
    narrow(np.array([1.5, -2.0, 0.1], np.float32), f)                   # a float array: x itself
    assert f.tolist() == [1.5, -2.0, np.float32(0.1)]


def test_fp16_cache_store_and_widen_equal_numpy_casts(rng):
    # half.store / half.widen (KVCache.update's vectorised block copies) against NumPy's casts
    from npllm.ops import half

    buf = rng.normal(size=(2, 3, 20, 8)).astype(np.float16)
    expected = buf.copy()
    src = (rng.normal(size=(2, 3, 5, 8)) * 10.0 ** rng.integers(-6, 5, (2, 3, 5, 8))).astype(np.float32)
    expected[:, :, 7:12] = src
    half.store(buf, 7, src)
    assert np.array_equal(buf.view(np.uint16), expected.view(np.uint16))
    got = half.widen(buf, 12, np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, expected[:, :, :12].astype(np.float32))
    f32 = np.zeros((2, 3, 20, 8), np.float32)
    half.store(f32, 3, src)                                      # a float32 cache: a plain copy,
    assert np.array_equal(f32[:, :, 3:8], src)
    assert np.shares_memory(half.widen(f32, 8, np.float32), f32)  # and its positions as a view


# --------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("theta", [10000.0, 100000.0])
def test_rope_kernel_equals_reference_and_torch(rng, theta):
    B, H, T, Dh = 2, 3, 7, 16
    x = rng.normal(size=(B, H, T, Dh))
    pos = np.array([np.arange(T), np.arange(5, 5 + T)])
    cos, sin = rope_cos_sin(pos, Dh, theta, np.float64)
    tc, ts = torch_rope(torch.from_numpy(pos), Dh, theta, torch.float64)
    tx = torch.from_numpy(x)
    expected = (tx * tc[:, None] + rotate_half(tx) * ts[:, None]).numpy()
    assert np.allclose(apply_rope(x, cos, sin), expected, atol=1e-12)
    assert np.allclose(apply_rope_ref(x, cos, sin), expected, atol=1e-12)


def test_rope_preserves_norms_and_relative_positions(rng):
    # A rotation keeps |x|, and q·k depends only on the position difference.
    Dh = 8
    q, k = rng.normal(size=(1, 1, 1, Dh)), rng.normal(size=(1, 1, 1, Dh))

    def rot(x, p):
        c, s = rope_cos_sin(np.array([[p]]), Dh, 10000.0, np.float64)
        return apply_rope(x, c, s)

    assert np.isclose(np.linalg.norm(rot(q, 13)), np.linalg.norm(q))
    d1 = (rot(q, 10) * rot(k, 7)).sum()
    d2 = (rot(q, 23) * rot(k, 20)).sum()
    assert np.isclose(d1, d2)


# --------------------------------------------------------------------------- attention
def torch_attention(q, k, v, allowed):
    G = q.shape[1] // k.shape[1]
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    tk, tv = tk.repeat_interleave(G, 1), tv.repeat_interleave(G, 1)
    mask = torch.from_numpy(allowed)[:, None]
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
    return out.nan_to_num(0.0).numpy()


@pytest.mark.parametrize("H,Hkv", [(4, 4), (8, 2), (9, 3), (4, 1)])  # MHA, GQA, GQA, MQA
@pytest.mark.parametrize("T,past", [(6, 0), (1, 5), (3, 4)])
def test_attention_kernel_equals_reference_and_torch(rng, H, Hkv, T, past):
    B, Dh = 2, 8
    S = past + T
    q = rng.normal(size=(B, H, T, Dh))
    k, v = rng.normal(size=(B, Hkv, S, Dh)), rng.normal(size=(B, Hkv, S, Dh))
    mask = np.ones((B, S), np.int64)
    mask[1, :2] = 0  # left padding in row 1
    allowed = causal_padding_mask(mask, past, T)
    expected = torch_attention(q, k, v, allowed)
    ref = attention_ref(q, k, v, allowed)
    ker = np.empty_like(q)
    _attention_kernel(q, k, v, allowed, ker, 1 / np.sqrt(Dh), 0.0)
    assert np.allclose(ref, expected, atol=1e-12)
    assert np.allclose(ker, expected, atol=1e-12)
    assert np.allclose(attention(q, k, v, allowed), expected, atol=1e-12)


@pytest.mark.parametrize("H,Hkv", [(4, 4), (9, 3), (4, 1)])
@pytest.mark.parametrize("T,past,block", [(40, 0, 16), (37, 5, 8), (20, 0, 96)])
def test_blocked_prefill_attention_equals_torch(rng, H, Hkv, T, past, block):
    # Prefill path (T > 16): blocks of queries see only the keys they may; left padding in
    # row 1 makes its first queries fully masked (torch's NaN rows are zeros in npllm).
    B, Dh = 2, 8
    S = past + T
    q = rng.normal(size=(B, H, T, Dh))
    k, v = rng.normal(size=(B, Hkv, S, Dh)), rng.normal(size=(B, Hkv, S, Dh))
    mask = np.ones((B, S), np.int64)
    mask[1, :past + 11] = 0
    allowed = causal_padding_mask(mask, past, T)
    expected = torch_attention(q, k, v, allowed)
    assert np.allclose(attention_blocked(q, k, v, allowed, block=block), expected, atol=1e-12)
    assert np.allclose(attention(q, k, v, allowed), expected, atol=1e-12)
    q32, k32, v32 = (a.astype(np.float32) for a in (q, k, v))
    assert np.abs(attention(q32, k32, v32, allowed) - expected).max() < 1e-5


def torch_eager_attention(q, k, v, allowed, scale, softcap):
    """HF's eager attention (Gemma 2): scores * scale, softcap before the mask, softmax, @ v."""
    G = q.shape[1] // k.shape[1]
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    tk, tv = tk.repeat_interleave(G, 1), tv.repeat_interleave(G, 1)
    scores = tq @ tk.transpose(-1, -2) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~torch.from_numpy(allowed)[:, None], float("-inf"))
    return (torch.softmax(scores, -1).nan_to_num(0.0) @ tv).numpy()


@pytest.mark.parametrize("T,past", [(6, 0), (1, 9), (30, 4)])      # kernel, decode-like, blocked prefill
@pytest.mark.parametrize("window", [None, 1, 3, 7])
@pytest.mark.parametrize("scale,softcap", [(None, None), (0.7, None), (None, 1.5), (0.3, 0.8)])
def test_attention_scale_softcap_and_window_equal_torch(rng, T, past, window, scale, softcap):
    # Gemma's knobs: another scale, tanh softcapping before the mask, and a sliding window
    # (query i sees keys j with i - W < j <= i, by cache position; HF's sliding_window_overlay).
    B, H, Hkv, Dh = 2, 4, 2, 8
    S = past + T
    q = rng.normal(size=(B, H, T, Dh)) * 2
    k, v = rng.normal(size=(B, Hkv, S, Dh)), rng.normal(size=(B, Hkv, S, Dh))
    mask = np.ones((B, S), np.int64)
    mask[1, :3] = 0
    allowed = causal_padding_mask(mask, past, T, window)
    qi, kj = past + np.arange(T)[:, None], np.arange(S)[None]
    by_hand = (kj <= qi) & (kj > qi - (window or S + T)) & (mask[:, None, :] != 0)
    assert (allowed == by_hand).all()
    expected = torch_eager_attention(q, k, v, allowed, scale or Dh ** -0.5, softcap)
    assert np.allclose(attention_ref(q, k, v, allowed, scale, softcap), expected, atol=1e-12)
    assert np.allclose(attention(q, k, v, allowed, scale, softcap), expected, atol=1e-12)
    assert np.allclose(attention_blocked(q, k, v, allowed, block=8, scale=scale, softcap=softcap), expected,
                       atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_blocked_attention_equals_reference_on_any_mask(T, block, seed):
    # Arbitrary (not only causal) masks, including rows and whole blocks with no visible key.
    rng = np.random.default_rng(seed)
    B, H, Hkv, Dh, S = 2, 4, 2, 4, T + int(rng.integers(0, 4))
    q = rng.normal(size=(B, H, T, Dh))
    k, v = rng.normal(size=(B, Hkv, S, Dh)), rng.normal(size=(B, Hkv, S, Dh))
    allowed = rng.random((B, T, S)) < rng.choice([0.0, 0.1, 0.5, 1.0])
    assert np.allclose(attention_blocked(q, k, v, allowed, block=block),
                       attention_ref(q, k, v, allowed), atol=1e-12)


def test_causal_mask_blocks_the_future_and_padding():
    allowed = causal_padding_mask(np.array([[0, 1, 1, 1]]), past_len=1, T=3)
    assert allowed.shape == (1, 3, 4)
    assert allowed[0].tolist() == [[False, True, False, False],
                                   [False, True, True, False],
                                   [False, True, True, True]]


@given(st.integers(0, 5), st.integers(0, 1000))
def test_attention_output_ignores_future_keys(t, seed):
    # Changing keys/values after position t leaves outputs at positions <= t unchanged.
    rng = np.random.default_rng(seed)
    B, H, Hkv, T, Dh = 1, 4, 2, 6, 4
    q = rng.normal(size=(B, H, T, Dh))
    k, v = rng.normal(size=(B, Hkv, T, Dh)), rng.normal(size=(B, Hkv, T, Dh))
    allowed = causal_padding_mask(np.ones((B, T), np.int64), 0, T)
    out1 = attention(q, k, v, allowed)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, t + 1:] += 5.0
    v2[:, :, t + 1:] -= 3.0
    out2 = attention(q, k2, v2, allowed)
    assert np.allclose(out1[:, :, :t + 1], out2[:, :, :t + 1], atol=1e-12)


def test_reference_mode_switch_routes_to_ref(rng, monkeypatch):
    x = rng.normal(size=(3, 10))
    _jit.use_reference(True)
    try:
        assert np.array_equal(softmax(x), softmax_ref(x))
    finally:
        _jit.use_reference(False)
