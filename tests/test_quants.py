"""GGUF tensor types: reference dequantizers vs the gguf package, kernels vs the references.

The expected values come from ``gguf.quants.dequantize`` (the gguf package, an independent
implementation) and from NumPy's ``x @ W.T`` on those dequantized weights.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf")

from npllm import _jit  # noqa: E402
from npllm.errors import ModelFormatError  # noqa: E402
from npllm.quant import weight as quants  # noqa: E402
from npllm.quant.blocks32 import _PLANES as BLOCKS32_PLANES, from_planes, to_planes  # noqa: E402
from npllm.quant.weight import (  # noqa: E402
    BF16, F16, F32, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, QuantizedWeight,
    as_array_or_quantized, dequantize, dequantize_ref,
)

BLOCK32_TYPES = [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL]
SUPER_BLOCK_TYPES = [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS]
ALL_TYPES = [F32, F16, BF16] + BLOCK32_TYPES + SUPER_BLOCK_TYPES
# where the f16 scales sit in a block (byte offsets), for random-byte blocks
SCALE_FIELDS = {Q8_0: [0], Q4_0: [0], Q4_1: [0, 2], Q5_0: [0], Q5_1: [0, 2], IQ4_NL: [0],
                Q2_K: [80, 82], Q3_K: [108], Q4_K: [0, 2], Q5_K: [0, 2], Q6_K: [208], IQ4_XS: [0]}


def name(t):
    return quants.type_name(t)


def quantized_by_gguf(t, rows, cols, rng):
    """Random normal weights quantized by the gguf package (None if it cannot quantize t)."""
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    try:
        raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType(t))
    except NotImplementedError:
        return None
    return np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)


def random_blocks(t, rows, cols, rng):
    """Random bytes (every bit pattern of the quants) with sane finite fp16 scales."""
    per_block, block_bytes = quants.BLOCK_LAYOUT[t]
    raw = rng.integers(0, 256, (rows, cols // per_block * block_bytes), dtype=np.uint8)
    blocks = raw.reshape(-1, block_bytes)
    for off in SCALE_FIELDS[t]:
        scales = (rng.uniform(0.5, 2.0, len(blocks)) * rng.choice([-1, 1], len(blocks)) * 1e-2).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw


def sample(t, rows, cols, rng, kind="quantize"):
    raw = quantized_by_gguf(t, rows, cols, rng) if kind == "quantize" else None
    return raw if raw is not None else random_blocks(t, rows, cols, rng)


def gguf_dequant(raw, t, rows, cols):
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(t)).reshape(rows, cols).astype(np.float32)


def assert_matmul_close(y, x, w):
    # fp32 summation-order differences only: |err| <= 1e-5 * sum_j |x_j| |w_rj|
    bound = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)) + 1e-6
    err = np.abs(y.astype(np.float64) - x.astype(np.float64) @ w.T.astype(np.float64))
    assert err.shape == bound.shape
    assert np.all(err <= bound), f"max err {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


def cols_for(t):
    if t in SUPER_BLOCK_TYPES:
        return 512  # 2 super-blocks of 256
    return {F32: 75, F16: 75, BF16: 75}.get(t, 96)  # 96 = 3 blocks of 32


# ---------------------------------------------------------------------------
# Reference dequantizers vs the gguf package
# ---------------------------------------------------------------------------


# Float types have no scale fields (random bytes would be NaNs), so they only take the "quantize" case.
CASES = [(t, kind) for kind in ("quantize", "random") for t in ALL_TYPES
         if not (kind == "random" and t in (F32, F16, BF16))]


@pytest.mark.parametrize("t,kind", CASES, ids=[f"{name(t)}-{k}" for t, k in CASES])
def test_reference_dequantizer_matches_gguf_package(t, kind):
    rng = np.random.default_rng(t)
    rows, cols = 37, cols_for(t)
    raw = sample(t, rows, cols, rng, kind)
    expected = gguf_dequant(raw, t, rows, cols)
    got = dequantize_ref(raw, t, (rows, cols))
    assert got.dtype == np.float32 and got.shape == (rows, cols)
    np.testing.assert_array_equal(got, expected)
    # the flat byte layout works too
    np.testing.assert_array_equal(dequantize_ref(raw.reshape(-1), t, (rows, cols)), expected)


def test_reference_dequantizer_accepts_typed_arrays_as_gguf_reader_gives_them():
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(dequantize_ref(w32, F32, (5, 7)), w32)
    w16 = w32.astype(np.float16)
    np.testing.assert_array_equal(dequantize_ref(w16, F16, (5, 7)), w16.astype(np.float32))
    bf = gguf.quants.quantize(w32, gguf.GGMLQuantizationType.BF16)  # uint8 [5, 14]
    expected = gguf_dequant(bf, BF16, 5, 7)
    np.testing.assert_array_equal(dequantize_ref(bf.view(np.uint16), BF16, (5, 7)), expected)
    np.testing.assert_array_equal(dequantize_ref(bf, BF16, (5, 7)), expected)


# ---------------------------------------------------------------------------
# Kernels vs references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", ALL_TYPES, ids=name)
def test_kernel_dequantize_matches_reference(t):
    rng = np.random.default_rng(100 + t)
    rows, cols = 37, cols_for(t)
    for kind in ("quantize",) if t in (F32, F16, BF16) else ("quantize", "random"):
        raw = sample(t, rows, cols, rng, kind)
        ref = dequantize_ref(raw, t, (rows, cols))
        w = QuantizedWeight.from_raw(raw, t, (rows, cols))
        # fused multiply-add may round d*q+m once instead of twice: 1e-6 of the largest weight
        np.testing.assert_allclose(w.dequantize(), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
        np.testing.assert_allclose(dequantize(raw, t, (rows, cols)), ref, rtol=0, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("n", [1, 3, 8, 40])
@pytest.mark.parametrize("t", ALL_TYPES, ids=name)
def test_kernel_matmul_matches_dequantized_matmul(t, n, monkeypatch):
    monkeypatch.setattr(quants, "TILE_BYTES", 16 * 4 * cols_for(t))  # prefill: tiles of 16, 16, 5 rows
    rng = np.random.default_rng(1000 * n + t)
    rows, cols = 37, cols_for(t)
    raw = sample(t, rows, cols, rng, "random" if t not in (F32, F16, BF16) else "quantize")
    w_ref = gguf_dequant(raw, t, rows, cols)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    y = QuantizedWeight.from_raw(raw, t, (rows, cols)).matmul(x)
    assert y.shape == (n, rows) and y.dtype == np.float32
    assert_matmul_close(y, x, w_ref)


@settings(max_examples=60, deadline=None)
@given(t=st.sampled_from(BLOCK32_TYPES + SUPER_BLOCK_TYPES), rows=st.integers(1, 70), n_blocks=st.integers(1, 9),
       n=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_matmul_property_any_shape(t, rows, n_blocks, n, seed):
    rng = np.random.default_rng(seed)
    cols = quants.BLOCK_LAYOUT[t][0] * n_blocks
    raw = random_blocks(t, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    assert_matmul_close(QuantizedWeight.from_raw(raw, t, (rows, cols)).matmul(x), x, gguf_dequant(raw, t, rows, cols))


_LOOKUP_SNIPPET = """
import numpy as np
from numba import njit
from npllm.quant import simd
from npllm.quant.formats import IQ4_VALUES

