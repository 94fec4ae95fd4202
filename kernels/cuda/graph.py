"""The one-token decode step of a model on the GPU captured as a CUDA graph, replayed for every next token.

A small model's decode step is some sixteen kernel launches a layer, each too short to hide CuPy's launch cost; a
graph launches them all at once. A graph replays fixed arguments, so everything that changes between tokens is read
from device memory: `io` holds the token id and its position, and the kernels that depend on them take a pointer
(the embedding gather, `rope_table`, `kv_store`, `attention_decode`). Every other argument is a buffer allocated
once per cache, so nothing in the captured region allocates, copies to or from the host, or waits for the device.

The step is the Llama forward of models/llama.py for one token (q/k/v biases, q/k RMSNorm, sliding windows
included), launched through the launchers of kernels/cuda. The first step of each cache runs those launches
directly (compiling the kernels), then they are captured on a side stream; later steps set `io` and replay.
Models this step does not cover (Gemma 3's extra flags, float32 weight matrices), a CuPy without stream capture,
or a capture that fails fall back to the uncaptured forward; `describe()` and a log line say why.
"""
import logging
import weakref

import numpy as np

from kernels import cuda
from kernels.qtensor import QTensor

log = logging.getLogger(__name__)

_graphs = weakref.WeakKeyDictionary()  # KVCache → DecodeGraph (the graph holds the cache's arrays, not the cache)
_refused = weakref.WeakKeyDictionary()  # model → why its decode step is not captured
_notice = ""  # the latest reason a decode step was not captured ("" while they are)


def describe() -> str:
    """A few words for the start-up line: whether decode steps are replayed as CUDA graphs, or why not."""
    reason = _notice or _capture_missing()
    return f"decode step not captured ({reason})" if reason else "decode step replayed as a CUDA graph"


def _capture_missing() -> str:
    import cupy
    return "" if hasattr(cupy.cuda.Stream, "begin_capture") else "this CuPy has no stream capture"


def unsupported(model) -> str:
    """Why the model's decode step cannot be captured, or "" when it can."""
    c = model.config
    if c.ffn_act != "silu" or c.embed_scale or c.post_norms or c.final_softcap or model.inv_freq_swa is not None:
        return "Gemma 3's embedding scale, extra norms, GeGLU or soft-capping have no graph step"
    matrices = [model.tok_embd, model.output] + [w[n] for w in model.layers for n in
                                                 ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                                  "ffn_down")]
    if not all(isinstance(m, QTensor) for m in matrices):
        return "float32 weight matrices have no graph step"
    if c.head_dim % 32 or c.head_dim > 256 or c.n_heads % c.n_kv_heads:
        return f"head width {c.head_dim} / {c.n_heads} heads over {c.n_kv_heads} have no attention kernel"
    return _capture_missing()


def decode(model, cache, token: int, position: int):
    """Logits [1, vocab] float32 (a cupy array) of one token at `position` of `cache` through the cache's graph,
    advancing cache.length; None when the graph does not apply (the caller runs the uncaptured forward, which also
    reports a wrong position or a full cache)."""
    if not cuda.takes(model.output_norm) or position != cache.length or position >= cache.max_len:
        return None
    if model in _refused:
        return None
    graph = _graphs.get(cache)
    if graph is None or graph.model is not model:
        reason = unsupported(model)
        if reason:
            _refuse(model, reason)
            return None
        graph = _graphs[cache] = DecodeGraph(model, cache)
    logits = graph.step(token, position)
    cache.length = position + 1
    if graph.graph is None:  # the capture after this (direct) step failed: later steps run uncaptured
        _refuse(model, graph.failure)
        del _graphs[cache]
    return logits


def _refuse(model, reason: str) -> None:
    global _notice
    _refused[model] = _notice = reason
    log.warning("CUDA decode step not captured: %s; decoding without a graph", reason)


