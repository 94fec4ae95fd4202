"""GGML block formats: type ids, block sizes, dequantization (and quantization for the simple types).

A GGUF tensor row of `n` elements is stored as `n // block_elems` blocks of `block_bytes` bytes each.
Everything here works on uint8 arrays shaped `[..., row_bytes]` (any leading dims, any strides: a view
into a memory-mapped file is fine) and returns float32 `[..., row_elems]`, or the reverse for `quantize`.

All multi-byte fields are little-endian. "f16" is IEEE half precision; "bf16" is the upper 16 bits of an f32.

The arithmetic follows ggml's reference dequantizers (as mirrored by gguf-py) step by step in float32,
so the results are bit-identical to `gguf.quants.dequantize`. Keep the operation order when editing:
e.g. Q4_1 is `d * q + m`, and the K-quants form `d * sc` and `dmin * m` in float32 before combining.
"""
from __future__ import annotations

import enum

import numpy as np

from engine.errors import UnsupportedModelError

QK = 32  # elements per block of the legacy formats (Q4_0 ... Q8_1)
QK_K = 256  # elements per super-block of the K-quants


class GGMLType(enum.IntEnum):
    """GGML tensor type ids, as stored in a GGUF file's tensor info (ggml.h `enum ggml_type`)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39

    @classmethod
    def name_of(cls, type_id: int) -> str:
        """A readable name for any id, known or not (for error messages): 'Q2_K', 'unknown type id 99'."""
        try:
            return cls(int(type_id)).name
        except ValueError:
            return f"unknown type id {int(type_id)}"


SUPPORTED = frozenset({
    GGMLType.F32, GGMLType.F16, GGMLType.BF16,
    GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1,
    GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})

# type -> (elements per block, bytes per block)
_BLOCK_SHAPES = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (QK, 2 + QK // 2),  # 18
    GGMLType.Q4_1: (QK, 2 + 2 + QK // 2),  # 20
    GGMLType.Q5_0: (QK, 2 + 4 + QK // 2),  # 22
    GGMLType.Q5_1: (QK, 2 + 2 + 4 + QK // 2),  # 24
    GGMLType.Q8_0: (QK, 2 + QK),  # 34
    GGMLType.Q4_K: (QK_K, 2 + 2 + 12 + QK_K // 2),  # 144
    GGMLType.Q5_K: (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),  # 176
    GGMLType.Q6_K: (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),  # 210
}


def _supported_names() -> str:
    return ", ".join(t.name for t in sorted(SUPPORTED))


def require_supported(ggml_type: int) -> GGMLType:
    """Return `ggml_type` as a GGMLType, or raise UnsupportedModelError naming it and listing what is supported."""
    try:
        t = GGMLType(int(ggml_type))
    except ValueError:
        t = None
    if t not in SUPPORTED:
        raise UnsupportedModelError(
            f"tensor type {GGMLType.name_of(ggml_type)} (id {int(ggml_type)}) is not supported; "
            f"supported types: {_supported_names()}. Use a model file quantized to one of these."
        )
    return t


def block_shape(ggml_type: int) -> tuple[int, int]:
    """(elements per block, bytes per block), e.g. Q4_K -> (256, 144), F32 -> (1, 4)."""
    return _BLOCK_SHAPES[require_supported(ggml_type)]


# ---------------------------------------------------------------------------------------------- helpers

def _u16(b: np.ndarray) -> np.ndarray:
    """[..., 2] little-endian bytes -> [...] uint16 (works for any strides, any host byte order)."""
    return b[..., 0].astype(np.uint16) | (b[..., 1].astype(np.uint16) << np.uint16(8))


def _f16(b: np.ndarray) -> np.ndarray:
    """[..., 2] little-endian f16 bytes -> [..., 1] float32 (kept 1 wide so it broadcasts over a block)."""
    return _u16(b).view(np.float16).astype(np.float32)[..., None]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., m] bytes -> [..., 2m] uint8: the m low nibbles, then the m high nibbles."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _bits(b: np.ndarray) -> np.ndarray:
    """[..., m] bytes -> [..., 8m] uint8 of 0/1: bit j of byte i at position 8*i + j (little-endian bit order)."""
    return ((b[..., :, None] >> np.arange(8, dtype=np.uint8)) & np.uint8(1)).reshape(*b.shape[:-1], -1)


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12 scale bytes of Q4_K/Q5_K into 8 six-bit scales and 8 six-bit mins ([..., 8] uint8 each).

    Bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3 (low 6 bits); scales/mins 4-7 take their low
    4 bits from bytes 8-11 (low/high nibble) and their high 2 bits from the top 2 bits of bytes 0-3 / 4-7.
    """
    a, b, c = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([a & np.uint8(63), (c & np.uint8(0x0F)) | ((a >> np.uint8(6)) << np.uint8(4))], axis=-1)
    mn = np.concatenate([b & np.uint8(63), (c >> np.uint8(4)) | ((b >> np.uint8(6)) << np.uint8(4))], axis=-1)
    return sc, mn


