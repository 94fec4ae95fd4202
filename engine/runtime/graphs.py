"""The GPU decode step replayed as a CUDA graph: `DecodeGraphs`, which a runner on a CUDA device asks first for
every one-token forward.

What is captured is the model's own forward (`model.forward_packed` over one token of one cache), fed from a
workspace of device memory: `io` holds the token id and its position, which the forward reads on the device (the
embedding gather, the RoPE table, the KV store and the decode attention take them there), so one capture per KV
cache replays at every later position. The first one-token forward of a cache runs uncaptured (it compiles the
kernels and fills the step's private memory pool), then the same forward is recorded (kernels/cuda/graph.py).
A model whose decode attention has no kernel for its head shape, a CuPy without stream capture, or a capture that
fails decode uncaptured; `describe()` and a log line say why.
"""
import logging
import weakref

import numpy as np

from kernels.cuda.graph import CapturedStep, capture_supported

log = logging.getLogger(__name__)


class DecodeGraphs:
    """The captured decode steps of one model on the GPU, one per KV cache (dropped with the cache)."""

    def __init__(self, model):
        self.model = model
        self._steps = weakref.WeakKeyDictionary()  # KVCache → _CacheStep
        self.refused = _unsupported(model.config) or capture_supported()

    def describe(self) -> str:
        """A few words for the start-up line: whether decode steps are replayed as CUDA graphs, or why not."""
        return f"decode step not captured ({self.refused})" if self.refused else "decode step replayed as a CUDA graph"

    def step(self, cache, token: int, position: int):
        """Logits [1, vocab] float32 (a fresh cupy array) of one token at `position` of `cache`, advancing
        cache.length; None when no graph applies (the caller runs the uncaptured forward, which also reports a
        wrong position or a full cache)."""
        if self.refused or position != cache.length or position >= cache.max_len:
            return None
        step = self._steps.get(cache)
        if step is None:
            step = self._steps[cache] = _CacheStep(self.model, cache)
        logits, failure = step.run(token, position)
        if failure:
            self.refused = failure
            del self._steps[cache]
            log.warning("CUDA decode step not captured: %s; decoding without a graph", failure)
        return logits


class _CacheStep:
    """The captured forward of one token into one cache. io: device int32 [token, position]."""

    def __init__(self, model, cache):
        import cupy
        self.cache = weakref.ref(cache)  # the captured forward holds the cache's arrays, not the cache
        self.io = cupy.zeros(2, dtype=cupy.int32)
        tokens, positions = self.io[0:1], self.io[1:2]
        self.step = CapturedStep(lambda: model.forward_packed(tokens, positions, [self.cache()], [1]))

    def run(self, token: int, position: int):
        """(logits [1, vocab] float32, "") of the token at position, cache.length advanced; the first call runs
        the forward uncaptured, then captures it: a failed capture gives its reason instead of ""."""
        cache = self.cache()
        self.io.set(np.array([token, position], dtype=np.int32))
        if self.step.graph is not None:
            logits = self.step.replay()
            cache.length = position + 1
            return logits.copy(), ""
        logits = self.step.run()
        try:
            cache.length = position  # the recording runs the forward's bookkeeping again, from the same length
            self.step.capture()
        except Exception as e:  # no capture in this driver/runtime, or an operation a graph cannot hold
            return logits, f"stream capture failed: {type(e).__name__}: {e}"
        finally:
            cache.length = position + 1
        return logits, ""


def _unsupported(config) -> str:
    """Why the model's decode step cannot be captured, or "": the decode attention kernel reads the position on
    the device only for head widths that are a multiple of 32 up to 256 and query heads grouped evenly."""
    c = config
    if c.head_dim % 32 or c.head_dim > 256 or c.n_heads % c.n_kv_heads:
        return f"head width {c.head_dim} / {c.n_heads} heads over {c.n_kv_heads} have no decode attention kernel"
    return ""
