// cudasim: compile unmodified CUDA kernels with g++ and run them on the CPU, to test them without a GPU.
// Test tooling only, never an inference path. Force-included (g++ -include cudasim.h) before a .cu file; the
// include/ directory beside it stands in for <cuda_fp16.h> and <cuda_bf16.h>.
//
// Model: the blocks of a grid run one after another, in forward, reverse or random order. Every thread of a
// block is a fiber (ucontext) that runs until it reaches a barrier or returns. Warps take turns in forward,
// reverse or random order, each running as far as it can before the next (its lanes too in that order), so a
// missing barrier shows up as results that depend on the order.
//   __syncthreads(): a real barrier. Every thread of the block must reach the same __syncthreads (file, line);
//     a thread that returned or waits elsewhere makes the launch fail with a message.
//   __syncwarp / __shfl*_sync / __ballot_sync / __any_sync / __all_sync: a barrier among the lanes of the mask
//     (all must exist, be alive and wait at the same call), around an exchange of 64-bit slots.
//   Shared memory (static __shared__ and the dynamic buffer) is filled with 0xFF bytes (NaN as float, f16, bf16)
//     before each block; bytes of the dynamic buffer past the launch's size must stay untouched.
// The Python side (tests/cudasim/__init__.py) rewrites `extern __shared__ T name[];` into CUDASIM_DYNAMIC_SHARED,
// generates one launcher per kernel, and puts guard bytes around every buffer argument.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};
typedef uint3 dim3;

namespace cudasim {

const int kMaxThreads = 1024;
const size_t kStackBytes = 64 << 10;
const size_t kMaxDynamicShared = 227 << 10;
const size_t kDynamicGuard = 4096;

enum State { RUNNABLE, AT_SYNCTHREADS, AT_WARP_SYNC, DONE };

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    int linear;
    State state;
    const char* file;  // call site of the barrier the fiber waits at
    int line;
    unsigned mask;  // lanes of a warp barrier
};

// launch configuration, mirrored by a ctypes Structure in tests/cudasim/__init__.py
struct Config {
    int grid[3], block[3];
    int64_t shared_bytes;
    int order;  // 0 forward, 1 reverse, 2 random
    uint64_t seed;
};

struct Sim {
    Fiber* fibers = nullptr;
    char* stacks = nullptr;
    int n_threads = 0;
    Fiber* cur = nullptr;
    ucontext_t scheduler;
    uint3 block_idx;
    dim3 block_dim, grid_dim;
    std::function<void()> body;
    std::string error;
    alignas(16) unsigned char dynamic_shared[kMaxDynamicShared + kDynamicGuard];
    uint64_t exchange[kMaxThreads];
};

inline Sim g;

// Bounds of the static __shared__ variables, which live in their own section (filled before each block).
extern "C" char __start_cudasim_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_cudasim_shared[] __attribute__((weak, visibility("hidden")));

[[noreturn]] inline void fail(const std::string& msg) {
    if (g.error.empty()) g.error = msg;
    g.cur->state = DONE;
    swapcontext(&g.cur->ctx, &g.scheduler);
    __builtin_unreachable();
}

inline std::string where(const Fiber& f) {
    char buf[64];
    snprintf(buf, sizeof buf, "thread (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z);
    return buf;
}

inline void syncthreads(const char* file, int line) {
    g.cur->state = AT_SYNCTHREADS;
    g.cur->file = file;
    g.cur->line = line;
    swapcontext(&g.cur->ctx, &g.scheduler);
}

inline int lane_id() { return g.cur->linear & 31; }

inline void warp_sync(unsigned mask, const char* file, int line) {
    const int lane = lane_id(), warp_base = g.cur->linear & ~31;
    if (!(mask >> lane & 1u)) fail(where(*g.cur) + ": warp mask does not include the calling lane");
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && warp_base + l >= g.n_threads)
            fail(where(*g.cur) + ": warp mask names lane " + std::to_string(l) + " which does not exist");
    g.cur->state = AT_WARP_SYNC;
    g.cur->mask = mask;
    g.cur->file = file;
    g.cur->line = line;
    swapcontext(&g.cur->ctx, &g.scheduler);
}

