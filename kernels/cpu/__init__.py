"""Fast CPU kernels for quantized weights (numba); kernels/ops.py's NumPy code is their reference and fallback.

`matmul_transb(x, w)`: x [T, K] float32 times a QTensor w [N, K] transposed → [T, N] float32, w staying quantized.
Up to `fused_max_t(w)` tokens (decode, a decode batch, a short prompt) the fused dequantize-and-dot kernels read
each weight byte once; more tokens (a long prompt) amortize unpacking, so rows are dequantized a tile at a time
into reused float32 buffers and multiplied with BLAS. The small per-layer operators (RMSNorm, RoPE, SwiGLU,
decode attention) have compiled twins here, since NumPy's per-call overhead is large next to a small model's
token.

`available`: numba imported (a Device with kernels="numba" uses these kernels; kernels.device). The int8 path
(`int8=True`, a Device's activations="int8") quantizes x per 32 values and dots in integers
(kernels/cpu/int8_kernels.py): faster, slightly less exact.
"""
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kernels.qtensor import QTensor
from kernels.quants import GGMLType, block_shape

try:
    from kernels.cpu import first_use, int8_kernels, op_kernels, quant_kernels, simd
except ImportError:  # numba missing or broken: the NumPy path runs
    first_use = int8_kernels = op_kernels = quant_kernels = simd = None

available = quant_kernels is not None
_K_QUANTS = {int(GGMLType.Q4_K), int(GGMLType.Q5_K), int(GGMLType.Q6_K)}
_HALF_FLOATS = {int(GGMLType.F16), int(GGMLType.BF16)}
# Tokens up to which the fused kernels beat dequantizing the whole matrix for BLAS (README, "Notes on the CPU
# kernels"); the K-quants cost more to unpack per weight, and for 16-bit floats the multi-token loops lose to BLAS
# from 2 tokens on.
FUSED_MAX_T = 96
FUSED_MAX_T_K_QUANTS = 48
FUSED_MAX_T_HALF_FLOATS = 1
# Seconds to compile one weight type's kernels, and its int8 mat-vec, on a 2-core machine (for the first run's note).
COMPILE_S, COMPILE_S_INT8 = 6, 3
TILE_BYTES = 4 << 20  # float32 rows dequantized per BLAS call in prefill, per worker
_local = threading.local()
_pools: dict[int, ThreadPoolExecutor] = {}  # worker count → the prefill pool of that size (made once, kept)
_pools_lock = threading.Lock()