# ------------------------------------------------------------------------------------ per-type dequantizers
# Each takes uint8 blocks [..., block_bytes] and returns float32 [..., block_elems].

def _deq_f32(b):
    """F32: 4 bytes little-endian IEEE single per element."""
    return np.ascontiguousarray(b).view("<f4").astype(np.float32)


def _deq_f16(b):
    """F16: 2 bytes little-endian IEEE half per element."""
    return _f16(b)


def _deq_bf16(b):
    """BF16: 2 bytes little-endian per element; the value is those 16 bits as the top half of an f32."""
    bits = (b[..., 1].astype(np.uint32) << np.uint32(24)) | (b[..., 0].astype(np.uint32) << np.uint32(16))
    return bits.view(np.float32)[..., None]


def _deq_q8_0(b):
    """Q8_0, 34 bytes / 32 elems: d f16 | qs int8[32].  x = qs * d."""
    d = _f16(b[..., 0:2])
    q = b[..., 2:34].view(np.int8).astype(np.float32)
    return q * d


def _deq_q4_0(b):
    """Q4_0, 18 bytes / 32 elems: d f16 | qs u8[16] (elem i: low nibble of qs[i], elem 16+i: high nibble).
    x = (q - 8) * d."""
    d = _f16(b[..., 0:2])
    q = _nibbles(b[..., 2:18]).astype(np.float32) - np.float32(8)
    return d * q


def _deq_q4_1(b):
    """Q4_1, 20 bytes / 32 elems: d f16 | m f16 | qs u8[16] (nibbles as Q4_0).  x = d * q + m."""
    d = _f16(b[..., 0:2])
    m = _f16(b[..., 2:4])
    q = _nibbles(b[..., 4:20]).astype(np.float32)
    return d * q + m


def _deq_q5_0(b):
    """Q5_0, 22 bytes / 32 elems: d f16 | qh u8[4] (bit i = 5th bit of elem i) | qs u8[16] (nibbles as Q4_0).
    x = (q - 16) * d."""
    d = _f16(b[..., 0:2])
    q = _nibbles(b[..., 6:22]) | (_bits(b[..., 2:6]) << np.uint8(4))
    return d * (q.astype(np.float32) - np.float32(16))


def _deq_q5_1(b):
    """Q5_1, 24 bytes / 32 elems: d f16 | m f16 | qh u8[4] | qs u8[16] (as Q5_0).  x = d * q + m."""
    d = _f16(b[..., 0:2])
    m = _f16(b[..., 2:4])
    q = _nibbles(b[..., 8:24]) | (_bits(b[..., 4:8]) << np.uint8(4))
    return d * q.astype(np.float32) + m