// Exchange a value among the lanes of mask; returns the value lane `src` offered (src outside: -1 gives own).
template <class T>
T exchange(unsigned mask, T v, int src, const char* file, int line) {
    static_assert(sizeof(T) <= 8, "warp exchange of more than 8 bytes");
    const int lane = lane_id(), base = g.cur->linear & ~31;
    uint64_t slot = 0;
    memcpy(&slot, &v, sizeof(T));
    g.exchange[g.cur->linear] = slot;
    warp_sync(mask, file, line);
    T out = v;
    if (src >= 0 && src != lane) {
        if (!(mask >> src & 1u)) fail(where(*g.cur) + ": shuffle reads lane " + std::to_string(src) + ", not in the mask");
        memcpy(&out, &g.exchange[base + src], sizeof(T));
    }
    warp_sync(mask, file, line);
    return out;
}

inline unsigned ballot(unsigned mask, int pred, const char* file, int line) {
    const int base = g.cur->linear & ~31;
    g.exchange[g.cur->linear] = pred != 0;
    warp_sync(mask, file, line);
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && g.exchange[base + l]) bits |= 1u << l;
    warp_sync(mask, file, line);
    return bits;
}

inline void fiber_main() {
    g.body();
    g.cur->state = DONE;
}

inline bool same_site(const Fiber& a, const Fiber& b) { return a.line == b.line && !strcmp(a.file, b.file); }

inline void schedule_error(const std::string& msg) {
    if (g.error.empty()) g.error = msg;
}

// Release the lanes of warp `warp`'s barriers whose whole mask waits at the same call. Returns whether any moved on.
inline bool release_warp(int warp) {
    bool released = false;
    for (int i = 32 * warp; i < std::min(g.n_threads, 32 * warp + 32); ++i) {
        Fiber& f = g.fibers[i];
        if (f.state != AT_WARP_SYNC) continue;
        const int base = i & ~31;
        bool ready = true;
        for (int l = 0; l < 32 && ready; ++l) {
            if (!(f.mask >> l & 1u)) continue;
            const Fiber& o = g.fibers[base + l];
            if (o.state == DONE || o.state == AT_SYNCTHREADS) {
                schedule_error(where(f) + " waits at a warp operation (" + f.file + ":" + std::to_string(f.line) + ") that lane " +
                     std::to_string(l) + (o.state == DONE ? " exited without reaching" : " never reaches (it waits at __syncthreads)"));
                return false;
            }
            if (o.state == RUNNABLE) ready = false;
            else if (o.mask != f.mask || !same_site(o, f)) ready = false;
        }
        if (!ready) continue;
        for (int l = 0; l < 32; ++l)
            if (f.mask >> l & 1u) g.fibers[base + l].state = RUNNABLE;
        released = true;
    }
    return released;
}


// Run one block to completion. Returns false on error (g.error says why).
// Warps advance independently: each in turn runs as far as it can (its warp operations released as soon as the
// lanes arrive) before the next starts, so a warp can race ahead of the others up to the next __syncthreads.
inline bool run_block(int order, std::mt19937_64& rng) {
    const int n_warps = (g.n_threads + 31) / 32;
    std::vector<int> warps(n_warps), lanes(32);
    for (int i = 0; i < n_warps; ++i) warps[i] = order == 1 ? n_warps - 1 - i : i;
    for (int i = 0; i < 32; ++i) lanes[i] = order == 1 ? 31 - i : i;
    for (;;) {
        if (order == 2) std::shuffle(warps.begin(), warps.end(), rng);
        for (int w : warps) {
            for (bool moved = true; moved;) {
                moved = false;
                if (order == 2) std::shuffle(lanes.begin(), lanes.end(), rng);
                for (int l : lanes) {
                    const int i = 32 * w + l;
                    if (i >= g.n_threads || g.fibers[i].state != RUNNABLE) continue;
                    g.cur = &g.fibers[i];
                    swapcontext(&g.scheduler, &g.cur->ctx);
                    if (!g.error.empty()) return false;
                    moved = true;
                }
                moved |= release_warp(w);
                if (!g.error.empty()) return false;
            }
        }
        int done = 0, at_block = 0;
        for (int i = 0; i < g.n_threads; ++i) {
            done += g.fibers[i].state == DONE;
            at_block += g.fibers[i].state == AT_SYNCTHREADS;
        }
        if (done == g.n_threads) return true;
        if (at_block != g.n_threads - done) {
            schedule_error("deadlock: threads wait at warp operations whose lanes wait elsewhere");
            return false;
        }
        const Fiber* first = nullptr;
        for (int i = 0; i < g.n_threads; ++i) {
            const Fiber& f = g.fibers[i];
            if (f.state == DONE) {
                const Fiber& w = *std::find_if(g.fibers, g.fibers + g.n_threads,
                                               [](const Fiber& x) { return x.state == AT_SYNCTHREADS; });
                schedule_error("__syncthreads at " + std::string(w.file) + ":" + std::to_string(w.line) +
                               " is not reached by " + where(f) + ", which exited");
                return false;
            }
            if (!first) first = &f;
            else if (!same_site(*first, f)) {
                schedule_error(where(*first) + " waits at __syncthreads " + first->file + ":" +
                               std::to_string(first->line) + " but " + where(f) + " at " + f.file + ":" +
                               std::to_string(f.line));
                return false;
            }
        }
        for (int i = 0; i < g.n_threads; ++i) g.fibers[i].state = RUNNABLE;
    }
}

