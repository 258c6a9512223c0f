// clawmine-kernel-bench: times the CUDA backend's kernels at V4-Flash shapes against the copy
// and GEMM ceilings measured in the same run (bench/cuda/bench.h; docs/PERFORMANCE.md).
//   clawmine-kernel-bench [--only linear,grouped,moe,attention,compressor,indexer] [--jsonl FILE]
//                         [--target-ms MS] [--memory-fraction F] [--device N]
// Exit status: 0 all checks passed, 1 a check failed, 2 bad arguments or no CUDA device.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#include "bench/cuda/bench.h"
#include "core/error.h"

namespace {

using namespace clawmine;

constexpr const char* kUsage =
    "usage: clawmine-kernel-bench [--only GROUP,...] [--jsonl FILE] [--target-ms MS] [--memory-fraction F] "
    "[--device N]\n"
    "  groups: linear, grouped, moe, attention, compressor, indexer (default: all)\n";

bench::Options parse(int argc, char** argv) {
  bench::Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error(str_cat(a, ": needs a value"));
      return argv[++i];
    };
    if (a == "--only") {
      std::stringstream ss(value());
      std::string g;
      while (std::getline(ss, g, ',')) {
        if (g != "linear" && g != "grouped" && g != "moe" && g != "attention" && g != "compressor" && g != "indexer")
          throw Error(str_cat("--only: unknown group '", g, "'"));
        o.groups.push_back(g);
      }
    } else if (a == "--jsonl") {
      o.jsonl = value();
    } else if (a == "--target-ms") {
      o.target_ms = std::stod(value());
      if (!(o.target_ms > 0)) throw Error("--target-ms must be positive");
    } else if (a == "--memory-fraction") {
      o.memory_fraction = std::stod(value());
    } else if (a == "--device") {
      o.device = std::stoi(value());
    } else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw Error(str_cat("unknown argument '", a, "'"));
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  bench::Options opts;
  try {
    opts = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n%s", e.what(), kUsage);
    return 2;
  }
  if (backend::cuda::device_count() == 0) {
    std::fprintf(stderr, "error: no CUDA device is visible\n");
    return 2;
  }
  int failed = 0;
  try {
    backend::cuda::CudaOptions co;
    co.device = opts.device;
    co.memory_fraction = opts.memory_fraction;
    co.act_dtype = DType::kBF16;
    co.graphs = false;  // the harness captures its own graphs
    auto be = backend::cuda::make_cuda_backend(co);
    {
      const bench::DeviceInfo dev = bench::device_info(*be, opts.device);
      const bench::Ceilings ceil = bench::measure_ceilings(*be, opts.target_ms);
      bench::Reporter rep(opts, dev, ceil);
      rep.note("linear policy: W8A16 / W4A16 (the default: weights decoded exactly, BF16 activations)");
      bench::Env env{*be, opts, dev, rep};
      bench::run_linear_cases(env);
      bench::run_moe_cases(env);
      bench::run_attention_cases(env);
      rep.print_table();
      for (const bench::Result& r : rep.results()) failed += r.failed ? 1 : 0;
    }
    bench::release_harness();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return failed ? 1 : 0;
}