def configure_openmp() -> None:
    """Set libgomp's spin policy before its first parallel launch (it reads the environment once, per process):
    workers spin a bounded while after each kernel, then sleep. Sleeping at once costs a wake-up per launch;
    spinning forever starves the main thread on machines with few cores (README, "Notes on the CPU kernels").
    libgomp cuts the spin short once more of its threads exist than CPUs, and each thread that launches kernels
    keeps its own pool while it lives: one thread should do the launching (engine.runtime.runner)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", "100000")


def matmul_transb_many(x: np.ndarray, ws: list, int8: bool = False) -> list[np.ndarray]:
    """[x @ wᵀ for w in ws] for QTensors sharing x: [T, K] float32. Up to fused_max_t tokens: one parallel fused
    launch per weight type over all the matrices of that type (q/k/v, gate/up); more: dequantized tiles and BLAS
    per matrix. int8: one token's mat-vec quantizes x to int8 (the opt-in path) for the types that have integer
    dots."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    t = x.shape[0]
    if t > min(fused_max_t(w) for w in ws):
        return [matmul_transb(x, w, int8) for w in ws]
    plan = _launches(ws)
    tokens = 1 if t == 1 else -(-t // 4) * 4  # the multi-token kernels take tiles of 4 or 8 tokens
    out = np.zeros(tokens * plan.total_rows, np.float32) if tokens > 1 else np.empty(plan.total_rows, np.float32)
    if tokens > 1:
        if tokens != t:
            x = np.concatenate([x, np.zeros((tokens - t, x.shape[1]), np.float32)])
        for g in plan.groups:
            quant_kernels.matmat(g.ggml_type)(g.addresses, g.rows, g.row_bytes, x, out, g.starts)
    elif int8 and any(g.ggml_type in int8_kernels.INT8_TYPES for g in plan.groups):
        _matvec_int8(plan, x[0], out)
    else:
        for g in plan.groups:
            quant_kernels.matvec(g.ggml_type)(g.addresses, g.rows, g.row_bytes, x[0], out, g.starts)
    return [out[tokens * a:tokens * (a + n)].reshape(tokens, n)[:t] for a, n in plan.outputs]


def _matvec_int8(plan: "_Launches", row: np.ndarray, out: np.ndarray) -> None:
    """One token's mat-vec with row: [K] quantized once to int8 for the groups whose type has integer dots."""
    blocks = row.shape[0] // 32
    xq, xd, xs = np.empty(row.shape[0], np.int8), np.empty(blocks, np.float32), np.empty(blocks, np.float32)
    int8_kernels.quantize_activations(row, xq, xd, xs)
    for g in plan.groups:
        if g.ggml_type in int8_kernels.INT8_TYPES:
            int8_kernels.matvec_int8(g.ggml_type)(g.addresses, g.rows, g.row_bytes, xq, xd, xs, out, g.starts)
        else:
            quant_kernels.matvec(g.ggml_type)(g.addresses, g.rows, g.row_bytes, row, out, g.starts)


class _Group:
    """The matrices of one weight type in a launch: their addresses, rows, row bytes and output starts (rows into
    the launch's flat output), [M] int64 each, as the kernels take them."""
    __slots__ = ("ggml_type", "addresses", "rows", "row_bytes", "starts")

    def __init__(self, ggml_type: int, raws: list[np.ndarray], starts: list[int]):
        self.ggml_type = ggml_type
        self.addresses = np.array([r.ctypes.data for r in raws], np.int64)
        self.rows = np.array([r.shape[0] for r in raws], np.int64)
        self.row_bytes = np.array([r.shape[1] for r in raws], np.int64)
        self.starts = np.array(starts, np.int64)


class _Launches:
    """How a list of QTensors sharing an input is multiplied: one _Group per weight type, the outputs in list order
    in one flat buffer (outputs: (start row, rows) of each). Holds weak references to the QTensors and strong ones to
    their raw bytes, which the kernels read by address."""
    __slots__ = ("refs", "raws", "groups", "outputs", "total_rows")

    def __init__(self, ws: list):
        self.refs = [weakref.ref(w) for w in ws]
        self.raws = [np.ascontiguousarray(w.raw) for w in ws]
        starts = np.cumsum([0] + [w.shape[0] for w in ws]).tolist()
        self.outputs = [(starts[i], w.shape[0]) for i, w in enumerate(ws)]
        self.total_rows = starts[-1]
        by_type: dict[int, list[int]] = {}
        for i, w in enumerate(ws):
            by_type.setdefault(int(w.ggml_type), []).append(i)
        self.groups = [_Group(t, [self.raws[i] for i in members], [starts[i] for i in members])
                       for t, members in by_type.items()]

    def holds(self, ws: list) -> bool:
        return len(ws) == len(self.refs) and all(r() is w for r, w in zip(self.refs, ws))


_plans: dict[tuple[int, ...], _Launches] = {}


def _launches(ws: list) -> _Launches:
    """The _Launches of ws, made once per list of matrices and dropped when one of them is collected."""
    key = tuple(map(id, ws))
    plan = _plans.get(key)
    if plan is None or not plan.holds(ws):
        plan = _Launches(ws)
        for w in ws:
            weakref.finalize(w, _plans.pop, key, None)
        _plans[key] = plan
    return plan


def matmul_transb(x: np.ndarray, w, int8: bool = False) -> np.ndarray:
    """x: [T, K] float32, w: QTensor [N, K] → x @ wᵀ: [T, N] float32 (int8: as in matmul_transb_many).

    Up to fused_max_t(w) tokens (decode, a decode batch, a short prompt): the fused kernels, weights read once.
    More: the rows of w are cut into tiles spread over a pool of worker threads; each worker dequantizes a tile
    into its own reused float32 buffer and multiplies it with single-threaded BLAS (both release the GIL), so the
    workers never compete with another thread pool for the cores.
    """
    n, k = w.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] <= fused_max_t(w):
        return matmul_transb_many(x, [w], int8)[0]
    out = np.empty((x.shape[0], n), dtype=np.float32)
    rows = max(1, min(n, TILE_BYTES // (4 * k), -(-n // _workers())))

    def tile(i: int) -> None:
        j = min(n, i + rows)
        buf = getattr(_local, "tile", None)
        if buf is None or buf.size < rows * k:
            buf = _local.tile = np.empty(rows * k, np.float32)
        buf = buf[:(j - i) * k].reshape(j - i, k)
        quant_kernels.dequantize_rows_serial(int(w.ggml_type))(w.raw[i:j], buf)
        np.matmul(x, buf.T, out=out[:, i:j])

    list(_get_pool().map(tile, range(0, n, rows)))
    return out


def prepare(matmul_types: set[int], lookup_types: set[int], int8: bool, say: Callable[[str], None]) -> None:
    """Compile, or load from numba's cache, the kernels of the weight types a model uses: for matmul_types the
    mat-vec, multi-token and prefill-tile kernels (int8: also the int8 mat-vec), for lookup_types the row
    dequantizer of embedding lookups. Only these types' code is compiled; say(line) tells of each group of
    kernels before its first compile (kernels.cpu.first_use)."""
    for t in sorted(set(matmul_types) | set(lookup_types)):
        elements, _ = block_shape(t)
        w = QTensor(np.zeros((4, block_shape(t)[1]), np.uint8), t, (4, elements))
        x = np.ones((4, elements), np.float32)
        name = GGMLType(t).name

        def first_calls(w=w, x=x, t=t) -> None:
            if t in matmul_types:
                matmul_transb(x[:1], w)
                if fused_max_t(w) > 1:
                    matmul_transb(x, w)
                quant_kernels.dequantize_rows_serial(t)(w.raw, np.empty(w.shape, np.float32))
            if t in lookup_types:
                dequantize_rows(w, np.arange(1))

        first_use.run_group(f"the {name} kernels", COMPILE_S, first_calls, say)
        if int8 and t in matmul_types and t in int8_kernels.INT8_TYPES:
            first_use.run_group(f"the {name} int8 mat-vec", COMPILE_S_INT8,
                                lambda w=w, x=x: matmul_transb(x[:1], w, int8=True), say)


def fused_max_t(w) -> int:
    """The most tokens for which the fused kernels multiply x by w (QTensor); BLAS on dequantized tiles beyond."""
    t = int(w.ggml_type)
    return FUSED_MAX_T_K_QUANTS if t in _K_QUANTS else FUSED_MAX_T_HALF_FLOATS if t in _HALF_FLOATS else FUSED_MAX_T


def _workers() -> int:
    import numba
    return numba.get_num_threads()


def _get_pool() -> ThreadPoolExecutor:
    """The prefill pool with as many workers as the calling thread's kernel threads."""
    n = _workers()
    with _pools_lock:
        if n not in _pools:
            _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="engine-prefill")
        return _pools[n]


def takes(*arrays) -> bool:
    """Whether the compiled small operators can take these arrays: numba is there and every array is a float32
    NumPy array (the caller's Device says whether to use them)."""
    if not available:
        return False
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            return False
    return True


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    out = np.empty(x.shape, np.float32)
    d = x.shape[-1]
    op_kernels.rms_norm(np.ascontiguousarray(x).reshape(-1, d), np.asarray(weight), eps, out.reshape(-1, d))
    return out


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    out = np.empty(x.shape, np.float32)
    op_kernels.rope(np.asarray(x), cos, sin, interleaved, out)
    return out


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    out = np.empty(gate.shape, np.float32)
    op_kernels.swiglu(gate, up, out)
    return out


def decode_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, length: int, window: int | None,
                     scale: float) -> np.ndarray:
    """ops.attention for one query (q: [1, H, Dh]) at position length - 1; k, v: [H_kv, S_max, Dh] C-contiguous."""
    out = np.empty(q.shape, np.float32)
    op_kernels.decode_attention(q[0], k, v, length, window or 0, scale, out[0])
    return out


