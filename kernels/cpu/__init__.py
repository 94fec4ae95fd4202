"""Fast CPU kernels for quantized weights (numba), with kernels/ops.py's NumPy code as their reference.

`matmul_transb(x, w)` is the entry point: one token → the fused dequantize-and-dot mat-vec; several tokens →
rows dequantized a tile at a time into a reused float32 buffer, then BLAS. BLAS is kept single-threaded and the
output columns of each product are split over a small thread pool instead (see below). `available` says whether
numba could be imported; ENGINE_KERNELS=numpy forces the NumPy reference path.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# OpenMP workers spin a bounded while after each kernel (about 0.1 ms), then sleep. Sleeping at once costs a
# wake-up per launch (decode ran 1.6x slower); spinning forever starves the main thread on 2 cores (8 ms/launch).
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "100000")

try:
    from kernels.cpu import quant_kernels
except ImportError:  # numba missing or broken: the NumPy path runs
    quant_kernels = None

available = quant_kernels is not None and os.environ.get("ENGINE_KERNELS", "numba") != "numpy"
if available:
    # BLAS runs single-threaded beside the kernels' own threads: OpenBLAS workers spin after each call and, with
    # as many threads as cores, starve the kernels' threads (prefill ran 12x slower).
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, user_api="blas")
TILE_BYTES = 8 << 20  # float32 rows dequantized per BLAS call in prefill
_tile = np.empty(0, np.float32)
_pool: ThreadPoolExecutor | None = None


def threads() -> int:
    """Worker threads the kernels use (set by kernels.backend.set_threads)."""
    import numba
    return numba.get_num_threads()


def matmul_f32(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x @ wᵀ for float32 x: [T, K], w: [N, K] with the N output columns split over the worker threads, each a
    single-threaded BLAS call (NumPy releases the GIL inside it)."""
    global _pool
    n = w.shape[0]
    if out is None:
        out = np.empty((x.shape[0], n), dtype=np.float32)
    workers = min(threads(), max(1, n // 64))
    if workers == 1:
        return np.matmul(x, w.T, out=out)
    if _pool is None or _pool._max_workers < workers:
        _pool = ThreadPoolExecutor(workers, thread_name_prefix="engine-gemm")
    cuts = [n * i // workers for i in range(workers + 1)]
    jobs = [_pool.submit(np.matmul, x, w[a:b].T, out=out[:, a:b]) for a, b in zip(cuts, cuts[1:])]
    for job in jobs:
        job.result()
    return out


def matmul_transb_many(x: np.ndarray, ws: list) -> list[np.ndarray]:
    """[x @ wᵀ for w in ws] for QTensors sharing x: [T, K] float32. One token: a single parallel mat-vec launch
    over all the matrices (q/k/v, gate/up)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] != 1:
        return [matmul_transb(x, w) for w in ws]
    outs = tuple(np.empty((1, w.shape[0]), dtype=np.float32) for w in ws)
    quant_kernels.matvec(tuple(w.raw for w in ws), tuple(int(w.ggml_type) for w in ws), x[0],
                         tuple(o[0] for o in outs))
    return list(outs)


def matmul_transb(x: np.ndarray, w) -> np.ndarray:
    """x: [T, K] float32, w: QTensor [N, K] → x @ wᵀ: [T, N] float32."""
    global _tile
    n, k = w.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] == 1:
        return matmul_transb_many(x, [w])[0]
    t = int(w.ggml_type)
    out = np.empty((x.shape[0], n), dtype=np.float32)
    rows = max(1, min(n, TILE_BYTES // (4 * k)))
    if _tile.size < rows * k:
        _tile = np.empty(rows * k, np.float32)
    for i in range(0, n, rows):
        j = min(n, i + rows)
        tile = _tile[:(j - i) * k].reshape(j - i, k)
        quant_kernels.dequantize_rows(w.raw[i:j], t, tile)
        matmul_f32(x, tile, out[:, i:j])
    return out


def dequantize_rows(w, index) -> np.ndarray:
    """Rows of a QTensor as float32 [n, K] (embedding lookups). index: int array."""
    raw = w.raw[np.asarray(index)]
    out = np.empty((raw.shape[0], w.shape[1]), np.float32)
    quant_kernels.dequantize_rows(raw, int(w.ggml_type), out)
    return out
