// RMSNorm over the last axis: y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w. In place (y == x) is allowed.
//
// Launch contract (rms_norm_f32):
//   block (32 * R, 1, 1), 1 <= R <= 32; grid (G, 1, 1), any G >= 1: blocks stride over the rows.
//   shared memory: none (32 floats static).
//   args: x const float* [rows, d], w const float* [d], y float* [rows, d], int rows, int d, float eps.
#include "common.cuh"

extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, int rows, int d, float eps) {
    __shared__ float scratch[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + (long long)r * d;
        float ss = 0.0f;
        for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
        const float scale = 1.0f / sqrtf(block_reduce<false>(ss, scratch) / (float)d + eps);
        float* yr = y + (long long)r * d;
        for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
    }
}
