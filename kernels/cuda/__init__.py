"""The GPU path: the RawKernels of kernels/cuda/*.cu launched through CuPy, GPU twins of kernels/ops.py.

Weights stay GGUF blocks on the device (QTensor over a cupy uint8 array). Decode (up to MATVEC_MAX_T vectors)
runs the fused dequantize-and-dot mat-vec; prefill dequantizes row tiles to float32 and multiplies them with cuBLAS
(`cupy.matmul`; float32 because an f16 product overflows to inf on large activations). Nothing here imports CuPy until a kernel is launched, so the module loads on any machine.
Launch geometries follow the contract at the top of each .cu file.
"""
from pathlib import Path

import numpy as np

from kernels.errors import UnsupportedModelError
from kernels.qtensor import QTensor
from kernels.quants import GGMLType

DIR = Path(__file__).parent
MATVEC_MAX_T = 4  # up to this many vectors use the mat-vec kernel (one launch); more use dequantize + cuBLAS
MATVEC_WARPS = 4  # rows per mat-vec block (one warp each)
TILE_ELEMS = 1 << 24  # elements of a weight dequantized per cuBLAS call: 64 MB of float32
ATTENTION_WARPS = 4
# weight type -> (elements per kernel block, parts per block): QK and PARTS of quant_blocks.cuh
KERNEL_BLOCKS = {GGMLType.F16: (8, 1), GGMLType.BF16: (8, 1), GGMLType.Q8_0: (32, 8), GGMLType.Q4_0: (32, 8),
                 GGMLType.Q4_1: (32, 8), GGMLType.Q5_0: (32, 8), GGMLType.Q5_1: (32, 8), GGMLType.Q4_K: (256, 32),
                 GGMLType.Q5_K: (256, 32), GGMLType.Q6_K: (256, 32)}
NULL = np.uint64(0)  # a null pointer argument (CuPy turns None into a bogus address)

_modules: dict[str, object] = {}


def available() -> bool:
    """Whether CuPy is installed and sees a CUDA device."""
    try:
        import cupy
        return bool(cupy.cuda.is_available())
    except Exception:  # no cupy, no driver, broken install: all mean "no GPU here"
        return False


def takes(*arrays) -> bool:
    """Whether every array is a CuPy array (the GPU path applies)."""
    return all(type(a).__module__.startswith("cupy") for a in arrays)


def include_dirs() -> list[str]:
    """Header directories for NVRTC: this directory, and the CUDA headers (cuda_fp16.h, cuda_bf16.h) of the
    nvidia-cuda-runtime-cu12 wheel or, without it, of the CUDA toolkit CuPy found."""
    dirs = [str(DIR)]
    try:
        import nvidia.cuda_runtime
        dirs.append(str(Path(list(nvidia.cuda_runtime.__path__)[0]) / "include"))
    except ImportError:
        import cupy
        if cupy.cuda.get_cuda_path():
            dirs.append(str(Path(cupy.cuda.get_cuda_path()) / "include"))
    return dirs


def kernel(source: str, name: str):
    """The compiled kernel `name` of kernels/cuda/<source> (each file is compiled once per process)."""
    import cupy
    if source not in _modules:
        options = ("--std=c++17", *(f"-I{d}" for d in include_dirs()))
        _modules[source] = cupy.RawModule(code=(DIR / source).read_text(), options=options)
    return _modules[source].get_function(name)


