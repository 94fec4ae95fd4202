"""Quantized mat-mul speed per GGML type: `kernels.ops.matmul_transb(x, QTensor)` at T=1 (mat-vec) and T=128.

    python -m bench.ops [--types Q8_0,Q4_K,...] [--rows 3072] [--cols 1024] [--threads N]

Weights are random but valid blocks (random bytes with finite f16 scales; F16/BF16 from normal values). GB/s is
weight bytes as stored / time (best of several runs after a warm-up, so compilation is excluded); GFLOP/s is
2·T·rows·cols / time. F32 is a plain float32 array (the BLAS path), as a baseline.
"""
import argparse
import time

import numpy as np

from kernels.ops import matmul_transb
from kernels.qtensor import QTensor
from kernels.quants import GGMLType, block_shape

DEFAULT_TYPES = "F32,F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q4_K,Q5_K,Q6_K"
# byte offsets of the f16 scales in one block: everything else may hold any bits
F16_FIELDS = {GGMLType.Q8_0: (0,), GGMLType.Q4_0: (0,), GGMLType.Q5_0: (0,), GGMLType.Q4_1: (0, 2),
              GGMLType.Q5_1: (0, 2), GGMLType.Q4_K: (0, 2), GGMLType.Q5_K: (0, 2), GGMLType.Q6_K: (208,)}


def random_weight(t: GGMLType, rows: int, cols: int, rng: np.random.Generator):
    """A [rows, cols] weight of type t: a float32 array for F32, else a QTensor of valid random blocks."""
    if t is GGMLType.F32:
        return rng.standard_normal((rows, cols), dtype=np.float32)
    if t is GGMLType.F16:
        raw = rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    elif t is GGMLType.BF16:
        raw = (rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
        raw = raw.view(np.uint8)
    else:
        block_elems, block_bytes = block_shape(t)
        n_blocks = rows * cols // block_elems
        raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
        for off in F16_FIELDS[t]:
            scales = (rng.standard_normal(n_blocks) * 1e-2).astype(np.float16)
            raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
        raw = raw.reshape(rows, -1)
    return QTensor(raw, t, (rows, cols))


def best_time(fn, min_s: float = 0.5, min_runs: int = 3) -> float:
    fn()  # warm-up: compilation, first-touch
    times = []
    while len(times) < min_runs or sum(times) < min_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__.split("\n")[0])
    ap.add_argument("--types", default=DEFAULT_TYPES, help="comma-separated GGML types (default %(default)s)")
    ap.add_argument("--rows", type=int, default=3072, help="N: output features (default %(default)s)")
    ap.add_argument("--cols", type=int, default=1024, help="K: input features (default %(default)s)")
    ap.add_argument("--tokens", default="1,128", help="T values (default %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    a = ap.parse_args(argv)
    from kernels.device import select_device
    dev = select_device("cpu", threads=a.threads)
    dev.enter()
    threads = dev.threads
    token_counts = [int(t) for t in a.tokens.split(",")]
    rng = np.random.default_rng(0)

    print(f"matmul_transb(x [T, {a.cols}], W [{a.rows}, {a.cols}]), {threads} threads")
    print(f"{'type':<6} {'MB':>6}" + "".join(f" {f'T={t} ms':>10} {'GB/s':>6} {'GFLOP/s':>7}" for t in token_counts))
    for name in a.types.split(","):
        t = GGMLType[name.strip().upper()]
        w = random_weight(t, a.rows, a.cols, rng)
        nbytes = w.nbytes
        line = f"{t.name:<6} {nbytes / 1e6:>6.2f}"
        for n_tok in token_counts:
            x = rng.standard_normal((n_tok, a.cols), dtype=np.float32)
            s = best_time(lambda: matmul_transb(x, w, dev))
            line += f" {s * 1e3:>10.3f} {nbytes / s / 1e9:>6.2f} {2 * n_tok * a.rows * a.cols / s / 1e9:>7.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
