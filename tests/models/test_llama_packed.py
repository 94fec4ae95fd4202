"""forward_packed: several sequences (prefill chunks and single decode tokens) in one forward, each against its
own KV cache, give each sequence's transformers logits (tests/reference.py, float64, on the same weights)."""

import numpy as np
import pytest

from engine.formats.hub import resolve
from engine.runtime.kvcache import KVCache
from engine.formats.loader import load_source
from reference import gguf_logits
from tiny_models import TINY

SEQS = [[5, 17, 100, 200, 3, 44, 91, 250, 12], [7, 300, 2, 64, 128], [33, 9, 101, 8, 60, 61]]
PREFILLED = [6, 0, 5]  # positions each cache holds before the packed step


@pytest.mark.parametrize("fmt,tol", [("model-F32.gguf", 1e-4), ("model-Q4_K_M.gguf", 5e-3)])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_packed_sequences_match_their_own_references(arch, fmt, tol):
    path = TINY / arch / fmt
    loaded = load_source(resolve(str(path)))
    c = loaded.config
    caches = [KVCache(c.n_layers, c.n_kv_heads, c.head_dim, 32) for _ in SEQS]
    for seq, n, cache in zip(SEQS, PREFILLED, caches):
        if n:
            loaded.model.forward(np.array(seq[:n]), np.arange(n), cache)
    tokens = np.concatenate([seq[n:] for seq, n in zip(SEQS, PREFILLED)])
    positions = np.concatenate([np.arange(n, len(seq)) for seq, n in zip(SEQS, PREFILLED)])
    lengths = [len(seq) - n for seq, n in zip(SEQS, PREFILLED)]
    ours = loaded.model.forward_packed(tokens, positions, caches, lengths)
    last = loaded.model.forward_packed(np.array([1, 2, 3]), np.array([len(s) for s in SEQS]), caches, [1, 1, 1],
                                       last_only=True)
    assert [cache.length for cache in caches] == [len(s) + 1 for s in SEQS]
    rows = np.cumsum([0, *lengths])
    for s, (seq, n) in enumerate(zip(SEQS, PREFILLED)):
        ref = gguf_logits(path, seq + [s + 1])
        np.testing.assert_array_less(np.abs(ours[rows[s]:rows[s + 1]] - ref[n:len(seq)]).max(), tol)
        np.testing.assert_array_less(np.abs(last[s] - ref[len(seq)]).max(), tol)
