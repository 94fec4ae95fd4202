// Helpers shared by the kernels of this directory: byte-level loads, f16/bf16 scalars, warp and block reductions.
// Only builtin integer types (NVRTC has no <stdint.h>). Reductions need blockDim.x to be a multiple of 32.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef unsigned char u8;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ unsigned load_u16(const u8* p) { return p[0] | (unsigned(p[1]) << 8); }

__device__ __forceinline__ unsigned load_u32(const u8* p) { return load_u16(p) | (load_u16(p + 2) << 16); }

__device__ __forceinline__ float load_f16(const u8* p) { return __half2float(__ushort_as_half((unsigned short)load_u16(p))); }

__device__ __forceinline__ float load_bf16(const u8* p) {
    return __bfloat162float(__ushort_as_bfloat16((unsigned short)load_u16(p)));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or max) over the whole block, returned to every thread. s: __shared__ float[32] scratch.
// The first barrier keeps a previous call's readers ahead of this call's writers, so calls may follow each other.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* s) {
    v = MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
    __syncthreads();
    v = s[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) v = MAX ? fmaxf(v, s[w]) : v + s[w];
    return v;
}
