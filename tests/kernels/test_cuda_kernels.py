"""kernels/cuda/*.cu without a GPU: compiled by NVRTC for sm_80 and sm_90 (no register spills), and executed on
the CPU by tests/cudasim against independent references (gguf-py dequantization, PyTorch operators), on awkward
shapes and launch geometries. Every launch runs the blocks in forward, reverse and random order; the results must
be identical, so a missing barrier fails here.
"""
import ctypes
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

import cudasim
from kernels.quants import SUPPORTED, GGMLType
from quant_blocks import K_QUANTS, make_blocks
from reference import torch_attention

CUDA_DIR = Path(__file__).resolve().parents[2] / "kernels" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
TYPES = sorted(SUPPORTED - {GGMLType.F32})
needs_gpp = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to run kernels on the CPU")


# ------------------------------------------------------------------------------------------------ NVRTC

def _nvrtc():
    nvrtc_pkg = pytest.importorskip("nvidia.cuda_nvrtc", reason="pip install nvidia-cuda-nvrtc-cu12 (test extra)")
    runtime_pkg = pytest.importorskip("nvidia.cuda_runtime", reason="pip install nvidia-cuda-runtime-cu12 (test extra)")
    lib = ctypes.CDLL(str(Path(list(nvrtc_pkg.__path__)[0]) / "lib" / "libnvrtc.so.12"))
    return lib, Path(list(runtime_pkg.__path__)[0]) / "include"


def nvrtc_compile(source: Path, arch: str) -> tuple[int, str]:
    """(nvrtcResult, program log) of compiling source for arch with the ptxas report (-Xptxas=-v)."""
    lib, include = _nvrtc()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.read_bytes(), source.name.encode(), 0, None, None) == 0
    opts = [f"--gpu-architecture={arch}", "-Xptxas=-v", "--std=c++17", f"-I{include}", f"-I{CUDA_DIR}"]
    c_opts = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
    result = lib.nvrtcCompileProgram(prog, len(opts), c_opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return result, log.value.decode()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvrtc_compiles_without_spills(source, arch):
    result, log = nvrtc_compile(source, arch)
    assert result == 0, log
    kernels = re.findall(r"Compiling entry function '(\w+)'", log)
    assert set(kernels) == set(re.findall(r'extern "C" __global__ void (\w+)', source.read_text())), log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) >= len(kernels) and all(s == ("0", "0") for s in spills), log


def test_every_source_states_its_launch_contract():
    for source in SOURCES:
        head = source.read_text()[:2500]
        assert "Launch contract" in head and "block" in head and "grid" in head and "shared" in head, source.name


# ------------------------------------------------------------------------------------------------ helpers

def launch_all_orders(module, name, grid, block, args, outputs, shared=0):
    """Launch in forward, reverse and random block/thread order; the outputs must agree bit for bit."""
    results = []
    for order in ("forward", "reverse", "random"):
        for o in outputs:
            o[...] = np.nan if o.dtype.kind == "f" else 0
        module.launch(name, grid, block, args, shared=shared, order=order, seed=len(results) + 1)
        results.append([o.copy() for o in outputs])
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=f"{name}: order-dependent")


def mod(name):
    return cudasim.load(CUDA_DIR / name)


def quantized(t, n, k, seed):
    raw = make_blocks(t, n, k, np.random.default_rng(seed))
    return raw, gq.dequantize(np.ascontiguousarray(raw), GQ(int(t))).reshape(n, k).astype(np.float32)


def k_for(t, blocks):
    return blocks * (256 if t in K_QUANTS else 32)


# --------------------------------------------------------------------------------------- quantized weights

# (rows n, blocks per row, vectors T, grid, block threads): tails, one row, more blocks than rows, big blocks
MATVEC_SHAPES = [(1, 1, 1, 1, 32), (7, 3, 2, 64, 96), (37, 2, 1, 3, 1024), (5, 1, 3, 2, 64)]


