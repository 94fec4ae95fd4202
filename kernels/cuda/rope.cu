// Rotary position embedding: each pair (a, b) of a head becomes (a cos - b sin, b cos + a sin).
// interleaved = 0: pairs (i, i + dh/2) (HF, Qwen, GPT-NeoX); 1: pairs (2i, 2i + 1) (llama.cpp's Llama layout).
// In place (y == x) is allowed: each thread reads its pair before writing it.
//
// Launch contract (rope_f32):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the t * h * dh/2 pairs.
//   shared memory: none.
//   args: x const float* [t, h, dh], cos const float* [t, dh/2], sin const float* [t, dh/2], y float* [t, h, dh],
//         int t, int h, int dh (even), int interleaved.
//
// Launch contract (rope_table_f32), the cos/sin of t positions read from device memory (a captured decode step
// reads the position written there before each replay; prefill passes all its positions):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, Y, 1), any G, Y >= 1: threads of a block row stride over the
//   half frequencies, block rows (blockIdx.y) over the t positions.
//   shared memory: none.
//   args: inv_freq const double* [half], pos const int* [t], cos float* [t, half], sin float* [t, half], int half,
//         int t.
//   Angles are taken in double, then cos and sin rounded to float, as kernels/ops.py rope_cos_sin does.
#include "common.cuh"

extern "C" __global__ void rope_table_f32(const double* inv_freq, const int* pos, float* cos_out, float* sin_out,
                                          int half, int t) {
    for (int j = blockIdx.y; j < t; j += gridDim.y) {
        const double p = (double)pos[j];
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < half; i += gridDim.x * blockDim.x) {
            const double angle = p * inv_freq[i];
            cos_out[(long long)j * half + i] = (float)cos(angle);
            sin_out[(long long)j * half + i] = (float)sin(angle);
        }
    }
}

extern "C" __global__ void rope_f32(const float* x, const float* cos, const float* sin, float* y, int t, int h,
                                    int dh, int interleaved) {
    const int half = dh / 2;
    const long long total = (long long)t * h * half;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < total; g += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(g % half);
        const long long row = g / half;  // token * h + head
        const long long tok = row / h;
        const long long ia = row * dh + (interleaved ? 2 * i : i), ib = ia + (interleaved ? 1 : half);
        const float c = cos[tok * half + i], s = sin[tok * half + i], a = x[ia], b = x[ib];
        y[ia] = a * c - b * s;
        y[ib] = b * c + a * s;
    }
}
