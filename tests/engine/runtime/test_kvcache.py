"""KVCache: stores and reads back, refuses overflow, and commits memory only as positions are written."""
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ContextOverflowError
from engine.runtime.kvcache import KVCache


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



def test_a_cache_larger_than_memory_is_refused_naming_ctx_size():
    """2^40 positions of SmolLM2's shape: 46 PiB, past any machine's memory (the sizes must not overflow)."""
    from engine.runtime.kvcache import memory_budget
    assert 0 < memory_budget() < 2**62
    with pytest.raises(ContextOverflowError,
                       match=r"1099511627776-token context needs .* smaller n_ctx \(--ctx-size\)"):
        KVCache(n_layers=30, n_kv_heads=3, head_dim=64, max_len=2**40)
    with pytest.raises(ContextOverflowError, match="--ctx-size"):
        KVCache(n_layers=2**31 - 1, n_kv_heads=2**31 - 1, head_dim=2**31 - 1, max_len=2**63 - 1)


def test_a_failed_allocation_is_a_context_error(monkeypatch):
    """Within the budget but not free (other memory in use): the allocation's ENOMEM is a typed error too."""
    import engine.runtime.kvcache as kvcache

    def no_memory(shape, dtype):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(kvcache, "lazy_zeros", no_memory)
    with pytest.raises(ContextOverflowError, match=r"could not allocate .* 10-token context .*--ctx-size"):
        KVCache(n_layers=2, n_kv_heads=3, head_dim=4, max_len=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as Linux applies it")
def test_the_budget_honours_an_address_space_limit():
    """Under RLIMIT_AS (as the fuzz harness sets) the budget is the limit: a cache past it is refused by the check,
    not by the allocation."""
    import subprocess
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from engine.runtime.kvcache import memory_budget, KVCache\n"
            "from engine.errors import ContextOverflowError\n"
            "assert memory_budget() == 3 << 30, memory_budget()\n"
            "try:\n    KVCache(4, 4, 64, 2**20)\nexcept ContextOverflowError as e:\n    print('refused', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).parents[3])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused") and "needs 8 GiB" in r.stdout and "than the 3 GiB" in r.stdout
