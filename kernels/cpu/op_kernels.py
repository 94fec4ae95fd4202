"""Compiled (numba) twins of the small per-layer operators of kernels/ops.py, for the CPU decode path.

In decode these operators touch a few kilobytes each, so NumPy's per-call overhead (several array temporaries per
operator, ~10 µs each) is most of their cost: 30 layers × ~15 NumPy calls were a quarter of a SmolLM2 token.
Each function here is a loop over the same arithmetic as its NumPy reference in kernels/ops.py (the tests check
they agree), serial except swiglu and decode_attention_batch (one parallel launch for a whole decode batch);
ops.py calls them for float32 NumPy inputs when numba is available.
"""
import math

import numba
import numpy as np
from numba import njit, prange, types
from llvmlite import ir
from numba.extending import intrinsic

FAST = {"contract", "reassoc", "arcp", "nsz"}  # no "ninf"/"nnan": masked scores are -inf


@intrinsic
def _pow2(typingctx, n):
    """2**n for a float32 n holding an integer in -126 .. 127, built from its exponent bits."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        biased = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(biased, ir.Constant(i32, 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@njit(inline="always", fastmath=FAST)
def _exp(x):
    """exp(x) for float32 x in a form loops vectorize (libm's expf is a scalar call: 7x slower per value here).
    x is clamped to [-87.33, 88.37] (so -inf → 1.2e-38); within 1 ulp of exp elsewhere (Cephes' expf: x = n·ln2 + r
    with |r| ≤ ln2/2, ln2 split in two for exactness, e^r by a degree-7 polynomial, 2^n from exponent bits)."""
    x = min(max(x, np.float32(-87.33654)), np.float32(88.37))
    n = np.float32(np.int32(x * np.float32(1.442695041) + np.float32(128.5))) - np.float32(128.0)  # round(x/ln2)
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return (p * r * r + r + np.float32(1.0)) * _pow2(n)


@njit(cache=True, fastmath=FAST)
def rms_norm(x, weight, eps, out):
    """x, out: [R, D] float32; weight: [D] → out[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight."""
    d = x.shape[1]
    for r in range(x.shape[0]):
        ss = np.float32(0.0)
        for j in range(d):
            ss += x[r, j] * x[r, j]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(d) + np.float32(eps))
        for j in range(d):
            out[r, j] = x[r, j] * inv * weight[j]


@njit(cache=True, fastmath=FAST)
def rope(x, cos, sin, interleaved, out):
    """x, out: [T, H, Dh] float32; cos, sin: [T, Dh/2]. Pairs (2i, 2i+1) when interleaved, else (i, i + Dh/2)."""
    half = x.shape[2] // 2
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            for i in range(half):
                a_at, b_at = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
                a, b, c, s = x[t, h, a_at], x[t, h, b_at], cos[t, i], sin[t, i]
                out[t, h, a_at] = a * c - b * s
                out[t, h, b_at] = b * c + a * s


@njit(cache=True, fastmath=FAST, inline="always")
def _attend_one(q, k, v, first, s, scale, scores, out):
    """One query head: q, out: [Dh]; k, v: [S_max, Dh] of its key/value head; positions first .. s-1 are seen;
    scores: [≥ s] float32 scratch. The weighted sum of values takes four positions per pass over out (one pass
    per position waits on out's store and reload each time: 2x slower)."""
    dh = q.shape[0]
    top = np.float32(-np.inf)
    for p in range(first, s):
        dot = np.float32(0.0)
        for j in range(dh):
            dot += q[j] * k[p, j]
        scores[p] = dot * np.float32(scale)
        top = max(top, scores[p])
    total = np.float32(0.0)
    for p in range(first, s):
        scores[p] = _exp(scores[p] - top)
        total += scores[p]
    for j in range(dh):
        out[j] = 0.0
    p = first
    while p + 4 <= s:
        w0, w1, w2, w3 = scores[p], scores[p + 1], scores[p + 2], scores[p + 3]
        for j in range(dh):
            out[j] += w0 * v[p, j] + w1 * v[p + 1, j] + w2 * v[p + 2, j] + w3 * v[p + 3, j]
        p += 4
    for p in range(p, s):
        for j in range(dh):
            out[j] += scores[p] * v[p, j]
    inv = np.float32(1.0) / total
    for j in range(dh):
        out[j] *= inv


@njit(cache=True, fastmath=FAST)
def decode_attention(q, k, v, s, window, scale, out):
    """One query per head at position s - 1, against cached positions 0 .. s-1. q, out: [H, Dh] float32;
    k, v: [H_kv, S_max ≥ s, Dh] C-contiguous; window: sliding-window size, 0 for none; query head h reads
    key/value head h // (H / H_kv)."""
    n_heads = q.shape[0]
    first = max(0, s - window) if window > 0 else 0
    scores = np.empty(s, np.float32)
    for h in range(n_heads):
        g = h // (n_heads // k.shape[0])
        _attend_one(q[h], k[g], v[g], first, s, scale, scores, out[h])


@intrinsic
def _f32_pointer(typingctx, address):
    """The int64 address of a float32 array's first element as a pointer numba.carray can view."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))
    return types.CPointer(types.float32)(types.int64), codegen


@njit(parallel=True, cache=True, fastmath=FAST)
def decode_attention_batch(q, k_new, v_new, k_caches, v_caches, layer_bytes, max_lens, starts, layer, window, scale,
                           out):
    """One new token for each of B sequences: store its key/value at position starts[b] of layer `layer` of the
    sequence's cache, then attend its query over positions 0 .. starts[b] (decode_attention), all in one parallel
    launch over (sequence, key/value head). q, out: [B, H, Dh] float32; k_new, v_new: [B, H_kv, Dh]; k_caches,
    v_caches: [B] int64 addresses of C-contiguous float32 caches [L, H_kv, max_lens[b], Dh], layer_bytes[b] apart
    from layer to layer; window: 0 for none."""
    n_seq, n_heads, dh = q.shape
    h_kv = k_new.shape[1]
    group = n_heads // h_kv
    for item in prange(n_seq * h_kv):
        b, g = item // h_kv, item % h_kv
        at = layer * layer_bytes[b]
        k = numba.carray(_f32_pointer(k_caches[b] + at), (h_kv, max_lens[b], dh))[g]
        v = numba.carray(_f32_pointer(v_caches[b] + at), (h_kv, max_lens[b], dh))[g]
        s = starts[b] + 1
        for j in range(dh):  # element by element: a row assignment compiles numba's shape-mismatch message code
            k[s - 1, j] = k_new[b, g, j]
            v[s - 1, j] = v_new[b, g, j]
        first = max(0, s - window) if window > 0 else 0
        scores = np.empty(s, np.float32)
        for h in range(g * group, (g + 1) * group):
            _attend_one(q[b, h], k, v, first, s, scale, scores, out[b, h])


@njit(cache=True, fastmath=FAST, error_model="numpy")
def swiglu(gate, up, out):
    """gate, up, out: [T, F] float32 → silu(gate) · up. Serial: vectorized, a decode batch's 8 × 1536 takes ~10 µs,
    less than a parallel launch costs. (error_model="numpy": Python's division checks its divisor for zero,
    which keeps the loop scalar.)"""
    for t in range(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[t, j]
            out[t, j] = g / (np.float32(1.0) + _exp(-g)) * up[t, j]
