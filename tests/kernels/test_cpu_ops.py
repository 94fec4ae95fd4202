"""kernels/cpu/op_kernels.py (compiled small operators) against the NumPy reference path of kernels/ops.py, which
tests/kernels/test_ops.py checks against PyTorch."""
import numpy as np
import pytest

from kernels import cpu, ops
from kernels.device import Device

pytestmark = pytest.mark.skipif(not cpu.available, reason="numba kernels unavailable (ENGINE_KERNELS=numpy)")
rng = np.random.default_rng(0)


COMPILED, REFERENCE = Device(kernels="numba"), Device(kernels="numpy")


def both(monkeypatch, fn, *args, **kwargs):
    """(compiled result, NumPy reference result) of one ops call."""
    return fn(*args, dev=COMPILED, **kwargs), fn(*args, dev=REFERENCE, **kwargs)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 576), (5, 64), (3, 4, 128)])
def test_rms_norm(monkeypatch, shape):
    x, w = f32(*shape, scale=3.0), f32(shape[-1])
    fast, slow = both(monkeypatch, ops.rms_norm, x, w, 1e-5)
    np.testing.assert_allclose(fast, slow, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope(monkeypatch, interleaved):
    x = f32(3, 4, 64)
    cos, sin = ops.rope_cos_sin(np.array([0, 7, 300]), ops.rope_inv_freq(64, 10000.0))
    fast, slow = both(monkeypatch, ops.rope, x, cos, sin, interleaved)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)


def test_vector_exp_is_within_an_ulp_of_exp():
    """op_kernels._exp (a polynomial that vectorizes) against NumPy's exp in float64, over float32's range."""
    from numba import njit

    from kernels.cpu.op_kernels import _exp

    @njit
    def exps(x, out):
        for i in range(x.shape[0]):
            out[i] = _exp(x[i])

    x = np.concatenate([rng.uniform(-87.3, 88.3, 200_000), rng.uniform(-1, 1, 10_000), [0.0, -1e-30]])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    exps(x, out)
    exact = np.exp(x.astype(np.float64))
    assert (np.abs(out - exact) / exact).max() < 1.5 * 2.0 ** -24  # float32's half-ulp is 2^-24 relative
    exps(np.array([-np.inf, -200.0, 200.0], np.float32), out[:3])
    assert 0 < out[0] < 1.2e-38 and out[1] == out[0] and 1e38 < out[2] < np.inf  # clamped, never inf or nan


def test_swiglu(monkeypatch):
    gate, up = f32(2, 300, scale=20.0), f32(2, 300)  # large |gate|: exp over- and underflow
    fast, slow = both(monkeypatch, ops.swiglu, gate, up)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [None, 1, 5, 64])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
def test_decode_attention_on_a_whole_cache_layer(monkeypatch, window, heads, kv_heads):
    s, s_max, dh = 23, 40, 32
    k, v = f32(kv_heads, s_max, dh), f32(kv_heads, s_max, dh)
    k[:, s:], v[:, s:] = np.nan, np.nan  # positions past the query are never read
    q = f32(1, heads, dh, scale=2.0)
    fast, slow = both(monkeypatch, ops.attention, q, k, v, s - 1, window, 0.3)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
    exact = ops.attention(q, np.ascontiguousarray(k[:, :s]), np.ascontiguousarray(v[:, :s]), s - 1, window, 0.3)
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-6)
    assert np.isfinite(fast).all()


def test_attention_of_strided_views_takes_the_reference_path(monkeypatch):
    k = f32(9, 2, 16).transpose(1, 0, 2)  # not C-contiguous
    v, q = f32(2, 9, 16), f32(1, 2, 16)
    fast, slow = both(monkeypatch, ops.attention, q, k, v, 8)
    np.testing.assert_array_equal(fast, slow)


def test_attention_rejects_a_cache_shorter_than_the_positions():
    with pytest.raises(ValueError, match="cache holds 5"):
        ops.attention(f32(1, 2, 16), f32(2, 5, 16), f32(2, 5, 16), 5)


@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_decode_attention_batch_stores_and_attends_per_sequence(monkeypatch, window, heads, kv_heads):
    """Three sequences of different cache sizes and lengths, layer 1 of 2: each new key/value lands at its own
    position and each query sees only its own cache, as the reference (store, then ops.attention) does."""
    dh, starts = 16, [0, 6, 12]
    caches = [(f32(2, kv_heads, s_max, dh), f32(2, kv_heads, s_max, dh)) for s_max in (3, 7, 20)]
    for (ck, cv), start in zip(caches, starts):
        ck[:, :, start:], cv[:, :, start:] = np.nan, np.nan  # positions not yet stored are never read
    q, k, v = f32(3, heads, dh, scale=2.0), f32(3, kv_heads, dh), f32(3, kv_heads, dh)
    copies = [(ck.copy(), cv.copy()) for ck, cv in caches]
    fast_batch = ops.DecodeBatch([ck for ck, _ in caches], [cv for _, cv in caches], starts, dev=COMPILED)
    assert fast_batch.cpu_args is not None
    fast = ops.decode_attention_batch(q, k, v, fast_batch, 1, window, 0.3)
    slow_batch = ops.DecodeBatch([ck for ck, _ in copies], [cv for _, cv in copies], starts, dev=REFERENCE)
    assert slow_batch.cpu_args is None
    slow = ops.decode_attention_batch(q, k, v, slow_batch, 1, window, 0.3)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
    for b, ((ck, cv), (rk, rv), start) in enumerate(zip(caches, copies, starts)):
        np.testing.assert_array_equal(ck[1, :, start], k[b])
        np.testing.assert_array_equal(cv[1, :, start], v[b])
        np.testing.assert_array_equal(ck, rk)
        assert np.isnan(ck[0, :, start]).all()  # layer 0 untouched
    assert np.isfinite(fast).all()


def test_decode_attention_batch_rejects_a_full_cache():
    ck = [f32(1, 2, 4, 16)]
    with pytest.raises(ValueError, match="past the cache's 4 positions"):
        ops.DecodeBatch(ck, ck, [4])
