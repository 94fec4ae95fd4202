"""kernels/cpu (numba) against gguf-py dequantization + NumPy matmul, for every type, thread count and shape."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

from kernels import cpu, ops
from kernels.device import Device
from kernels.cpu import quant_kernels
from kernels.qtensor import QTensor
from kernels.quants import SUPPORTED, GGMLType
from quant_blocks import K_QUANTS, make_blocks

TYPES = sorted(SUPPORTED - {GGMLType.F32})
pytestmark = pytest.mark.skipif(not cpu.available, reason="numba kernels unavailable (ENGINE_KERNELS=numpy)")


def reference(t, raw):
    return gq.dequantize(np.ascontiguousarray(raw), GQ(int(t)))


def weights(t, n, k, seed=0):
    raw = make_blocks(t, n, k, np.random.default_rng(seed + int(t)))
    return QTensor(raw, t, (n, k)), reference(t, raw).reshape(n, k)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize_rows_bit_exact(t, threads):
    w, ref = weights(t, 7, 512 if t in K_QUANTS else 96)
    out = np.empty(ref.shape, np.float32)
    quant_kernels.dequantize_rows(int(t))(w.raw, out)
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("T", [1, 3, 8, 12, 16, 17])
@pytest.mark.parametrize("n", [1, 5, 67])
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_matmul_transb_matches_dequantized_reference(t, n, T, threads):
    k = 512 if t in K_QUANTS else 160
    w, ref = weights(t, n, k)
    x = np.random.default_rng(T).standard_normal((T, k)).astype(np.float32)
    expected = x.astype(np.float64) @ ref.T.astype(np.float64)
    got = cpu.matmul_transb(x, w)
    scale = np.abs(x).astype(np.float64) @ np.abs(ref).T.astype(np.float64)  # bound on rounding growth
    assert got.shape == (T, n) and got.dtype == np.float32
    assert np.all(np.abs(got - expected) <= 1e-5 * scale + 1e-30)


def test_prefill_uses_several_tiles(monkeypatch):
    monkeypatch.setattr(cpu, "TILE_BYTES", 3 * 256 * 4)  # 3 rows per tile, so 67 rows need 23 tiles
    w, ref = weights(GGMLType.Q4_K, 67, 256)
    x = np.random.default_rng(0).standard_normal((cpu.FUSED_MAX_T_K_QUANTS + 1, 256)).astype(np.float32)
    expected = x.astype(np.float64) @ ref.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(ref).T.astype(np.float64)
    assert np.all(np.abs(cpu.matmul_transb(x, w) - expected) <= 1e-5 * scale + 1e-30)


def test_ops_dispatches_to_the_fast_path_and_the_reference_agrees(monkeypatch):
    w, ref = weights(GGMLType.Q6_K, 9, 256)
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    compiled, reference = Device(kernels="numba"), Device(kernels="numpy")
    calls = []
    fused = cpu.matmul_transb_many
    monkeypatch.setattr(cpu, "matmul_transb_many", lambda *a, **k: (calls.append(1), fused(*a, **k))[1])
    fast = ops.matmul_transb(x, w, compiled)
    assert calls  # the compiled path ran
    calls.clear()
    slow = ops.matmul_transb(x, w, reference)
    assert not calls  # the NumPy reference ran
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-4)
    ids = np.array([0, 8, 3])
    np.testing.assert_array_equal(ops.embedding(ids, w, reference), ref[ids])
    np.testing.assert_array_equal(ops.embedding(ids, w, compiled), ref[ids])


@pytest.mark.parametrize("T", [1, 2, 5])
def test_fused_launch_over_several_matrices_and_tokens(T, threads):
    """q/k/v-style: matrices of different types and row counts sharing x, one token or a few (a decode batch);
    one launch per type, so a type's matrices need not be neighbours in the list."""
    ws = [weights(t, n, 512, seed) for seed, (t, n) in enumerate(
        ((GGMLType.Q4_K, 7), (GGMLType.Q6_K, 33), (GGMLType.Q4_K, 5), (GGMLType.Q8_0, 3), (GGMLType.F16, 4)))]
    x = np.random.default_rng(T).standard_normal((T, 512)).astype(np.float32)
    outs = cpu.matmul_transb_many(x, [w for w, _ in ws])
    for out, (_, ref) in zip(outs, ws):
        expected = x.astype(np.float64) @ ref.T.astype(np.float64)
        scale = np.abs(x).astype(np.float64) @ np.abs(ref).T.astype(np.float64)
        assert out.shape == expected.shape and np.all(np.abs(out - expected) <= 1e-5 * scale + 1e-30)


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q4_1, GGMLType.F16], ids=lambda t: t.name)
def test_multi_token_kernel_over_several_spans_of_k(t, threads):
    """K = 1792 is walked in spans of at most quant_kernels.SPAN_K values, each adding into the outputs."""
    k = 1792
    assert k > quant_kernels.SPAN_K
    w, ref = weights(t, 37, k)
    x = np.random.default_rng(3).standard_normal((12, k)).astype(np.float32)
    expected = x.astype(np.float64) @ ref.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(ref).T.astype(np.float64)
    got = cpu.matmul_transb(x, w)
    assert np.all(np.abs(got - expected) <= 1e-5 * scale + 1e-30)
