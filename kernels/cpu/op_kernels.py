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
from numba.extending import intrinsic

FAST = {"contract", "reassoc", "arcp", "nsz"}  # no "ninf"/"nnan": masked scores are -inf


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
    scores: [≥ s] float32 scratch."""
    dh = q.shape[0]
    top = -np.inf
    for p in range(first, s):
        dot = np.float32(0.0)
        for j in range(dh):
            dot += q[j] * k[p, j]
        scores[p] = dot * np.float32(scale)
        top = max(top, scores[p])
    total = np.float32(0.0)
    for p in range(first, s):
        scores[p] = math.exp(scores[p] - top)
        total += scores[p]
    for j in range(dh):
        out[j] = 0.0
    for p in range(first, s):
        w = scores[p] / total
        for j in range(dh):
            out[j] += w * v[p, j]


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
def decode_attention_batch(q, k_new, v_new, k_layers, v_layers, max_lens, starts, window, scale, out):
    """One new token for each of B sequences: store its key/value at position starts[b] of the sequence's cache
    layer, then attend its query over positions 0 .. starts[b] (decode_attention), all in one parallel launch over
    (sequence, key/value head). q, out: [B, H, Dh] float32; k_new, v_new: [B, H_kv, Dh]; k_layers, v_layers: [B]
    int64 addresses of C-contiguous float32 cache layers [H_kv, max_lens[b], Dh]; window: 0 for none."""
    n_seq, n_heads, dh = q.shape
    h_kv = k_new.shape[1]
    group = n_heads // h_kv
    for item in prange(n_seq * h_kv):
        b, g = item // h_kv, item % h_kv
        k = numba.carray(_f32_pointer(k_layers[b]), (h_kv, max_lens[b], dh))[g]
        v = numba.carray(_f32_pointer(v_layers[b]), (h_kv, max_lens[b], dh))[g]
        s = starts[b] + 1
        k[s - 1] = k_new[b, g]
        v[s - 1] = v_new[b, g]
        first = max(0, s - window) if window > 0 else 0
        scores = np.empty(s, np.float32)
        for h in range(g * group, (g + 1) * group):
            _attend_one(q[b, h], k, v, first, s, scale, scores, out[b, h])


@njit(parallel=True, cache=True, fastmath=FAST)
def swiglu(gate, up, out):
    """gate, up, out: [T, F] float32 → silu(gate) · up, the rows' columns cut in 4 parts spread over the threads
    (a scalar exp per value: a decode batch's 8 × 1536 took 90 µs on one thread)."""
    f = gate.shape[1]
    for c in prange(gate.shape[0] * 4):
        t, part = c // 4, c % 4
        for j in range(part * f // 4, (part + 1) * f // 4):
            g = gate[t, j]
            out[t, j] = g / (np.float32(1.0) + math.exp(-g)) * up[t, j]
