// Gated feed-forward activations, elementwise:
//   swiglu_f32: out = silu(gate) * up = gate / (1 + exp(-gate)) * up.
//   geglu_f32:  out = gelu_tanh(gate) * up, gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in the
//               float32 operation order of kernels/ops.py gelu_tanh (__fmul_rn keeps the cubic term from being fused
//               into an FMA; only tanhf differs from NumPy's float32 tanh, by a few ulp).
//
// Launch contract (swiglu_f32, geglu_f32):
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

extern "C" __global__ void geglu_f32(const float* gate, const float* up, float* out, int n) {
    const float c = 0.7978845608028654f;  // np.float32(np.sqrt(2 / np.pi))
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float x = gate[i];
        const float cubic = __fmul_rn(__fmul_rn(__fmul_rn(0.044715f, x), x), x);
        const float gelu = 0.5f * x * (1.0f + tanhf(c * (x + cubic)));
        out[i] = gelu * up[i];
    }
}
