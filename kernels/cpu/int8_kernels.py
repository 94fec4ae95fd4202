"""Opt-in mat-vec with int8 activations (as llama.cpp does): x is quantized per 32-value block, then each weight
block is dotted in integers and scaled once.

    x[32b + j] ≈ xd[b] · xq[32b + j],   xq int8 in [-127, 127],   xd[b] = max_j |x[32b + j]| / 127

so Σ_k W[n, k]·x[k] ≈ Σ_b d_w · xd[b] · Σ_j q_w[j]·xq[32b + j] (+ min terms m_w · xs[b], xs[b] = xd[b]·Σ_j xq).
The error against the float32 path is at most Σ_k |W[n, k]| · xd[b(k)] / 2 (each activation is off by at most
half a step); tests/kernels/test_int8_kernels.py checks that bound. Q8_0, Q4_0, Q4_1, Q4_K and Q6_K have integer
row dots (kernels/cpu/simd.py, whole row ranges per call); other types keep the float mat-vec of
kernels/cpu/quant_kernels.py.
"""
import functools

import numpy as np
from numba import njit, prange

from kernels.cpu.quant_kernels import CHUNKS, Q4_0, Q4_1, Q4_K, Q6_K, Q8_0, matrix, output
from kernels.cpu.simd import int8_rows_q4_0, int8_rows_q4_1, int8_rows_q4_k, int8_rows_q6_k, int8_rows_q8_0

INT8_TYPES = (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)


@njit(cache=True)
def quantize_activations(x, xq, xd, xs):
    """x: [K] float32 (K a multiple of 32) → xq: [K] int8, xd: [K/32] float32 steps, xs: [K/32] float32 = xd·Σxq."""
    for b in range(x.shape[0] // 32):
        amax = np.float32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[32 * b + j]))
        d = amax / np.float32(127.0)
        inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        total = 0
        for j in range(32):
            q = np.int32(np.rint(x[32 * b + j] * inv))
            xq[32 * b + j] = q
            total += q
        xd[b] = d
        xs[b] = d * np.float32(total)


@njit(inline="always")
def idot_rows(t, raw, r0, r1, xq, xd, xs, out):
    """out[r] = Σ_k W[r, k]·x[k] for rows r0 <= r < r1 of raw ([N, row_bytes] uint8, type t in INT8_TYPES)
    against the quantized activations."""
    k = xq.shape[0]
    if t == Q8_0:
        int8_rows_q8_0(out, raw, r0, r1, xq, xd, xs, k // 32)
    elif t == Q4_0:
        int8_rows_q4_0(out, raw, r0, r1, xq, xd, xs, k // 32)
    elif t == Q4_1:
        int8_rows_q4_1(out, raw, r0, r1, xq, xd, xs, k // 32)
    elif t == Q4_K:
        int8_rows_q4_k(out, raw, r0, r1, xq, xd, xs, k // 256)
    else:
        int8_rows_q6_k(out, raw, r0, r1, xq, xd, xs, k // 256)


@functools.cache
def matvec_int8(t: int):
    """quant_kernels.matvec with int8 activations, for t in INT8_TYPES: f(addresses, rows, row_bytes, xq, xd, xs,
    out, starts), x quantized by quantize_activations into xq, xd, xs."""
    @njit(parallel=True, cache=True)
    def matvec_int8_t(addresses, rows, row_bytes, xq, xd, xs, out, starts):
        for c in prange(addresses.shape[0] * CHUNKS):
            i, part = c // CHUNKS, c % CHUNKS
            n = rows[i]
            idot_rows(t, matrix(addresses, rows, row_bytes, i), part * n // CHUNKS, (part + 1) * n // CHUNKS, xq, xd,
                      xs, output(out, starts, rows, i, 1)[0])
    return matvec_int8_t