@needs_gpp
@pytest.mark.parametrize("shape", MATVEC_SHAPES, ids=lambda s: "n{}-b{}-t{}-g{}-B{}".format(*s))
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_matvec(t, shape):
    n, blocks, tokens, grid, block = shape
    k = k_for(t, blocks)
    raw, w = quantized(t, n, k, seed=n + int(t))
    x = np.random.default_rng(k).standard_normal((tokens, k)).astype(np.float32)
    y = np.empty((tokens, n), np.float32)
    launch_all_orders(mod("quant_matvec.cu"), f"matvec_{t.name.lower()}", (grid, tokens), block, [raw, x, y, n, k], [y])
    ref = (torch.from_numpy(x).double() @ torch.from_numpy(w).double().T).numpy()
    bound = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    assert (np.abs(y - ref) <= 1e-5 * bound + 1e-30).all()


DEQUANT_SHAPES = [(3, 1, None, 1, 1), (9, 2, [8, 0, 3, 3], 5, 33), (4, 3, None, 40, 1024)]


@needs_gpp
@pytest.mark.parametrize("shape", DEQUANT_SHAPES, ids=lambda s: "n{}-b{}-rows{}-g{}-B{}".format(*s))
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize_bit_exact(t, shape):
    n, blocks, rows, grid, block = shape
    k = k_for(t, blocks)
    raw, w = quantized(t, n, k, seed=7 * n + int(t))
    idx = None if rows is None else np.array(rows, np.int32)
    ref = w if idx is None else w[idx]
    m = len(ref)
    out = np.empty((m, k), np.float32)
    launch_all_orders(mod("dequant.cu"), f"dequant_{t.name.lower()}", grid, block, [raw, idx, m, k, out], [out])
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))


# ------------------------------------------------------------------------------------------------ operators

def close(out, ref, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)


@needs_gpp
@pytest.mark.parametrize("rows,d,grid,block", [(1, 64, 1, 32), (5, 100, 2, 96), (3, 2049, 8, 1024)])
def test_rms_norm(rows, d, grid, block):
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((rows, d)) * 3).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    y = np.empty_like(x)
    launch_all_orders(mod("rms_norm.cu"), "rms_norm_f32", grid, block, [x, w, y, rows, d, 1e-6], [y])
    ref = torch.nn.functional.rms_norm(torch.from_numpy(x), (d,), torch.from_numpy(w), eps=1e-6).numpy()
    close(y, ref)


@needs_gpp
@pytest.mark.parametrize("rows,n,grid,block", [(1, 1, 1, 32), (4, 300, 2, 128), (2, 5000, 5, 1024)])
def test_softmax(rows, n, grid, block):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((rows, n)) * 5).astype(np.float32)
    x[:, ::3] = -np.inf  # masked entries
    x[:, 0] = 1.0
    y = np.empty_like(x)
    launch_all_orders(mod("softmax.cu"), "softmax_f32", grid, block, [x, y, rows, n], [y])
    close(y, torch.softmax(torch.from_numpy(x), dim=-1).numpy())


def torch_rope(x, cos, sin, interleaved):
    x, c, s = torch.from_numpy(x), torch.from_numpy(cos)[:, None, :], torch.from_numpy(sin)[:, None, :]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2).numpy()
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1).numpy()


@needs_gpp
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("t,h,dh,grid,block", [(1, 3, 64, 1, 32), (5, 4, 128, 3, 1000), (2, 2, 6, 50, 1024)])
def test_rope(t, h, dh, grid, block, interleaved):
    rng = np.random.default_rng(dh)
    x = rng.standard_normal((t, h, dh)).astype(np.float32)
    angles = np.arange(7, 7 + t)[:, None] * 10000.0 ** (-np.arange(0, dh, 2) / dh)[None, :]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    y = np.empty_like(x)
    launch_all_orders(mod("rope.cu"), "rope_f32", grid, block, [x, cos, sin, y, t, h, dh, interleaved], [y])
    close(y, torch_rope(x, cos, sin, interleaved))
    mod("rope.cu").launch("rope_f32", grid, block, [x, cos, sin, x, t, h, dh, interleaved])  # in place
    np.testing.assert_array_equal(x, y)


@needs_gpp
@pytest.mark.parametrize("n,grid,block", [(1, 1, 32), (1000, 3, 100), (5000, 2, 1024)])
def test_swiglu(n, grid, block):
    rng = np.random.default_rng(n)
    gate, up = (rng.standard_normal((2, n)) * 6).astype(np.float32)
    out = np.empty(n, np.float32)
    launch_all_orders(mod("swiglu.cu"), "swiglu_f32", grid, block, [gate, up, out, n], [out])
    close(out, (torch.nn.functional.silu(torch.from_numpy(gate)) * torch.from_numpy(up)).numpy())


