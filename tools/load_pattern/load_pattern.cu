// bench_load_pattern: the one-token expert GEMV's weight loads alone, by access pattern and L2
// prefetch size (docs/PERFORMANCE.md, thirty-seventh session).
//
// The routed experts' MXFP4 gate/up at one token (6 experts of a pool of 64, 2 x 2048 rows of
// 2048 bytes each: 53.5 MB) takes ~20 us on the wgmma GEMV and ~28 us on the streaming one
// against a ~13.4 us read floor, although the wgmma kernel keeps ~11 MB of loads in flight over
// the GPU (384 blocks x 128 lanes x 7 k blocks x 32 bytes): by Little's law its loads then wait
// ~4 us each, so the memory itself, not the latency hiding, delivers too few bytes. This probe
// times the loads of that launch alone (xor-folded, optionally with a fixed delay per k block
// standing in for the math), in the wgmma kernel's pattern and in alternatives, every launch
// over another 6 experts of a 512 MB pool (L2 cold), as graphs of back-to-back launches:
//   wgmma       lane (warp w, g = lane / 4, t = lane % 4) loads 16 bytes at [64 i + 16 t) of rows
//               16 w + g and + 8 for k block i (64 bytes per row and k block: half a 128-byte line)
//   wgmma128    the same with the loads' L2 prefetch size at 128 bytes (ld ... .L2::128B)
//   wgmma256    the same at 256 bytes (.L2::256B: a miss fetches the row's next 3 k blocks too)
//   paired      two k blocks per step: lane t loads [32 t, 32 t + 32) of the row's 128 bytes (two
//               adjacent 16-byte loads), the same bytes in flight
//   tiled       the weights stored per 64-row tile as [k block][row][64 bytes]: a block's k block
//               is 4 KB contiguous (a repacked layout)
//   linear      the block's 128 KB read in address order, the same loads in flight (its read floor)
// plus the copy bandwidth (a 16-byte copy kernel over 1 GiB, read + written bytes). The experts lie
// 8 MiB apart (a power of two: the 6 experts' tiles read in lock step fall on the same address
// bits below 2^23) unless --pads adds bytes between them (e.g. 0,4352: is there partition camping?).
// H200, thirty-seventh session (docs/PERFORMANCE.md), us per launch, 8 steps in flight, no delay /
// 300 cycles per step: wgmma 14.04 / 17.17, wgmma128 12.90 / 14.89, wgmma256 13.62 / 15.02, paired
// 13.25 / 15.77, tiled 12.72 / 14.74, linear 12.66 / 14.51. So the wgmma pattern's loads cost
// ~11% over the address-order read (17-19% with math between steps), and the 128-byte L2
// prefetch size takes that back; ld_stream16 (weight_formats.cuh) now loads with it.
//
//   cmake --build build-gpu --target bench_load_pattern && build-gpu/bench_load_pattern [--delay 0,300] [--pads 0]
//   (or nvcc -O3 -std=c++17 -arch=sm_90a --expt-relaxed-constexpr -I src -I tools tools/load_pattern/load_pattern.cu)
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/weight_formats.cuh"
#include "common/probe_timing.cuh"

namespace {

#define CK CLAWMINE_PROBE_CK
namespace cuda = clawmine::backend::cuda;

constexpr int kPool = 64, kSlots = 6, kRows = 4096, kRowBytes = 2048, kTileRows = 64;
constexpr int kKb = kRowBytes / 64;  // 32 k blocks of 64 bytes per row
constexpr int64_t kExpertBytes = int64_t{kRows} * kRowBytes;

enum Pattern : int { kWgmma = 0, kWgmma128, kWgmma256, kPaired, kTiled, kLinear, kPatterns };
const char* const kNames[kPatterns] = {"wgmma", "wgmma128", "wgmma256", "paired", "tiled", "linear"};

template <int P>
__device__ __forceinline__ uint4 ld16(const uint8_t* p) {
  constexpr int kL2 = P == kWgmma128 ? 128 : P == kWgmma256 ? 256 : 0;  // L2 prefetch size
  return cuda::ld_stream16<kL2>(p);
}

// Byte offsets (within the block's 128 KB tile) of load j (0, 1) of step s for this lane.
template <int P>
__device__ __forceinline__ int64_t offset(int s, int j) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int r = 16 * w + g + 8 * j;  // j: row g or g + 8 (paired: both halves of row g, then g + 8)
  if constexpr (P == kPaired) {
    // Step s covers k blocks 2 (s / 2), + 1 in two halves: loads (s & 1) * 2 + j.
    const int q = (s & 1) * 2 + j;  // 0, 1: row g; 2, 3: row g + 8
    const int row = 16 * w + g + 8 * (q >> 1);
    return int64_t{row} * kRowBytes + (s >> 1) * 128 + 32 * t + 16 * (q & 1);
  } else if constexpr (P == kTiled) {
    return int64_t{s} * (kTileRows * 64) + r * 64 + 16 * t;
  } else if constexpr (P == kLinear) {
    return (int64_t{s} * 2 + j) * (128 * 16) + threadIdx.x * 16;
  } else {
    return int64_t{r} * kRowBytes + s * 64 + 16 * t;
  }
}

