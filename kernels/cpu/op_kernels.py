"""Compiled (numba) twins of the small per-layer operators of kernels/ops.py, for the CPU decode path.

In decode these operators touch a few kilobytes each, so NumPy's per-call overhead (several array temporaries per
operator, ~10 µs each) is most of their cost: 30 layers × ~15 NumPy calls were a quarter of a SmolLM2 token.
Each function here is one serial loop over the same arithmetic as its NumPy reference in kernels/ops.py (the
tests check they agree); ops.py calls them for float32 NumPy inputs when numba is available.
"""
import math

import numpy as np
from numba import njit

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


@njit(cache=True, fastmath=FAST)
def decode_attention(q, k, v, s, window, scale, out):
    """One query per head at position s - 1, against cached positions 0 .. s-1. q, out: [H, Dh] float32;
    k, v: [H_kv, S_max ≥ s, Dh] C-contiguous; window: sliding-window size, 0 for none; query head h reads
    key/value head h // (H / H_kv)."""
    n_heads, dh = q.shape
    h_kv = k.shape[0]
    first = max(0, s - window) if window > 0 else 0
    scores = np.empty(s, np.float32)
    for h in range(n_heads):
        g = h // (n_heads // h_kv)
        top = -np.inf
        for p in range(first, s):
            dot = np.float32(0.0)
            for j in range(dh):
                dot += q[h, j] * k[g, p, j]
            scores[p] = dot * np.float32(scale)
            top = max(top, scores[p])
        total = np.float32(0.0)
        for p in range(first, s):
            scores[p] = math.exp(scores[p] - top)
            total += scores[p]
        for j in range(dh):
            out[h, j] = 0.0
        for p in range(first, s):
            w = scores[p] / total
            for j in range(dh):
                out[h, j] += w * v[g, p, j]


@njit(cache=True, fastmath=FAST)
def swiglu(gate, up, out):
    """gate, up, out: [T, F] float32 → silu(gate) · up."""
    for t in range(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[t, j]
            out[t, j] = g / (np.float32(1.0) + math.exp(-g)) * up[t, j]
