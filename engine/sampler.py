"""Next-token sampling: repetition penalty, temperature, top-k, top-p, min-p; greedy when temperature is 0."""
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidRequestError


@dataclass
class SamplingParams:
    """Sampling settings. Order of application (as in transformers): repetition penalty over the last
    repeat_last_n tokens, temperature, top-k, top-p, min-p, then a draw. temperature == 0 means greedy."""
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k is None or self.top_k >= 1, "top_k must be >= 1 (or None)"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.min_p is None or 0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)


class Sampler:
    """Draws token ids from logits. One Sampler per generation: it owns the seeded random stream."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def distribution(self, logits: np.ndarray, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The candidates and their probabilities after every filter: (ids [n] int, probs [n] float64), most
        likely first. logits: [V] float32; history: token ids so far (prompt + generated)."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        if p.repeat_penalty != 1.0 and p.repeat_last_n and history:
            logits = logits.copy()
            seen = np.unique(np.asarray(history[-p.repeat_last_n:]))
            picked = logits[seen]
            logits[seen] = np.where(picked > 0, picked / p.repeat_penalty, picked * p.repeat_penalty)
        if p.temperature == 0:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        scaled = logits.astype(np.float64) / p.temperature
        if p.top_k is not None and p.top_k < len(scaled):
            top = np.argpartition(-scaled, p.top_k - 1)[:p.top_k]
            order = top[np.argsort(-scaled[top], kind="stable")]
        else:
            order = np.argsort(-scaled, kind="stable")
        probs = np.exp(scaled[order] - scaled[order[0]])
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