// Grid (kRows / 64 tiles, kSlots), 128 threads; sel[slot] = expert, at pool + expert * stride.
// kNS steps in flight per lane (two 16-byte loads each); after each step a spin of `delay` cycles.
template <int P, int kNS>
__global__ void __launch_bounds__(128) loads_kernel(const uint8_t* __restrict__ pool, int64_t stride,
                                                    const int* __restrict__ sel, int delay,
                                                    uint32_t* __restrict__ sink) {
  const int e = sel[blockIdx.y];
  const uint8_t* base = pool + e * stride + int64_t{blockIdx.x} * kTileRows * kRowBytes;
  uint4 buf[kNS][2];
#pragma unroll
  for (int s = 0; s < kNS; ++s)
#pragma unroll
    for (int j = 0; j < 2; ++j) buf[s][j] = ld16<P>(base + offset<P>(s, j));
  uint32_t acc = 0;
#pragma unroll
  for (int s0 = 0; s0 < kKb; s0 += kNS) {
#pragma unroll
    for (int st = 0; st < kNS; ++st) {
      const int s = s0 + st;
#pragma unroll
      for (int j = 0; j < 2; ++j) acc ^= buf[st][j].x ^ buf[st][j].y ^ buf[st][j].z ^ buf[st][j].w;
      if (delay > 0) {
        const long long t0 = clock64();
        while (clock64() - t0 < delay) {
        }
      }
      if (s + kNS < kKb) {
#pragma unroll
        for (int j = 0; j < 2; ++j) buf[st][j] = ld16<P>(base + offset<P>(s + kNS, j));
      }
    }
  }
  if (acc == 0x9e3779b9u) sink[blockIdx.y * gridDim.x + blockIdx.x] = acc;  // keeps the loads
}

__global__ void copy_kernel(const uint4* __restrict__ a, uint4* __restrict__ b, int64_t n) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 v0 = a[i], v1 = a[i + stride], v2 = a[i + 2 * stride], v3 = a[i + 3 * stride];
    b[i] = v0, b[i + stride] = v1, b[i + 2 * stride] = v2, b[i + 3 * stride] = v3;
  }
  for (; i < n; i += stride) b[i] = a[i];
}

template <typename Fn>
double time_graph_us(cudaStream_t st, int n, int reps, Fn&& launch) {
  return 1e3 * clawmine::probe::time_graph(st, n, reps, launch);
}

template <int P, int kNS>
double time_pattern(cudaStream_t st, const uint8_t* pool, int64_t stride, const int* sel, int n_sets, int delay,
                    uint32_t* sink) {
  return time_graph_us(st, n_sets, 15, [&](int i) {
    loads_kernel<P, kNS><<<dim3(kRows / kTileRows, kSlots), 128, 0, st>>>(pool, stride, sel + i * kSlots, delay, sink);
  });
}

template <int kNS>
void run_all(cudaStream_t st, const uint8_t* pool, int pad, const int* sel, int n_sets, int delay, uint32_t* sink,
             double copy_gbs) {
  const double bytes = double(kSlots) * kExpertBytes;
  const int64_t stride = kExpertBytes + pad;
  double us[kPatterns];
  us[kWgmma] = time_pattern<kWgmma, kNS>(st, pool, stride, sel, n_sets, delay, sink);
  us[kWgmma128] = time_pattern<kWgmma128, kNS>(st, pool, stride, sel, n_sets, delay, sink);
  us[kWgmma256] = time_pattern<kWgmma256, kNS>(st, pool, stride, sel, n_sets, delay, sink);
  us[kPaired] = time_pattern<kPaired, kNS>(st, pool, stride, sel, n_sets, delay, sink);
  us[kTiled] = time_pattern<kTiled, kNS>(st, pool, stride, sel, n_sets, delay, sink);
  us[kLinear] = time_pattern<kLinear, kNS>(st, pool, stride, sel, n_sets, delay, sink);
  std::printf("| %d | %d | %d |", pad, kNS, delay);
  for (int p = 0; p < kPatterns; ++p) std::printf(" %.2f (%.0f%%) |", us[p], 100.0 * bytes / (us[p] * 1e3) / copy_gbs);
  std::printf("\n");
}

