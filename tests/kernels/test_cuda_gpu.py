"""The CUDA path on a real GPU (skipped without one): the same references as tests/kernels/test_cuda_kernels.py
against CuPy launches, and tiny models loaded with device="cuda" against transformers.

These have not run in this project's CI (no GPU there); the kernels themselves are exercised on the CPU by
tests/kernels/test_cuda_kernels.py and the launchers by tests/kernels/test_cuda_launchers.py.
"""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

from kernels import cuda, ops
from kernels.qtensor import QTensor
from quant_blocks import make_blocks
from reference import torch_attention
from tiny_models import TINY

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda.available(), reason="no CUDA GPU (CuPy with a device) on this machine")]
TYPES = sorted(cuda.KERNEL_BLOCKS)


@pytest.fixture
def cp():
    import cupy
    return cupy


def quantized(t, n, k, seed=0):
    raw = make_blocks(t, n, k, np.random.default_rng(seed + int(t)))
    w = gq.dequantize(np.ascontiguousarray(raw), GQ(int(t))).reshape(n, k).astype(np.float64)
    return cuda.to_device(QTensor(raw, t, (n, k))), w


@pytest.mark.parametrize("tokens", [1, 3, 9])
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_matmul_transb(cp, t, tokens):
    k = 512 if cuda.KERNEL_BLOCKS[t][0] == 256 else 96
    w, ref_w = quantized(t, 37, k)
    x = np.random.default_rng(tokens).standard_normal((tokens, k)).astype(np.float32)
    y = ops.matmul_transb(cp.asarray(x), w).get()
    bound = np.abs(x).astype(np.float64) @ np.abs(ref_w).T
    assert (np.abs(y - x.astype(np.float64) @ ref_w.T) <= 1e-5 * bound + 1e-30).all()


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize_and_embedding_bit_exact(cp, t):
    k = 512 if cuda.KERNEL_BLOCKS[t][0] == 256 else 96
    w, ref_w = quantized(t, 9, k)
    ids = np.array([8, 0, 3, 3])
    np.testing.assert_array_equal(cuda.dequantize(w, slice(2, 7)).get(), ref_w[2:7].astype(np.float32))
    np.testing.assert_array_equal(ops.embedding(ids, w).get(), ref_w[ids].astype(np.float32))


