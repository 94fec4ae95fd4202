"""KVCache: stores and reads back, refuses overflow, and commits memory only as positions are written."""
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ContextOverflowError
from engine.kvcache import KVCache


def test_store_then_layer_reads_back():
    cache = KVCache(n_layers=2, n_kv_heads=3, head_dim=4, max_len=10)
    k, v = np.random.default_rng(0).standard_normal((2, 5, 3, 4)).astype(np.float32)  # [T, H_kv, Dh]
    cache.store(1, 2, k, v)
    keys, values = cache.layer(1)
    assert keys.shape == (3, 10, 4) and keys.flags.c_contiguous
    np.testing.assert_array_equal(keys[:, 2:7], k.transpose(1, 0, 2))
    np.testing.assert_array_equal(values[:, 2:7], v.transpose(1, 0, 2))
    assert not keys[:, :2].any() and not cache.layer(0)[0].any()
    with pytest.raises(ContextOverflowError, match="10-token context"):
        cache.store(0, 8, k, v)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc (Linux only)")
def test_a_long_cache_commits_memory_only_where_written():
    """SmolLM2's shape at its full 8192-token context: 377 MB of address space; the first store of a short prompt
    must not commit it (transparent huge pages would commit 2 MB per layer and head on the first write)."""
    before = _rss_mb()
    cache = KVCache(n_layers=30, n_kv_heads=3, head_dim=64, max_len=8192)
    k = np.ones((5, 3, 64), np.float32)
    for layer in range(30):
        cache.store(layer, 0, k, k)
    assert cache.nbytes > 350e6 and _rss_mb() - before < 40

