"""The GPU path's Python side without a GPU: kernels/cuda launchers and weight upload run against a stand-in device
(tests/cuda_standin.py) whose kernels execute in tests/cudasim; the model forward and its captured decode step on
it are tested in tests/engine/runtime/test_graphs.py.

The stand-in `cupy` is NumPy whose arrays are a subclass living in a module named cupy.* (so the engine takes them
for device arrays), and `kernels.cuda.kernel` returns a launcher that runs the .cu kernel in cudasim with the same
grid, block, shared memory and arguments the real launch would get. Its `cupy.cuda.Stream` captures as a CUDA graph
does: while a stream captures, our kernel launches on it are recorded (arguments by reference, as pointers), not run,
and `Graph.launch` runs the recording again; anything else on the device then (an allocation, a host copy, a
CuPy elementwise operation, a sync such as `.get()`) fails loudly. References: gguf-py dequantization, PyTorch and
transformers (tests/reference.py), independent of the engine.
"""
import shutil

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

from engine.errors import UnsupportedModelError
from kernels import cuda
from kernels.qtensor import QTensor
from kernels.quants import GGMLType
from cuda_standin import CaptureViolation, DeviceArray, Stream, on_device
from quant_blocks import make_blocks
from reference import torch_attention
from tiny_models import TINY, load

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to run kernels on the CPU")


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


@pytest.mark.parametrize("tokens", [1, 4, 9])
def test_matmul_transb_float32_weights(device, tokens):
    """A float32 weight matrix: the matvec_f32 kernel up to MATVEC_MAX_T vectors, cupy.matmul above."""
    rng = np.random.default_rng(tokens)
    w = rng.standard_normal((13, 70)).astype(np.float32)
    x = rng.standard_normal((tokens, 70)).astype(np.float32)
    y = cuda.matmul_transb(on_device(x), on_device(w))
    ref = (torch.from_numpy(x).double() @ torch.from_numpy(w).double().T).numpy()
    bound = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    assert isinstance(y, DeviceArray) and y.shape == (tokens, 13) and (np.abs(y - ref) <= 1e-5 * bound).all()
    out = on_device(np.full((tokens, 13), np.nan, np.float32))
    assert cuda.matmul_transb(on_device(x), on_device(w), out=out) is out
    np.testing.assert_array_equal(out, y)


def test_embedding_device_ids(device):
    """Token ids already on the device (any int dtype): the QTensor dequantize gather and the float32 row gather."""
    w, ref_w = quantized(GGMLType.Q8_0, 30, 64)
    table = np.random.default_rng(1).standard_normal((30, 40)).astype(np.float32)
    for dtype in (np.int32, np.int64):
        ids = np.array([3, 29, 0, 3], dtype)
        np.testing.assert_array_equal(cuda.embedding(on_device(ids), w), ref_w[ids].astype(np.float32))
        got = cuda.embedding(on_device(ids), on_device(table))
        assert isinstance(got, DeviceArray) and got.dtype == np.float32
        np.testing.assert_array_equal(got, table[ids])


