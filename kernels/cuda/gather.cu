// Gather float32 rows: out[r, :] = table[rows[r], :] (the embedding lookup of a float32 table; token ids read from
// device memory, so a captured decode step can gather the id written there before each replay).
//
// Launch contract (gather_rows_f32):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the n * d elements.
//   shared memory: none.
//   args: table const float* [V, d], rows const int* [n] (each 0 <= rows[r] < V), out float* [n, d], int n, int d.
#include "common.cuh"

extern "C" __global__ void gather_rows_f32(const float* table, const int* rows, float* out, int n, int d) {
    const long long total = (long long)n * d;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < total; g += (long long)gridDim.x * blockDim.x) {
        const long long r = g / d, c = g % d;
        out[g] = table[(long long)rows[r] * d + c];
    }
}