inline int launch(const Config& c, std::function<void()> body) {
    g.error.clear();
    const int n = c.block[0] * c.block[1] * c.block[2];
    if (n < 1 || n > kMaxThreads || c.grid[0] < 1 || c.grid[1] < 1 || c.grid[2] < 1) {
        g.error = "invalid launch: block of " + std::to_string(n) + " threads (1..1024), grid dims must be >= 1";
        return 1;
    }
    if (c.shared_bytes < 0 || (size_t)c.shared_bytes > kMaxDynamicShared) {
        g.error = "invalid launch: " + std::to_string(c.shared_bytes) + " bytes of dynamic shared memory";
        return 1;
    }
    if (!g.fibers) {
        g.fibers = new Fiber[kMaxThreads];
        g.stacks = new char[kMaxThreads * kStackBytes];
    }
    g.body = std::move(body);
    g.n_threads = n;
    g.block_dim = {(unsigned)c.block[0], (unsigned)c.block[1], (unsigned)c.block[2]};
    g.grid_dim = {(unsigned)c.grid[0], (unsigned)c.grid[1], (unsigned)c.grid[2]};
    std::vector<uint3> blocks;
    for (int z = 0; z < c.grid[2]; ++z)
        for (int y = 0; y < c.grid[1]; ++y)
            for (int x = 0; x < c.grid[0]; ++x) blocks.push_back({(unsigned)x, (unsigned)y, (unsigned)z});
    std::mt19937_64 rng(c.seed);
    if (c.order == 1) std::reverse(blocks.begin(), blocks.end());
    if (c.order == 2) std::shuffle(blocks.begin(), blocks.end(), rng);
    for (const uint3& b : blocks) {
        g.block_idx = b;
        if (__start_cudasim_shared) memset(__start_cudasim_shared, 0xFF, __stop_cudasim_shared - __start_cudasim_shared);
        memset(g.dynamic_shared, 0xFF, sizeof g.dynamic_shared);
        for (int i = 0; i < n; ++i) {
            Fiber& f = g.fibers[i];
            f.linear = i;
            f.tid = {(unsigned)(i % c.block[0]), (unsigned)(i / c.block[0] % c.block[1]),
                     (unsigned)(i / (c.block[0] * c.block[1]))};
            f.state = RUNNABLE;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = g.stacks + i * kStackBytes;
            f.ctx.uc_stack.ss_size = kStackBytes;
            f.ctx.uc_link = &g.scheduler;
            makecontext(&f.ctx, fiber_main, 0);
        }
        if (!run_block(c.order, rng)) {
            g.error = "block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) + "): " + g.error;
            return 1;
        }
        for (size_t i = c.shared_bytes; i < sizeof g.dynamic_shared; ++i)
            if (g.dynamic_shared[i] != 0xFF) {
                g.error = "block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) +
                          "): write to dynamic shared memory at byte " + std::to_string(i) + ", past the " +
                          std::to_string(c.shared_bytes) + " bytes launched";
                return 1;
            }
    }
    return 0;
}

inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

}  // namespace cudasim

extern "C" const char* cudasim_error() { return cudasim::g.error.c_str(); }

// ------------------------------------------------------------------------------------------ language surface
#define __global__
#define __device__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("cudasim_shared")))
#define CUDASIM_DYNAMIC_SHARED(type, name) type* const name = reinterpret_cast<type*>(cudasim::g.dynamic_shared)

#define threadIdx (cudasim::g.cur->tid)
#define blockIdx (cudasim::g.block_idx)
#define blockDim (cudasim::g.block_dim)
#define gridDim (cudasim::g.grid_dim)
const int warpSize = 32;

