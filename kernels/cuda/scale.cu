// Elementwise scalings of float32 activations. out may alias x.
//   scale_f32:   out = x * s (one rounded product: bit-identical to NumPy's float32 x * np.float32(s)).
//   softcap_f32: out = cap * tanh(x / cap) (Gemma's logit soft-capping; x / cap correctly rounded, tanhf within
//                2 ulp on the GPU, so the result is within a few ulp of NumPy's float32 formula).
//
// Launch contract (scale_f32, softcap_f32):
//   block (B, 1, 1), any B from 1 to 1024; grid (G, 1, 1), any G >= 1: threads stride over the n elements.
//   shared memory: none.
//   args: x const float* [n], out float* [n], int n, float s (scale_f32) or float cap (softcap_f32, cap != 0).
#include "common.cuh"

extern "C" __global__ void scale_f32(const float* x, float* out, int n, float s) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = x[i] * s;
}

extern "C" __global__ void softcap_f32(const float* x, float* out, int n, float cap) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = cap * tanhf(x[i] / cap);
}
