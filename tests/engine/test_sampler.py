"""engine.sampler against transformers' logits processors (the same filters, independently written)."""
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from engine.errors import InvalidRequestError
from engine.sampler import Sampler, SamplingParams

V = 200
rng = np.random.default_rng(1)


def hf_probs(logits, history, p: SamplingParams) -> np.ndarray:
    scores = torch.from_numpy(logits.astype(np.float64))[None]
    ids = torch.tensor([history[-p.repeat_last_n:]])
    chain = [RepetitionPenaltyLogitsProcessor(p.repeat_penalty), TemperatureLogitsWarper(p.temperature)]
    if p.top_k:
        chain.append(TopKLogitsWarper(p.top_k))
    if p.top_p:
        chain.append(TopPLogitsWarper(p.top_p))
    if p.min_p:
        chain.append(MinPLogitsWarper(p.min_p))
    for proc in chain:
        scores = proc(ids, scores)
    return torch.softmax(scores, -1)[0].numpy()


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.3, top_k=20),
    SamplingParams(temperature=1.0, top_p=0.8),
    SamplingParams(temperature=0.9, min_p=0.05),
    SamplingParams(temperature=1.1, top_k=50, top_p=0.9, min_p=0.02, repeat_penalty=1.3, repeat_last_n=8),
])
def test_distribution_matches_transformers(params):
    logits = (rng.standard_normal(V) * 3).astype(np.float32)
    history = rng.integers(0, V, 30).tolist()
    ids, probs = Sampler(params).distribution(logits, history)
    ours = np.zeros(V)
    ours[ids] = probs
    np.testing.assert_allclose(ours, hf_probs(logits, history, params), atol=1e-9)


def test_greedy_applies_repetition_penalty_then_argmax():
    logits = np.array([1.0, 5.0, 4.9, -2.0], dtype=np.float32)
    assert Sampler(SamplingParams())(logits, [0]) == 1
    assert Sampler(SamplingParams(repeat_penalty=1.5))(logits, [1]) == 2


def test_seed_reproducible_and_draws_follow_probabilities():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    s = Sampler(SamplingParams(temperature=1.0, seed=7))
    seq = [s(logits, []) for _ in range(3000)]
    s2 = Sampler(SamplingParams(temperature=1.0, seed=7))
    assert seq == [s2(logits, []) for _ in range(3000)]
    freq = np.bincount(seq, minlength=3) / len(seq)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5),
                                 dict(min_p=1.0), dict(repeat_penalty=0), dict(repeat_last_n=-1)])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**bad)