def decode_batch(caches_k: list, caches_v: list, starts: list[int]) -> tuple:
    """What op_kernels.decode_attention_batch reads of a decode step's caches (C-contiguous float32
    [L, H_kv, S_max, Dh] each): their addresses, layer strides in bytes, S_max and the new positions, [B] int64."""
    return (np.array([_address(c) for c in caches_k]), np.array([_address(c) for c in caches_v]),
            np.array([c.strides[0] for c in caches_k], np.int64), np.array([c.shape[2] for c in caches_k], np.int64),
            np.array(starts, np.int64))


def decode_attention_batch(q: np.ndarray, k: np.ndarray, v: np.ndarray, cpu_args: tuple, layer: int,
                           window: int | None, scale: float) -> np.ndarray:
    """ops.decode_attention_batch in one parallel launch; cpu_args: decode_batch of the step's caches."""
    out = np.empty(q.shape, np.float32)
    op_kernels.decode_attention_batch(q, k, v, *cpu_args, layer, window or 0, scale, out)
    return out


_addresses: dict[int, tuple[weakref.ref, int]] = {}


def _address(a: np.ndarray) -> int:
    """a's data address, remembered while a lives (reading it through ctypes each decode step is slow)."""
    entry = _addresses.get(id(a))
    if entry is None or entry[0]() is not a:
        key = id(a)
        entry = _addresses[key] = (weakref.ref(a, lambda _: _addresses.pop(key, None)), a.ctypes.data)
    return entry[1]


def dequantize_rows(w, index) -> np.ndarray:
    """Rows of a QTensor as float32 [n, K] (embedding lookups). index: int array."""
    raw = w.raw[np.asarray(index)]
    out = np.empty((raw.shape[0], w.shape[1]), np.float32)
    quant_kernels.dequantize_rows(int(w.ggml_type))(raw, out)
    return out
