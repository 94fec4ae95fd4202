// GGUF block decoders, one struct per weight type, mirroring kernels/quants.py operation for operation (so a
// dequantized value is bit-identical to the NumPy reference: products that the reference rounds separately use
// __fmul_rn, which the compiler may not fuse into an FMA).
//
// A block of QK elements, BYTES bytes, is decoded in PARTS independent parts (one per lane):
//   B::part(blk, p, f) calls f(i, value) for the elements i (0 <= i < QK) that part p owns.
// Legacy 32-element types: 8 parts of 4 elements. K-quants: 32 parts of 8. F16/BF16: blocks of 8 elements, 1 part.
#pragma once
#include "common.cuh"

struct BlockF16 {
    static const int QK = 8, BYTES = 16, PARTS = 1;
    template <class F> __device__ static void part(const u8* b, int, F f) {
#pragma unroll
        for (int i = 0; i < 8; ++i) f(i, load_f16(b + 2 * i));
    }
};

struct BlockBF16 {
    static const int QK = 8, BYTES = 16, PARTS = 1;
    template <class F> __device__ static void part(const u8* b, int, F f) {
#pragma unroll
        for (int i = 0; i < 8; ++i) f(i, load_bf16(b + 2 * i));
    }
};

// Q8_0: d f16 | qs int8[32]. x = qs * d.
struct BlockQ8_0 {
    static const int QK = 32, BYTES = 34, PARTS = 8;
    template <class F> __device__ static void part(const u8* b, int p, F f) {
        const float d = load_f16(b);
#pragma unroll
        for (int i = 4 * p; i < 4 * p + 4; ++i) f(i, (float)(signed char)b[2 + i] * d);
    }
};

// Q4_0: d f16 | qs u8[16]; element j: low nibble of qs[j], element 16 + j: high nibble. x = d * (q - 8).
struct BlockQ4_0 {
    static const int QK = 32, BYTES = 18, PARTS = 8;
    template <class F> __device__ static void part(const u8* b, int p, F f) {
        const float d = load_f16(b);
#pragma unroll
        for (int j = 2 * p; j < 2 * p + 2; ++j) {
            f(j, d * ((float)(b[2 + j] & 15) - 8.0f));
            f(j + 16, d * ((float)(b[2 + j] >> 4) - 8.0f));
        }
    }
};

// Q4_1: d f16 | m f16 | qs u8[16] (nibbles as Q4_0). x = d * q + m.
struct BlockQ4_1 {
    static const int QK = 32, BYTES = 20, PARTS = 8;
    template <class F> __device__ static void part(const u8* b, int p, F f) {
        const float d = load_f16(b), m = load_f16(b + 2);
#pragma unroll
        for (int j = 2 * p; j < 2 * p + 2; ++j) {
            f(j, __fmul_rn(d, (float)(b[4 + j] & 15)) + m);
            f(j + 16, __fmul_rn(d, (float)(b[4 + j] >> 4)) + m);
        }
    }
};

