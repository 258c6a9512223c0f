// clawmine-random-model: a DeepSeek V4 checkpoint with random weights, written directly in a
// quantized layout (docs/FIXTURES.md, "Random models at real geometry").
//   clawmine-random-model --out DIR --layout release|nvfp4 [--geometry flash|small] [--layers N]
//       [--experts E] [--seed S] [--threads N] [--input-scales on|off] [--force] [--dry-run]
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <exception>
#include <map>

#include <CLI/CLI.hpp>

#include "core/error.h"
#include "random_model/random_model.h"

namespace {

using namespace clawmine;
using namespace clawmine::tools;

void print_plan(const ModelPlan& plan) {
  std::map<std::string, size_t> by_dtype;
  for (const Shard& s : plan.shards)
    for (const TensorJob& t : s.tensors) by_dtype[std::string(dtype_name(t.dtype))] += t.nbytes();
  std::printf("geometry %s, layout %s: %zu layers, %zu shards, %zu tensors, %.3f GB (%" PRIu64 " bytes)\n",
              plan.geometry.name.c_str(), layout_name(plan.layout), plan.shards.size() - 1, plan.shards.size(),
              plan.num_tensors(), plan.nbytes() / 1e9, static_cast<uint64_t>(plan.nbytes()));
  for (const auto& [dtype, bytes] : by_dtype) std::printf("  %-8s %10.3f GB\n", dtype.c_str(), bytes / 1e9);
  std::printf("  largest shard %.3f GB\n", [&] {
    size_t m = 0;
    for (const Shard& s : plan.shards) m = std::max(m, s.nbytes());
    return m / 1e9;
  }());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"clawmine-random-model: a random-weight DeepSeek V4 checkpoint in a quantized layout"};
  std::string out, layout = "release", geometry = "flash", input_scales = "on";
  int64_t layers = 0, experts = 0;
  uint64_t seed = 0;
  int threads = 0;
  bool force = false, dry_run = false;
  app.add_option("--out", out, "Output directory (created; must be empty unless --force)");
  app.add_option("--layout", layout, "release (FP8 block + MXFP4 experts) or nvfp4 (ModelOpt NVFP4 experts)")
      ->check(CLI::IsMember({"release", "nvfp4"}))
      ->capture_default_str();
  app.add_option("--geometry", geometry, "flash (V4-Flash dims, 43 layers, 64 experts) or small (CI size)")
      ->check(CLI::IsMember({"flash", "small"}))
      ->capture_default_str();
  app.add_option("--layers", layers, "Number of layers (0: the geometry's)")->check(CLI::NonNegativeNumber);
  app.add_option("--experts", experts, "Routed experts per layer (0: the geometry's)")->check(CLI::NonNegativeNumber);
  app.add_option("--seed", seed, "Random seed (same seed, same bytes)")->capture_default_str();
  app.add_option("--threads", threads, "Threads drawing weights (0: all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--input-scales", input_scales,
                 "nvfp4: write static input_scale on routed experts (off: no load-time calibration audit)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_flag("--force", force, "Replace an earlier random model in --out");
  app.add_flag("--dry-run", dry_run, "Print the plan (sizes by dtype) and write nothing");
  try {
    app.parse(argc, argv);
    Geometry g = geometry_by_name(geometry, "--geometry");
    if (layers > 0) g.num_hidden_layers = layers;
    if (experts > 0) g.n_routed_experts = experts;
    const Layout l = parse_layout(layout, "--layout");
    if (dry_run) {
      PlanOptions po;
      po.input_scales = input_scales == "on";
      print_plan(plan_model(g, l, po));
      return 0;
    }
    if (out.empty()) throw Error("--out: required (or --dry-run)");
    RandomModelOptions o;
    o.out = out;
    o.geometry = g;
    o.layout = l;
    o.seed = seed;
    o.threads = threads;
    o.input_scales = input_scales == "on";
    o.force = force;
    const RandomModelStats s = write_random_model(o);
    std::printf("wrote %s: %zu shards, %zu tensors, %" PRIu64 " bytes (%.3f GB) in %.2f s (%.2f GB/s)\n", out.c_str(),
                s.shards, s.tensors, static_cast<uint64_t>(s.file_bytes), s.file_bytes / 1e9, s.seconds,
                s.file_bytes / 1e9 / std::max(s.seconds, 1e-9));
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
