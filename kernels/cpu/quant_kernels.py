"""Compiled (numba) kernels over GGUF blocks: dequantize rows, and the fused dequantize-and-dot mat-vec.

One `_row_<type>(row, out)` per type turns a row of stored blocks (uint8) into float32 (prefill tiles, embedding
rows, F16/BF16 dots). The mat-vec runs the fused row loops of kernels/cpu/simd.py on ranges of rows spread over
all threads, activations in float32. kernels/quants.py holds the NumPy twins and the block layouts; the tests
check both agree.

f16 scales are read through a 65536-entry table (as ggml does), so no float16 arithmetic is needed.
"""
import functools

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from kernels.cpu.simd import (float_rows_q4_0, float_rows_q4_1, float_rows_q4_k, float_rows_q5_0, float_rows_q5_1,
                              float_rows_q5_k, float_rows_q6_k, float_rows_q8_0, float_tiles_q4_0, float_tiles_q4_1,
                              float_tiles_q4_k, float_tiles_q5_0, float_tiles_q5_1, float_tiles_q5_k, float_tiles_q6_k,
                              float_tiles_q8_0)
from kernels.quants import GGMLType

F16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 = int(GGMLType.Q8_0), int(GGMLType.Q4_0), int(GGMLType.Q4_1), int(GGMLType.Q5_0), \
    int(GGMLType.Q5_1)
Q4_K, Q5_K, Q6_K, F16, BF16 = int(GGMLType.Q4_K), int(GGMLType.Q5_K), int(GGMLType.Q6_K), int(GGMLType.F16), \
    int(GGMLType.BF16)


@njit(cache=True, inline="always")
def _f16(row, o):
    """The little-endian float16 at byte o, as float32."""
    return F16_TABLE[np.int32(row[o]) | (np.int32(row[o + 1]) << 8)]


@njit(cache=True, inline="always")
def _u32(row, o):
    return (np.uint32(row[o]) | (np.uint32(row[o + 1]) << 8) | (np.uint32(row[o + 2]) << 16)
            | (np.uint32(row[o + 3]) << 24))


