"""The GPU path's Python side without a GPU: kernels/cuda launchers and the engine wiring (ops dispatch, weight
upload, KV cache, host transfer) run against a stand-in device whose kernels execute in tests/cudasim.

The stand-in `cupy` is NumPy whose arrays are a subclass living in a module named cupy.* (so the engine takes them
for device arrays), and `kernels.cuda.kernel` returns a launcher that runs the .cu kernel in cudasim with the same
grid, block, shared memory and arguments the real launch would get. References: gguf-py dequantization, PyTorch
and transformers (tests/reference.py), independent of the engine.
"""
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

import cudasim
from engine.errors import DeviceError, UnsupportedModelError
from kernels import backend, cuda
from kernels.qtensor import QTensor
from kernels.quants import GGMLType
from quant_blocks import make_blocks

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to run kernels on the CPU")
TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"


class DeviceArray(np.ndarray):
    """A NumPy array the engine takes for a CuPy one."""

    def get(self):
        return np.asarray(self).copy()


DeviceArray.__module__ = "cupy.standin"


def _device_module() -> types.ModuleType:
    mod = types.ModuleType("cupy")

    def wrap(f):
        def call(*args, **kwargs):
            out = f(*args, **kwargs)
            return out.view(DeviceArray) if isinstance(out, np.ndarray) else out
        return call

    def attr(name):
        f = getattr(np, name)
        return f if isinstance(f, type) or not callable(f) else wrap(f)
    mod.__getattr__ = attr
    return mod


def _launcher(source, name):
    module = cudasim.load(cuda.DIR / source)

    def launch(grid, block, args, shared_mem=0):
        module.launch(name, grid, block, [None if a is cuda.NULL else a for a in args], shared=shared_mem,
                      order="random", seed=1)
    return launch


@pytest.fixture
def device(monkeypatch):
    """The stand-in GPU: backend on "cupy", compiled CPU kernels off, kernels run in cudasim."""
    from kernels import cpu
    monkeypatch.setitem(sys.modules, "cupy", _device_module())
    monkeypatch.setattr(cuda, "kernel", _launcher)
    monkeypatch.setattr(cpu, "available", False)
    backend.use("cupy")
    yield sys.modules["cupy"]
    backend.use("numpy")


def on_device(a):
    return np.ascontiguousarray(a).view(DeviceArray)


def quantized(t, n, k, seed=0):
    raw = make_blocks(t, n, k, np.random.default_rng(seed + int(t)))
    w = gq.dequantize(np.ascontiguousarray(raw), GQ(int(t))).reshape(n, k).astype(np.float64)
    return cuda.to_device(QTensor(raw, t, (n, k))), w


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.Q4_1, GGMLType.F16],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("tokens", [1, 3, 9])
def test_matmul_transb(device, t, tokens, monkeypatch):
    """T <= MATVEC_MAX_T: the mat-vec kernel; above, dequantized row tiles (several here) + matmul."""
    monkeypatch.setattr(cuda, "TILE_ELEMS", 3 * 512)
    w, ref_w = quantized(t, 11, 512)
    x = np.random.default_rng(tokens).standard_normal((tokens, 512)).astype(np.float32)
    y = cuda.matmul_transb(on_device(x), w)
    ref = x.astype(np.float64) @ ref_w.T
    bound = np.abs(x).astype(np.float64) @ np.abs(ref_w).T
    assert y.shape == (tokens, 11) and (np.abs(y - ref) <= 1e-5 * bound).all()


def test_embedding(device):
    w, ref_w = quantized(GGMLType.Q6_K, 30, 256)
    ids = np.array([29, 0, 7, 7])
    np.testing.assert_array_equal(cuda.embedding(ids, w), ref_w[ids].astype(np.float32))
    table = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    np.testing.assert_array_equal(cuda.embedding(ids, on_device(table)), table[ids])


