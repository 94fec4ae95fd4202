"""Next-token sampling: repetition penalty, temperature, top-k, top-p, min-p; greedy when temperature is 0.

Every setting that SamplingParams accepts gives a valid distribution, however extreme: penalized logits are clamped
to float32's finite range (a penalty of 1e-308 cannot overflow them to inf), and the temperature divides logits
already shifted by their maximum, (logit - max) / temperature <= 0, so no temperature > 0, down to 5e-324, can
make inf - inf: a tiny temperature puts all the probability on the top token (shared among exact ties). Logits that
hold NaN or +inf, or no finite value, come from a broken forward and raise ModelFileError, never numpy's
"Probabilities contain NaN". A negative seed is taken as a 64-bit value (two's complement: -1 is 2**64 - 1).
"""
import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from engine.errors import InvalidRequestError, ModelFileError

FLOAT32_MAX = float(np.finfo(np.float32).max)
SEED_MIN, SEED_END = -(1 << 63), 1 << 64  # seeds in [SEED_MIN, SEED_END), taken modulo 2**64


def _finite(x) -> bool:
    """x is a real number that is neither NaN nor infinite (and fits a float)."""
    try:
        return not isinstance(x, bool) and math.isfinite(x)
    except (TypeError, OverflowError):
        return False


def _integer(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    """Sampling settings. Order of application (as in transformers): repetition penalty over the last
    repeat_last_n tokens, temperature, top-k, top-p, min-p, then a draw. temperature == 0 means greedy.
    seed: any integer in [-2**63, 2**64); a negative one is taken modulo 2**64."""
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        checks = [
            (_finite(self.temperature) and self.temperature >= 0, "temperature must be a finite number >= 0"),
            (self.top_k is None or (_integer(self.top_k) and self.top_k >= 1), "top_k must be an integer >= 1 "
                                                                                "(or None)"),
            (self.top_p is None or (_finite(self.top_p) and 0 < self.top_p <= 1), "top_p must be in (0, 1]"),
            (self.min_p is None or (_finite(self.min_p) and 0 <= self.min_p < 1), "min_p must be in [0, 1)"),
            (_finite(self.repeat_penalty) and self.repeat_penalty > 0, "repeat_penalty must be a finite number > 0"),
            (_integer(self.repeat_last_n) and self.repeat_last_n >= 0, "repeat_last_n must be an integer >= 0"),
            (self.seed is None or (_integer(self.seed) and SEED_MIN <= self.seed < SEED_END),
             "seed must be an integer in [-2**63, 2**64) (or None)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)


def _top(logits: np.ndarray) -> float:
    """The largest logit; ModelFileError when the logits hold NaN or +inf, or nothing finite."""
    top = float(logits.max())
    if not math.isfinite(top):
        raise ModelFileError(f"the model produced non-finite logits (max {top}): its weights or the activations "
                             "overflowed. Check the model file (download it again) or try another quantization.")
    return top


def _penalize(logits: np.ndarray, history: list[int], penalty: float) -> np.ndarray:
    """logits with each seen token's logit divided by penalty when positive, multiplied when not (a copy),
    clamped to float32's finite range."""
    logits = logits.copy()
    seen = np.unique(np.asarray(history))
    picked = logits[seen]
    with np.errstate(all="ignore"):  # overflows to ±inf are clamped below; 0 stays 0 (0 × inf would be NaN)
        penalized = np.where(picked > 0, picked / penalty, np.where(picked < 0, picked * penalty, picked))
    logits[seen] = np.clip(penalized, -FLOAT32_MAX, FLOAT32_MAX)
    return logits


class Sampler:
    """Draws token ids from logits. One Sampler per generation: it owns the seeded random stream."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(None if params.seed is None else params.seed % SEED_END)

    def distribution(self, logits: np.ndarray, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The candidates and their probabilities after every filter: (ids [n] int, probs [n] float64), most
        likely first. logits: [V] float32; history: token ids so far (prompt + generated)."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        _top(logits)
        if p.repeat_penalty != 1.0 and p.repeat_last_n and history:
            logits = _penalize(logits, history[-p.repeat_last_n:], p.repeat_penalty)
        if p.temperature == 0:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        with np.errstate(all="ignore"):
            scaled = (logits.astype(np.float64) - _top(logits)) / p.temperature  # <= 0: the top token is 0
        if p.top_k is not None and p.top_k < len(scaled):
            top = np.argpartition(-scaled, p.top_k - 1)[:p.top_k]
            order = top[np.argsort(-scaled[top], kind="stable")]
        else:
            order = np.argsort(-scaled, kind="stable")
        with np.errstate(under="ignore"):
            probs = np.exp(scaled[order])
        probs /= probs.sum()
        keep = len(order)
        if p.top_p is not None and p.top_p < 1:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
        if p.min_p:
            keep = min(keep, max(1, int(np.sum(probs >= p.min_p * probs[0]))))
        return order[:keep], probs[:keep] / probs[:keep].sum()

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        """Draw the next token id. logits: [V] float32; history: token ids so far."""
        ids, probs = self.distribution(logits, history)
        return int(ids[0]) if len(ids) == 1 else int(ids[self.rng.choice(len(ids), p=probs)])