class DecodeGraph:
    """The decode step of `model` (weights on the GPU) writing into one KV cache, captured once, replayed per token.

    Buffers ([1, width] float32): x (residual), h (normed), q, k, v, att, f (projection back to the width),
    gate, up, cos/sin, logits; io: int32 [token, position].
    """

    def __init__(self, model, cache):
        import cupy
        self.model = model
        c = model.config
        self.k_layers = [cache.k[i] for i in range(c.n_layers)]
        self.v_layers = [cache.v[i] for i in range(c.n_layers)]
        d, q_dim, kv_dim = c.hidden_size, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        f32 = cupy.float32
        self.io = cupy.zeros(2, dtype=cupy.int32)
        self.token, self.pos = self.io[0:1], self.io[1:2]
        self.x, self.h, self.f = (cupy.empty((1, d), f32) for _ in range(3))
        self.q, self.att = (cupy.empty((1, c.n_heads, c.head_dim), f32) for _ in range(2))
        self.k, self.v = (cupy.empty((1, c.n_kv_heads, c.head_dim), f32) for _ in range(2))
        self.gate, self.up = (cupy.empty((1, c.intermediate_size), f32) for _ in range(2))
        self.cos, self.sin = (cupy.empty((1, c.head_dim // 2), f32) for _ in range(2))
        self.logits = cupy.empty((1, c.vocab_size), f32)
        self.q_flat, self.att_flat = self.q.reshape(1, q_dim), self.att.reshape(1, q_dim)
        self.k_flat, self.v_flat = self.k.reshape(1, kv_dim), self.v.reshape(1, kv_dim)
        self.graph = self.stream = None
        self.failure = ""

    def step(self, token: int, position: int):
        """Logits [1, vocab] float32 (a fresh cupy array) of `token` at `position`, its keys and values stored."""
        import cupy
        self.io.set(np.array([token, position], dtype=np.int32))
        if self.graph is None:
            self._launch()
            self._capture()
        else:
            current = cupy.cuda.get_current_stream()
            self.stream.wait_event(current.record(self.ready))  # after the io copy (and the prefill)
            self.graph.launch(self.stream)
            current.wait_event(self.stream.record(self.done))  # the logits copy below and later work after it
        return self.logits.copy()

    def _capture(self) -> None:
        """Record _launch as a graph on a side stream; on failure keep none and say why in self.failure."""
        import cupy
        try:
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.ready, self.done = cupy.cuda.Event(disable_timing=True), cupy.cuda.Event(disable_timing=True)
            with self.stream:
                self.stream.begin_capture()
                try:
                    self._launch()
                finally:
                    graph = self.stream.end_capture()
            self.graph = graph
        except Exception as e:  # no capture support in this driver/runtime, or an illegal call while capturing
            self.failure = f"stream capture failed: {type(e).__name__}: {e}"

    def _launch(self) -> None:
        """The one-token forward (models/llama.py Llama.forward_packed), every result into this step's buffers."""
        m, c = self.model, self.model.config
        eps = c.rms_eps
        scale = c.attn_scale if c.attn_scale is not None else 1.0 / np.sqrt(c.head_dim)
        cuda.dequantize(m.tok_embd, self.token, out=self.x)
        cuda.rope_table(m.inv_freq, self.pos, self.cos, self.sin)
        for i, w in enumerate(m.layers):
            cuda.rms_norm(self.x, w["attn_norm"], eps, out=self.h)
            for name, out in (("attn_q", self.q_flat), ("attn_k", self.k_flat), ("attn_v", self.v_flat)):
                cuda.matmul_transb(self.h, w[name], out=out)
                if c.qkv_bias:
                    cuda.add(out, w[f"{name}_bias"], out)
            if c.qk_norm:
                cuda.rms_norm(self.q, w["attn_q_norm"], eps, out=self.q)
                cuda.rms_norm(self.k, w["attn_k_norm"], eps, out=self.k)
            cuda.rope(self.q, self.cos, self.sin, c.rope_interleaved, out=self.q)
            cuda.rope(self.k, self.cos, self.sin, c.rope_interleaved, out=self.k)
            cuda.kv_store(self.k, self.v, self.k_layers[i], self.v_layers[i], self.pos)
            window = c.sliding_window if c.is_sliding(i) else None
            cuda.attention_decode(self.q, self.k_layers[i], self.v_layers[i], self.pos, window, scale, self.att)
            cuda.matmul_transb(self.att_flat, w["attn_output"], out=self.f)
            cuda.add(self.x, self.f, self.x)
            cuda.rms_norm(self.x, w["ffn_norm"], eps, out=self.h)
            cuda.matmul_transb(self.h, w["ffn_gate"], out=self.gate)
            cuda.matmul_transb(self.h, w["ffn_up"], out=self.up)
            cuda.swiglu(self.gate, self.up, out=self.gate)
            cuda.matmul_transb(self.gate, w["ffn_down"], out=self.f)
            cuda.add(self.x, self.f, self.x)
        cuda.rms_norm(self.x, m.output_norm, eps, out=self.h)
        cuda.matmul_transb(self.h, m.output, out=self.logits)
