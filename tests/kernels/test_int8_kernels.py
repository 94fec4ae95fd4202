"""The opt-in int8-activation mat-vec (kernels/cpu/int8_kernels.py) against gguf-py dequantization + float64
NumPy: exact integer arithmetic on the quantized activations, and the documented error bound against float32."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

from kernels import cpu
from kernels.qtensor import QTensor
from kernels.quants import GGMLType
from quant_blocks import K_QUANTS, make_blocks

pytestmark = pytest.mark.skipif(not cpu.available, reason="numba kernels unavailable (ENGINE_KERNELS=numpy)")
INT8 = [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K, GGMLType.Q6_K]


def weights(t, n, k, seed=0):
    raw = make_blocks(t, n, k, np.random.default_rng(seed + int(t)))
    return QTensor(raw, t, (n, k)), gq.dequantize(raw, GQ(int(t))).reshape(n, k).astype(np.float64)


def quantized_activations(x):
    """llama.cpp's Q8_0 rule, written out: per 32 values, step amax/127 and q = round(x / step)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    step = np.abs(blocks).max(axis=1) / np.float32(127)
    inv = np.divide(np.float32(127), np.abs(blocks).max(axis=1), out=np.zeros(len(blocks), np.float32),
                    where=step > 0)
    q = np.rint(blocks * inv[:, None]).astype(np.int8)
    return q.reshape(-1), step


def test_quantize_activations_follows_the_q8_0_rule():
    from kernels.cpu.int8_kernels import quantize_activations
    x = np.random.default_rng(0).standard_normal(320).astype(np.float32) * 3
    x[32:64] = 0.0  # an all-zero block gets step 0
    xq, xd, xs = np.empty(320, np.int8), np.empty(10, np.float32), np.empty(10, np.float32)
    quantize_activations(x, xq, xd, xs)
    q, step = quantized_activations(x)
    np.testing.assert_array_equal(xq, q)
    np.testing.assert_array_equal(xd, step)
    np.testing.assert_allclose(xs, step * q.reshape(10, 32).sum(axis=1, dtype=np.int64), rtol=1e-6)
    assert np.all(np.abs(xq.astype(np.int32)) <= 127)


@pytest.mark.parametrize("n", [1, 7, 67])
@pytest.mark.parametrize("t", INT8, ids=lambda t: t.name)
def test_int8_matvec_is_exact_on_the_quantized_activations(t, n, threads):
    k = 768 if t in K_QUANTS else 352  # 352: 11 blocks of 32, an odd count
    w, ref = weights(t, n, k)
    x = np.random.default_rng(n).standard_normal((1, k)).astype(np.float32)
    q, step = quantized_activations(x[0])
    x_used = (q.reshape(-1, 32) * step[:, None].astype(np.float64)).reshape(-1)
    expected = ref @ x_used
    got = cpu.matmul_transb(x, w, int8=True)[0]
    scale = np.abs(ref) @ np.abs(x_used)  # float32 rounding of the per-block scaling and the sums
    assert np.all(np.abs(got - expected) <= 2e-6 * scale + 1e-30)


@pytest.mark.parametrize("t", INT8, ids=lambda t: t.name)
def test_int8_error_against_float32_within_half_a_step(t):
    k = 512
    w, ref = weights(t, 33, k)
    x = np.random.default_rng(5).standard_normal((1, k)).astype(np.float32)
    x[0, :32] *= 40  # one block with large activations, so its step is coarse
    _, step = quantized_activations(x[0])
    bound = np.abs(ref) @ np.repeat(step.astype(np.float64) / 2, 32)
    got = cpu.matmul_transb(x, w, int8=True)[0]
    exact = ref @ x[0].astype(np.float64)
    err = np.abs(got - exact)
    assert np.all(err <= bound * (1 + 1e-5) + 1e-6 * (np.abs(ref) @ np.abs(x[0])))
    assert err.max() > 0  # the int8 path really ran (float32 would be within rounding)


def test_int8_launch_mixes_integer_and_float_types():
    """q/k/v-style launch: an int8 type beside types without an integer dot (Q5_K, F16) share one launch."""
    x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    ws = [weights(t, 5, 256) for t in (GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.F16)]
    outs = cpu.matmul_transb_many(x, [w for w, _ in ws], int8=True)
    q, step = quantized_activations(x[0])
    x_used = (q.reshape(-1, 32) * step[:, None].astype(np.float64)).reshape(-1)
    x_float = x[0].astype(np.float64)
    # each output is a sum of products rounded in float32: its error scales with the sum of |products| (as in
    # test_int8_matvec_is_exact_on_the_quantized_activations), not with the result, which may cancel to near 0
    for (out, (_, ref)), x_ref in zip(zip(outs, ws), (x_used, x_float, x_float)):  # the int8 dot, then float dots
        assert np.all(np.abs(out[0] - ref @ x_ref) <= 2e-6 * (np.abs(ref) @ np.abs(x_ref)) + 1e-30)
