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

from kernels.errors import UnsupportedModelError

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
    d, q = _quant_legacy_signed(x, 8)
    packed = q[..., :16] | (q[..., 16:] << np.uint8(4))
    return np.concatenate([_f16_bytes(d), packed], axis=-1)


def _quant_q5_0(x):
    """As Q4_0 with 5 bits: d = (signed value of largest magnitude) / -16, q = min(31, trunc(x / d + 16.5));
    low nibbles as Q4_0, 5th bits packed little-endian into qh (bit i = element i)."""
    d, q = _quant_legacy_signed(x, 16)
    packed = (q[..., :16] & np.uint8(0x0F)) | (q[..., 16:] << np.uint8(4))
    qh = np.packbits(q >> np.uint8(4), axis=-1, bitorder="little")
    return np.concatenate([_f16_bytes(d), qh, packed], axis=-1)


def _quant_legacy_signed(x, half):
    """Shared by Q4_0/Q5_0: d = max / -half (max: the first value of largest magnitude), q = min(2 half - 1,
    trunc(x * (1/d) + half + 0.5)) as uint8 [..., 32]; d float32 [..., 1]."""
    imax = np.abs(x).argmax(axis=-1)[..., None]  # first occurrence, like ggml's strict `<` scan
    d = np.take_along_axis(x, imax, axis=-1) / np.float32(-half)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = np.minimum(np.trunc(x * inv + np.float32(half + 0.5)), np.float32(2 * half - 1)).astype(np.uint8)
    return d, q


# K-quants follow ggml-quants.c's quantize_row_q4_K_ref / quantize_row_q6_K_ref (what llama-quantize uses without
# an importance matrix) operation by operation in float32, vectorized over sub-blocks. The sub-block arrays are
# element-major ([elements, sub-blocks]) so that sums run element by element in C's order (`_seq_sum`): the
# searches compare errors computed from these sums, so a different summation order can pick other scales.

def _seq_sum(a: np.ndarray) -> np.ndarray:
    """[n, N] -> [N]: a[0] + a[1] + ... + a[n-1], added left to right in float32 like a C loop."""
    acc = a[0].copy()
    for row in a[1:]:
        acc += row
    return acc


def _make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep):
    """ggml's make_qkx2_quants (use_mad = false): an asymmetric fit x ~ scale * L - the_min, L in [0, nmax],
    searching nstep + 1 candidate scales for the least weighted squared error.
    x, w: float32 [n, N] (element-major). Returns L uint8 [n, N], scale [N], the_min [N] (float32)."""
    f32 = np.float32
    mn = np.minimum(x.min(axis=0), f32(0))
    mx = x.max(axis=0)
    flat = mx == mn
    sum_w = _seq_sum(w)
    sum_x = _seq_sum(w * x)
    iscale = f32(nmax) / np.where(flat, f32(1), mx - mn)
    scale = f32(1) / iscale
    L = np.clip(np.rint(iscale * (x - mn)), 0, nmax)
    diff = scale * L + mn - x
    best = _seq_sum(w * (diff * diff))
    for step in range(nstep + 1):  # ggml keeps using the running `min` here, updated by each better candidate
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (mx - mn)
            la = np.clip(np.rint(iscale * (x - mn)), 0, nmax)
        wl = w * la
        sum_l, sum_l2, sum_xl = _seq_sum(wl), _seq_sum(wl * la), _seq_sum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        this_min = np.where(pos, f32(0), this_min)
        diff = this_scale * la + this_min - x
        cur = _seq_sum(w * (diff * diff))
        better = (D > 0) & (cur < best) & ~flat
        L = np.where(better, la, L)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L = np.where(flat, f32(0), L)
    scale = np.where(flat, f32(0), scale)
    return L.astype(np.uint8), scale, -mn


