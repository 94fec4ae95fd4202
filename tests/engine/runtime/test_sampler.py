"""engine.runtime.sampler against transformers' logits processors (the same filters, independently written), and its
extreme settings against exact rational arithmetic."""
import math

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from engine.errors import InvalidRequestError, ModelFileError
from engine.runtime.sampler import Sampler, SamplingParams

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


@pytest.mark.parametrize("bad", [dict(temperature=float("nan")), dict(temperature=float("inf")),
                                 dict(top_p=float("nan")), dict(min_p=float("nan")),
                                 dict(repeat_penalty=float("inf")), dict(repeat_penalty=float("nan")),
                                 dict(temperature="hot"), dict(top_k=2.5), dict(seed=1 << 64),
                                 dict(seed=-(1 << 63) - 1), dict(seed=1.5)])
def test_non_finite_and_wrongly_typed_settings_are_rejected(bad):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**bad)


def test_negative_seed_is_its_64_bit_value():
    logits = np.zeros(50, dtype=np.float32)
    a, b = Sampler(SamplingParams(temperature=1.0, seed=-1)), Sampler(SamplingParams(temperature=1.0,
                                                                                     seed=(1 << 64) - 1))
    assert [a(logits, []) for _ in range(30)] == [b(logits, []) for _ in range(30)]
    assert Sampler(SamplingParams(temperature=1.0, seed=-(1 << 63)))(logits, []) in range(50)


def reference_probs(logits, history, temperature, penalty):
    """softmax(penalized logits / temperature) with Python's exact big-number arithmetic (fractions), the
    penalized logits clamped to float32's range: an independent check of the extreme cases."""
    from fractions import Fraction
    f32max = Fraction(float(np.finfo(np.float32).max))
    vals = [Fraction(float(x)) for x in logits]
    for i in set(history):
        v = vals[i] / Fraction(penalty) if vals[i] > 0 else vals[i] * Fraction(penalty)
        vals[i] = max(-f32max, min(f32max, v))
    top = max(vals)
    # exp((v - top) / T): exponents below -800 are 0 in float64; the rest evaluated in float
    out = [0.0 if (v - top) / Fraction(temperature) < -800 else math.exp((v - top) / Fraction(temperature))
           for v in vals]
    s = sum(out)
    return np.array([x / s for x in out])


@pytest.mark.parametrize("temperature,penalty", [(5e-324, 1.0), (1e-300, 1.0), (1.0, 1e-308), (0.7, 1e308),
                                                 (5e-324, 1e-308), (2.0, 5e-324), (1e308, 1.0)])
def test_extreme_temperature_and_penalty_give_valid_distributions(temperature, penalty):
    logits = np.array([2.0, 5.0, -3.0, 4.99, 0.0, -1e30, 3e38], dtype=np.float32)
    history = [0, 2, 4, 5]
    params = SamplingParams(temperature=temperature, repeat_penalty=penalty, repeat_last_n=8, seed=1)
    ids, probs = Sampler(params).distribution(logits, history)
    assert np.all(np.isfinite(probs)) and abs(probs.sum() - 1) < 1e-12
    ours = np.zeros(len(logits))
    ours[ids] = probs
    np.testing.assert_allclose(ours, reference_probs(logits, history, temperature, penalty), atol=1e-9)
    assert Sampler(params)(logits, history) in ids


def test_tiny_temperature_is_greedy_and_ties_share():
    logits = np.array([1.0, 3.0, 3.0, 2.9999], dtype=np.float32)
    ids, probs = Sampler(SamplingParams(temperature=5e-324)).distribution(logits, [])
    ours = np.zeros(4)
    ours[ids] = probs
    assert ours.tolist() == [0.0, 0.5, 0.5, 0.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_non_finite_logits_raise_a_typed_error(bad, temperature):
    logits = np.array([1.0, bad, 0.5], dtype=np.float32)
    with pytest.raises(ModelFileError, match="non-finite logits"):
        Sampler(SamplingParams(temperature=temperature))(logits, [0])


def test_all_masked_logits_raise_a_typed_error():
    with pytest.raises(ModelFileError, match="non-finite logits"):
        Sampler(SamplingParams(temperature=1.0))(np.full(4, -np.inf, dtype=np.float32), [])


def test_masked_logits_keep_zero_probability():
    logits = np.array([1.0, -np.inf, 0.0, -np.inf], dtype=np.float32)
    ids, probs = Sampler(SamplingParams(temperature=1.0, repeat_penalty=1e308)).distribution(logits, [1, 2])
    ours = np.zeros(4)
    ours[ids] = probs
    assert ours[1] == 0 and ours[3] == 0
    np.testing.assert_allclose(ours[[0, 2]], [np.e / (np.e + 1), 1 / (np.e + 1)])


@pytest.mark.parametrize("seed", range(6))
def test_sorting_a_head_of_the_vocabulary_gives_the_full_sorts_cut(seed, monkeypatch):
    """Sampler._most_likely sorts only the most likely candidates until top-p / min-p cut inside them: the ids,
    their order (ties by id) and their probabilities equal those of sorting the whole vocabulary (HEAD past it),
    with ties, -inf and flat logits."""
    from engine.runtime import sampler as sampler_module
    rng = np.random.default_rng(seed)
    for trial in range(100):
        v = int(rng.integers(2, 3000))
        logits = (rng.standard_normal(v) * rng.uniform(0.1, 8)).astype(np.float32)
        if trial % 4 == 1:
            logits = np.round(logits)  # many exact ties
        elif trial % 4 == 2:
            logits[rng.random(v) < 0.5] = -np.inf  # a constraint's mask
        elif trial % 4 == 3:
            logits[:] = 0  # all tied
        params = SamplingParams(temperature=float(rng.uniform(0.1, 2)), top_p=[0.5, 0.9, 0.999, 1.0][trial % 4],
                                min_p=[None, 0.05, 1e-4][trial % 3])
        monkeypatch.setattr(sampler_module, "HEAD", 16)
        ids, probs = Sampler(params).filtered(logits)
        monkeypatch.setattr(sampler_module, "HEAD", 1 << 30)
        full_ids, full_probs = Sampler(params).filtered(logits)
        np.testing.assert_array_equal(ids, full_ids)
        np.testing.assert_allclose(probs, full_probs, rtol=1e-12, atol=0)
