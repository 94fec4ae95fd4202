"""Mistral (MistralForCausalLM; GGUF arch `llama`) on a tiny random model with sliding_window 6, against
transformers (float64) on the same weights.

llama.cpp's converter writes Mistral as arch `llama` without the window and llama.cpp runs it with full causal
attention; the GGUF files are checked against that (transformers LlamaForCausalLM on the gguf-py-dequantized
weights), the safetensors directory against MistralForCausalLM with its window.
"""

import numpy as np
import pytest

from engine.runtime.generate import GenerationStats, generate_tokens
from engine.runtime.runner import DirectRunner
from engine.runtime.sampler import SamplingParams
from reference import gguf_logits, hf_greedy
from tiny_models import TINY, fresh_cache, load, reference

FIXTURE = TINY / "mistral"
IDS = [5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 300, 2, 64, 128, 33, 9, 101]  # 17 > window 6


def test_tiny_mistral_has_a_window_shorter_than_the_tests():
    hf, gg = load(FIXTURE / "hf").config, load(FIXTURE / "model-F32.gguf").config
    assert hf.arch == "mistral" and hf.sliding_window == 6 < len(IDS) and hf.is_sliding(0) and hf.is_sliding(1)
    assert gg.arch == "llama" and gg.sliding_window is None and gg.rope_interleaved


@pytest.mark.parametrize("fmt,tol", [("hf", 1e-4), ("model-F32.gguf", 1e-4), ("model-Q8_0.gguf", 5e-3)])
def test_logits_match_transformers(fmt, tol):
    path = FIXTURE / fmt
    loaded = load(path)
    ours = loaded.model.forward(np.array(IDS), np.arange(len(IDS)), fresh_cache(loaded))
    ref = reference(path, IDS)
    assert ref.std() > 1.0
    np.testing.assert_array_less(np.abs(ours - ref).max(), tol)


def test_window_changes_the_logits():
    """The window matters for this prompt: with it, the HF model's logits differ from full attention's."""
    ours = load(FIXTURE / "hf").model.forward(np.array(IDS), np.arange(len(IDS)), fresh_cache(load(FIXTURE / "hf")))
    full = gguf_logits(FIXTURE / "model-F32.gguf", IDS)
    assert np.abs(ours[:6] - full[:6]).max() < 1e-4 < np.abs(ours[6:] - full[6:]).max()


def test_prefill_then_decode_equals_one_forward():
    """Chunks and single tokens against the cache, past the window, equal transformers' one forward."""
    path = FIXTURE / "hf"
    loaded = load(path)
    cache = fresh_cache(loaded)
    parts = [loaded.model.forward(np.array(IDS[:4]), np.arange(4), cache),
             loaded.model.forward(np.array(IDS[4:9]), np.arange(4, 9), cache)]
    parts += [loaded.model.forward(np.array([i]), np.array([p]), cache) for p, i in enumerate(IDS[9:], 9)]
    np.testing.assert_array_less(np.abs(np.concatenate(parts) - reference(path, IDS)).max(), 1e-4)


@pytest.mark.parametrize("fmt", ["hf", "model-Q8_0.gguf"])
def test_32_greedy_tokens_identical(fmt):
    path = FIXTURE / fmt
    loaded = load(path)
    prompt = IDS[:5]
    ours = list(generate_tokens(DirectRunner(loaded.model), fresh_cache(loaded), prompt, SamplingParams(), 32,
                                frozenset(), GenerationStats()))
    assert ours == hf_greedy(path, prompt, 32)