def test_add_scale_softcap_geglu(device):
    """The elementwise launchers: new outputs, out= (aliasing an input), and add's bias broadcast. References:
    PyTorch (add), NumPy's float32 formulas (scale: bit-identical; softcap, geglu: tanhf vs NumPy's tanh, see
    test_cuda_kernels.softcap_bound and
    test_geglu for the bounds, softcap's loosened to its largest values)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 3, 40)).astype(np.float32) * 20
    bias = rng.standard_normal(40).astype(np.float32)
    sum_ = cuda.add(on_device(x), on_device(y))
    assert isinstance(sum_, DeviceArray) and sum_.shape == (3, 40)
    np.testing.assert_array_equal(sum_, (torch.from_numpy(x) + torch.from_numpy(y)).numpy())
    np.testing.assert_array_equal(cuda.add(on_device(x), on_device(bias)),
                                  (torch.from_numpy(x) + torch.from_numpy(bias)).numpy())
    a, b, out = on_device(x.copy()), on_device(y), on_device(np.zeros_like(x))  # on_device(x) would share x
    assert cuda.add(a, b, out) is out  # the positional call of the decode graph, now returning out
    np.testing.assert_array_equal(out, sum_)
    assert cuda.add(a, on_device(bias), out=a) is a  # in place
    np.testing.assert_array_equal(a, x + bias)
    with pytest.raises(ValueError):
        cuda.add(on_device(x), on_device(bias[:7]))

    s = 45.254833995939045  # sqrt(2048), a Gemma embedding scale
    scaled = cuda.scale(on_device(x), s)
    np.testing.assert_array_equal(scaled.view(np.uint32), (x * np.float32(s)).view(np.uint32))
    a = on_device(x.copy())
    assert cuda.scale(a, 0.5, out=a) is a
    np.testing.assert_array_equal(a, x * np.float32(0.5))

    for cap in (30.0, 50.0):
        capped = cuda.softcap(on_device(x), cap)
        ref = np.float32(cap) * np.tanh(x / np.float32(cap))
        bound = cap * 4 * 2.0 ** -24 + np.spacing(np.float32(cap))  # 4 ulp of a tanh value, 1 of the result
        assert isinstance(capped, DeviceArray) and np.abs(capped - ref).max() <= bound
    a = on_device(x.copy())
    assert cuda.softcap(a, 30.0, out=a) is a and np.abs(a).max() < 30

    gate, up = x / 5, y / 5
    c = np.float32(np.sqrt(2.0 / np.pi))
    ref = np.float32(0.5) * gate * (np.float32(1) + np.tanh(c * (gate + np.float32(0.044715) * gate * gate * gate))) * up
    got = cuda.geglu(on_device(gate), on_device(up))
    assert isinstance(got, DeviceArray) and got.shape == gate.shape
    bound = 0.5 * np.abs(gate.astype(np.float64) * up) * (4 * 2.0 ** -24 + 2.0 ** -23) + 2 * np.spacing(np.abs(ref))
    assert (np.abs(got.astype(np.float64) - ref) <= bound).all()
    u = on_device(up.copy())
    assert cuda.geglu(on_device(gate), u, out=u) is u
    np.testing.assert_array_equal(u, got)


def test_rope_cos_sin_and_table(device):
    """rope_cos_sin from host or device positions of any int dtype; rope_table into given [T, Dh/2] arrays, the
    one-position decode call included. Reference: PyTorch float64 cos/sin rounded to float32."""
    inv_freq = 10000.0 ** (-np.arange(32, dtype=np.float64) / 32)
    positions = np.array([0, 1, 7, 4095, 131071])
    angles = torch.from_numpy(positions).double()[:, None] * torch.from_numpy(inv_freq)[None, :]
    ref_cos, ref_sin = torch.cos(angles).float().numpy(), torch.sin(angles).float().numpy()
    for pos in (positions, on_device(positions), on_device(positions.astype(np.int32))):
        cos, sin = cuda.rope_cos_sin(pos, on_device(inv_freq))
        assert isinstance(cos, DeviceArray) and cos.shape == sin.shape == (5, 32) and cos.dtype == np.float32
        np.testing.assert_array_equal(cos, ref_cos)
        np.testing.assert_array_equal(sin, ref_sin)
    cos, sin = on_device(np.zeros((1, 32), np.float32)), on_device(np.zeros((1, 32), np.float32))
    assert cuda.rope_table(on_device(inv_freq), on_device(np.array([7], np.int32)), cos, sin) == (cos, sin)
    np.testing.assert_array_equal(cos, ref_cos[2:3])
    np.testing.assert_array_equal(sin, ref_sin[2:3])


@pytest.mark.parametrize("t,start,window", [(1, 9, None), (4, 0, None), (3, 5, 4)])
def test_attention_on_cache_layers(device, t, start, window):
    """q against whole [H_kv, S_max, Dh] cache layers (positions past start + t hold garbage and are ignored)."""
    rng = np.random.default_rng(t)
    h, h_kv, dh, s_max = 4, 2, 64, 16
    q = rng.standard_normal((t, h, dh)).astype(np.float32)
    k, v = rng.standard_normal((2, h_kv, s_max, dh)).astype(np.float32)
    out = cuda.attention(on_device(q), on_device(k), on_device(v), start, window, 1 / np.sqrt(dh))
    ref = torch_attention(q, k, v, start, window)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert cuda.attention(on_device(q[..., :48]), on_device(k[..., :48]), on_device(v[..., :48]), start, window,
                          0.1) is None  # Dh not a multiple of 32: the array code runs instead


def test_upload_moves_every_weight_once(device):
    model = load(TINY / "qwen2" / "model-Q8_0.gguf").model  # tied output matrix
    cuda.upload(model)
    weights = [model.tok_embd, model.output_norm] + [w for layer in model.layers for w in layer.values()]
    assert all(isinstance(w.raw if isinstance(w, QTensor) else w, DeviceArray) for w in weights)
    assert model.output is model.tok_embd


def test_standin_capture_records_and_forbids(device):
    """What the graph tests rely on: captured launches are recorded, not run, and replay with the arguments' current
    contents; allocations, host copies, CuPy operations and syncs inside a capture fail."""
    cupy = device.xp
    x, y, out = (on_device(np.full(5, v, np.float32)) for v in (1.0, 2.0, 0.0))
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        cuda.add(x, y, out)
        for bad in (lambda: cupy.empty(3), lambda: cupy.asarray(np.zeros(2)), lambda: x + y, lambda: x.copy(),
                    lambda: x.get(), lambda: float(x[0]), lambda: out.set(np.zeros(5)), lambda: out.__setitem__(0, 1)):
            with pytest.raises(CaptureViolation):
                bad()
        with cupy.cuda.using_allocator(cupy.cuda.MemoryPool().malloc):
            scratch = cupy.empty(3)  # from a private pool: allowed
            with pytest.raises(CaptureViolation):
                cupy.zeros(3)  # a fill, not recorded
        graph = stream.end_capture()
    assert graph.names == ["add_f32"] and (out == 0).all() and scratch.shape == (3,)
    graph.launch(stream)
    np.testing.assert_array_equal(out, 3.0)
    x.set(np.full(5, 10.0, np.float32))
    graph.launch(stream)
    np.testing.assert_array_equal(out, 12.0)


def test_weights_without_a_kernel_are_refused():
    w = QTensor(np.zeros((2, 12 * 2), np.uint8), GGMLType.F16, (2, 12))
    with pytest.raises(UnsupportedModelError, match="--device cpu"):
        cuda.to_device(w)


def test_cli_device_cuda_without_gpu(monkeypatch, capsys):
    from engine.cli.generate import main
    monkeypatch.setattr(cuda, "available", lambda: False)
    assert main(["--prompt", "hi", "--raw", "--device", "cuda"]) != 0
    assert "no CUDA GPU" in capsys.readouterr().err
