// Output of clawmine-kernel-bench: a progress line per case as it finishes, JSON lines (one
// object per case, after one for the device and one for the ceilings), and the closing table
// with the headline comparisons (GEMV against cuBLAS BF16 at T = 1, the ratios to the ceilings).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>

#include "bench/cuda/bench.h"
#include "core/error.h"

namespace clawmine::bench {
namespace {

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char b[40];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

std::string utc_now() {
  char b[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return b;
}

constexpr const char* kHeader = "%-10s %-28s %-5s %-8s %5s %10s %8s %8s %4s %6s  %s\n";
constexpr const char* kRow = "%-10s %-28s %-5s %-8s %5lld %10.2f %8.1f %8.2f %4s %5.1f%%  %s%s\n";

}  // namespace

Reporter::Reporter(const Options& o, const DeviceInfo& d, const Ceilings& c) : opts_(o), dev_(d), ceil_(c) {
  if (!o.jsonl.empty()) {
    json_ = std::fopen(o.jsonl.c_str(), "w");
    if (json_ == nullptr) throw Error(str_cat("--jsonl: cannot write '", o.jsonl, "'"));
    std::fprintf(json_,
                 "{\"kind\":\"device\",\"date\":%s,\"device\":%s,\"sm_count\":%d,\"l2_bytes\":%lld,"
                 "\"memory_bytes\":%lld,\"max_sm_clock_mhz\":%d,\"max_mem_clock_mhz\":%d}\n",
                 json_str(utc_now()).c_str(), json_str(d.name).c_str(), d.sm_count,
                 static_cast<long long>(d.l2_bytes), static_cast<long long>(d.memory_bytes), d.clock_mhz,
                 d.mem_clock_mhz);
    std::fprintf(json_,
                 "{\"kind\":\"ceilings\",\"copy_gbps\":%s,\"copy_bytes\":%lld,\"copy_median_us\":%s,"
                 "\"gemm_tflops\":%s,\"gemm_shape\":\"8192x8192x8192 bf16\",\"gemm_median_us\":%s}\n",
                 num(c.copy_gbps).c_str(), static_cast<long long>(c.copy_bytes), num(c.copy.median_us).c_str(),
                 num(c.gemm_tflops).c_str(), num(c.gemm.median_us).c_str());
    std::fflush(json_);
  }
  std::printf("device: %s, %d SMs, L2 %.0f MiB, max clocks SM %d MHz / memory %d MHz\n", d.name.c_str(), d.sm_count,
              d.l2_bytes / 1048576.0, d.clock_mhz, d.mem_clock_mhz);
  std::printf("ceilings: copy %.0f GB/s (1 GiB cudaMemcpyAsync device to device, eager, read + write; %.1f us), "
              "cuBLAS BF16 GEMM 8192^3 %.0f TFLOP/s (%.1f us)\n",
              c.copy_gbps, c.copy.median_us, c.gemm_tflops, c.gemm.median_us);
  std::printf(kHeader, "group", "case", "fmt", "impl", "T", "median_us", "GB/s", "TFLOP/s", "bnd", "roof", "check");
  std::fflush(stdout);
}

Reporter::~Reporter() {
  if (json_) std::fclose(json_);
}

double Reporter::floor_us(const Result& r) const {
  const double mem = ceil_.copy_gbps > 0 ? r.bytes / (ceil_.copy_gbps * 1e3) : 0;
  const double math = ceil_.gemm_tflops > 0 ? r.flops / (ceil_.gemm_tflops * 1e6) : 0;
  return std::max(mem, math);
}

const char* Reporter::bound(const Result& r) const {
  const double mem = ceil_.copy_gbps > 0 ? r.bytes / (ceil_.copy_gbps * 1e3) : 0;
  const double math = ceil_.gemm_tflops > 0 ? r.flops / (ceil_.gemm_tflops * 1e6) : 0;
  return math > mem ? "math" : "mem";
}

void Reporter::add(Result r) {
  const double ratio = r.timing.median_us > 0 ? floor_us(r) / r.timing.median_us : 0;
  std::printf(kRow, r.group.c_str(), r.name.c_str(), r.format.c_str(), r.impl.c_str(), static_cast<long long>(r.T),
              r.timing.median_us, r.gbps(), r.tflops(), bound(r), 100.0 * ratio, r.check.c_str(),
              r.timing.graph || r.timing.median_us == 0 ? "" : " (eager)");
  if (!r.timing.note.empty()) std::printf("  capture failed: %s\n", r.timing.note.c_str());
  std::fflush(stdout);
  write_json(r);
  results_.push_back(std::move(r));
}

void Reporter::note(const std::string& line) {
  std::printf("%s\n", line.c_str());
  if (json_) {
    std::fprintf(json_, "{\"kind\":\"note\",\"text\":%s}\n", json_str(line).c_str());
    std::fflush(json_);
  }
}

void Reporter::write_json(const Result& r) {
  if (!json_) return;
  const double ratio = r.timing.median_us > 0 ? floor_us(r) / r.timing.median_us : 0;
  std::fprintf(json_,
               "{\"kind\":\"case\",\"group\":%s,\"name\":%s,\"format\":%s,\"impl\":%s,\"T\":%lld,"
               "\"median_us\":%s,\"min_us\":%s,\"max_us\":%s,\"calls_per_launch\":%d,\"launches\":%d,\"graph\":%s,"
               "\"rotation\":%d,\"bytes\":%s,\"flops\":%s,\"gbps\":%s,\"tflops\":%s,\"floor_us\":%s,\"bound\":%s,"
               "\"roofline_ratio\":%s,\"check\":%s,\"failed\":%s}\n",
               json_str(r.group).c_str(), json_str(r.name).c_str(), json_str(r.format).c_str(),
               json_str(r.impl).c_str(), static_cast<long long>(r.T), num(r.timing.median_us).c_str(),
               num(r.timing.min_us).c_str(), num(r.timing.max_us).c_str(), r.timing.calls_per_launch,
               r.timing.launches, r.timing.graph ? "true" : "false", r.rotation, num(r.bytes).c_str(),
               num(r.flops).c_str(), num(r.gbps()).c_str(), num(r.tflops()).c_str(), num(floor_us(r)).c_str(),
               json_str(bound(r)).c_str(), num(ratio).c_str(), json_str(r.check).c_str(),
               r.failed ? "true" : "false");
  std::fflush(json_);
}

void Reporter::print_table() const {
  std::printf("\n== clawmine-kernel-bench: %s; copy %.0f GB/s, BF16 GEMM %.0f TFLOP/s (measured in this run)\n",
              dev_.name.c_str(), ceil_.copy_gbps, ceil_.gemm_tflops);
  std::printf(kHeader, "group", "case", "fmt", "impl", "T", "median_us", "GB/s", "TFLOP/s", "bnd", "roof", "check");
  int failed = 0;
  for (const Result& r : results_) {
    const double ratio = r.timing.median_us > 0 ? floor_us(r) / r.timing.median_us : 0;
    std::printf(kRow, r.group.c_str(), r.name.c_str(), r.format.c_str(), r.impl.c_str(), static_cast<long long>(r.T),
                r.timing.median_us, r.gbps(), r.tflops(), bound(r), 100.0 * ratio, r.check.c_str(),
                r.timing.graph || r.timing.median_us == 0 ? "" : " (eager)");
    failed += r.failed ? 1 : 0;
  }
  // Headline: decode GEMV (T = 1) of each format against cuBLAS BF16 at the same shape.
  std::map<std::string, double> cublas_t1;
  for (const Result& r : results_)
    if (r.impl == "cublas" && r.T == 1) cublas_t1[r.group + "|" + r.name] = r.timing.median_us;
  std::printf("\nT=1 (decode GEMV): speed-up over cuBLAS BF16 at the same shape, and share of copy bandwidth\n");
  for (const Result& r : results_) {
    if (r.impl != "clawmine" || r.T != 1 || (r.group != "linear" && r.group != "grouped")) continue;
    const auto it = cublas_t1.find(r.group + "|" + r.name);
    if (it == cublas_t1.end() || r.timing.median_us <= 0) continue;
    std::printf("  %-20s %-5s %8.2f us  %5.2fx cuBLAS (%8.2f us)  %5.1f%% of copy bandwidth\n", r.name.c_str(),
                r.format.c_str(), r.timing.median_us, it->second / r.timing.median_us, it->second,
                100.0 * r.gbps() / ceil_.copy_gbps);
  }
  std::printf("%zu cases, %d failed checks; roof = max(bytes/copy, flops/GEMM) / median\n", results_.size(), failed);
  std::fflush(stdout);
}

}  // namespace clawmine::bench