@njit(cache=True)
def _row_q8_0(row, out):
    """Q8_0, 34 bytes / 32 values: f16 d, int8 q[32]; v = d·q."""
    for b in range(out.shape[0] // 32):
        o, k = b * 34, b * 32
        d = _f16(row, o)
        for j in range(32):
            out[k + j] = d * np.float32(np.int8(row[o + 2 + j]))


@njit(cache=True)
def _row_q4_0(row, out):
    """Q4_0, 18 bytes / 32 values: f16 d, 16 bytes of nibbles (low: values 0-15, high: 16-31); v = d·(q-8)."""
    for b in range(out.shape[0] // 32):
        o, k = b * 18, b * 32
        d = _f16(row, o)
        for j in range(16):
            q = np.int32(row[o + 2 + j])
            out[k + j] = d * np.float32((q & 15) - 8)
            out[k + 16 + j] = d * np.float32((q >> 4) - 8)


@njit(cache=True)
def _row_q4_1(row, out):
    """Q4_1, 20 bytes / 32 values: f16 d, f16 m, 16 bytes of nibbles; v = d·q + m."""
    for b in range(out.shape[0] // 32):
        o, k = b * 20, b * 32
        d, m = _f16(row, o), _f16(row, o + 2)
        for j in range(16):
            q = np.int32(row[o + 4 + j])
            out[k + j] = d * np.float32(q & 15) + m
            out[k + 16 + j] = d * np.float32(q >> 4) + m


@njit(cache=True)
def _row_q5_0(row, out):
    """Q5_0, 22 bytes / 32 values: f16 d, u32 high bits, 16 bytes of nibbles; v = d·(q-16)."""
    for b in range(out.shape[0] // 32):
        o, k = b * 22, b * 32
        d = _f16(row, o)
        qh = _u32(row, o + 2)
        for j in range(16):
            q = np.int32(row[o + 6 + j])
            h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
            h1 = np.int32((qh >> np.uint32(j + 16)) & np.uint32(1)) << 4
            out[k + j] = d * np.float32(((q & 15) | h0) - 16)
            out[k + 16 + j] = d * np.float32(((q >> 4) | h1) - 16)


@njit(cache=True)
def _row_q5_1(row, out):
    """Q5_1, 24 bytes / 32 values: f16 d, f16 m, u32 high bits, 16 bytes of nibbles; v = d·q + m."""
    for b in range(out.shape[0] // 32):
        o, k = b * 24, b * 32
        d, m = _f16(row, o), _f16(row, o + 2)
        qh = _u32(row, o + 4)
        for j in range(16):
            q = np.int32(row[o + 8 + j])
            h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
            h1 = np.int32((qh >> np.uint32(j + 16)) & np.uint32(1)) << 4
            out[k + j] = d * np.float32((q & 15) | h0) + m
            out[k + 16 + j] = d * np.float32((q >> 4) | h1) + m


@njit(cache=True, inline="always")
def _scale_min_k4(row, s, j):
    """6-bit scale and min of sub-block j from the 12 packed bytes at s (Q4_K, Q5_K)."""
    if j < 4:
        return np.int32(row[s + j]) & 63, np.int32(row[s + j + 4]) & 63
    sc = (np.int32(row[s + j + 4]) & 15) | ((np.int32(row[s + j - 4]) >> 6) << 4)
    m = (np.int32(row[s + j + 4]) >> 4) | ((np.int32(row[s + j]) >> 6) << 4)
    return sc, m


@njit(cache=True)
def _row_q4_k(row, out):
    """Q4_K, 144 bytes / 256 values: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32,
    128 bytes of nibbles (each 32 bytes: low nibbles → sub-block 2i, high → 2i+1); v = (d·sc)·q − (dmin·m)."""
    for b in range(out.shape[0] // 256):
        o, k = b * 144, b * 256
        d, dmin = _f16(row, o), _f16(row, o + 2)
        for i in range(4):
            sc1, m1 = _scale_min_k4(row, o + 4, 2 * i)
            sc2, m2 = _scale_min_k4(row, o + 4, 2 * i + 1)
            d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
            for j in range(32):
                q = np.int32(row[o + 16 + 32 * i + j])
                out[k + 64 * i + j] = d1 * np.float32(q & 15) - dm1
                out[k + 64 * i + 32 + j] = d2 * np.float32(q >> 4) - dm2


@njit(cache=True)
def _row_q5_k(row, out):
    """Q5_K, 176 bytes / 256 values: f16 d, f16 dmin, 12 bytes of scales/mins, 32 bytes of high bits (bit 2i of
    byte j: value j of sub-block 2i), 128 bytes of nibbles as Q4_K; v = (d·sc)·q − (dmin·m)."""
    for b in range(out.shape[0] // 256):
        o, k = b * 176, b * 256
        d, dmin = _f16(row, o), _f16(row, o + 2)
        for i in range(4):
            sc1, m1 = _scale_min_k4(row, o + 4, 2 * i)
            sc2, m2 = _scale_min_k4(row, o + 4, 2 * i + 1)
            d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
            for j in range(32):
                q = np.int32(row[o + 48 + 32 * i + j])
                h = np.int32(row[o + 16 + j]) >> (2 * i)
                out[k + 64 * i + j] = d1 * np.float32((q & 15) | ((h & 1) << 4)) - dm1
                out[k + 64 * i + 32 + j] = d2 * np.float32((q >> 4) | ((h & 2) << 3)) - dm2


@njit(cache=True)
def _row_q6_k(row, out):
    """Q6_K, 210 bytes / 256 values: 128 bytes low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales (one per
    16 values), f16 d; v = (d·sc)·(q − 32)."""
    for b in range(out.shape[0] // 256):
        o, k = b * 210, b * 256
        d = _f16(row, o + 208)
        for n in range(2):
            ql, qh, sc, y = o + 64 * n, o + 128 + 32 * n, o + 192 + 8 * n, k + 128 * n
            for j in range(32):
                s = j // 16
                lo, hi, h = np.int32(row[ql + j]), np.int32(row[ql + 32 + j]), np.int32(row[qh + j])
                out[y + j] = d * np.float32(np.int8(row[sc + s])) * np.float32(((lo & 15) | ((h & 3) << 4)) - 32)
                out[y + 32 + j] = (d * np.float32(np.int8(row[sc + s + 2]))
                                   * np.float32(((hi & 15) | (((h >> 2) & 3) << 4)) - 32))
                out[y + 64 + j] = (d * np.float32(np.int8(row[sc + s + 4]))
                                   * np.float32(((lo >> 4) | (((h >> 4) & 3) << 4)) - 32))
                out[y + 96 + j] = (d * np.float32(np.int8(row[sc + s + 6]))
                                   * np.float32(((hi >> 4) | (((h >> 6) & 3) << 4)) - 32))


@njit(cache=True)
def _row_f16(row, out):
    """F16: two little-endian bytes per value."""
    for j in range(out.shape[0]):
        out[j] = _f16(row, 2 * j)


@njit(cache=True)
def _row_bf16(row, out):
    """BF16: the upper 16 bits of a float32, two little-endian bytes per value."""
    bits = out.view(np.uint32)
    for j in range(out.shape[0]):
        bits[j] = (np.uint32(row[2 * j]) << 16) | (np.uint32(row[2 * j + 1]) << 24)


@njit(cache=True, inline="always")
def _i8(v):
    """uint8 byte → its int8 value."""
    return (np.int32(v) ^ 128) - 128


@njit(inline="always")
def dequantize_row(t, row, out):
    """Dequantize one row of stored blocks (uint8) of GGML type t into out (float32, row length). Inlined: where
    t is a kernel's compile-time type only that type's branch is compiled."""
    if t == Q8_0:
        _row_q8_0(row, out)
    elif t == Q4_0:
        _row_q4_0(row, out)
    elif t == Q4_1:
        _row_q4_1(row, out)
    elif t == Q5_0:
        _row_q5_0(row, out)
    elif t == Q5_1:
        _row_q5_1(row, out)
    elif t == Q4_K:
        _row_q4_k(row, out)
    elif t == Q5_K:
        _row_q5_k(row, out)
    elif t == Q6_K:
        _row_q6_k(row, out)
    elif t == F16:
        _row_f16(row, out)
    elif t == BF16:
        _row_bf16(row, out)


@njit(inline="always")
def _row_half(t, row, out):
    """dequantize_row for F16 or BF16 (t at run time: two small branches)."""
    if t == F16:
        _row_f16(row, out)
    else:
        _row_bf16(row, out)


@njit(cache=True)
def block_sums(x, out):
    """out[b] = Σ_j x[32b + j]: x: [K] float32 → out: [K/32] float32 (the min and offset terms of the dots)."""
    for b in range(x.shape[0] // 32):
        total = np.float32(0.0)
        for j in range(32):
            total += x[32 * b + j]
        out[b] = total


@njit(inline="always")
def dot_rows(t, raw, r0, r1, x, xsum, out):
    """out[r] = Σ_k W[r, k]·x[k] for rows r0 <= r < r1 of raw ([N, row_bytes] uint8 of type t); xsum: block_sums
    of x. The quantized types run a fused row loop of kernels/cpu/simd.py; F16/BF16 rows are converted, then
    dotted."""
    k = x.shape[0]
    if t == Q8_0:
        float_rows_q8_0(out, raw, r0, r1, x, xsum, k // 32)
    elif t == Q4_0:
        float_rows_q4_0(out, raw, r0, r1, x, xsum, k // 32)
    elif t == Q4_1:
        float_rows_q4_1(out, raw, r0, r1, x, xsum, k // 32)
    elif t == Q5_0:
        float_rows_q5_0(out, raw, r0, r1, x, xsum, k // 32)
    elif t == Q5_1:
        float_rows_q5_1(out, raw, r0, r1, x, xsum, k // 32)
    elif t == Q4_K:
        float_rows_q4_k(out, raw, r0, r1, x, xsum, k // 256)
    elif t == Q5_K:
        float_rows_q5_k(out, raw, r0, r1, x, xsum, k // 256)
    elif t == Q6_K:
        float_rows_q6_k(out, raw, r0, r1, x, xsum, k // 256)
    else:
        _dot_rows_half(t, raw, r0, r1, x, out)


@njit(cache=True, fastmath=True)
def _dot_rows_half(t, raw, r0, r1, x, out):
    """dot_rows for F16/BF16: each row converted to float32, then dotted."""
    k = x.shape[0]
    buf = np.empty(k, np.float32)
    for r in range(r0, r1):
        _row_half(t, raw[r], buf)
        total = np.float32(0.0)
        for j in range(k):
            total += buf[j] * x[j]
        out[r] = total


@njit(inline="always")
def dot_rows_tile(t, raw, r0, r1, xi, out):
    """dot_rows for a tile of 8 or 4 tokens: out[:, r] += W[r] · x[:, :]ᵀ for r0 <= r < r1; xi: [K/32, tile, 32]
    float32 (interleave_tile of the tile's x), out: [tile, N]; raw: the rows' bytes of xi's span of K. Each row is
    unpacked once for the whole tile."""
    n = xi.shape[0]
    if t == Q8_0:
        float_tiles_q8_0(out, raw, r0, r1, xi, n)
    elif t == Q4_0:
        float_tiles_q4_0(out, raw, r0, r1, xi, n)
    elif t == Q4_1:
        float_tiles_q4_1(out, raw, r0, r1, xi, n)
    elif t == Q5_0:
        float_tiles_q5_0(out, raw, r0, r1, xi, n)
    elif t == Q5_1:
        float_tiles_q5_1(out, raw, r0, r1, xi, n)
    elif t == Q4_K:
        float_tiles_q4_k(out, raw, r0, r1, xi, n // 8)
    elif t == Q5_K:
        float_tiles_q5_k(out, raw, r0, r1, xi, n // 8)
    elif t == Q6_K:
        float_tiles_q6_k(out, raw, r0, r1, xi, n // 8)
    else:
        _tile_rows_half(t, raw, r0, r1, xi, out)


@njit(cache=True, fastmath=True)
def _tile_rows_half(t, raw, r0, r1, xi, out):
    """dot_rows_tile for F16/BF16: each row converted to float32, then dotted with every token of the tile."""
    groups, tile = xi.shape[0], xi.shape[1]
    buf = np.empty(groups * 32, np.float32)
    for r in range(r0, r1):
        _row_half(t, raw[r], buf)
        for tok in range(tile):
            total = np.float32(0.0)
            for g in range(groups):
                for j in range(32):
                    total += buf[g * 32 + j] * xi[g, tok, j]
            out[tok, r] += total


@njit(cache=True)
def interleave_tile(x, xi):
    """x: [tile, K] float32 → xi: [K/32, tile, 32], each token's 32-value groups side by side."""
    for g in range(xi.shape[0]):
        for tok in range(xi.shape[1]):
            for j in range(32):
                xi[g, tok, j] = x[tok, g * 32 + j]


@intrinsic
def _pointer(typingctx, address, dtype):
    """The integer `address` as a pointer to `dtype` (a NumPy scalar type) that numba.carray can view."""
    ptr = types.CPointer(dtype.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(address, dtype), codegen


@njit(inline="always")
def matrix(addresses, rows, row_bytes, i):
    """Matrix i of a launch: [rows[i], row_bytes[i]] uint8 at addresses[i] (C-contiguous, kept alive by the caller)."""
    return numba.carray(_pointer(addresses[i], np.uint8), (rows[i], row_bytes[i]))


@njit(inline="always")
def output(out, starts, rows, i, tokens):
    """Output i of a launch: [tokens, rows[i]] float32 starting starts[i]·tokens values into the flat buffer out."""
    return numba.carray(_pointer(out.ctypes.data + 4 * tokens * starts[i], np.float32), (tokens, rows[i]))


# The kernels below are made per GGML type (t a compile-time constant of a closure, kept apart in numba's cache by
# its value): a model compiles only its own weight types' code, and each kernel has one signature whatever the number
# of matrices, which come as addresses. A launch's matrices all have type t; outputs go to one flat buffer, matrix i
# at starts[i]·T.

CHUNKS = 32  # row chunks per matrix: the unit of work handed to a thread


@functools.cache
def matvec(t: int):
    """The mat-vec kernel for type t: f(addresses, rows, row_bytes, x, out, starts) sets out's matrix i to
    W_i·x for several [N_i, K] matrices sharing x: [K] float32, in one parallel launch.

    Fused: each weight is unpacked in registers and multiplied into running float32 sums, so every weight byte is
    read from memory once. addresses, rows, row_bytes, starts: [M] int64 (starts: where each output begins, in rows)."""
    @njit(parallel=True, cache=True)
    def matvec_t(addresses, rows, row_bytes, x, out, starts):
        xsum = np.empty(x.shape[0] // 32, np.float32)
        block_sums(x, xsum)
        for c in prange(addresses.shape[0] * CHUNKS):
            i, part = c // CHUNKS, c % CHUNKS
            n = rows[i]
            dot_rows(t, matrix(addresses, rows, row_bytes, i), part * n // CHUNKS, (part + 1) * n // CHUNKS, x,
                     xsum, output(out, starts, rows, i, 1)[0])
    return matvec_t


SPAN_K = 768  # the most values of K dotted per pass: a tile's activations for them (24 KB) stay in L1


@functools.cache
def matmat(t: int):
    """matvec for a few tokens at once: f(addresses, rows, row_bytes, x, out, starts) adds W_i·x[t] into out's
    matrix i ([T, N_i], zeroed by the caller); x: [T, K] float32 with T a multiple of 4. Tokens go in tiles of 8
    (then one of 4 for the rest), K in spans of at most SPAN_K (multiples of 256); each weight byte is read from
    memory once and unpacked once per tile, and the tile's activations for the span stay in L1 cache."""
    @njit(parallel=True, cache=True)
    def matmat_t(addresses, rows, row_bytes, x, out, starts):
        tokens, k = x.shape
        firsts = list(range(0, tokens - tokens % 8, 8))
        if tokens % 8:
            firsts.append(tokens - 4)
        tiles = []
        for first in firsts:
            xi = np.empty((k // 32, 8 if first + 8 <= tokens else 4, 32), np.float32)
            interleave_tile(x[first:first + xi.shape[1]], xi)
            tiles.append(xi)
        spans = -(-k // SPAN_K)
        span = -(-k // spans // 256) * 256
        for c in prange(addresses.shape[0] * CHUNKS):
            i, part = c // CHUNKS, c % CHUNKS
            n, rb = rows[i], row_bytes[i]
            full, o = matrix(addresses, rows, row_bytes, i), output(out, starts, rows, i, tokens)
            for lo in range(0, k, span):
                hi = min(k, lo + span)
                raw = full[:, lo * rb // k:hi * rb // k]
                for j in range(len(firsts)):
                    first = firsts[j]
                    dot_rows_tile(t, raw, part * n // CHUNKS, (part + 1) * n // CHUNKS, tiles[j][lo // 32:hi // 32],
                                  o[first:first + tiles[j].shape[1]])
    return matmat_t


@functools.cache
def dequantize_rows(t: int):
    """f(raw, out): raw: [n, row_bytes] uint8 of type t → out: [n, K] float32, rows spread over threads."""
    @njit(parallel=True, cache=True)
    def dequantize_rows_t(raw, out):
        for r in prange(raw.shape[0]):
            dequantize_row(t, raw[r], out[r])
    return dequantize_rows_t


@functools.cache
def dequantize_rows_serial(t: int):
    """dequantize_rows on the calling thread only, without the GIL (for callers running their own threads)."""
    @njit(nogil=True, cache=True)
    def dequantize_rows_serial_t(raw, out):
        for r in range(raw.shape[0]):
            dequantize_row(t, raw[r], out[r])
    return dequantize_rows_serial_t
