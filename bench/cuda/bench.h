// clawmine-kernel-bench: our CUDA kernels at V4-Flash shapes, called through ops::Backend (so
// the numbers are the engine's), each case against the two ceilings measured in the same run
// on the same card: a large device-to-device copy (bytes read + written) and a cuBLAS BF16 GEMM
// 8192^3. Plain C++ header shared by the .cu case files and the C++ main/report.
//
// A case's floor is max(bytes / copy bandwidth, flops / GEMM rate) with bytes the fewest it must
// move (each weight, scale and activation read once, each output written once); ratio = floor /
// measured median, so 1.0 is at the measured roofline.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "ops/backend.h"

namespace clawmine::bench {

struct Options {
  std::vector<std::string> groups;  // empty: every group (roofline is always measured)
  std::string jsonl;                // JSON lines output ("" none)
  double target_ms = 60;            // timed graph launches per case add up to about this
  double memory_fraction = 0.6;
  int device = 0;
  bool wants(const std::string& group) const;
};

struct Timing {
  double median_us = 0, min_us = 0, max_us = 0;  // per op call
  int calls_per_launch = 0;                       // op calls captured in one graph (or one eager batch)
  int launches = 0;                               // timed launches (the median is over these)
  bool graph = false;                             // false: eager fallback (capture failed)
  std::string note;                               // why the capture failed, when it did
};

struct Ceilings {
  double copy_gbps = 0;     // bytes read + written per second / 1e9
  double gemm_tflops = 0;   // cuBLAS BF16 8192^3, random data
  Timing copy, gemm;
  int64_t copy_bytes = 0;   // bytes of one copy's source
};

struct DeviceInfo {
  std::string name;   // device_summary()
  int sm_count = 0;
  int64_t l2_bytes = 0;
  int64_t memory_bytes = 0;
  int clock_mhz = 0;       // max SM clock
  int mem_clock_mhz = 0;   // max memory clock
};

// One measured case: a row of the table and a line of the JSON output.
struct Result {
  std::string group;   // linear, grouped, moe, attention, compressor, indexer
  std::string name;    // "wq_b [32768x1024]", "csa ctx 131072", ...
  std::string format;  // bf16, fp8, mxfp4, nvfp4, "-"
  std::string impl;    // clawmine, cublas
  int64_t T = 0;       // tokens (rows of x)
  Timing timing;
  double bytes = 0;    // fewest bytes it must move per call
  double flops = 0;    // per call
  int rotation = 1;    // input sets rotated through (their total exceeds L2 where it matters)
  std::string check;   // "rel 1.2e-03 vs cublas" / "finite" / "FAIL ..."
  bool failed = false;
  // derived from the ceilings
  double gbps() const { return timing.median_us > 0 ? bytes / (timing.median_us * 1e3) : 0; }
  double tflops() const { return timing.median_us > 0 ? flops / (timing.median_us * 1e6) : 0; }
};

class Reporter {
 public:
  Reporter(const Options& o, const DeviceInfo& d, const Ceilings& c);
  ~Reporter();
  // Prints one line now (progress) and keeps the result for the table.
  void add(Result r);
  void note(const std::string& line);  // a free-text line in the log and as {"note": ...} in JSON
  // The closing table: every case, then the headline comparisons.
  void print_table() const;
  const std::vector<Result>& results() const { return results_; }
  const Ceilings& ceilings() const { return ceil_; }
  double floor_us(const Result& r) const;
  const char* bound(const Result& r) const;

 private:
  void write_json(const Result& r);
  Options opts_;
  DeviceInfo dev_;
  Ceilings ceil_;
  std::vector<Result> results_;
  std::FILE* json_ = nullptr;
};

// "1.2e-03": relative errors in check strings.
inline std::string sci(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1e", v);
  return b;
}

// ---- harness (harness.cu) ------------------------------------------------------------------
DeviceInfo device_info(ops::Backend& be, int device);
// Times op(i) for i cycling over [0, rotation): warm-up (each slot once, eagerly: one-time
// tables and cuBLAS heuristics stay out), an eager estimate, then K calls captured into one
// CUDA graph (K sized so one launch lasts >= ~0.5 ms) and replayed; per-call time = launch
// time / K (CUDA events), median over the launches. If capture fails (or allow_graph is false),
// eager batches instead. The copy ceiling is timed eagerly: inside a graph a device-to-device
// memcpy becomes a copy-engine node, measured at 2.44 TB/s on an H100 against 3.02 TB/s for the
// same cudaMemcpyAsync issued eagerly.
Timing time_op(ops::Backend& be, int rotation, const std::function<void(int)>& op, double target_ms,
               bool allow_graph = true);
Ceilings measure_ceilings(ops::Backend& be, double target_ms);
// Random values in device memory (a hash of seed and index; never all zero, always finite).
enum class Fill {
  kFloat,       // F32/BF16: uniform in [-scale, scale]
  kBytes,       // any byte (packed E2M1 nibbles: every code is finite)
  kE4M3Weight,  // E4M3 codes of magnitude 2^-3 .. 60, random sign (no NaN code)
  kE8M0Scale,   // E8M0 exponent bytes 118 .. 122 (2^-9 .. 2^-5)
  kE4M3Scale,   // positive E4M3 codes 0x28 .. 0x40 (0.25 .. 2)
};
void fill_random(ops::Backend& be, const TensorView& v, Fill kind, uint64_t seed, float scale = 1.0f);
// The weight decoded to BF16 [out, in] (the reference cuBLAS side of a check).
void dequantize_bf16(ops::Backend& be, const ops::LinearWeight& w, const TensorView& out);
// out[t, z, :] = W_z x[t, z, :] with W = w viewed [G, Lo, in_g] (G = 1: a plain linear); BF16 in
// and out, f32 accumulation, cuBLAS (strided batched). x [T, G*in_g], w [G*Lo, in_g], out [T, G*Lo].
void cublas_bf16(ops::Backend& be, const TensorView& x, const TensorView& w, int64_t groups, const TensorView& out);
// ||got - ref|| / ||ref|| over F32/BF16 device tensors; +inf when got has a non-finite element.
double rel_l2(ops::Backend& be, const TensorView& got, const TensorView& ref);
int64_t count_nonfinite(ops::Backend& be, const TensorView& t);
void release_harness();  // the cuBLAS handle (before the backend goes)

// ---- cases ---------------------------------------------------------------------------------
struct Env {
  ops::Backend& be;
  const Options& opts;
  const DeviceInfo& dev;
  Reporter& rep;
  // Inputs rotated through so that their total is at least this many bytes (3 x L2).
  int64_t rotate_bytes() const { return 3 * dev.l2_bytes; }
};
void run_linear_cases(Env& env);     // linear.cu: linear per format + cuBLAS, grouped wo_a
void run_moe_cases(Env& env);        // moe.cu: moe_experts 64 x 2048, top-6
void run_attention_cases(Env& env);  // attention.cu: sparse_attention decode, compressor, indexer

}  // namespace clawmine::bench