// A comma-separated list of whole numbers, e.g. "0,300"; false (nothing in `out`) on anything else.
bool parse_list(const char* s, std::vector<int>& out) {
  out.clear();
  for (const char* p = s;;) {
    char* end = nullptr;
    const long v = std::strtol(p, &end, 10);
    if (end == p || v < INT32_MIN || v > INT32_MAX || (*end != ',' && *end != '\0')) {
      out.clear();
      return false;
    }
    out.push_back(static_cast<int>(v));
    if (*end == '\0') return true;
    p = end + 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> delays = {0, 300}, pads = {0};
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s: %s needs a value\n", argv[0], argv[i]);
      return 2;
    }
    const bool delay = std::strcmp(argv[i], "--delay") == 0, pad = std::strcmp(argv[i], "--pads") == 0;
    if (delay || pad) {
      if (!parse_list(argv[i + 1], delay ? delays : pads)) {
        std::fprintf(stderr, "%s: %s %s: expected whole numbers separated by commas\n", argv[0], argv[i], argv[i + 1]);
        return 2;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--delay CYCLES,...] [--pads BYTES,...]\n", argv[0]);
      return 2;
    }
  }
  for (int d : delays) {
    if (d < 0) {
      std::fprintf(stderr, "%s: --delay %d: cycles per step, 0 or more\n", argv[0], d);
      return 2;
    }
  }
  for (int pad : pads) {
    if (pad < 0 || pad % 256 != 0 || pad > (64 << 20)) {
      std::fprintf(stderr, "%s: --pads %d: a multiple of 256 from 0 to 64 MiB\n", argv[0], pad);
      return 2;
    }
  }
  const int max_pad = *std::max_element(pads.begin(), pads.end());
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  // Copy bandwidth: 1 GiB device to device by a 16-byte copy kernel (a cudaMemcpy node in a graph
  // goes through the copy engines: ~2.7 TB/s on the H200 against ~4.2 for the SMs), read + written bytes.
  const size_t copy_bytes = size_t{1} << 30;
  uint4 *a = nullptr, *b = nullptr;
  CK(cudaMalloc(&a, copy_bytes));
  CK(cudaMalloc(&b, copy_bytes));
  CK(cudaMemset(a, 1, copy_bytes));
  CK(cudaMemset(b, 0, copy_bytes));
  const int64_t n16 = static_cast<int64_t>(copy_bytes / 16);
  const double copy_us = time_graph_us(st, 4, 9, [&](int) {
    copy_kernel<<<prop.multiProcessorCount * 8, 256, 0, st>>>(a, b, n16);
  });
  const double copy_gbs = 2.0 * copy_bytes / (copy_us * 1e3);
  CK(cudaFree(a));
  CK(cudaFree(b));

  uint8_t* pool = nullptr;
  const size_t pool_bytes = size_t{kPool} * static_cast<size_t>(kExpertBytes + max_pad);
  CK(cudaMalloc(&pool, pool_bytes));
  CK(cudaMemset(pool, 0x5a, pool_bytes));
  // 20 sets of 6 distinct experts, consecutive sets disjoint (every launch L2 cold).
  const int n_sets = 20;
  std::vector<int> sel(static_cast<size_t>(n_sets) * kSlots);
  uint32_t rng = 12345u;
  for (int i = 0; i < n_sets; ++i) {
    for (int k = 0; k < kSlots; ++k) {
      for (;;) {
        rng = rng * 1664525u + 1013904223u;
        const int e = static_cast<int>((rng >> 8) % kPool);
        bool ok = true;
        for (int q = 0; q < k; ++q) ok = ok && sel[static_cast<size_t>(i) * kSlots + q] != e;
        if (i > 0)
          for (int q = 0; q < kSlots; ++q) ok = ok && sel[static_cast<size_t>(i - 1) * kSlots + q] != e;
        if (ok) {
          sel[static_cast<size_t>(i) * kSlots + k] = e;
          break;
        }
      }
    }
  }
  int* dsel = nullptr;
  CK(cudaMalloc(&dsel, sel.size() * sizeof(int)));
  CK(cudaMemcpy(dsel, sel.data(), sel.size() * sizeof(int), cudaMemcpyHostToDevice));
  uint32_t* sink = nullptr;
  CK(cudaMalloc(&sink, 4096 * sizeof(uint32_t)));

  std::printf("%s, %d SMs; copy %.0f GB/s; %d blocks of 128 threads, %.1f MB per launch (6 experts x 4096 rows x 2048 B)\n\n",
              prop.name, prop.multiProcessorCount, copy_gbs, (kRows / kTileRows) * kSlots,
              kSlots * kExpertBytes / 1e6);
  std::printf("| expert stride pad (bytes) | steps in flight | delay (cycles per step) |");
  for (int p = 0; p < kPatterns; ++p) std::printf(" %s us (%% of copy) |", kNames[p]);
  std::printf("\n|---|---|---|");
  for (int p = 0; p < kPatterns; ++p) std::printf("---|");
  std::printf("\n");
  for (int pad : pads)
    for (int d : delays) {
      run_all<4>(st, pool, pad, dsel, n_sets, d, sink, copy_gbs);
      run_all<8>(st, pool, pad, dsel, n_sets, d, sink, copy_gbs);
    }
  CK(cudaFree(pool));
  CK(cudaFree(dsel));
  CK(cudaFree(sink));
  return 0;
}
