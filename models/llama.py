"""The Llama family: Llama 2/3, Mistral, SmolLM, Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm) and Gemma 3, one forward.

Weights use GGUF tensor names (`blk.{i}.attn_q.weight`, ...); HF checkpoints are renamed on load. Differences
between the members are flags of ModelConfig, not copies of the forward. Gemma 3 is the same block with a few
more of them (scaled embeddings, (1 + w) norms, norms after attention and FFN, GeGLU, per-layer sliding window
and RoPE base, its own attention scale, optional logit soft-capping): each is one line here, so it shares this
forward rather than having a copy of it.
"""
import numpy as np

from kernels import cuda
from kernels.device import CPU, Device
from kernels.ops import (DecodeBatch, add, attention, decode_attention_batch, embedding, geglu, matmul_transb,
                         matmul_transb_many, multiply, rms_norm, rope, rope_cos_sin, rope_inv_freq, softcap, swiglu)
from models.config import ModelConfig
from models.errors import ModelFileError

_GLU = {"silu": swiglu, "gelu_tanh": geglu}  # ModelConfig.ffn_act (FFN_ACTS) → gated feed-forward activation


class Llama:
    """Decoder-only transformer. `weights(name)` returns a float32 array or a QTensor for a GGUF-style name;
    `device` (kernels.device.Device) is where and how its ops compute (kernels.cuda.upload moves the weights)."""

    def __init__(self, config: ModelConfig, weights, device: Device = CPU):
        """weights(name, shape, optional=False) -> float32 array | QTensor | None, checked against shape."""
        self.config = c = config
        self.device = device
        self.glu = _GLU[c.ffn_act]
        self.tok_embd = weights("token_embd.weight", (c.vocab_size, c.hidden_size))
        self.output_norm = self._norm(weights("output_norm.weight", (c.hidden_size,)))
        self.output = self.tok_embd if c.tie_embeddings else weights("output.weight", (c.vocab_size, c.hidden_size))
        self.layers = [self._layer(weights, i) for i in range(c.n_layers)]
        freq_factors = weights("rope_freqs.weight", (c.head_dim // 2,), optional=True)
        self.inv_freq = _finite_freqs(rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling,
                                                    None if freq_factors is None else np.asarray(freq_factors)))
        self.inv_freq_swa = (None if c.rope_theta_swa is None
                             else _finite_freqs(rope_inv_freq(c.head_dim, c.rope_theta_swa)))

    def _norm(self, weight):
        """An RMSNorm weight as the forward multiplies by it: weight + config.norm_offset (Gemma's 1 + w)."""
        return weight + np.float32(self.config.norm_offset) if self.config.norm_offset else weight

    def _layer(self, weights, i: int) -> dict:
        c = self.config
        d, q_dim, kv_dim = c.hidden_size, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        shapes = {"attn_norm": (d,), "attn_q": (q_dim, d), "attn_k": (kv_dim, d), "attn_v": (kv_dim, d),
                  "attn_output": (d, q_dim), "ffn_norm": (d,), "ffn_gate": (c.intermediate_size, d),
                  "ffn_up": (c.intermediate_size, d), "ffn_down": (d, c.intermediate_size)}
        if c.qk_norm:
            shapes.update(attn_q_norm=(c.head_dim,), attn_k_norm=(c.head_dim,))
        if c.post_norms:
            shapes.update(post_attention_norm=(d,), post_ffw_norm=(d,))
        layer = {n: weights(f"blk.{i}.{n}.weight", shape) for n, shape in shapes.items()}
        layer.update({n: self._norm(layer[n]) for n in layer if n.endswith("norm")})
        if c.qkv_bias:
            for n, size in (("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)):
                layer[f"{n}_bias"] = weights(f"blk.{i}.{n}.bias", (size,))
        return layer

    def forward(self, tokens, positions, cache, last_only: bool = False):
        """tokens: [T] int; positions: [T] int, contiguous from cache.length; cache: KVCache.

        Returns logits [T, vocab] float32 (or [1, vocab] for the last token when last_only). Advances cache.length.
        """
        return self.forward_packed(tokens, positions, [cache], [len(tokens)], last_only)

    def forward_packed(self, tokens, positions, caches, lengths, last_only: bool = False):
        """Several sequences in one forward sharing every mat-mul (continuous batching: a decode step is B
        sequences of one token each). tokens, positions: [T] int, packed: sequence s owns lengths[s] (>= 1)
        consecutive rows whose positions continue caches[s].length; caches: one KVCache per sequence.
        On a GPU, tokens and positions may be int32 device arrays: nothing here then reads them on the host, so
        the runner can capture a decode step as a CUDA graph and replay it at any position (host positions are
        checked against the caches).

        Returns logits [T, vocab] float32, or [S, vocab] (each sequence's last row) when last_only. Advances every
        cache.
        """
        c, dev = self.config, self.device
        spans = np.cumsum([0, *lengths])
        starts = [cache.length for cache in caches]
        _check_positions(positions, spans, starts)
        for cache, start, n in zip(caches, starts, lengths):
            cache.check_fits(start + n)
        t = len(tokens)
        positions = dev.xp.asarray(positions)
        x = embedding(dev.xp.asarray(tokens), self.tok_embd, dev)
        if c.embed_scale:
            x = multiply(x, c.embed_scale)
        decode = (DecodeBatch([c.k for c in caches], [c.v for c in caches], starts, positions, dev)
                  if t == len(caches) else None)
        rope_global = rope_cos_sin(positions, self.inv_freq)
        rope_swa = rope_global if self.inv_freq_swa is None else rope_cos_sin(positions, self.inv_freq_swa)
        for i, w in enumerate(self.layers):
            x = self._block(i, w, x, rope_swa if c.is_sliding(i) else rope_global, caches, starts, spans, decode)
        for cache, start, n in zip(caches, starts, lengths):
            cache.length = start + n
        if last_only and len(lengths) < t:
            x = x[spans[1:] - 1]
        logits = matmul_transb(rms_norm(x, self.output_norm, c.rms_eps, dev), self.output, dev)
        return softcap(logits, c.final_softcap) if c.final_softcap else logits

    def _block(self, i: int, w: dict, x, rope_cs, caches, starts, spans, decode: DecodeBatch | None):
        """Layer i (weights w) over the packed rows x: [T, D] float32 → [T, D] float32: attention, then the gated
        feed-forward, each added to the residual. rope_cs: (cos, sin) of the rows' positions."""
        c, dev, t = self.config, self.device, x.shape[0]
        h = rms_norm(x, w["attn_norm"], c.rms_eps, dev)
        q, k, v = matmul_transb_many(h, [w["attn_q"], w["attn_k"], w["attn_v"]], dev)
        if c.qkv_bias:
            q, k, v = add(q, w["attn_q_bias"]), add(k, w["attn_k_bias"]), add(v, w["attn_v_bias"])
        q = q.reshape(t, c.n_heads, c.head_dim)
        k = k.reshape(t, c.n_kv_heads, c.head_dim)
        v = v.reshape(t, c.n_kv_heads, c.head_dim)
        if c.qk_norm:
            q = rms_norm(q, w["attn_q_norm"], c.rms_eps, dev)
            k = rms_norm(k, w["attn_k_norm"], c.rms_eps, dev)
        q = rope(q, *rope_cs, c.rope_interleaved, dev)
        k = rope(k, *rope_cs, c.rope_interleaved, dev)
        a = self._attend(i, q, k, v, caches, starts, spans, decode)
        a = matmul_transb(a.reshape(t, c.n_heads * c.head_dim), w["attn_output"], dev)
        if c.post_norms:
            a = rms_norm(a, w["post_attention_norm"], c.rms_eps, dev)
        x = add(x, a)
        h = rms_norm(x, w["ffn_norm"], c.rms_eps, dev)
        f = matmul_transb(self.glu(*matmul_transb_many(h, [w["ffn_gate"], w["ffn_up"]], dev), dev),
                          w["ffn_down"], dev)
        if c.post_norms:
            f = rms_norm(f, w["post_ffw_norm"], c.rms_eps, dev)
        return add(x, f)

    def _attend(self, i: int, q, k, v, caches, starts, spans, decode: DecodeBatch | None):
        """Layer i's attention of packed sequences, each against its own cache after storing its new keys/values.
        q: [T, H, Dh], k, v: [T, H_kv, Dh] float32 → [T, H, Dh] float32. decode: the step's caches when every
        sequence brings one token (a decode step: one batched kernel for all of them)."""
        window = self.config.sliding_window if self.config.is_sliding(i) else None
        if decode is not None:
            return decode_attention_batch(q, k, v, decode, i, window, self.config.attn_scale)
        parts = []
        for cache, start, lo, hi in zip(caches, starts, spans[:-1], spans[1:]):
            cache.store(i, start, k[lo:hi], v[lo:hi])
            keys, values = cache.layer(i)
            parts.append(attention(q[lo:hi], keys, values, start, window, self.config.attn_scale, self.device))
        return parts[0] if len(parts) == 1 else self.device.xp.concatenate(parts)


def _check_positions(positions, spans, starts) -> None:
    """ValueError unless each packed sequence's host positions start where its cache ends (device positions, a
    captured step's, are the runner's to set)."""
    if cuda.takes(positions):
        return
    for first, start in zip(spans[:-1], starts):
        if first < len(positions) and int(positions[first]) != start:
            raise ValueError(f"positions start at {int(positions[first])} but the cache holds {start} positions")


def _finite_freqs(inv_freq: np.ndarray) -> np.ndarray:
    """inv_freq [Dh/2] float64 if every RoPE frequency is finite and > 0, else ModelFileError: a base near 0, a
    zero or negative rope_freqs factor or extreme scaling would turn every attention score into NaN."""
    with np.errstate(all="ignore"):
        ok = bool(np.all(np.isfinite(inv_freq) & (inv_freq > 0)))
    if not ok:
        raise ModelFileError("the RoPE frequencies are not finite and positive (RoPE base, rope scaling or "
                             "rope_freqs.weight out of range); the model's configuration is corrupt.")
    return inv_freq
