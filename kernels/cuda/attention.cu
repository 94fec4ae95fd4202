// Causal grouped-query attention of new queries against the KV cache, one query (token, head) per block, with an
// online softmax so any cache length fits: decode is t = 1, prefill t > 1.
//
// Query i (position start + i) of head hq sees keys max(0, start + i - window + 1) .. start + i of kv head
// hq / (h / h_kv) (window = 0: no window). Warp w of the block takes keys lo + w, lo + w + R, ...: a shuffle-summed
// dot with q, then a running max / sum / weighted value sum; the R partial results are merged through shared memory.
//
// Launch contract (attention_f32):
//   block (32 * R, 1, 1), 1 <= R <= 32; grid (h, t, 1).
//   shared memory (dynamic): R * (dh + 2) * 4 bytes.
//   args: q const float* [t, h, dh]; k, v const float* [h_kv, S, dh] with kv_stride floats between heads
//         (rows of a head contiguous, S >= start + t); out float* [t, h, dh]; int t, h, h_kv, dh (a multiple of 32,
//         at most 256), start, kv_stride, window; float scale (1 / sqrt(dh)).
//
// Launch contract (attention_decode_f32), one query at a position read from device memory (a captured decode step:
// the keys 0 .. pos, or the window ending at pos, are read whatever the replay):
//   block (32 * R, 1, 1), 1 <= R <= 32; grid (h, 1, 1).
//   shared memory (dynamic): R * (dh + 2) * 4 bytes.
//   args: q const float* [1, h, dh]; k, v as above (S > pos); out float* [1, h, dh]; pos const int* (one int);
//         int h, h_kv, dh, kv_stride, window; float scale.
#include "common.cuh"

#define MAX_DH_PER_LANE 8

// Query tok (at position pos) of head blockIdx.x, as described above.
__device__ __forceinline__ void attend(const float* q, const float* k, const float* v, float* out, int h, int h_kv,
                                       int dh, int tok, int pos, int kv_stride, int window, float scale) {
    extern __shared__ float smem[];  // [R] max | [R] sum | [R][dh] weighted values
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5, per_lane = dh / 32;
    const int head = blockIdx.x;
    const int lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    const long long kv_off = (long long)(head / (h / h_kv)) * kv_stride;
    const float* qr = q + ((long long)tok * h + head) * dh;
    float qv[MAX_DH_PER_LANE], acc[MAX_DH_PER_LANE];
#pragma unroll
    for (int r = 0; r < MAX_DH_PER_LANE; ++r) {
        qv[r] = r < per_lane ? qr[lane + 32 * r] : 0.0f;
        acc[r] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int j = lo + warp; j <= pos; j += nwarps) {
        const float* kr = k + kv_off + (long long)j * dh;
        float s = 0.0f;
#pragma unroll
        for (int r = 0; r < MAX_DH_PER_LANE; ++r)
            if (r < per_lane) s += qv[r] * kr[lane + 32 * r];
        s = warp_sum(s) * scale;
        const float m_new = fmaxf(m, s), corr = expf(m - m_new), p = expf(s - m_new);
        const float* vr = v + kv_off + (long long)j * dh;
        l = l * corr + p;
#pragma unroll
        for (int r = 0; r < MAX_DH_PER_LANE; ++r)
            if (r < per_lane) acc[r] = acc[r] * corr + p * vr[lane + 32 * r];
        m = m_new;
    }
    float* s_max = smem;
    float* s_sum = smem + nwarps;
    float* s_acc = smem + 2 * nwarps;
    if (lane == 0) {
        s_max[warp] = m;
        s_sum[warp] = l;
    }
#pragma unroll
    for (int r = 0; r < MAX_DH_PER_LANE; ++r)
        if (r < per_lane) s_acc[warp * dh + lane + 32 * r] = acc[r];
    __syncthreads();
    float mx = s_max[0];
    for (int w = 1; w < nwarps; ++w) mx = fmaxf(mx, s_max[w]);
    float total = 0.0f;
    for (int w = 0; w < nwarps; ++w) total += s_sum[w] * expf(s_max[w] - mx);
    float* o = out + ((long long)tok * h + head) * dh;
    for (int d = threadIdx.x; d < dh; d += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < nwarps; ++w) sum += s_acc[w * dh + d] * expf(s_max[w] - mx);
        o[d] = sum / total;
    }
}

extern "C" __global__ void attention_f32(const float* q, const float* k, const float* v, float* out, int t, int h,
                                         int h_kv, int dh, int start, int kv_stride, int window, float scale) {
    attend(q, k, v, out, h, h_kv, dh, blockIdx.y, start + blockIdx.y, kv_stride, window, scale);
}

extern "C" __global__ void attention_decode_f32(const float* q, const float* k, const float* v, float* out,
                                                const int* pos, int h, int h_kv, int dh, int kv_stride, int window,
                                                float scale) {
    attend(q, k, v, out, h, h_kv, dh, 0, *pos, kv_stride, window, scale);
}