def _make_qx_quants_rmse1(x, nmax):
    """ggml's make_qx_quants(rmse_type = 1, no importance): a symmetric fit x ~ scale * (L - nmax), L in
    [0, 2 nmax), weights x^2, searching 19 candidate scales. x: float32 [n, N]. Returns L uint8 [n, N], scale [N]."""
    f32 = np.float32
    ax = np.abs(x)
    imax = ax.argmax(axis=0)  # first occurrence, like ggml's strict `>` scan
    mx = np.take_along_axis(x, imax[None], axis=0)[0]
    zero = ax.max(axis=0) < f32(1e-15)
    mx = np.where(zero, f32(1), mx)
    w = x * x
    wx = w * x

    def fit(iscale):
        lv = np.clip(np.rint(iscale * x), -nmax, nmax - 1)
        return lv, _seq_sum(wx * lv), _seq_sum((w * lv) * lv)

    lv, sumlx, suml2 = fit(f32(-nmax) / mx)
    L = lv + nmax
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lv, sumlx, suml2 = fit(-(f32(nmax) + f32(0.1) * f32(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better, lv + nmax, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    return np.where(zero, f32(0), L).astype(np.uint8), np.where(zero, f32(0), scale)


def _f16_round(v: np.ndarray) -> np.ndarray:
    """float32 -> nearest f16 (ties to even) -> float32, as GGML_FP32_TO_FP16 then back."""
    return v.astype(np.float16).astype(np.float32)


def _nearest_u8(v: np.ndarray) -> np.ndarray:
    """nearest_int(v) stored in a uint8_t (wraps modulo 256, as the C assignment does)."""
    return (np.rint(v).astype(np.int64) & 0xFF).astype(np.uint8)


def _quant_q4_k(x):
    """Q4_K (quantize_row_q4_K_ref): per sub-block of 32 an asymmetric 4-bit fit (make_qkx2_quants, weights
    rms(x) + |x|), then the 8 scales and 8 mins quantized to 6 bits against d = max scale / 63 and
    dmin = max min / 63, and every element re-quantized with those: q = nearest((x + dmin * m) / (d * sc))."""
    f32 = np.float32
    lead = x.shape[:-1]
    xb = x.reshape(-1, QK_K)
    B = xb.shape[0]
    xs = np.ascontiguousarray(xb.reshape(B * 8, 32).T)  # [32, B*8] element-major sub-blocks
    av_x = np.sqrt(_seq_sum(xs * xs) / f32(32))
    L, scales, mins = _make_qkx2_quants(xs, av_x + np.abs(xs), 15, -1.0, 0.1, 20)
    scales, mins = scales.reshape(B, 8), mins.reshape(B, 8)
    max_scale = np.maximum(scales.max(axis=1), f32(0))
    max_min = np.maximum(mins.max(axis=1), f32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0))
        inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0))
    ls = np.minimum(_nearest_u8(inv_scale[:, None] * scales), np.uint8(63))
    lm = np.minimum(_nearest_u8(inv_min[:, None] * mins), np.uint8(63))
    d = _f16_round(max_scale / f32(63))
    dmin = _f16_round(max_min / f32(63))
    dl = (d[:, None] * ls.astype(f32)).reshape(1, B * 8)
    ml = (dmin[:, None] * lm.astype(f32)).reshape(1, B * 8)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(np.rint((xs + ml) / dl), 0, 15).astype(np.uint8)
    L = np.where(dl != 0, requant, L).T.reshape(B, 4, 2, 32)  # chunk c: sub-blocks 2c (low) and 2c+1 (high)
    qs = (L[:, :, 0] | (L[:, :, 1] << np.uint8(4))).reshape(B, 128)
    packed = np.empty((B, 12), np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> np.uint8(4)) << np.uint8(6))
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> np.uint8(4)) << np.uint8(6))
    packed[:, 8:12] = (ls[:, 4:] & np.uint8(0x0F)) | ((lm[:, 4:] & np.uint8(0x0F)) << np.uint8(4))
    out = np.concatenate([_f16_bytes(d[:, None]), _f16_bytes(dmin[:, None]), packed, qs], axis=-1)
    return out.reshape(*lead, 144)


def _quant_q6_k(x):
    """Q6_K (quantize_row_q6_K_ref): per sub-block of 16 a symmetric 6-bit fit (make_qx_quants, weights x^2),
    the 16 scales quantized to int8 against d = (scale of largest magnitude) / -128, then every element
    re-quantized: q = nearest(x / (d * sc)) + 32. A block whose scales are all ~0 is all zero bytes."""
    f32 = np.float32
    lead = x.shape[:-1]
    xb = x.reshape(-1, QK_K)
    B = xb.shape[0]
    xs = np.ascontiguousarray(xb.reshape(B * 16, 16).T)  # [16, B*16] element-major sub-blocks
    L, scales = _make_qx_quants_rmse1(xs, 32)
    scales = scales.reshape(B, 16)
    imax = np.abs(scales).argmax(axis=1)[:, None]
    max_scale = np.take_along_axis(scales, imax, axis=1)[:, 0]
    zero = np.abs(max_scale) < f32(1e-15)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = f32(-128) / np.where(zero, f32(1), max_scale)
        d = _f16_round(f32(1) / iscale)
    sc = np.minimum(np.rint(iscale[:, None] * scales), f32(127)).astype(np.int8)
    dl = (d[:, None] * sc.astype(f32)).reshape(1, B * 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = (np.clip(np.rint(xs / dl), -32, 31) + 32).astype(np.uint8)
    L = np.where(dl != 0, requant, L).T.reshape(B, 2, 4, 32)  # half h, quarter k: elements 128h + 32k + l
    ql = np.concatenate([L[:, :, 0] & np.uint8(0x0F) | ((L[:, :, 2] & np.uint8(0x0F)) << np.uint8(4)),
                         L[:, :, 1] & np.uint8(0x0F) | ((L[:, :, 3] & np.uint8(0x0F)) << np.uint8(4))], axis=-1)
    qh = ((L[:, :, 0] >> np.uint8(4)) | ((L[:, :, 1] >> np.uint8(4)) << np.uint8(2))
          | ((L[:, :, 2] >> np.uint8(4)) << np.uint8(4)) | ((L[:, :, 3] >> np.uint8(4)) << np.uint8(6)))
    out = np.concatenate([ql.reshape(B, 128), qh.reshape(B, 64), sc.view(np.uint8),
                          _f16_bytes(d[:, None])], axis=-1)
    out[zero] = 0
    return out.reshape(*lead, 210)


_QUANTIZERS = {
    GGMLType.F32: _quant_f32,
    GGMLType.F16: _quant_f16,
    GGMLType.BF16: _quant_bf16,
    GGMLType.Q8_0: _quant_q8_0,
    GGMLType.Q4_0: _quant_q4_0,
    GGMLType.Q5_0: _quant_q5_0,
    GGMLType.Q4_K: _quant_q4_k,
    GGMLType.Q6_K: _quant_q6_k,
}


def quantize(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """Encode float32 [..., n] as GGML blocks, uint8 [..., n // block_elems * block_bytes].

    F32, F16, BF16, Q8_0, Q4_0 and Q5_0 are byte-identical to gguf.quants.quantize for float32 input (other
    float dtypes are first converted to float32); Q4_K and Q6_K follow llama.cpp's reference quantizers.
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