def _blocks(n: int, per_block: int) -> int:
    return max(1, -(-n // per_block))


# ------------------------------------------------------------------------------------------------ weights

def to_device(w):
    """A weight on the GPU: QTensor → QTensor over a cupy uint8 array (blocks as stored); ndarray → cupy array."""
    if isinstance(w, QTensor) and (w.ggml_type not in KERNEL_BLOCKS or w.shape[1] % KERNEL_BLOCKS[w.ggml_type][0]):
        raise UnsupportedModelError(f"{w.type_name} weights of shape {w.shape} have no CUDA kernel; run this "
                                    "model on the CPU (--device cpu).")
    import cupy
    if isinstance(w, QTensor):
        return QTensor(cupy.asarray(np.ascontiguousarray(w.raw)), w.ggml_type, w.shape)
    if isinstance(w, np.ndarray):
        return cupy.asarray(w)
    return w


def upload(model) -> None:
    """Move every weight a model object holds (attributes, and lists/dicts of them) to the GPU, in place.
    A weight held twice (a tied output matrix) is uploaded once."""
    moved = {}

    def move(v):
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if id(v) not in moved:
            moved[id(v)] = (v, to_device(v))  # v kept alive so its id stays unique
        return moved[id(v)][1]
    for name, value in vars(model).items():
        setattr(model, name, move(value))


# ------------------------------------------------------------------------------------------------ operators

def matmul_transb(x, w, out=None):
    """x @ wᵀ on the GPU. x: [T, K] float32 cupy; w: [N, K] QTensor on the device, or a float32 cupy array
    → [T, N] float32 (into out, a contiguous [T, N] float32 cupy array, when given)."""
    import cupy
    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    t, k = x.shape
    n = w.shape[0]
    out = cupy.empty((t, n), dtype=cupy.float32) if out is None else out
    if not isinstance(w, QTensor):
        if t > MATVEC_MAX_T or w.dtype != cupy.float32:
            cupy.matmul(x, w.T.astype(cupy.float32, copy=False), out=out)
            return out
        kernel("quant_matvec.cu", "matvec_f32")(
            (_blocks(n, MATVEC_WARPS), t), (32 * MATVEC_WARPS,),
            (cupy.ascontiguousarray(w), x, out, np.int32(n), np.int32(k)))
        return out
    if t <= MATVEC_MAX_T:
        kernel("quant_matvec.cu", f"matvec_{w.type_name.lower()}")(
            (_blocks(n, MATVEC_WARPS), t), (32 * MATVEC_WARPS,), (w.raw, x, out, np.int32(n), np.int32(k)))
        return out
    step = max(1, TILE_ELEMS // k)
    for i in range(0, n, step):
        j = min(n, i + step)
        out[:, i:j] = cupy.matmul(x, dequantize(w, slice(i, j)).T)
    return out


def dequantize(w: QTensor, rows, out=None):
    """Rows of a device QTensor as a [n, K] float32 cupy array (into out when given).
    rows: a slice (contiguous rows) or int indices (gathered, e.g. token ids; a device int32 array is read there)."""
    import cupy
    k = w.shape[1]
    if isinstance(rows, slice):
        raw, index = w.raw[rows], NULL
        n = raw.shape[0]
    else:
        raw, index = w.raw, cupy.asarray(rows, dtype=cupy.int32)
        n = index.shape[0]
    out = cupy.empty((n, k), dtype=cupy.float32) if out is None else out
    qk, parts = KERNEL_BLOCKS[w.ggml_type]
    parts *= n * (k // qk)
    kernel("dequant.cu", f"dequant_{w.type_name.lower()}")(
        (_blocks(parts, 256),), (256,), (raw, index, np.int32(n), np.int32(k), out))
    return out


def embedding(ids, table):
    """Rows of the embedding table on the GPU. ids: [T] int (host or device; read as a device int32 array);
    table: QTensor on the device or cupy array → [T, D] float32."""
    import cupy
    ids = cupy.asarray(ids, dtype=cupy.int32)
    if isinstance(table, QTensor):
        return dequantize(table, ids)
    if table.dtype != cupy.float32 or ids.ndim != 1:
        return table[ids].astype(cupy.float32)
    n, d = ids.shape[0], table.shape[1]
    out = cupy.empty((n, d), dtype=cupy.float32)
    kernel("gather.cu", "gather_rows_f32")((_blocks(n * d, 256),), (256,),
                                           (cupy.ascontiguousarray(table), ids, out, np.int32(n), np.int32(d)))
    return out


def rms_norm(x, weight, eps: float, out=None):
    """x: [..., D] float32 cupy, weight: [D] → RMSNorm over the last axis (into out when given; out may be x)."""
    import cupy
    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    d = x.shape[-1]
    rows = x.size // d
    y = cupy.empty_like(x) if out is None else out
    threads = min(1024, 32 * _blocks(d, 32 * 4))  # about four elements a thread
    kernel("rms_norm.cu", "rms_norm_f32")((min(rows, 65535),), (threads,),
                                          (x, cupy.ascontiguousarray(weight, dtype=cupy.float32), y,
                                           np.int32(rows), np.int32(d), np.float32(eps)))
    return y


def rope(x, cos, sin, interleaved: bool, out=None):
    """x: [T, H, Dh] float32 cupy rotated by position; cos, sin: [T, Dh/2] (into out when given; out may be x)."""
    import cupy
    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    t, h, dh = x.shape
    y = cupy.empty_like(x) if out is None else out
    kernel("rope.cu", "rope_f32")((_blocks(t * h * dh // 2, 256),), (256,),
                                  (x, cupy.ascontiguousarray(cos, dtype=cupy.float32),
                                   cupy.ascontiguousarray(sin, dtype=cupy.float32), y, np.int32(t), np.int32(h),
                                   np.int32(dh), np.int32(bool(interleaved))))
    return y


def swiglu(gate, up, out=None):
    """silu(gate) * up, elementwise, float32 cupy (into out when given; out may be gate or up)."""
    import cupy
    gate = cupy.ascontiguousarray(gate, dtype=cupy.float32)
    out = cupy.empty_like(gate) if out is None else out
    kernel("swiglu.cu", "swiglu_f32")((_blocks(gate.size, 256),), (256,),
                                      (gate, cupy.ascontiguousarray(up, dtype=cupy.float32), out,
                                       np.int32(gate.size)))
    return out


def softmax(x):
    """Softmax over the last axis of a float32 cupy array."""
    import cupy
    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    n = x.shape[-1]
    rows = x.size // n
    y = cupy.empty_like(x)
    kernel("softmax.cu", "softmax_f32")((min(rows, 65535),), (256,), (x, y, np.int32(rows), np.int32(n)))
    return y


def geglu(gate, up, out=None):
    """gelu_tanh(gate) * up, elementwise, float32 cupy (into out when given; out may be gate or up)."""
    import cupy
    gate = cupy.ascontiguousarray(gate, dtype=cupy.float32)
    out = cupy.empty_like(gate) if out is None else out
    kernel("swiglu.cu", "geglu_f32")((_blocks(gate.size, 256),), (256,),
                                     (gate, cupy.ascontiguousarray(up, dtype=cupy.float32), out, np.int32(gate.size)))
    return out


def add(x, y, out=None):
    """out = x + y, float32 contiguous cupy arrays: y of x's size (a residual) or of a size dividing it (a bias [N]
    over the rows of [T, N]). Into out when given (out may be x or y); returns out."""
    import cupy
    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    y = cupy.ascontiguousarray(y, dtype=cupy.float32)
    if y.size == 0 or x.size % y.size:
        raise ValueError(f"add: y of {y.size} elements does not broadcast over x of {x.size}")
    out = cupy.empty_like(x) if out is None else out
    kernel("add.cu", "add_f32")((_blocks(x.size, 256),), (256,), (x, y, out, np.int32(x.size), np.int32(y.size)))
    return out


def scale(x, s: float, out=None):
    """x * s (s rounded to float32), float32 cupy (into out when given; out may be x)."""
    import cupy
    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    out = cupy.empty_like(x) if out is None else out
    kernel("scale.cu", "scale_f32")((_blocks(x.size, 256),), (256,), (x, out, np.int32(x.size), np.float32(s)))
    return out


def softcap(x, cap: float, out=None):
    """cap * tanh(x / cap) (cap rounded to float32), float32 cupy (into out when given; out may be x)."""
    import cupy
    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    out = cupy.empty_like(x) if out is None else out
    kernel("scale.cu", "softcap_f32")((_blocks(x.size, 256),), (256,), (x, out, np.int32(x.size), np.float32(cap)))
    return out


def rope_cos_sin(positions, inv_freq):
    """ops.rope_cos_sin on the GPU: positions [T] int (host or device, read as a device int32 array), inv_freq
    [Dh/2] (float64 on the device) → new (cos, sin), each [T, Dh/2] float32; angles in float64."""
    import cupy
    positions = cupy.asarray(positions, dtype=cupy.int32)
    half = inv_freq.shape[0]
    cos = cupy.empty((positions.size, half), dtype=cupy.float32)
    sin = cupy.empty((positions.size, half), dtype=cupy.float32)
    rope_table(inv_freq, positions, cos, sin)
    return cos, sin


def _attention_fits(q, k, v) -> bool:
    """Whether the attention kernels cover q [T, H, Dh] against cache layers k, v [H_kv, S, Dh]: Dh a multiple of
    32 up to 256, H a multiple of H_kv, rows of a head contiguous and the same strides for k and v."""
    import cupy
    _, h, dh = q.shape
    row_major = all(a.strides[2] == 4 and a.strides[1] == dh * 4 and a.strides[0] % 4 == 0 and a.dtype == cupy.float32
                    and a.strides == k.strides for a in (k, v))
    return dh % 32 == 0 and dh <= 256 and h % k.shape[0] == 0 and row_major


def attention(q, k, v, start: int, window: int | None, scale: float):
    """ops.attention on the GPU: q [T, H, Dh]; k, v [H_kv, S, Dh] (rows of a head contiguous, heads any stride,
    as a KV cache's layer views are). None when the kernel does not cover the shape (the array code runs)."""
    import cupy
    if not _attention_fits(q, k, v):
        return None
    t, h, dh = q.shape
    q = cupy.ascontiguousarray(q, dtype=cupy.float32)
    out = cupy.empty_like(q)
    kernel("attention.cu", "attention_f32")(
        (h, t), (32 * ATTENTION_WARPS,),
        (q, k, v, out, np.int32(t), np.int32(h), np.int32(k.shape[0]), np.int32(dh), np.int32(start),
         np.int32(k.strides[0] // 4), np.int32(window or 0), np.float32(scale)),
        shared_mem=ATTENTION_WARPS * (dh + 2) * 4)
    return out


# ------------------------------------------------------------------- decode steps reading the position on the device

def attention_decode(q, k, v, pos, window: int | None, scale: float, out) -> None:
    """One query at the position pos (a device int32 [1]) against cache layers k, v (as for attention, which must
    fit): q, out [1, H, Dh] float32 contiguous."""
    _, h, dh = q.shape
    kernel("attention.cu", "attention_decode_f32")(
        (h,), (32 * ATTENTION_WARPS,),
        (q, k, v, out, pos, np.int32(h), np.int32(k.shape[0]), np.int32(dh), np.int32(k.strides[0] // 4),
         np.int32(window or 0), np.float32(scale)), shared_mem=ATTENTION_WARPS * (dh + 2) * 4)


def decode_attention_batch(q, k, v, caches_k, caches_v, positions, layer: int, window: int | None, scale: float):
    """ops.decode_attention_batch on the GPU, reading each sequence's position on the device (so a captured
    decode step replays at any position): q [B, H, Dh], k, v [B, H_kv, Dh] float32; caches_k/v: B caches
    [L, H_kv, S, Dh]; positions: [B] int on the device. None when the kernel does not cover the shape."""
    import cupy
    if not all(_attention_fits(q, ck[layer], cv[layer]) for ck, cv in zip(caches_k, caches_v)):
        return None
    q, k, v = (cupy.ascontiguousarray(a, dtype=cupy.float32) for a in (q, k, v))
    positions = cupy.asarray(positions, dtype=cupy.int32)
    out = cupy.empty_like(q)
    for b, (ck, cv) in enumerate(zip(caches_k, caches_v)):
        pos = positions[b:b + 1]
        kv_store(k[b:b + 1], v[b:b + 1], ck[layer], cv[layer], pos)
        attention_decode(q[b:b + 1], ck[layer], cv[layer], pos, window, scale, out[b:b + 1])
    return out


def rope_table(inv_freq, pos, cos, sin):
    """cos, sin [T, Dh/2] float32 of the positions pos (a device int32 [T]; T = 1 for a decode step);
    inv_freq: [Dh/2] float64 on the device (converted when not). Returns (cos, sin)."""
    import cupy
    half, t = inv_freq.shape[0], pos.size
    kernel("rope.cu", "rope_table_f32")((_blocks(half, 128), min(max(t, 1), 65535)), (128,),
                                        (cupy.asarray(inv_freq, dtype=cupy.float64), pos, cos, sin, np.int32(half),
                                         np.int32(t)))
    return cos, sin


def kv_store(k, v, k_layer, v_layer, pos) -> None:
    """Write k, v [1, H_kv, Dh] float32 at the position pos (a device int32 [1]) of cache layers [H_kv, S, Dh]
    (rows of a head contiguous, pos < S)."""
    _, h_kv, dh = k.shape
    kernel("kv_store.cu", "kv_store_f32")((_blocks(h_kv * dh, 256),), (256,),
                                          (k, v, k_layer, v_layer, pos, np.int32(h_kv), np.int32(dh),
                                           np.int32(k_layer.strides[0] // 4)))
