// Decode mat-vec on weights kept as GGUF blocks: y[t, n] = sum_k W[n, k] * x[t, k], dequantize fused into the dot.
//
// Launch contract (every matvec_<type>):
//   block (32 * R, 1, 1), R >= 1 warps; each warp owns one row at a time (rows blockIdx.x * R + warp, then
//   strided by gridDim.x * R), its lanes split the row's blocks (see quant_blocks.cuh), then a shuffle sum.
//   grid  (G, T, 1): any G >= 1 (ceil(n / R) gives one row per warp); T = number of input vectors.
//   shared memory: none.
//   args: w const u8* [n, k / QK * BYTES] (rows contiguous), x const float* [T, k], y float* [T, n], int n, int k
//         (k a multiple of the type's QK: 32, 256 for K-quants, 8 for F16/BF16).
//
// Launch contract (matvec_f32), a float32 weight matrix (no blocks): as above, with
//   args: w const float* [n, k] (rows contiguous), x const float* [T, k], y float* [T, n], int n, int k (any k >= 1);
//   the lanes of a warp stride over the row's elements (coalesced loads), then a shuffle sum.
#include "quant_blocks.cuh"

template <class B>
__device__ __forceinline__ void matvec(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                       int n, int k) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int nb = k / B::QK, part = lane % B::PARTS;
    const long long row_bytes = (long long)nb * B::BYTES;
    x += (long long)blockIdx.y * k;
    y += (long long)blockIdx.y * n;
    for (int row = blockIdx.x * warps + (threadIdx.x >> 5); row < n; row += gridDim.x * warps) {
        const u8* r = w + row * row_bytes;
        float acc = 0.0f;
        for (int b = lane / B::PARTS; b < nb; b += 32 / B::PARTS) {
            const float* xb = x + b * B::QK;
            B::part(r + (long long)b * B::BYTES, part, [&](int i, float v) { acc += v * xb[i]; });
        }
        acc = warp_sum(acc);
        if (lane == 0) y[row] = acc;
    }
}

extern "C" __global__ void matvec_f16(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockF16>(w, x, y, n, k); }
extern "C" __global__ void matvec_bf16(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockBF16>(w, x, y, n, k); }
extern "C" __global__ void matvec_q8_0(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockQ8_0>(w, x, y, n, k); }
extern "C" __global__ void matvec_q4_0(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockQ4_0>(w, x, y, n, k); }
extern "C" __global__ void matvec_q4_1(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockQ4_1>(w, x, y, n, k); }
extern "C" __global__ void matvec_q5_0(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockQ5_0>(w, x, y, n, k); }
extern "C" __global__ void matvec_q5_1(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockQ5_1>(w, x, y, n, k); }
extern "C" __global__ void matvec_q4_k(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockQ4_K>(w, x, y, n, k); }
extern "C" __global__ void matvec_q5_k(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockQ5_K>(w, x, y, n, k); }
extern "C" __global__ void matvec_q6_k(const u8* w, const float* x, float* y, int n, int k) { matvec<BlockQ6_K>(w, x, y, n, k); }

extern "C" __global__ void matvec_f32(const float* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                      int n, int k) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    x += (long long)blockIdx.y * k;
    y += (long long)blockIdx.y * n;
    for (int row = blockIdx.x * warps + (threadIdx.x >> 5); row < n; row += gridDim.x * warps) {
        const float* r = w + (long long)row * k;
        float acc = 0.0f;
        for (int i = lane; i < k; i += 32) acc += r[i] * x[i];
        acc = warp_sum(acc);
        if (lane == 0) y[row] = acc;
    }
}
