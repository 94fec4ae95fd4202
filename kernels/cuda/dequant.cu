// Dequantize whole rows of GGUF blocks: out[r, :] = W[rows[r], :] (rows == NULL: W[r, :]).
// dequant_<type>_f16 feeds prefill (f16 tiles multiplied by cuBLAS); dequant_<type>_f32 is the embedding gather
// (rows = token ids). Values are bit-identical to kernels/quants.py (the f16 ones then rounded to nearest even).
//
// Launch contract (every dequant_<type>_<out>):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the n * k / QK * PARTS
//   block parts (see quant_blocks.cuh), each writing its part's elements.
//   shared memory: none.
//   args: w const u8* [N, k / QK * BYTES], rows const int* [n] or NULL, int n, int k, out (__half* | float*) [n, k].
#include "quant_blocks.cuh"

template <class B, class OUT>
__device__ __forceinline__ void dequant(const u8* __restrict__ w, const int* __restrict__ rows, int n, int k,
                                        OUT* __restrict__ out) {
    const long long nb = k / B::QK, row_bytes = nb * B::BYTES, total = n * nb * B::PARTS;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < total; g += (long long)gridDim.x * blockDim.x) {
        const long long blk = g / B::PARTS, r = blk / nb, b = blk % nb;
        const long long src = rows ? rows[r] : r;
        OUT* o = out + r * k + b * B::QK;
        B::part(w + src * row_bytes + b * B::BYTES, (int)(g % B::PARTS), [&](int i, float v) { store(o + i, v); });
    }
}

extern "C" __global__ void dequant_f16_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockF16>(w, rows, n, k, out); }
extern "C" __global__ void dequant_f16_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockF16>(w, rows, n, k, out); }
extern "C" __global__ void dequant_bf16_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockBF16>(w, rows, n, k, out); }
extern "C" __global__ void dequant_bf16_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockBF16>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q8_0_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockQ8_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q8_0_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ8_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_0_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockQ4_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_0_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ4_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_1_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockQ4_1>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_1_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ4_1>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_0_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockQ5_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_0_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ5_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_1_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockQ5_1>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_1_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ5_1>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_k_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockQ4_K>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_k_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ4_K>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_k_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockQ5_K>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_k_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ5_K>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q6_k_f16(const u8* w, const int* rows, int n, int k, __half* out) { dequant<BlockQ6_K>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q6_k_f32(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ6_K>(w, rows, n, k, out); }