@njit
def lookup(b, out):
    p, o = simd.addr(b), simd.addr(out)
    for i in range(0, b.size, 8):
        simd.vstore(o, i, simd.viq4lo(p, i))
        simd.vstore(o, b.size + i, simd.viq4hi(p, i))

b = np.arange(256, dtype=np.uint8)
out = np.zeros(512, np.float32)
lookup(b, out)
table = np.array(IQ4_VALUES, np.float32)
assert np.array_equal(out, np.concatenate([table[b & 15], table[b >> 4]])), out
print("pshufb" if simd._PSHUFB else "portable")
"""


@pytest.mark.skipif(quants._JIT_DISABLED, reason="the intrinsics need the JIT")
@pytest.mark.parametrize("portable", ["0", "1"])
def test_iq4_codebook_lookup_in_both_lowerings(portable, tmp_path):
    # viq4lo / viq4hi are one pshufb on x86 and 8 scalar lookups elsewhere; both must give
    # IQ4_VALUES[nibble] for every byte.  A fresh process (and cache) per lowering.
    import os
    import subprocess
    import sys

    env = dict(os.environ, NPLLM_PORTABLE_SIMD=portable, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", _LOOKUP_SNIPPET], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if portable == "1":
        assert proc.stdout.strip() == "portable"


def test_matmul_vector_input_and_out_buffer():
    rng = np.random.default_rng(5)
    raw = random_blocks(Q4_1, 33, 64, rng)
    w = QuantizedWeight.from_raw(raw, Q4_1, (33, 64))
    x = rng.standard_normal(64).astype(np.float32)
    y = w.matmul(x)
    assert y.shape == (33,)
    out = np.full((1, 33), np.nan, np.float32)
    assert w.matmul(x[None], out=out) is out
    np.testing.assert_array_equal(out[0], y)
    with pytest.raises(ValueError, match="out"):
        w.matmul(x[None], out=np.empty((1, 32), np.float32))
    with pytest.raises(ValueError, match="64"):
        w.matmul(np.ones((2, 63), np.float32))
    assert w.matmul(np.ones((0, 64), np.float32)).shape == (0, 33)
    # float64 or strided inputs are converted
    x64 = rng.standard_normal((3, 128))[:, ::2]
    np.testing.assert_allclose(w.matmul(x64), w.matmul(np.ascontiguousarray(x64, np.float32)), rtol=1e-6)


def test_reference_mode_uses_numpy_dequantization():
    rng = np.random.default_rng(6)
    raw = random_blocks(Q8_0, 9, 64, rng)
    w = QuantizedWeight.from_raw(raw, Q8_0, (9, 64))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    _jit.use_reference(True)
    try:
        y = w.matmul(x)
        d = w.dequantize()
    finally:
        _jit.use_reference(False)
    ref = gguf_dequant(raw, Q8_0, 9, 64)
    np.testing.assert_array_equal(d, ref)
    np.testing.assert_allclose(y, x @ ref.T, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# QuantizedWeight: construction, rows, errors
# ---------------------------------------------------------------------------


def test_quantized_weight_properties_and_raw_round_trip():
    rng = np.random.default_rng(7)
    for t in BLOCK32_TYPES + SUPER_BLOCK_TYPES:
        cols = cols_for(t)
        raw = sample(t, 11, cols, rng, "random")
        w = QuantizedWeight.from_raw(raw, t)  # shape inferred from [rows, row_bytes]
        assert w.shape == (11, cols) and w.ggml_type == t and w.type_name == name(t)
        assert w.nbytes == raw.nbytes  # stays quantized: no fp32 copy
        np.testing.assert_array_equal(w.raw(), raw)


def test_take_rows_is_an_embedding_lookup():
    rng = np.random.default_rng(8)
    raw = sample(Q8_0, 50, 64, rng)
    w = QuantizedWeight.from_raw(raw, Q8_0, (50, 64))
    ref = gguf_dequant(raw, Q8_0, 50, 64)
    ids = np.array([[3, 49, 0], [3, 7, 7]])
    np.testing.assert_array_equal(w.take_rows(ids), ref[ids])
    with pytest.raises(ValueError, match="ids"):
        w.take_rows([50])


def test_permute_rows_and_concat_rows():
    rng = np.random.default_rng(9)
    a = QuantizedWeight.from_raw(random_blocks(Q4_1, 12, 64, rng), Q4_1, (12, 64))
    b = QuantizedWeight.from_raw(random_blocks(Q4_1, 5, 64, rng), Q4_1, (5, 64))
    perm = rng.permutation(12)
    np.testing.assert_array_equal(a.permute_rows(perm).dequantize(), a.dequantize()[perm])
    with pytest.raises(ValueError, match="permutation"):
        a.permute_rows([0] * 12)
    ab = QuantizedWeight.concat_rows([a, b])
    assert ab.shape == (17, 64)
    np.testing.assert_array_equal(ab.dequantize(), np.concatenate([a.dequantize(), b.dequantize()]))
    x = rng.standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(ab.matmul(x), np.concatenate([a.matmul(x), b.matmul(x)], axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="one type"):
        QuantizedWeight.concat_rows([a, QuantizedWeight.from_raw(random_blocks(Q8_0, 2, 64, rng), Q8_0, (2, 64))])


@pytest.mark.parametrize("t", [Q4_1, Q8_0, Q5_1, Q6_K, IQ4_XS, F16], ids=name)
def test_fuse_rows_gives_views_and_the_same_products(t):
    # decode's fused q|k|v: one weight whose row views equal the parts, computing each row as
    # the separate weights do (the expected values: gguf's dequantization and NumPy)
    from npllm.ops.linear import fuse_rows

    rng = np.random.default_rng(3)
    cols = cols_for(t)
    raws = [sample(t, r, cols, rng) for r in (6, 2, 2)]
    parts = [QuantizedWeight.from_raw(raw, t, (raw.shape[0], cols)) for raw in raws]
    bias = [rng.standard_normal(6).astype(np.float32), None, np.ones(2, np.float32)]
    fused, fused_bias, views = fuse_rows(parts, bias)
    dense = np.concatenate([gguf_dequant(raw, t, raw.shape[0], cols) for raw in raws])
    assert fused.shape == (10, cols)
    np.testing.assert_array_equal(fused.dequantize(), dense)
    np.testing.assert_array_equal(fused_bias, np.concatenate([bias[0], np.zeros(2), bias[2]]))
    for view, raw in zip(views, raws):
        np.testing.assert_array_equal(view.dequantize(), gguf_dequant(raw, t, raw.shape[0], cols))
        assert all(np.shares_memory(a, b) for a, b in zip(view._planes, fused._planes) if a.size)
    for n in (1, 3):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        assert_matmul_close(fused.matmul(x), x, dense)
    # dense float weights fuse too; mixed kinds, types or widths do not
    a, b = rng.standard_normal((4, 8)), rng.standard_normal((3, 8))
    f, fb, (va, vb) = fuse_rows([a, b])
    np.testing.assert_array_equal(f, np.vstack([a, b]))
    assert fb is None and np.shares_memory(va, f) and np.array_equal(vb, b)
    assert fuse_rows([a, rng.standard_normal((3, 9))]) is None
    assert fuse_rows([parts[0], a[:, :cols]]) is None
    other = QuantizedWeight.from_raw(sample(Q4_0, 2, 96, rng), Q4_0, (2, 96))
    assert fuse_rows([QuantizedWeight.from_raw(sample(Q4_1, 2, 96, rng), Q4_1, (2, 96)), other]) is None
    with pytest.raises(ValueError, match="row_slice"):
        fused.row_slice(4, 11)


@pytest.mark.parametrize("t,type_name", [(17, "IQ2_XS"), (16, "IQ2_XXS"), (34, "TQ1_0"), (123, "type 123")])
def test_unsupported_type_is_named(t, type_name):
    with pytest.raises(ModelFormatError, match=type_name):
        dequantize(np.zeros((1, 66), np.uint8), t, (1, 256))
    with pytest.raises(ModelFormatError, match=type_name):
        QuantizedWeight.from_raw(np.zeros((1, 66), np.uint8), t, (1, 256))


def test_bytes_that_do_not_match_the_shape_are_refused():
    with pytest.raises(ModelFormatError, match="Q4_1.*20 bytes|20 bytes"):
        dequantize(np.zeros((3, 40), np.uint8), Q4_1, (3, 32))  # 3 rows of 32 need 20 bytes each
    with pytest.raises(ModelFormatError, match="multiple of the Q8_0 block size 32"):
        dequantize(np.zeros((3, 34), np.uint8), Q8_0, (3, 31))
    with pytest.raises(ModelFormatError, match="needs 60 bytes"):
        dequantize(np.zeros(59, np.uint8), Q4_1, (3, 32))


def test_as_array_or_quantized():
    rng = np.random.default_rng(10)
    w16 = rng.standard_normal((4, 8)).astype(np.float16)
    dense = as_array_or_quantized(w16, F16, (4, 8))
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float32
    np.testing.assert_array_equal(dense, w16.astype(np.float32))
    q = as_array_or_quantized(random_blocks(Q4_1, 4, 32, rng), Q4_1, (4, 32))
    assert isinstance(q, QuantizedWeight) and q.shape == (4, 32)


# ---------------------------------------------------------------------------
# The default model's tensors
# ---------------------------------------------------------------------------


def test_default_model_tensors_match_gguf_package(smollm2_gguf):
    from npllm.io.gguf import read_gguf  # parses the file once per session (GGUFReader takes seconds)

    tensors = read_gguf(smollm2_gguf).tensors
    for key, n_rows in [("model.layers.0.self_attn.v_proj.weight", None), ("model.layers.0.mlp.down_proj.weight", None),
                        ("model.embed_tokens.weight", 300)]:
        t = tensors[key]
        data = t.data if n_rows is None else t.data[:n_rows]
        rows, cols = data.shape[0], t.shape[1]
        ref = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(t.ggml_type)).reshape(rows, cols)
        w = QuantizedWeight.from_raw(data, t.ggml_type, (rows, cols))
        assert w.type_name == ("Q8_0" if "embed" in key else "Q4_1")
        np.testing.assert_allclose(w.dequantize(), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
        x = np.random.default_rng(0).standard_normal((1, cols)).astype(np.float32)
        assert_matmul_close(w.matmul(x), x, ref)


def test_read_only_memory_mapped_rows_share_the_compiled_kernel():
    # GGUFReader hands out read-only memory maps; K-quant and dense rows are used in place
    from npllm.quant import kernels as quant_kernels

    rng = np.random.default_rng(11)
    raw = random_blocks(Q4_K, 5, 256, rng)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    QuantizedWeight.from_raw(raw, Q4_K, (5, 256)).matmul(x)  # compiled for writable planes
    before = set(quant_kernels._run.signatures)
    frozen = raw.copy()
    frozen.setflags(write=False)
    w = QuantizedWeight.from_raw(frozen, Q4_K, (5, 256))
    assert_matmul_close(w.matmul(x), x, gguf_dequant(raw, Q4_K, 5, 256))
    assert set(quant_kernels._run.signatures) == before


@settings(max_examples=60, deadline=None)
@given(t=st.sampled_from(sorted(BLOCKS32_PLANES)), rows=st.integers(1, 9), nb=st.integers(1, 7),
       step=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_planes_split_each_block_into_its_fields_and_back(t, rows, nb, step, seed):
    # step > 1: rows of a strided view (not C-contiguous), which takes the copying fallback
    bb = quants.BLOCK_LAYOUT[t][1]
    raw = np.random.default_rng(seed).integers(0, 256, (rows * step, nb * bb), dtype=np.uint8)[::step]
    q, s1, s2 = to_planes(raw, t)
    blocks = raw.reshape(rows, nb, bb)
    (q0, q1), (a0, a1), rest = BLOCKS32_PLANES[t]
    assert np.array_equal(q, blocks[:, :, q0:q1].reshape(rows, -1))
    assert np.array_equal(s1, blocks[:, :, a0:a1].reshape(rows, -1))
    expected = [blocks[:, :, a:b].reshape(rows, -1) for a, b in rest]
    assert np.array_equal(s2, np.concatenate(expected, axis=1) if expected else np.empty((rows, 0), np.uint8))
    assert np.array_equal(from_planes((q, s1, s2), t), raw)