def test_operators(cp):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 128)).astype(np.float32)
    w = rng.standard_normal(128).astype(np.float32)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    np.testing.assert_allclose(ops.rms_norm(cp.asarray(x), cp.asarray(w), 1e-6).get(),
                               torch.nn.functional.rms_norm(tx, (128,), tw, 1e-6), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.swiglu(cp.asarray(x), cp.asarray(x[::-1].copy())).get(),
                               torch.nn.functional.silu(tx) * tx.flip(0), rtol=1e-5, atol=1e-6)
    s = x.copy()
    s[..., ::3] = -np.inf
    np.testing.assert_allclose(ops.softmax(cp.asarray(s)).get(), torch.softmax(torch.from_numpy(s), -1), rtol=1e-5,
                               atol=1e-7)
    angles = rng.standard_normal((3, 64)).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    a, b = tx[..., 0::2], tx[..., 1::2]
    c, si = torch.from_numpy(cos)[:, None], torch.from_numpy(sin)[:, None]
    ref = torch.stack([a * c - b * si, b * c + a * si], dim=-1).flatten(-2)
    np.testing.assert_allclose(ops.rope(cp.asarray(x), cp.asarray(cos), cp.asarray(sin), True).get(), ref,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t,start,window", [(1, 300, None), (1, 300, 64), (17, 0, None), (5, 40, 16)])
def test_attention(cp, t, start, window):
    rng = np.random.default_rng(t + start)
    h, h_kv, dh, s_max = 8, 2, 128, 320
    q = rng.standard_normal((t, h, dh)).astype(np.float32)
    k, v = rng.standard_normal((2, h_kv, s_max, dh)).astype(np.float32)
    out = ops.attention(cp.asarray(q), cp.asarray(k), cp.asarray(v), start, window).get()
    ref = torch_attention(q, k, v, start, window)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["model-F16.gguf", "model-Q8_0.gguf", "model-Q4_K_M.gguf"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_model_on_gpu(arch, fmt):
    """engine.load(device="cuda"): prefill, a chunk and single decode steps against transformers."""
    import engine
    from reference import gguf_logits
    path = TINY / arch / fmt
    if not path.exists():
        pytest.skip(f"no {fmt} fixture for {arch}")
    llm = engine.load(str(path), device="cuda")
    cache = llm.new_cache(32)
    ids = [5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 300, 2]
    parts = [llm.runner.forward(np.array(ids[:6]), np.arange(6), cache),
             llm.runner.forward(np.array(ids[6:9]), np.arange(6, 9), cache)]
    parts += [llm.runner.forward(np.array([i]), np.array([p]), cache) for p, i in enumerate(ids[9:], 9)]
    logits = np.concatenate(parts)
    ref = gguf_logits(path, ids)
    np.testing.assert_array_less(np.abs(logits - ref).max(), 5e-3)


def test_decode_step_kernels(cp):
    """The kernels reading the position from device memory (kernels/cuda/graph.py's decode step)."""
    rng = np.random.default_rng(0)
    h, h_kv, dh, s_max, pos = 8, 2, 128, 320, 300
    pos_d = cp.asarray([pos], dtype=cp.int32)
    inv_freq = cp.asarray(10000.0 ** (-np.arange(dh // 2) / (dh // 2)))
    cos, sin = cp.empty((1, dh // 2), cp.float32), cp.empty((1, dh // 2), cp.float32)
    cuda.rope_table(inv_freq, pos_d, cos, sin)
    angles = pos * torch.from_numpy(inv_freq.get())
    np.testing.assert_allclose(cos.get()[0], torch.cos(angles).float(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(sin.get()[0], torch.sin(angles).float(), rtol=0, atol=1e-6)
    k_new, v_new = rng.standard_normal((2, 1, h_kv, dh)).astype(np.float32)
    k, v = rng.standard_normal((2, h_kv, s_max, dh)).astype(np.float32)
    k_d, v_d = cp.asarray(k), cp.asarray(v)
    cuda.kv_store(cp.asarray(k_new), cp.asarray(v_new), k_d, v_d, pos_d)
    k[:, pos], v[:, pos] = k_new[0], v_new[0]
    np.testing.assert_array_equal(k_d.get(), k)
    np.testing.assert_array_equal(v_d.get(), v)
    q = rng.standard_normal((1, h, dh)).astype(np.float32)
    for window in (None, 64):
        out = cp.empty((1, h, dh), cp.float32)
        cuda.attention_decode(cp.asarray(q), k_d, v_d, pos_d, window, 1 / np.sqrt(dh), out)
        ref = torch_attention(q, k, v, pos, window)
        np.testing.assert_allclose(out.get(), ref, rtol=1e-4, atol=1e-5)
    x, y = rng.standard_normal((2, 1000)).astype(np.float32)
    out = cp.empty(1000, cp.float32)
    cuda.add(cp.asarray(x), cp.asarray(y), out)
    np.testing.assert_array_equal(out.get(), x + y)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_decode_graph_on_gpu(arch):
    """Single-token forwards replay a real CUDA graph (cupy.cuda.Stream capture of the model's own forward, its
    allocations from a private pool): logits against transformers and against the uncaptured forward on the same
    cache."""
    import engine
    from reference import gguf_logits
    path = TINY / arch / "model-Q8_0.gguf"
    ids = [5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 300, 2]
    llm = engine.load(str(path), device="cuda")
    cache = llm.new_cache(32)
    parts = [llm.runner.forward(np.array(ids[:4]), np.arange(4), cache)]
    parts += [llm.runner.forward(np.array([i]), np.array([p]), cache) for p, i in enumerate(ids[4:], 4)]
    assert not llm.runner.graphs.refused, llm.runner.graphs.refused
    assert llm.runner.graphs._steps[cache].step.graph is not None
    logits = np.concatenate(parts)
    cache.truncate(4)
    uncaptured = [llm.model.forward_packed(np.array([i]), np.array([p]), [cache], [1]).get()
                  for p, i in enumerate(ids[4:], 4)]
    np.testing.assert_allclose(logits[4:], np.concatenate(uncaptured), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_less(np.abs(logits - gguf_logits(path, ids)).max(), 5e-3)
