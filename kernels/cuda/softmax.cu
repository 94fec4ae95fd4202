// Numerically stable softmax over the last axis: y[r, :] = exp(x[r, :] - max) / sum(exp(x[r, :] - max)).
// Entries may be -inf (masked); they come out 0. In place (y == x) is allowed.
//
// Launch contract (softmax_f32):
//   block (32 * R, 1, 1), 1 <= R <= 32; grid (G, 1, 1), any G >= 1: blocks stride over the rows.
//   shared memory: none (32 floats static).
//   args: x const float* [rows, n], y float* [rows, n], int rows, int n.
#include "common.cuh"

extern "C" __global__ void softmax_f32(const float* x, float* y, int rows, int n) {
    __shared__ float scratch[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + (long long)r * n;
        float* yr = y + (long long)r * n;
        float m = NEG_INF;
        for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
        m = block_reduce<true>(m, scratch);
        float s = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) s += expf(xr[i] - m);
        const float inv = 1.0f / block_reduce<false>(s, scratch);
        for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = expf(xr[i] - m) * inv;
    }
}
