"""llama.cpp's own quantizer (ggml_quantize_chunk from llama-cpp-python's libggml-base), as a test reference.

Without an importance matrix ggml_quantize_chunk runs ggml-quants.c's quantize_row_*_ref, which is what
llama-quantize writes. Skips the calling test when llama-cpp-python is not installed.
"""
import ctypes
from pathlib import Path

import numpy as np
import pytest

from kernels.quants import block_shape


def _quantize_chunk():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_void_p]
    return f


def ggml_quantize(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 [rows, n] -> uint8 [rows, row_bytes], quantized by llama.cpp."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    block_elems, block_bytes = block_shape(ggml_type)
    out = np.zeros((rows, n // block_elems * block_bytes), np.uint8)
    _quantize_chunk()(int(ggml_type), x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    return out
