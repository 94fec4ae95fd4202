"""QTensor: a 2-D weight kept exactly as its GGUF blocks are stored."""
import numpy as np

from kernels.quants import GGMLType, block_shape, dequantize


class QTensor:
    """Weight matrix [N, K] held as raw GGUF blocks.

    raw: [N, row_bytes] uint8, usually a view into a memory-mapped file (never copied whole).
    Rows are dequantized on demand, a tile at a time; `dequantize()` materialises everything and is for tests.
    """

    __slots__ = ("raw", "ggml_type", "shape", "__weakref__")

    def __init__(self, raw: np.ndarray, ggml_type: int, shape: tuple[int, int]):
        block_elems, block_bytes = block_shape(ggml_type)
        n, k = shape
        if k % block_elems or raw.shape != (n, k // block_elems * block_bytes) or raw.dtype != np.uint8:
            raise ValueError(f"raw {raw.shape} {raw.dtype} does not hold a {GGMLType(ggml_type).name} matrix {shape}")
        self.raw = raw
        self.ggml_type = GGMLType(ggml_type)
        self.shape = (n, k)

    @property
    def type_name(self) -> str:
        return self.ggml_type.name

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def rows(self, index) -> np.ndarray:
        """Dequantize selected rows. index: slice or int array. Returns [n, K] float32."""
        return dequantize(self.raw[index], self.ggml_type)

    def dequantize(self) -> np.ndarray:
        """The whole matrix [N, K] float32 (tests and small tensors only)."""
        return self.rows(slice(None))

    def __repr__(self) -> str:
        return f"QTensor({self.type_name}, shape={self.shape})"
