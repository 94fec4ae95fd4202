"""Transformer operators in plain array code: the readable reference, and the CPU path.

Every function takes NumPy arrays, or CuPy arrays for the GPU (then it launches the RawKernels of kernels/cuda,
so that a GPU forward is nothing but kernel launches and can be captured as a CUDA graph), and returns float32.
`dev` (kernels.device.Device, default CPU) says whether the CPU path runs the compiled kernels of kernels/cpu and
with which activations; the code below is their reference.
Shapes: T tokens, D model width, H query heads, H_kv key/value heads, Dh head width, S cached positions.
"""
import numpy as np

from kernels import cpu, cuda
from kernels.device import CPU, Device
from kernels.qtensor import QTensor

TILE_ELEMS = 1 << 20  # rows of a quantized matrix dequantized per step: ~4 MB of float32


def _xp(a):
    """The array module a belongs to (numpy or cupy)."""
    mod = type(a).__module__
    if mod.startswith("cupy"):
        import cupy
        return cupy
    return np


def rms_norm(x, weight, eps: float, dev: Device = CPU):
    """x: [..., D] float32, weight: [D] → x / sqrt(mean(x²) + eps) * weight."""
    if cuda.takes(x, weight):
        return cuda.rms_norm(x, weight, eps)
    if dev.compiled and cpu.takes(x, weight):
        return cpu.rms_norm(x, weight, eps)
    xp = _xp(x)
    ms = xp.mean(xp.square(x), axis=-1, keepdims=True)
    return (x / xp.sqrt(ms + eps)) * weight


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None, freq_factors=None) -> np.ndarray:
    """Inverse frequencies [Dh/2] float64: theta^(-2i/Dh), then scaled.

    scaling: {"rope_type": "linear", "factor"} divides every frequency; {"rope_type": "llama3", ...} applies
    Llama 3's wavelength-dependent scaling. freq_factors (GGUF rope_freqs.weight) divide frequencies one by one.
    """
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if freq_factors is not None:
        inv = inv / np.asarray(freq_factors, dtype=np.float64)
    kind = (scaling or {}).get("rope_type")
    if kind == "linear":
        inv = inv / scaling["factor"]
    elif kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        medium = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv = np.where(medium, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv


def rope_cos_sin(positions, inv_freq: np.ndarray):
    """positions: [T] int, inv_freq: [Dh/2] float64 → (cos, sin), each [T, Dh/2] float32. Angles are taken in
    float64."""
    if cuda.takes(inv_freq):
        return cuda.rope_cos_sin(positions, inv_freq)
    xp = _xp(inv_freq)
    angles = xp.asarray(positions, dtype=xp.float64)[:, None] * xp.asarray(inv_freq)[None, :]
    return xp.cos(angles).astype(xp.float32), xp.sin(angles).astype(xp.float32)


def rope(x, cos, sin, interleaved: bool, dev: Device = CPU):
    """Rotate x: [T, H, Dh] by position. cos, sin: [T, Dh/2].

    interleaved=False (HF, Qwen, GPT-NeoX): pairs (i, i + Dh/2). interleaved=True (llama.cpp's Llama layout,
    GGUF llama Q/K are stored permuted for it): pairs (2i, 2i + 1).
    """
    if cuda.takes(x, cos, sin):
        return cuda.rope(x, cos, sin, interleaved)
    if dev.compiled and cpu.takes(x, cos, sin):
        return cpu.rope(x, cos, sin, interleaved)
    xp = _xp(x)
    c, s = cos[:, None, :], sin[:, None, :]
    out = xp.empty_like(x)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = b * c + a * s
    else:
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * c - b * s
        out[..., half:] = b * c + a * s
    return out


def silu(x):
    """x * sigmoid(x), float32."""
    xp = _xp(x)
    with np.errstate(over="ignore"):
        return x / (1.0 + xp.exp(-x))


def swiglu(gate, up, dev: Device = CPU):
    """SwiGLU feed-forward gate: silu(gate) * up. gate, up: [T, F]."""
    if cuda.takes(gate, up):
        return cuda.swiglu(gate, up)
    if dev.compiled and cpu.takes(gate, up):
        return cpu.swiglu(gate, up)
    return silu(gate) * up


def gelu_tanh(x):
    """GELU, tanh approximation (PyTorch's approximate="tanh"): 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))."""
    xp = _xp(x)
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + xp.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def geglu(gate, up, dev: Device = CPU):
    """GeGLU feed-forward gate (Gemma): gelu_tanh(gate) * up. gate, up: [T, F]."""
    if cuda.takes(gate, up):
        return cuda.geglu(gate, up)
    return gelu_tanh(gate) * up


def add(x, y):
    """x + y, float32: a residual ([T, D] + [T, D]) or a bias ([T, N] + [N])."""
    if cuda.takes(x, y):
        return cuda.add(x, y)
    return x + y


def multiply(x, s: float):
    """x * s (a float32 scalar), e.g. Gemma's embedding scale."""
    if cuda.takes(x):
        return cuda.scale(x, s)
    return x * np.float32(s)


def softcap(x, cap: float):
    """Logit soft-capping (Gemma): cap * tanh(x / cap), float32."""
    if cuda.takes(x):
        return cuda.softcap(x, cap)
    return np.float32(cap) * _xp(x).tanh(x / np.float32(cap))


def softmax(x, axis: int = -1):
    """Numerically stable softmax along axis (masked entries may be -inf)."""
    if cuda.takes(x) and axis in (-1, x.ndim - 1):
        return cuda.softmax(x)
    xp = _xp(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def attention(q, k, v, start: int, window: int | None = None, scale: float | None = None, dev: Device = CPU):
    """Causal grouped-query attention of new queries against the cache.

    q: [T, H, Dh] float32 — queries at positions start .. start+T-1.
    k, v: [H_kv, S_max, Dh] — cached keys/values; positions 0 .. start+T-1 are used (the new ones included) and
    any beyond are ignored, so a KV cache layer can be passed whole.
    window: sliding-window size (a query at p sees keys p-window+1 .. p), or None for full causal.
    scale: multiplies q·k (default 1/√Dh). Query head h uses key/value head h // (H / H_kv).
    Returns [T, H, Dh] float32.
    """
    xp = _xp(q)
    t, h, dh = q.shape
    h_kv, s = k.shape[0], start + t
    if k.shape[1] < s or v.shape[1] < s:
        raise ValueError(f"attention over {s} positions but the cache holds {k.shape[1]}")
    scale = 1.0 / np.sqrt(dh) if scale is None else scale
    if cuda.takes(q, k, v):
        out = cuda.attention(q, k, v, start, window, scale)
        if out is not None:
            return out
    if t == 1 and dev.compiled and cpu.takes(q, k, v) and k.flags.c_contiguous and v.flags.c_contiguous:
        return cpu.decode_attention(q, k, v, s, window, scale)
    k, v = k[:, :s], v[:, :s]
    group = h // h_kv
    qg = q.reshape(t, h_kv, group, dh).transpose(1, 2, 0, 3).reshape(h_kv, group * t, dh)
    scores = (qg @ k.transpose(0, 2, 1)) * np.float32(scale)  # [H_kv, G*T, S]
    scores = scores.reshape(h_kv, group, t, s)
    if t > 1 or (window is not None and s > window):  # one query at the end of the cache sees every key
        q_pos = xp.arange(start, start + t)[:, None]
        k_pos = xp.arange(s)[None, :]
        allowed = k_pos <= q_pos
        if window is not None:
            allowed &= k_pos > q_pos - window
        scores = xp.where(allowed, scores, np.float32(-np.inf))
    probs = softmax(scores).reshape(h_kv, group * t, s)
    out = probs @ v  # [H_kv, G*T, Dh]
    return out.reshape(h_kv, group, t, dh).transpose(2, 0, 1, 3).reshape(t, h, dh)


class DecodeBatch:
    """The KV caches of a batched decode step (one new token for each of B sequences), checked once per step and
    passed to every layer's decode_attention_batch.

    caches_k, caches_v: B arrays [L, H_kv, S_max, Dh] each (written in place); starts: B ints, the position each
    sequence's new token takes; positions: the same as an int array on the caches' device (the GPU kernels read
    it there, so a captured step replays at any position). cpu_args: what the CPU kernel reads (every cache's
    address), when dev runs the compiled kernels."""

    def __init__(self, caches_k, caches_v, starts, positions=None, dev: Device = CPU):
        for cache, start in zip(caches_k, starts):
            if start >= cache.shape[2]:
                raise ValueError(f"position {start} is past the cache's {cache.shape[2]} positions")
        self.caches_k, self.caches_v, self.starts = list(caches_k), list(caches_v), [int(s) for s in starts]
        self.positions = positions
        arrays = (*self.caches_k, *self.caches_v)
        self.cpu_args = (cpu.decode_batch(self.caches_k, self.caches_v, self.starts)
                         if dev.compiled and cpu.takes(*arrays) and all(c.flags.c_contiguous for c in arrays)
                         else None)


def decode_attention_batch(q, k, v, batch: DecodeBatch, layer: int, window: int | None = None,
                           scale: float | None = None):
    """One new token for each of the B sequences of batch: store sequence b's key/value at position starts[b] of
    layer `layer` of its own cache, then attend its query over positions 0 .. starts[b].

    q: [B, H, Dh] float32; k, v: [B, H_kv, Dh]; window, scale: as in attention. Returns [B, H, Dh] float32.
    """
    scale = 1.0 / np.sqrt(q.shape[2]) if scale is None else scale
    if batch.cpu_args is not None and cpu.takes(q, k, v):
        return cpu.decode_attention_batch(q, k, v, batch.cpu_args, layer, window, scale)
    if cuda.takes(q, k, v, batch.positions):
        out = cuda.decode_attention_batch(q, k, v, batch.caches_k, batch.caches_v, batch.positions, layer, window,
                                          scale)
        if out is not None:
            return out
    out = _xp(q).empty(q.shape, dtype=q.dtype)
    for b, (ck, cv, start) in enumerate(zip(batch.caches_k, batch.caches_v, batch.starts)):
        ck[layer, :, start], cv[layer, :, start] = k[b], v[b]
        out[b] = attention(q[b:b + 1], ck[layer], cv[layer], start, window, scale)[0]
    return out


def matmul_transb(x, w, dev: Device = CPU):
    """x @ wᵀ. x: [T, K] float32; w: [N, K] float32 array or QTensor → [T, N] float32.

    A QTensor is dequantized a tile of rows at a time into float32, so the full matrix never exists in memory.
    On the CPU the compiled kernels of kernels/cpu do this when dev runs them; the loop below is their reference.
    """
    if cuda.takes(x):
        return cuda.matmul_transb(x, w)
    if not isinstance(w, QTensor):
        return x @ w.T
    if dev.compiled:
        return cpu.matmul_transb(x, w, dev.int8)
    n, k = w.shape
    out = np.empty((x.shape[0], n), dtype=np.float32)
    step = max(1, TILE_ELEMS // k)
    for i in range(0, n, step):
        j = min(n, i + step)
        out[:, i:j] = x @ w.rows(slice(i, j)).T
    return out


def matmul_transb_many(x, ws, dev: Device = CPU):
    """[x @ wᵀ for w in ws]: projections sharing one input (q/k/v, gate/up), fused into one launch when the
    compiled kernels can."""
    if dev.compiled and isinstance(x, np.ndarray) and all(isinstance(w, QTensor) for w in ws):
        return cpu.matmul_transb_many(x, ws, dev.int8)
    return [matmul_transb(x, w, dev) for w in ws]


def embedding(ids, table, dev: Device = CPU):
    """Rows of the embedding table. ids: [T] int (on the table's device); table: [V, D] float32 array or QTensor
    → [T, D] float32."""
    if cuda.takes(table.raw if isinstance(table, QTensor) else table):
        return cuda.embedding(ids, table)
    if isinstance(table, QTensor):
        if dev.compiled:
            return cpu.dequantize_rows(table, ids)
        return table.rows(np.asarray(ids))
    return table[ids].astype(np.float32)
