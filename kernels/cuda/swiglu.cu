// SwiGLU gate of the feed-forward: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise.
//
// Launch contract (swiglu_f32):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the n elements.
//   shared memory: none.
//   args: gate const float* [n], up const float* [n], out float* [n] (may alias gate or up), int n.
#include "common.cuh"

extern "C" __global__ void swiglu_f32(const float* gate, const float* up, float* out, int n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
