"""engine.runtime.graphs on the stand-in GPU (tests/cuda_standin.py: kernels run in tests/cudasim, a stream capture
records launches and refuses anything else): a DirectRunner on a CUDA device runs the model's own forward for the
first token of a cache, captures that same forward, and replays it for every later token. References: transformers
on gguf-py-dequantized weights (tests/reference.py) and the uncaptured forward.
"""
import shutil

import numpy as np
import pytest

from cuda_standin import LAUNCHES, DeviceArray, Stream, device  # noqa: F401  (device: the fixture)
from engine.errors import ContextOverflowError
from engine.formats.hub import resolve
from engine.formats.loader import load_source
from engine.runtime.graphs import DecodeGraphs
from engine.runtime.kvcache import KVCache
from engine.runtime.runner import DirectRunner
from kernels import cuda
from reference import gguf_logits
from tiny_models import TINY

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to run kernels on the CPU")
IDS = [5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 30, 2]


def on_gpu(dev, path):
    """(model with its weights on the stand-in GPU, DirectRunner, a device KV cache for IDS)."""
    model = load_source(resolve(str(path)), dev).model
    cuda.upload(model)
    c = model.config
    return model, DirectRunner(model), KVCache(c.n_layers, c.n_kv_heads, c.head_dim, len(IDS), device=dev)


@pytest.mark.parametrize("arch,fmt", [("llama", "model-Q8_0.gguf"), ("qwen3", "model-Q8_0.gguf"),
                                      ("gemma3", "model-Q8_0.gguf"), ("llama", "model-F32.gguf")])
def test_capture_records_the_forwards_own_launches(device, arch, fmt):
    """The captured decode step is the model's forward: the graph holds exactly the kernel launches of an
    ordinary one-token forward_packed (same kernels, same order), for Llama, Qwen3 (q/k norms), Gemma 3 (scaled
    embedding, extra norms, GeGLU, sliding window, its own RoPE base for local layers) and float32 weights."""
    path = TINY / arch / fmt
    model, runner, cache = on_gpu(device, path)
    c = model.config
    runner.forward(np.array(IDS[:6]), np.arange(6), cache)  # prefill, uncaptured
    io = device.xp.asarray(np.array([IDS[6], 6], np.int32))
    LAUNCHES.clear()
    plain = device.to_host(model.forward_packed(io[0:1], io[1:2], [cache], [1]))
    ordinary = list(LAUNCHES)
    cache.truncate(6)
    first = runner.forward(np.array([IDS[6]]), np.array([6]), cache)  # run uncaptured, then captured
    step = runner.graphs._steps[cache].step
    assert step.graph is not None and step.graph.names == ordinary
    assert ordinary.count("attention_decode_f32") == c.n_layers and ordinary[0].startswith(("dequant", "gather"))
    np.testing.assert_array_equal(first, plain)
    replayed = [runner.forward(np.array([i]), np.array([p]), cache) for p, i in enumerate(IDS[7:], 7)]
    assert step.graph.replays == len(IDS) - 7 and cache.length == len(IDS)
    logits = np.concatenate([first, *replayed])
    ref = gguf_logits(path, IDS)[6:]
    assert ref.std() > 0.5
    np.testing.assert_array_less(np.abs(logits - ref).max(), 1e-4 if fmt == "model-F32.gguf" else 5e-3)
    cache.truncate(7)
    uncaptured = [device.to_host(model.forward(np.array([i]), np.array([p]), cache))
                  for p, i in enumerate(IDS[7:], 7)]
    np.testing.assert_allclose(logits[1:], np.concatenate(uncaptured), rtol=1e-5, atol=1e-5)


def test_full_cache_and_wrong_position_go_to_the_checked_forward(device):
    """A full cache is refused before the graph writes past it; a position other than the cache's length is not
    replayed (the ordinary forward reports it)."""
    model, runner, cache = on_gpu(device, TINY / "llama" / "model-Q8_0.gguf")
    runner.forward(np.array(IDS[:10]), np.arange(10), cache)
    runner.forward(np.array([IDS[10]]), np.array([10]), cache)
    runner.forward(np.array([IDS[11]]), np.array([11]), cache)
    assert runner.graphs._steps[cache].step.graph.replays == 1
    with pytest.raises(ContextOverflowError):
        runner.forward(np.array([1]), np.array([len(IDS)]), cache)
    with pytest.raises(ValueError, match="positions start at 3"):
        runner.forward(np.array([1]), np.array([3]), cache)


def test_decode_without_capture_falls_back(device, monkeypatch, caplog):
    """Stream capture failing: the first step (run uncaptured) stands, later steps run the uncaptured forward, and
    the reason is logged and shown on the start-up line."""
    def refuse(self, mode=None):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(Stream, "begin_capture", refuse)
    path = TINY / "llama" / "model-Q8_0.gguf"
    model, runner, cache = on_gpu(device, path)
    logits = [runner.forward(np.array([i]), np.array([p]), cache) for p, i in enumerate(IDS[:3])]
    assert cache not in runner.graphs._steps and "stream capture failed: RuntimeError" in runner.graphs.refused
    assert "not captured" in caplog.text and "stream capture failed" in runner.describe()
    np.testing.assert_array_less(np.abs(np.concatenate(logits) - gguf_logits(path, IDS[:3])).max(), 5e-3)


def test_head_shapes_without_a_decode_kernel_are_not_captured(device):
    _, _, cache = on_gpu(device, TINY / "llama" / "model-Q8_0.gguf")
    graphs = DecodeGraphs(_Shaped(head_dim=48, n_heads=4, n_kv_heads=2))
    assert "head width 48" in graphs.describe() and graphs.step(cache, 5, 0) is None and cache.length == 0


class _Shaped:
    """A stand-in model whose config has only the attention shape."""

    def __init__(self, **shape):
        self.config = type("Config", (), shape)
