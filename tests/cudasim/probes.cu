// Kernels that exercise (and misuse) the simulated CUDA surface, for tests/cudasim/test_cudasim.py.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// Reverses each block's slice of x through shared memory. With barrier = 0 the barrier is skipped: a race.
extern "C" __global__ void reverse_block(const float* x, float* y, int barrier) {
    __shared__ float tile[1024];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = x[i];
    if (barrier) __syncthreads();
    y[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// Threads with threadIdx.x >= limit return before the barrier the others wait at.
extern "C" __global__ void early_exit(float* y, int limit) {
    if ((int)threadIdx.x >= limit) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// Even and odd threads wait at two different barriers.
extern "C" __global__ void split_barrier(float* y) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 1.0f;
}

// Writes y[0 .. n-1] from thread i: with n larger than y, past its end.
extern "C" __global__ void write_n(float* y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = (float)i;
}

// Copies shared memory to y before anything is written: the fill pattern shows.
extern "C" __global__ void read_shared(float* y, __half* h, int dyn_floats) {
    __shared__ float s[64];
    extern __shared__ float dyn[];
    y[threadIdx.x] = s[threadIdx.x % 64];
    if ((int)threadIdx.x < dyn_floats) y[blockDim.x + threadIdx.x] = dyn[threadIdx.x];
    h[threadIdx.x] = reinterpret_cast<__half*>(s)[threadIdx.x % 128];
}

// Writes the dynamic shared buffer at element index `at`.
extern "C" __global__ void write_dynamic(int at) {
    extern __shared__ float dyn[];
    if (threadIdx.x == 0) dyn[at] = 1.0f;
}

// Per lane of x (int32): every warp operation, each result in its own column of out [threads, 8].
extern "C" __global__ void warp_ops(const int* x, int* out, int arg, int width) {
    const int i = threadIdx.x, v = x[i];
    int* o = out + i * 8;
    o[0] = __shfl_sync(0xffffffffu, v, arg, width);
    o[1] = __shfl_xor_sync(0xffffffffu, v, arg, width);
    o[2] = __shfl_down_sync(0xffffffffu, v, arg, width);
    o[3] = __shfl_up_sync(0xffffffffu, v, arg, width);
    o[4] = (int)__ballot_sync(0xffffffffu, v > 0);
    o[5] = __any_sync(0xffffffffu, v > 100);
    o[6] = __all_sync(0xffffffffu, v > -100);
    __syncwarp();
    o[7] = __dp4a(v, x[(i + 1) % blockDim.x], i);
}

// Only the lanes below `active` shuffle with a full mask: the others never arrive.
extern "C" __global__ void partial_shuffle(float* y, int active) {
    if ((int)threadIdx.x < active) y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, y[threadIdx.x], 1);
}

// f16 and bf16 bit patterns to float, and float to f16 (round to nearest even).
extern "C" __global__ void half_conversions(const unsigned short* bits, float* from_half, float* from_bf16,
                                            const float* x, __half* to_half, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        from_half[i] = __half2float(__ushort_as_half(bits[i]));
        from_bf16[i] = __bfloat162float(__ushort_as_bfloat16(bits[i]));
        to_half[i] = __float2half_rn(x[i]);
    }
}

// Writes through a const parameter (what a kernel must never do).
extern "C" __global__ void write_const(const float* x) {
    if (threadIdx.x == 0) const_cast<float*>(x)[0] = 1.0f;
}