#define __syncthreads() cudasim::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) cudasim::warp_sync(cudasim_mask_or_all(__VA_ARGS__), __FILE__, __LINE__)
inline unsigned cudasim_mask_or_all(unsigned mask = 0xffffffffu) { return mask; }

inline int cudasim_segment_src(int lane, int src, int width) {
    const int base = lane & ~(width - 1);
    return src >= base && src < base + width ? src : -1;
}
#define __shfl_sync(mask, v, src, ...) \
    cudasim::exchange(mask, v, cudasim_shfl_src(src, ##__VA_ARGS__), __FILE__, __LINE__)
inline int cudasim_shfl_src(int src, int width = 32) {
    return (cudasim::lane_id() & ~(width - 1)) + (src & (width - 1));
}
#define __shfl_xor_sync(mask, v, lane_mask, ...) \
    cudasim::exchange(mask, v, cudasim_xor_src(lane_mask, ##__VA_ARGS__), __FILE__, __LINE__)
inline int cudasim_xor_src(int lane_mask, int width = 32) {
    const int lane = cudasim::lane_id();
    return cudasim_segment_src(lane, lane ^ lane_mask, width);
}
#define __shfl_down_sync(mask, v, delta, ...) \
    cudasim::exchange(mask, v, cudasim_down_src(delta, ##__VA_ARGS__), __FILE__, __LINE__)
inline int cudasim_down_src(int delta, int width = 32) {
    const int lane = cudasim::lane_id();
    return cudasim_segment_src(lane, lane + delta, width);
}
#define __shfl_up_sync(mask, v, delta, ...) \
    cudasim::exchange(mask, v, cudasim_up_src(delta, ##__VA_ARGS__), __FILE__, __LINE__)
inline int cudasim_up_src(int delta, int width = 32) {
    const int lane = cudasim::lane_id();
    return cudasim_segment_src(lane, lane - delta, width);
}
#define __ballot_sync(mask, pred) cudasim::ballot(mask, pred, __FILE__, __LINE__)
#define __any_sync(mask, pred) (cudasim::ballot(mask, pred, __FILE__, __LINE__) != 0)
#define __all_sync(mask, pred) (cudasim::ballot(mask, pred, __FILE__, __LINE__) == (mask))

// Signed 8-bit four-way dot product plus c, as the PTX dp4a.s32.s32 instruction.
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) c += (int)(int8_t)(a >> 8 * i) * (int)(int8_t)(b >> 8 * i);
    return c;
}

inline float __int_as_float(int i) { return cudasim::bits_f32((uint32_t)i); }
inline float __fmul_rn(float a, float b) { return a * b; }  // g++ runs with -ffp-contract=off: never fused

// ------------------------------------------------------------------------------------------ f16 and bf16
struct __half {
    unsigned short x;
};
struct __nv_bfloat16 {
    unsigned short x;
};

inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.x & 0x8000) << 16, exp = h.x >> 10 & 31, man = h.x & 0x3FF;
    if (exp == 31) return cudasim::bits_f32(sign | 0x7F800000 | man << 13);
    if (exp) return cudasim::bits_f32(sign | (exp + 112) << 23 | man << 13);
    const float v = std::ldexp((float)man, -24);  // subnormal (or zero): exact
    return sign ? -v : v;
}

// Round to nearest even, overflow to infinity, NaN kept NaN.
inline __half __float2half_rn(float f) {
    const uint32_t u = cudasim::f32_bits(f), sign = u >> 16 & 0x8000;
    const uint32_t a = u & 0x7FFFFFFF;
    if (a > 0x7F800000) return __half{(unsigned short)(sign | 0x7E00)};
    if (a >= 0x477FF000) return __half{(unsigned short)(sign | 0x7C00)};  // rounds to >= 65520: infinity
    if (a < 0x38800000) {  // below the smallest normal half: in units of 2^-24, rounded to nearest even
        const float scaled = std::ldexp(cudasim::bits_f32(a), 24);
        return __half{(unsigned short)(sign | (uint32_t)std::nearbyint(scaled))};
    }
    const uint32_t mant = a + 0xFFF + (a >> 13 & 1) - 0x38000000;  // rebias 127 -> 15 and round on bit 13
    return __half{(unsigned short)(sign | mant >> 13)};
}

inline float __bfloat162float(__nv_bfloat16 b) { return cudasim::bits_f32((uint32_t)b.x << 16); }
