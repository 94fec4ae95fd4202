"""Two models loaded with differently configured devices share one process: each LLM's kernels.device.Device
(compiled or NumPy kernels, float32 or int8 activations, thread count) holds for its own forwards only."""
import numpy as np
import pytest

import engine
from kernels import cpu
from reference import gguf_logits
from tiny_models import TINY

pytestmark = pytest.mark.skipif(not cpu.available, reason="numba kernels unavailable")


def token_by_token(llm, ids) -> np.ndarray:
    """Logits [len(ids), vocab] with every forward a one-token decode (where int8 activations apply)."""
    cache = llm.new_cache()
    return np.array([llm.runner.forward(np.array([t]), np.array([i]), cache)[0] for i, t in enumerate(ids)])


def test_float32_and_int8_models_side_by_side(smollm2_gguf):
    """The opt-in int8 mat-vec on a real model next to the float32 one: token by token, the int8 model's logits
    stay within 5% of their range of the float32 model's and pick the same tokens, greedy text is the same, and
    the float32 model's logits are bit-identical before and after the int8 model ran."""
    exact = engine.load(str(smollm2_gguf))
    approx = engine.load(str(smollm2_gguf), activations="int8")
    assert (exact.device.activations, approx.device.activations) == ("float32", "int8")
    ids = exact.tokenizer.encode("The capital of France is")
    before = token_by_token(exact, ids)
    int8 = token_by_token(approx, ids)
    after = token_by_token(exact, ids)
    np.testing.assert_array_equal(after, before)
    assert 0 < np.abs(int8 - before).max() <= 0.05 * np.abs(before).max()
    np.testing.assert_array_equal(int8.argmax(axis=1), before.argmax(axis=1))
    assert "".join(approx.generate("The capital of France is", max_tokens=8)) == \
        "".join(exact.generate("The capital of France is", max_tokens=8))


def test_numpy_and_compiled_kernels_side_by_side(monkeypatch):
    """A model on the NumPy reference operators (1 thread) and one on the compiled kernels (2 threads), used in
    turn: each matches transformers on the dequantized GGUF, and only the compiled one calls kernels/cpu."""
    path = TINY / "qwen3" / "model-Q8_0.gguf"
    reference_model = engine.load(str(path), kernels="numpy", threads=1)
    compiled = engine.load(str(path), kernels="numba", threads=2)
    calls = []
    fused = cpu.matmul_transb_many
    monkeypatch.setattr(cpu, "matmul_transb_many", lambda *a, **k: (calls.append(1), fused(*a, **k))[1])
    ids = [5, 17, 100, 200, 3, 44]
    ref = gguf_logits(path, ids)
    for llm, uses_cpu_kernels in ((reference_model, False), (compiled, True), (reference_model, False)):
        calls.clear()
        np.testing.assert_array_less(np.abs(llm.logits(ids) - ref).max(), 5e-3)
        assert bool(calls) == uses_cpu_kernels
    assert "NumPy reference, 1 BLAS threads" in reference_model.runner.describe()
    assert "2 threads" in compiled.runner.describe()
