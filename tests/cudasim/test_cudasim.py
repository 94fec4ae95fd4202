"""The CPU simulator itself: barriers, warp operations, shared-memory fill, guard bytes, f16/bf16, __dp4a.

Expected values come from NumPy (bit conversions, integer arithmetic) and from the CUDA semantics written out here.
"""
import shutil
from pathlib import Path

import numpy as np
import pytest

import cudasim

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to build the simulator")


@pytest.fixture(scope="module")
def probes():
    return cudasim.load(Path(__file__).parent / "probes.cu")


def reverse(probes, barrier, order, block=256, blocks=3):
    x = np.arange(block * blocks, dtype=np.float32)
    y = np.zeros_like(x)
    probes.launch("reverse_block", blocks, block, [x, y, barrier], order=order, seed=7)
    return x, y


@pytest.mark.parametrize("order", ["forward", "reverse", "random"])
def test_barrier_makes_shared_exchange_correct(probes, order):
    x, y = reverse(probes, 1, order)
    np.testing.assert_array_equal(y, x.reshape(3, 256)[:, ::-1].reshape(-1))


def test_missing_barrier_is_visible(probes):
    """Without the barrier, threads read slots not yet written (NaN fill) and the result depends on the order."""
    results = [reverse(probes, 0, order)[1] for order in ("forward", "reverse", "random")]
    assert np.isnan(results[0]).any()
    assert not np.array_equal(results[0], results[1], equal_nan=True)
    assert not np.array_equal(results[0], results[2], equal_nan=True)


def test_barrier_not_reached_by_exited_thread(probes):
    with pytest.raises(cudasim.KernelError, match="not reached by thread"):
        probes.launch("early_exit", 1, 64, [np.zeros(64, np.float32), 40])
    probes.launch("early_exit", 1, 64, [np.zeros(64, np.float32), 64])  # every thread arrives: fine


def test_threads_at_different_barriers(probes):
    with pytest.raises(cudasim.KernelError, match="waits at __syncthreads"):
        probes.launch("split_barrier", 1, 64, [np.zeros(64, np.float32)])


def test_out_of_bounds_write_is_caught(probes):
    probes.launch("write_n", 1, 32, [np.zeros(50, np.float32), 50])
    with pytest.raises(cudasim.KernelError, match="write outside argument y"):
        probes.launch("write_n", 1, 32, [np.zeros(50, np.float32), 51])


def test_const_argument_write_is_caught(probes):
    with pytest.raises(cudasim.KernelError, match="const argument x"):
        probes.launch("write_const", 1, 32, [np.zeros(8, np.float32)])


def test_shared_memory_is_nan_filled(probes):
    y = np.zeros(128 + 16, np.float32)
    h = np.zeros(128, np.float16)
    probes.launch("read_shared", 2, 128, [y, h, 16], shared=16 * 4)
    assert np.isnan(y).all() and np.isnan(h).all()


def test_dynamic_shared_overflow_is_caught(probes):
    probes.launch("write_dynamic", 1, 32, [15], shared=16 * 4)
    with pytest.raises(cudasim.KernelError, match="past the 64 bytes"):
        probes.launch("write_dynamic", 1, 32, [16], shared=16 * 4)


def warp_reference(x, arg, width):
    n = len(x)
    out = np.zeros((n, 8), np.int64)
    for i in range(n):
        lane, warp = i % 32, i - i % 32
        seg = lane - lane % width
        out[i, 0] = x[warp + seg + arg % width]
        xor = lane ^ arg
        out[i, 1] = x[warp + xor] if seg <= xor < seg + width else x[i]
        out[i, 2] = x[i + arg] if lane + arg < seg + width else x[i]
        out[i, 3] = x[i - arg] if lane - arg >= seg else x[i]
        w = x[warp:warp + 32]
        out[i, 4] = sum(1 << j for j in range(32) if w[j] > 0)
        out[i, 5] = (w > 100).any()
        out[i, 6] = (w > -100).all()
        a = x[i:i + 1].view(np.int8).astype(np.int64)  # the four bytes, least significant first
        b = x[(i + 1) % n:(i + 1) % n + 1].view(np.int8).astype(np.int64)
        out[i, 7] = i + (a * b).sum()
    return out.astype(np.int64).astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("arg,width", [(1, 32), (5, 32), (16, 32), (3, 8), (7, 16)])
def test_warp_operations(probes, arg, width):
    rng = np.random.default_rng(arg * width)
    x = rng.integers(-2**31, 2**31, size=96, dtype=np.int64).astype(np.int32)
    x[::5] = rng.integers(-150, 150, size=len(x[::5]))
    out = np.zeros((96, 8), np.int32)
    probes.launch("warp_ops", 1, 96, [x, out, arg, width], order="random", seed=arg)
    np.testing.assert_array_equal(out, warp_reference(x, arg, width))


def test_shuffle_missing_lanes_is_caught(probes):
    with pytest.raises(cudasim.KernelError, match="lane 20 exited"):
        probes.launch("partial_shuffle", 1, 32, [np.zeros(32, np.float32), 20])


def test_half_conversions_match_numpy(probes):
    """Every f16 and bf16 bit pattern to float; floats (random, every half, every tie, overflow) to f16."""
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 20000).astype(np.float32),
        halves,
        (halves.view(np.uint32) + np.uint32(1 << 12)).view(np.float32),  # halfway between neighbouring halves
        np.array([65504, 65519.99, 65520, 1e9, -np.inf, 2.0**-25, 2.0**-24 * 1.5], np.float32),
    ]).astype(np.float32)
    bits = np.resize(np.arange(1 << 16, dtype=np.uint16), len(x))
    from_half, from_bf16, to_half = np.zeros(len(x), np.float32), np.zeros(len(x), np.float32), np.zeros(len(x), np.float16)
    probes.launch("half_conversions", 64, 256, [bits, from_half, from_bf16, x, to_half, len(x)])
    np.testing.assert_array_equal(from_half.view(np.uint32), bits.view(np.float16).astype(np.float32).view(np.uint32))
    np.testing.assert_array_equal(from_bf16.view(np.uint32), bits.astype(np.uint32) << 16)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    nan = np.isnan(expected)
    assert np.isnan(to_half[nan]).all()
    np.testing.assert_array_equal(to_half[~nan].view(np.uint16), expected[~nan].view(np.uint16))


def test_bad_launches_are_refused(probes):
    with pytest.raises(cudasim.KernelError, match="1..1024"):
        probes.launch("write_n", 1, 1025, [np.zeros(4, np.float32), 0])
    with pytest.raises(TypeError, match="float32"):
        probes.launch("write_n", 1, 32, [np.zeros(4, np.float64), 0])
