"""KVCache: keys and values of every layer for one sequence, preallocated once."""
import mmap

import numpy as np

from kernels import backend
from engine.errors import ContextOverflowError


def lazy_zeros(shape: tuple, dtype) -> np.ndarray:
    """A zeroed NumPy array whose memory the operating system commits page by page as it is written: anonymous
    memory with transparent huge pages turned off (with them, the first write into each head's [T_max, Dh] slab
    commits 2 MB at once, and a new cache's first store committed the whole cache: 0.7 s and 360 MB for SmolLM2's
    8192 positions)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes)
    if hasattr(buf, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype).reshape(shape)


class KVCache:
    """k, v: [L, H_kv, T_max, Dh] float32; positions 0 .. length-1 are valid.

    The arrays are allocated zeroed up front; the operating system commits pages only as positions are
    written, so a long max_len costs address space, not memory, until it is used.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_len: int, dtype="float32"):
        shape = (n_layers, n_kv_heads, max_len, head_dim)
        zeros = lazy_zeros if backend.xp is np else backend.xp.zeros
        self.k, self.v = zeros(shape, dtype), zeros(shape, dtype)
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
