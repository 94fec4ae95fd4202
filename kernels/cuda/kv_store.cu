// Store one token's keys and values into a KV cache layer at a position read from device memory, so a captured
// decode step writes the right row at every replay.
//
// Launch contract (kv_store_f32):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the h_kv * dh values.
//   shared memory: none.
//   args: k const float* [h_kv, dh], v const float* [h_kv, dh]; k_cache, v_cache float* [h_kv, S, dh] with
//         kv_stride floats between heads (rows of a head contiguous); pos const int* (one int, 0 <= pos < S);
//         int h_kv, int dh, int kv_stride.
#include "common.cuh"

extern "C" __global__ void kv_store_f32(const float* k, const float* v, float* k_cache, float* v_cache,
                                        const int* pos, int h_kv, int dh, int kv_stride) {
    const long long row = (long long)*pos * dh;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < h_kv * dh; i += gridDim.x * blockDim.x) {
        const long long at = (long long)(i / dh) * kv_stride + row + i % dh;
        k_cache[at] = k[i];
        v_cache[at] = v[i];
    }
}
