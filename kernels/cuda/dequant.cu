// Dequantize whole rows of GGUF blocks to float32: out[r, :] = W[rows[r], :] (rows == NULL: W[r, :]).
// Prefill multiplies such row tiles with cuBLAS (f32: an f16 product can overflow on real activations); with
// rows = token ids it is the embedding gather. Values are bit-identical to kernels/quants.py.
//
// Launch contract (every dequant_<type>):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the n * k / QK * PARTS
//   block parts (see quant_blocks.cuh), each writing its part's elements.
//   shared memory: none.
//   args: w const u8* [N, k / QK * BYTES], rows const int* [n] or NULL, int n, int k, out float* [n, k].
#include "quant_blocks.cuh"

template <class B>
__device__ __forceinline__ void dequant(const u8* __restrict__ w, const int* __restrict__ rows, int n, int k,
                                        float* __restrict__ out) {
    const long long nb = k / B::QK, row_bytes = nb * B::BYTES, total = n * nb * B::PARTS;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < total; g += (long long)gridDim.x * blockDim.x) {
        const long long blk = g / B::PARTS, r = blk / nb, b = blk % nb;
        const long long src = rows ? rows[r] : r;
        float* o = out + r * k + b * B::QK;
        B::part(w + src * row_bytes + b * B::BYTES, (int)(g % B::PARTS), [&](int i, float v) { o[i] = v; });
    }
}

extern "C" __global__ void dequant_f16(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockF16>(w, rows, n, k, out); }
extern "C" __global__ void dequant_bf16(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockBF16>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q8_0(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ8_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_0(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ4_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_1(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ4_1>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_0(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ5_0>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_1(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ5_1>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q4_k(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ4_K>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q5_k(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ5_K>(w, rows, n, k, out); }
extern "C" __global__ void dequant_q6_k(const u8* w, const int* rows, int n, int k, float* out) { dequant<BlockQ6_K>(w, rows, n, k, out); }