// Q5_0: d f16 | qh u32 (bit i: 5th bit of element i) | qs u8[16] (as Q4_0). x = d * (q - 16).
struct BlockQ5_0 {
    static const int QK = 32, BYTES = 22, PARTS = 8;
    template <class F> __device__ static void part(const u8* b, int p, F f) {
        const float d = load_f16(b);
        const unsigned qh = load_u32(b + 2);
#pragma unroll
        for (int j = 2 * p; j < 2 * p + 2; ++j) {
            f(j, d * ((float)((b[6 + j] & 15) | (((qh >> j) & 1) << 4)) - 16.0f));
            f(j + 16, d * ((float)((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16.0f));
        }
    }
};

// Q5_1: d f16 | m f16 | qh u32 | qs u8[16] (as Q5_0). x = d * q + m.
struct BlockQ5_1 {
    static const int QK = 32, BYTES = 24, PARTS = 8;
    template <class F> __device__ static void part(const u8* b, int p, F f) {
        const float d = load_f16(b), m = load_f16(b + 2);
        const unsigned qh = load_u32(b + 4);
#pragma unroll
        for (int j = 2 * p; j < 2 * p + 2; ++j) {
            f(j, __fmul_rn(d, (float)((b[8 + j] & 15) | (((qh >> j) & 1) << 4))) + m);
            f(j + 16, __fmul_rn(d, (float)((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4))) + m);
        }
    }
};

// Six-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block, times d and dmin: (d * sc, dmin * m).
__device__ __forceinline__ void k_scale_min(const u8* s, int j, float d, float dmin, float& dl, float& ml) {
    unsigned sc, m;
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    dl = d * (float)sc;
    ml = dmin * (float)m;
}

// Q4_K: d f16 | dmin f16 | scales u8[12] | qs u8[128] in 4 chunks of 32; chunk c holds sub-block 2c in its low
// nibbles and 2c + 1 in its high nibbles. x = (d * sc) * q - dmin * m. Part t owns byte t of every chunk.
struct BlockQ4_K {
    static const int QK = 256, BYTES = 144, PARTS = 32;
    template <class F> __device__ static void part(const u8* b, int t, F f) {
        const float d = load_f16(b), dmin = load_f16(b + 2);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const unsigned q = b[16 + 32 * c + t];
            float dl, ml;
            k_scale_min(b + 4, 2 * c, d, dmin, dl, ml);
            f(64 * c + t, __fmul_rn(dl, (float)(q & 15)) - ml);
            k_scale_min(b + 4, 2 * c + 1, d, dmin, dl, ml);
            f(64 * c + 32 + t, __fmul_rn(dl, (float)(q >> 4)) - ml);
        }
    }
};

// Q5_K: d f16 | dmin f16 | scales u8[12] | qh u8[32] | qs u8[128] (as Q4_K); the 5th bit of element l of
// sub-block j is bit j of qh[l]. x = (d * sc) * q - dmin * m.
struct BlockQ5_K {
    static const int QK = 256, BYTES = 176, PARTS = 32;
    template <class F> __device__ static void part(const u8* b, int t, F f) {
        const float d = load_f16(b), dmin = load_f16(b + 2);
        const unsigned qh = b[16 + t];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const unsigned q = b[48 + 32 * c + t];
            float dl, ml;
            k_scale_min(b + 4, 2 * c, d, dmin, dl, ml);
            f(64 * c + t, __fmul_rn(dl, (float)((q & 15) | (((qh >> (2 * c)) & 1) << 4))) - ml);
            k_scale_min(b + 4, 2 * c + 1, d, dmin, dl, ml);
            f(64 * c + 32 + t, __fmul_rn(dl, (float)((q >> 4) | (((qh >> (2 * c + 1)) & 1) << 4))) - ml);
        }
    }
};

// Q6_K: ql u8[128] | qh u8[64] | scales int8[16] | d f16, two halves of 128 elements. In half h, element
// 32k + l takes its low 4 bits from ql[64h + l + 32(k & 1)] (low nibble for k < 2) and its high 2 bits from bits
// 2k..2k+1 of qh[32h + l]. x = (d * scales[e / 16]) * (q - 32). Part t owns l = t of every (h, k).
struct BlockQ6_K {
    static const int QK = 256, BYTES = 210, PARTS = 32;
    template <class F> __device__ static void part(const u8* b, int t, F f) {
        const float d = load_f16(b + 208);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const unsigned qh = b[128 + 32 * h + t];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const unsigned ql = b[64 * h + t + 32 * (k & 1)];
                const unsigned q = (k < 2 ? ql & 15 : ql >> 4) | (((qh >> (2 * k)) & 3) << 4);
                const int e = 128 * h + 32 * k + t;
                f(e, (d * (float)(signed char)b[192 + e / 16]) * ((float)q - 32.0f));
            }
        }
    }
};