def test_operators(device):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 64)).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_allclose(cuda.rms_norm(on_device(x), on_device(w), 1e-6),
                               torch.nn.functional.rms_norm(torch.from_numpy(x), (64,), torch.from_numpy(w), 1e-6),
                               rtol=1e-5, atol=1e-6)
    gate, up = rng.standard_normal((2, 3, 100)).astype(np.float32)
    np.testing.assert_allclose(cuda.swiglu(on_device(gate), on_device(up)),
                               torch.nn.functional.silu(torch.from_numpy(gate)) * torch.from_numpy(up),
                               rtol=1e-5, atol=1e-6)
    s = rng.standard_normal((2, 3, 50)).astype(np.float32)
    np.testing.assert_allclose(cuda.softmax(on_device(s)), torch.softmax(torch.from_numpy(s), -1), rtol=1e-5,
                               atol=1e-7)
    angles = rng.standard_normal((3, 32)).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    half = torch.from_numpy(x).chunk(2, dim=-1)
    c, si = torch.from_numpy(cos)[:, None], torch.from_numpy(sin)[:, None]
    ref = torch.cat([half[0] * c - half[1] * si, half[1] * c + half[0] * si], dim=-1)
    np.testing.assert_allclose(cuda.rope(on_device(x), on_device(cos), on_device(sin), False), ref, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("t,start,window", [(1, 9, None), (4, 0, None), (3, 5, 4)])
def test_attention_on_cache_layers(device, t, start, window):
    """q against whole [H_kv, S_max, Dh] cache layers (positions past start + t hold garbage and are ignored)."""
    rng = np.random.default_rng(t)
    h, h_kv, dh, s_max = 4, 2, 64, 16
    q = rng.standard_normal((t, h, dh)).astype(np.float32)
    k, v = rng.standard_normal((2, h_kv, s_max, dh)).astype(np.float32)
    out = cuda.attention(on_device(q), on_device(k), on_device(v), start, window, 1 / np.sqrt(dh))
    s = start + t
    qp, kp = torch.arange(start, s)[:, None], torch.arange(s)[None, :]
    mask = (kp <= qp) & ((kp > qp - window) if window else True)
    kk, vv = (torch.from_numpy(a[:, :s]).repeat_interleave(h // h_kv, 0) for a in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q).transpose(0, 1), kk, vv,
                                                           attn_mask=mask).transpose(0, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert cuda.attention(on_device(q[..., :48]), on_device(k[..., :48]), on_device(v[..., :48]), start, window,
                          0.1) is None  # Dh not a multiple of 32: the array code runs instead


def test_upload_moves_every_weight_once(device):
    from engine.hub import resolve
    from engine.loader import load_source
    model = load_source(resolve(str(TINY / "qwen2" / "model-Q8_0.gguf"))).model  # tied output matrix
    cuda.upload(model)
    weights = [model.tok_embd, model.output_norm] + [w for layer in model.layers for w in layer.values()]
    assert all(isinstance(w.raw if isinstance(w, QTensor) else w, DeviceArray) for w in weights)
    assert model.output is model.tok_embd


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_model_forward_prefill_chunk_decode(device, arch):
    """A tiny model loaded for the device: prefill (dequantize + matmul), a 3-token chunk and single tokens (mat-vec),
    KV cache on the device; logits match transformers on the gguf-py-dequantized weights."""
    from engine.hub import resolve
    from engine.kvcache import KVCache
    from engine.loader import load_source
    from reference import gguf_logits
    path = TINY / arch / "model-Q8_0.gguf"
    loaded = load_source(resolve(str(path)))
    cuda.upload(loaded.model)
    assert isinstance(loaded.model.layers[0]["attn_q"].raw, DeviceArray)
    c = loaded.config
    cache = KVCache(c.n_layers, c.n_kv_heads, c.head_dim, 32)
    assert isinstance(cache.k, DeviceArray)
    ids = [5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 300, 2]
    parts = [loaded.model.forward(np.array(ids[:6]), np.arange(6), cache),
             loaded.model.forward(np.array(ids[6:9]), np.arange(6, 9), cache)]
    parts += [loaded.model.forward(np.array([i]), np.array([p]), cache) for p, i in enumerate(ids[9:], 9)]
    assert all(isinstance(p, DeviceArray) for p in parts)
    logits = backend.to_host(np.concatenate(parts))
    ref = gguf_logits(path, ids)
    assert ref.std() > 0.5
    np.testing.assert_array_less(np.abs(logits - ref).max(), 5e-3)


def test_weights_without_a_kernel_are_refused():
    w = QTensor(np.zeros((2, 12 * 2), np.uint8), GGMLType.F16, (2, 12))
    with pytest.raises(UnsupportedModelError, match="--device cpu"):
        cuda.to_device(w)


def test_device_selection(monkeypatch):
    """No GPU here (or none usable): auto is the CPU, cuda is a clear error, unknown names are refused."""
    monkeypatch.setattr(cuda, "available", lambda: False)
    monkeypatch.delenv("ENGINE_DEVICE", raising=False)
    assert backend.select_device(None) == "cpu" and backend.name == "numpy"
    assert backend.select_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="--device cpu"):
        backend.select_device("cuda")
    monkeypatch.setenv("ENGINE_DEVICE", "cuda")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        backend.select_device(None)
    with pytest.raises(DeviceError, match="auto, cpu, cuda"):
        backend.select_device("tpu")


def test_cli_device_cuda_without_gpu(monkeypatch, capsys):
    from engine.generate import main
    monkeypatch.setattr(cuda, "available", lambda: False)
    assert main(["--prompt", "hi", "--raw", "--device", "cuda"]) != 0
    assert "no CUDA GPU" in capsys.readouterr().err