def _deq_q4_k(b):
    """Q4_K, 144 bytes / 256 elems in 8 sub-blocks of 32:
    d f16 | dmin f16 | scales u8[12] (8 six-bit scales + 8 six-bit mins, see _k_scale_min) | qs u8[128].
    qs is 4 chunks of 32 bytes; chunk c holds sub-block 2c in its low nibbles, 2c+1 in its high nibbles.
    x = (d * sc[j]) * q - (dmin * m[j])."""
    lead = b.shape[:-1]
    d = _f16(b[..., 0:2])
    dmin = _f16(b[..., 2:4])
    sc, mn = _k_scale_min(b[..., 4:16])
    qs = b[..., 16:144].reshape(*lead, 4, 32)
    q = np.stack([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-2).reshape(*lead, 8, 32)
    dl = (d * sc.astype(np.float32))[..., None]
    ml = (dmin * mn.astype(np.float32))[..., None]
    return (dl * q.astype(np.float32) - ml).reshape(*lead, QK_K)


def _deq_q5_k(b):
    """Q5_K, 176 bytes / 256 elems in 8 sub-blocks of 32:
    d f16 | dmin f16 | scales u8[12] (as Q4_K) | qh u8[32] | qs u8[128] (low 4 bits, as Q4_K).
    The 5th bit of element l of sub-block j is bit j of qh[l].  x = (d * sc[j]) * q - (dmin * m[j])."""
    lead = b.shape[:-1]
    d = _f16(b[..., 0:2])
    dmin = _f16(b[..., 2:4])
    sc, mn = _k_scale_min(b[..., 4:16])
    qh = b[..., 16:48]
    qs = b[..., 48:176].reshape(*lead, 4, 32)
    low = np.stack([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-2).reshape(*lead, 8, 32)
    high = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & np.uint8(1)  # [..., 8, 32]
    q = low | (high << np.uint8(4))
    dl = (d * sc.astype(np.float32))[..., None]
    ml = (dmin * mn.astype(np.float32))[..., None]
    return (dl * q.astype(np.float32) - ml).reshape(*lead, QK_K)


def _deq_q6_k(b):
    """Q6_K, 210 bytes / 256 elems in 16 sub-blocks of 16:
    ql u8[128] | qh u8[64] | scales int8[16] | d f16.
    Two halves of 128 elems; half h uses ql[64h:64h+64] and qh[32h:32h+32]. Within a half, element
    32*k + l (k = 0..3, l = 0..31) has low 4 bits from ql[l + 32*(k&1)] (low nibble for k < 2, high
    for k >= 2) and high 2 bits from bits 2k..2k+1 of qh[l].  x = (d * scales[e // 16]) * (q - 32)."""
    lead = b.shape[:-1]
    ql = b[..., 0:128].reshape(*lead, 2, 64)
    qh = b[..., 128:192].reshape(*lead, 2, 32)
    scales = b[..., 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[..., 208:210])
    low = _nibbles(ql)  # [..., 2, 128]: element 64*n + i = nibble n of ql[i]
    high = (qh[..., None, :] >> np.arange(0, 8, 2, dtype=np.uint8)[:, None]) & np.uint8(3)  # [..., 2, 4, 32]
    q = (low | (high.reshape(*lead, 2, 128) << np.uint8(4))).astype(np.float32) - np.float32(32)
    dl = (d * scales)[..., None]  # [..., 16, 1]
    return (dl * q.reshape(*lead, 16, 16)).reshape(*lead, QK_K)


_DEQUANTIZERS = {
    GGMLType.F32: _deq_f32,
    GGMLType.F16: _deq_f16,
    GGMLType.BF16: _deq_bf16,
    GGMLType.Q8_0: _deq_q8_0,
    GGMLType.Q4_0: _deq_q4_0,
    GGMLType.Q4_1: _deq_q4_1,
    GGMLType.Q5_0: _deq_q5_0,
    GGMLType.Q5_1: _deq_q5_1,
    GGMLType.Q4_K: _deq_q4_k,
    GGMLType.Q5_K: _deq_q5_k,
    GGMLType.Q6_K: _deq_q6_k,
}


def dequantize(blocks: np.ndarray, ggml_type: int) -> np.ndarray:
    """Decode GGML blocks.

    blocks: uint8 [..., row_bytes], row_bytes a multiple of the type's block bytes; any leading dims and
    strides (e.g. rows picked out of a np.memmap). Returns a new float32 array [..., row_elems].
    Bit-identical to gguf.quants.dequantize.
    """
    t = require_supported(ggml_type)
    block_elems, block_bytes = _BLOCK_SHAPES[t]
    blocks = np.asarray(blocks)
    if blocks.dtype != np.uint8 or blocks.ndim < 1 or blocks.shape[-1] % block_bytes:
        raise ValueError(f"{t.name} data must be uint8 [..., k * {block_bytes}], got {blocks.dtype} {blocks.shape}")
    lead = blocks.shape[:-1]
    n_blocks = blocks.shape[-1] // block_bytes
    out = _DEQUANTIZERS[t](blocks.reshape(*lead, n_blocks, block_bytes))
    return out.reshape(*lead, n_blocks * block_elems)


# ------------------------------------------------------------------------------------------- quantizers

def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C roundf: nearest integer, ties away from zero (x - trunc(x) is exact in floating point)."""
    t = np.trunc(x)
    return np.where(np.abs(x - t) >= np.float32(0.5), t + np.sign(x), t)


def _f16_bytes(d: np.ndarray) -> np.ndarray:
    """float32 [..., 1] -> [..., 2] little-endian f16 bytes."""
    return d.astype("<f2").view(np.uint8)


def _quant_f32(x):
    return x.astype("<f4").view(np.uint8)


def _quant_f16(x):
    return x.astype("<f2").view(np.uint8)


def _quant_bf16(x):
    """Round to nearest even on the upper 16 bits; NaNs are kept NaN (forced quiet), as ggml does."""
    n = x.view(np.uint32)
    is_nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    n = np.where(is_nan, (n & np.uint32(0xFFFF0000)) | np.uint32(0x00400000), n)
    # Cannot overflow: only NaNs exceed 0xFFFF0000, and they now have zero low bits.
    n = (n + np.uint32(0x7FFF) + ((n >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return n.astype("<u2").view(np.uint8)


def _quant_q8_0(x):
    """absmax scaling: d = absmax / 127, q = roundf(x / d) (computed as x * (1/d)), as ggml's reference."""
    d = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = _round_half_away(x * inv).astype(np.int8).view(np.uint8)
    return np.concatenate([_f16_bytes(d), q], axis=-1)


def _quant_q4_0(x):
    """d = (signed value of largest magnitude) / -8, q = min(15, trunc(x / d + 8.5)), as ggml's reference."""
    imax = np.abs(x).argmax(axis=-1)[..., None]  # first occurrence, like ggml's strict `<` scan
    d = np.take_along_axis(x, imax, axis=-1) / np.float32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = np.minimum(np.trunc(x * inv + np.float32(8.5)), np.float32(15)).astype(np.uint8)
    packed = q[..., :16] | (q[..., 16:] << np.uint8(4))
    return np.concatenate([_f16_bytes(d), packed], axis=-1)


_QUANTIZERS = {
    GGMLType.F32: _quant_f32,
    GGMLType.F16: _quant_f16,
    GGMLType.BF16: _quant_bf16,
    GGMLType.Q8_0: _quant_q8_0,
    GGMLType.Q4_0: _quant_q4_0,
}


def quantize(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """Encode float32 [..., n] as GGML blocks, uint8 [..., n // block_elems * block_bytes].

    Only F32, F16, BF16, Q8_0 and Q4_0; byte-identical to gguf.quants.quantize for float32 input
    (other float dtypes are first converted to float32).
    """
    t = require_supported(ggml_type)
    if t not in _QUANTIZERS:
        raise UnsupportedModelError(
            f"quantizing to {t.name} is not implemented; quantize() supports "
            f"{', '.join(q.name for q in _QUANTIZERS)}"
        )
    block_elems, block_bytes = _BLOCK_SHAPES[t]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim < 1 or x.shape[-1] % block_elems:
        raise ValueError(f"{t.name} rows must have a multiple of {block_elems} elements, got shape {x.shape}")
    lead = x.shape[:-1]
    n_blocks = x.shape[-1] // block_elems
    out = _QUANTIZERS[t](x.reshape(*lead, n_blocks, block_elems))
    return np.ascontiguousarray(out).reshape(*lead, n_blocks * block_bytes)
