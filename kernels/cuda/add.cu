// Elementwise sum: out = x + y (residual adds, biases). out may alias x or y.
//
// Launch contract (add_f32):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the n elements.
//   shared memory: none.
//   args: x const float* [n], y const float* [n], out float* [n], int n.
#include "common.cuh"

extern "C" __global__ void add_f32(const float* x, const float* y, float* out, int n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = x[i] + y[i];
}
