"""Random but valid GGUF blocks of every supported type (test helper), encoded with gguf-py where it can."""
import numpy as np
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

from kernels.quants import GGMLType, block_shape

K_QUANTS = {GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K}
# byte offsets of the f16 super-block scales (d, dmin) inside one K-quant block
K_F16_FIELDS = {GGMLType.Q4_K: (0, 2), GGMLType.Q5_K: (0, 2), GGMLType.Q6_K: (208,)}


def gguf_bytes(t: GGMLType, x: np.ndarray) -> np.ndarray:
    """Encode float32 x with gguf-py, as uint8 [..., row_bytes]."""
    return np.ascontiguousarray(gq.quantize(x, GQ(int(t)))).view(np.uint8)


def make_blocks(t: GGMLType, n_rows: int, row_elems: int, rng: np.random.Generator) -> np.ndarray:
    """Random uint8 [n_rows, row_bytes] holding valid blocks of type t."""
    block_elems, block_bytes = block_shape(t)
    if t in K_QUANTS:
        n_blocks = n_rows * row_elems // block_elems
        raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        for off in K_F16_FIELDS[t]:  # finite f16 scales; everything else stays arbitrary random bytes
            d = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-4, 2, n_blocks)).astype(np.float16)
            raw[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
        return raw.reshape(n_rows, row_elems // block_elems * block_bytes)
    x = rng.standard_normal((n_rows, row_elems)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-3, 3, size=(n_rows, 1)).astype(np.float32)
    x[:, ::7] = 0.0  # exact zeros and a zero in every block
    return gguf_bytes(t, x)