ATTENTION_CASES = [  # (t, start, h, h_kv, dh, window, block, cache rows)
    (1, 0, 2, 1, 32, 0, 32, 1),  # first decode step
    (1, 40, 8, 2, 64, 0, 128, 48),  # decode, GQA 4, cache longer than the sequence
    (1, 40, 4, 4, 128, 16, 1024, 41),  # decode with a sliding window, more warps than keys
    (6, 0, 4, 2, 64, 0, 64, 6),  # prefill
    (5, 9, 6, 3, 96, 4, 96, 20),  # prefill continuing a cache, window
    (3, 2, 2, 1, 256, 0, 256, 5),  # widest head
]


@needs_gpp
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: "t{}-start{}-h{}-kv{}-dh{}-w{}-B{}-S{}".format(*c))
def test_attention(case):
    t, start, h, h_kv, dh, window, block, rows = case
    rng = np.random.default_rng(dh + t)
    q = rng.standard_normal((t, h, dh)).astype(np.float32)
    k = (rng.standard_normal((h_kv, rows, dh)) * 2).astype(np.float32)
    v = rng.standard_normal((h_kv, rows, dh)).astype(np.float32)
    out = np.empty_like(q)
    shared = block // 32 * (dh + 2) * 4
    args = [q, k, v, out, t, h, h_kv, dh, start, rows * dh, window, 1.0 / np.sqrt(dh)]
    launch_all_orders(mod("attention.cu"), "attention_f32", (h, t), block, args, [out], shared=shared)
    close(out, torch_attention(q, k, v, start, window or None), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ decode-step kernels (position in device memory)

@needs_gpp
@pytest.mark.parametrize("half,pos,grid,block", [(1, [0], (1, 1), 32), (32, [7], (1, 1), 1024),
                                                  (64, [131071], (3, 1), 5), (48, [0, 5, 9, 131071, 2], (2, 2), 96),
                                                  (16, list(range(40)), (1, 40), 32)])
def test_rope_table(half, pos, grid, block):
    """The cos/sin of the positions read from device memory: grid rows stride over them (fewer rows than positions,
    one each). Bit-identical to PyTorch's float64 cos/sin rounded to float32 (as kernels/ops.py rope_cos_sin)."""
    inv_freq = 10000.0 ** (-np.arange(half, dtype=np.float64) / half)
    t = len(pos)
    cos, sin = np.empty((2, t, half), np.float32)
    launch_all_orders(mod("rope.cu"), "rope_table_f32", grid, block, [inv_freq, np.array(pos, np.int32), cos, sin,
                                                                       half, t], [cos, sin])
    angles = torch.tensor(pos, dtype=torch.float64)[:, None] * torch.from_numpy(inv_freq)[None, :]
    np.testing.assert_array_equal(cos, torch.cos(angles).float().numpy())
    np.testing.assert_array_equal(sin, torch.sin(angles).float().numpy())


@needs_gpp
@pytest.mark.parametrize("h_kv,dh,rows,pos,grid,block", [(1, 32, 1, 0, 1, 32), (2, 64, 9, 8, 2, 100),
                                                         (3, 128, 40, 17, 7, 1024)])
def test_kv_store(h_kv, dh, rows, pos, grid, block):
    rng = np.random.default_rng(dh)
    k, v = rng.standard_normal((2, h_kv, dh)).astype(np.float32)
    k_cache, v_cache = rng.standard_normal((2, h_kv, rows, dh)).astype(np.float32)
    ref_k, ref_v = k_cache.copy(), v_cache.copy()
    ref_k[:, pos], ref_v[:, pos] = k, v
    launch_all_orders(mod("kv_store.cu"), "kv_store_f32", grid, block,
                      [k, v, k_cache, v_cache, np.array([pos], np.int32), h_kv, dh, rows * dh], [])
    np.testing.assert_array_equal(k_cache, ref_k)
    np.testing.assert_array_equal(v_cache, ref_v)


@needs_gpp
@pytest.mark.parametrize("n,ny,grid,block", [(1, 1, 1, 32), (1000, 1000, 3, 100), (5000, 5000, 2, 1024),
                                             (1000, 1, 2, 64), (3 * 700, 700, 3, 100), (8 * 96, 96, 1, 1024)])
def test_add(n, ny, grid, block):
    """Same size (a residual) and a bias [ny] broadcast over the rows of [n / ny, ny]."""
    rng = np.random.default_rng(n + ny)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(ny).astype(np.float32)
    out = np.empty(n, np.float32)
    launch_all_orders(mod("add.cu"), "add_f32", grid, block, [x, y, out, n, ny], [out])
    ref = (torch.from_numpy(x).reshape(-1, ny) + torch.from_numpy(y)).reshape(-1).numpy()
    np.testing.assert_array_equal(out, ref)
    mod("add.cu").launch("add_f32", grid, block, [x, y, x, n, ny])  # in place
    np.testing.assert_array_equal(x, out)


ELEMENTWISE = [(1, 1, 32), (1000, 3, 100), (5000, 2, 1024)]  # (n, grid, block)


def awkward(n, seed):
    """float32 values over many magnitudes, with zeros, signed zeros, subnormals and infinities among them."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 3, n)).astype(np.float32)
    special = np.array([0.0, -0.0, 1e-42, -1e-40, np.inf, -np.inf, 60.0, -60.0], np.float32)
    x[:min(n, len(special))] = special[:n]
    return x


@needs_gpp
@pytest.mark.parametrize("s", [3.0, 0.1, -1.7e-3, 45.254833995939045])
@pytest.mark.parametrize("n,grid,block", ELEMENTWISE)
def test_scale(n, grid, block, s):
    """One rounded float32 product: bit-identical to NumPy's x * np.float32(s)."""
    x = awkward(n, n)
    out = np.empty(n, np.float32)
    launch_all_orders(mod("scale.cu"), "scale_f32", grid, block, [x, out, n, s], [out])
    np.testing.assert_array_equal(out.view(np.uint32), (x * np.float32(s)).view(np.uint32))
    mod("scale.cu").launch("scale_f32", grid, block, [x, x, n, s])  # in place
    np.testing.assert_array_equal(x.view(np.uint32), out.view(np.uint32))


TANH_ULPS = 4  # |tanhf - NumPy's float32 tanh| in ulps of the tanh value: CUDA's tanhf is within 2 ulp of tanh
# (CUDA C Programming Guide, Mathematical Functions), NumPy's within 1.4 (measured on 2M samples; glibc's tanhf, which
# cudasim runs, within 2.1), so the two differ by under 4 ulp.


def softcap_bound(x, cap):
    """cap * tanh(x / cap): x / cap is one correctly rounded division on both sides, the tanh values differ by
    TANH_ULPS ulp of tanh, scaled by cap, and the product's rounding adds one ulp of the result."""
    t = np.tanh(x / np.float32(cap))
    return cap * TANH_ULPS * np.spacing(np.abs(t)).astype(np.float64) + np.spacing(np.abs(cap * t))


@needs_gpp
@pytest.mark.parametrize("cap", [30.0, 50.0, 0.5])
@pytest.mark.parametrize("n,grid,block", ELEMENTWISE)
def test_softcap(n, grid, block, cap):
    x = awkward(n, n) * np.float32(3)
    out = np.empty(n, np.float32)
    launch_all_orders(mod("scale.cu"), "softcap_f32", grid, block, [x, out, n, cap], [out])
    ref = np.float32(cap) * np.tanh(x / np.float32(cap))
    assert ref.dtype == np.float32
    assert (np.abs(out.astype(np.float64) - ref) <= softcap_bound(x, cap)).all()  # measured: <= 0.73 of the bound
    exact = cap * torch.tanh(torch.from_numpy(x).double() / cap).numpy()  # atol: x / cap subnormal keeps fewer bits
    np.testing.assert_allclose(out, exact, rtol=1e-6, atol=cap * 2.0 ** -149)
    mod("scale.cu").launch("softcap_f32", grid, block, [x, x, n, cap])  # in place
    np.testing.assert_array_equal(x, out)


def gelu_tanh_f32(x):
    """The float32 formula of the spec: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), each step rounded to float32."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


@needs_gpp
@pytest.mark.parametrize("n,grid,block", ELEMENTWISE)
def test_geglu(n, grid, block):
    """Against the float32 formula in NumPy: all steps but tanh are the same rounded operations, so the results
    differ through tanhf vs NumPy's tanh (TANH_ULPS ulp of a value in (-1, 1), <= 2^-24 each) and the rounding of
    1 + t that follows (<= 1 ulp of a sum below 2, 2^-23); near gate << 0 that sum cancels, so the bound is absolute
    in that term: 0.5 |gate| |up| (4 * 2^-24 + 2^-23), plus 2 ulp of the result for the two products after it
    (measured: <= 0.63 of the bound). Also close to PyTorch's gelu(approximate="tanh") in float64."""
    rng = np.random.default_rng(n)
    gate, up = (rng.standard_normal((2, n)) * 4).astype(np.float32)
    gate[:min(n, 4)] = np.array([0.0, -0.0, 12.0, -12.0], np.float32)[:n]
    out = np.empty(n, np.float32)
    launch_all_orders(mod("swiglu.cu"), "geglu_f32", grid, block, [gate, up, out, n], [out])
    ref = gelu_tanh_f32(gate) * up
    assert ref.dtype == np.float32
    err = np.abs(out.astype(np.float64) - ref)
    bound = (0.5 * np.abs(gate.astype(np.float64) * up) * (TANH_ULPS * 2.0 ** -24 + 2.0 ** -23)
             + 2 * np.spacing(np.abs(ref)))
    assert (err <= bound).all(), (err - bound).max()
    g64 = torch.nn.functional.gelu(torch.from_numpy(gate).double(), approximate="tanh")
    np.testing.assert_allclose(out, (g64 * torch.from_numpy(up).double()).numpy(), rtol=1e-5, atol=1e-6)
    mod("swiglu.cu").launch("geglu_f32", grid, block, [gate, up, up, n])  # in place (into up)
    np.testing.assert_array_equal(up, out)


@needs_gpp
@pytest.mark.parametrize("n,d,rows,grid,block", [(1, 1, [0], 1, 32), (4, 64, [29, 0, 7, 7], 3, 100),
                                                 (6, 2049, [5, 1, 0, 2, 3, 4], 2, 1024)])
def test_gather_rows(n, d, rows, grid, block):
    table = np.random.default_rng(d).standard_normal((max(rows) + 1, d)).astype(np.float32)
    idx = np.array(rows, np.int32)
    out = np.empty((n, d), np.float32)
    launch_all_orders(mod("gather.cu"), "gather_rows_f32", grid, block, [table, idx, out, n, d], [out])
    np.testing.assert_array_equal(out, table[idx])


@needs_gpp
@pytest.mark.parametrize("n,k,tokens,grid,block", [(1, 1, 1, 1, 32), (7, 100, 2, 64, 96), (37, 1000, 1, 3, 1024),
                                                   (5, 33, 4, 2, 64)])
def test_matvec_f32(n, k, tokens, grid, block):
    rng = np.random.default_rng(n + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    y = np.empty((tokens, n), np.float32)
    launch_all_orders(mod("quant_matvec.cu"), "matvec_f32", (grid, tokens), block, [w, x, y, n, k], [y])
    ref = (torch.from_numpy(x).double() @ torch.from_numpy(w).double().T).numpy()
    bound = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    assert (np.abs(y - ref) <= 1e-5 * bound + 1e-30).all()


@needs_gpp
@pytest.mark.parametrize("case", [c for c in ATTENTION_CASES if c[0] == 1],
                         ids=lambda c: "start{1}-h{2}-kv{3}-dh{4}-w{5}-B{6}-S{7}".format(*c))
def test_attention_decode(case):
    """The query position read from device memory: as attention_f32 with start = pos, t = 1."""
    _, pos, h, h_kv, dh, window, block, rows = case
    rng = np.random.default_rng(dh + pos)
    q = rng.standard_normal((1, h, dh)).astype(np.float32)
    k = (rng.standard_normal((h_kv, rows, dh)) * 2).astype(np.float32)
    v = rng.standard_normal((h_kv, rows, dh)).astype(np.float32)
    out = np.empty_like(q)
    args = [q, k, v, out, np.array([pos], np.int32), h, h_kv, dh, rows * dh, window, 1.0 / np.sqrt(dh)]
    launch_all_orders(mod("attention.cu"), "attention_decode_f32", (h,), block, args, [out],
                      shared=block // 32 * (dh + 2) * 4)
    close(out, torch_attention(q, k, v, pos, window or None), rtol=1e-4, atol=1e-5)
