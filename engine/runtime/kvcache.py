"""KVCache: keys and values of every layer for one sequence, preallocated once on a kernels.device.Device."""
import mmap
import os
import resource

import numpy as np

from engine.errors import ContextOverflowError
from kernels.device import CPU, Device


def lazy_zeros(shape: tuple, dtype) -> np.ndarray:
    """A zeroed NumPy array of `shape` and `dtype` in anonymous memory, which the operating system commits page by
    page as it is written. Transparent huge pages are turned off for it: with them, the first write into each
    head's [T_max, Dh] slab would commit a 2 MB huge page at once, so a new cache's first store would commit
    (and zero) nearly the whole cache."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes)
    if hasattr(buf, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype).reshape(shape)


def memory_budget(device: Device = CPU) -> int:
    """Bytes a KV cache may reserve: free device memory (plus CuPy's pooled free blocks) on a GPU; on the CPU the
    machine's physical memory, or the address-space limit (RLIMIT_AS) when that is lower (the cache's pages are
    committed lazily, but its address space is reserved at once)."""
    xp = device.xp
    if xp is not np:
        return int(xp.cuda.runtime.memGetInfo()[0]) + int(xp.get_default_memory_pool().free_bytes())
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return physical if limit == resource.RLIM_INFINITY else min(physical, limit)


def check_memory(n_layers: int, n_kv_heads: int, head_dim: int, max_len: int, dtype="float32",
                 device: Device = CPU) -> None:
    """ContextOverflowError, naming n_ctx / --ctx-size, unless the keys and values of max_len positions fit in
    memory_budget(). Sizes are Python integers: no overflow, whatever the model file claims."""
    need = 2 * n_layers * n_kv_heads * head_dim * max_len * np.dtype(dtype).itemsize
    budget = memory_budget(device)
    if need > budget:
        raise ContextOverflowError(
            f"a KV cache for a {max_len}-token context needs {need / 2**30:.3g} GiB ({n_layers} layers x "
            f"{n_kv_heads} KV heads x {head_dim} x keys and values), more than the {budget / 2**30:.3g} GiB of "
            "memory here; load the model with a smaller n_ctx (--ctx-size).")


class KVCache:
    """k, v: [L, H_kv, T_max, Dh] float32; positions 0 .. length-1 are valid.

    The arrays are allocated zeroed up front; the operating system commits pages only as positions are
    written, so a long max_len costs address space, not memory, until it is used. A cache that does not fit
    (check_memory, or the allocation failing) raises ContextOverflowError naming n_ctx.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_len: int, dtype="float32",
                 device: Device = CPU):
        check_memory(n_layers, n_kv_heads, head_dim, max_len, dtype, device)
        shape = (n_layers, n_kv_heads, max_len, head_dim)
        zeros = lazy_zeros if device.xp is np else device.xp.zeros
        try:
            self.k, self.v = zeros(shape, dtype), zeros(shape, dtype)
        except (MemoryError, OSError) as e:  # the budget was there, but not free (CuPy's OOM is a MemoryError)
            raise ContextOverflowError(f"could not allocate the KV cache for a {max_len}-token context ({e}); load "
                                       "the model with a smaller n_ctx (--ctx-size).") from e
        self.max_len = max_len
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes of both arrays at full length."""
        return self.k.nbytes + self.v.nbytes

    def store(self, layer: int, start: int, k, v) -> None:
        """Write new keys/values k, v: [T, H_kv, Dh] at positions start .. start+T-1 of a layer."""
        end = start + k.shape[0]
        self.check_fits(end)
        self.k[layer, :, start:end] = k.transpose(1, 0, 2)
        self.v[layer, :, start:end] = v.transpose(1, 0, 2)

    def check_fits(self, end: int) -> None:
        """Raise ContextOverflowError unless positions up to end (exclusive) fit in the cache."""
        if end > self.max_len:
            raise ContextOverflowError(f"{end} positions do not fit in the {self.max_len}-token context; shorten "
                                       "the prompt or max_tokens, or load the model with a larger n_ctx.")

    def layer(self, layer: int):
        """(k, v) of a layer, each [H_kv, max_len, Dh] (views); positions from `length` on (after the latest
        store) are not valid yet. kernels.ops.attention takes them whole."""
        return self.k[layer], self.v[layer]

    def truncate(self, n: int) -> None:
        """Forget every position from n on (keep the first n)."""
        if not 0 <= n <= self.max_len:
            raise ValueError(f"cannot truncate a {self.max_len}-position cache to {n}")
        self.length = min(self.length, n)
