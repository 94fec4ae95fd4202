// Elementwise sum: out = x + y[i % ny] (residual adds: ny = n; a bias [ny] over the rows of [n / ny, ny]).
// out may alias x or y.
//
// Launch contract (add_f32):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the n elements.
//   shared memory: none.
//   args: x const float* [n], y const float* [ny], out float* [n], int n, int ny (ny >= 1 divides n).
#include "common.cuh"

extern "C" __global__ void add_f32(const float* x, const float* y, float* out, int n, int ny) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = x[i] + y[ny == n ? i : i % ny];
}
