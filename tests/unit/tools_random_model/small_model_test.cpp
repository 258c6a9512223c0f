// The small geometry written in both layouts, loaded through the normal loader (binder, scale
// validation, and for NVFP4 under W4A4 the calibration audit of the static input scales), and run forward
// on the CPU backend: formats as planned, dequantized weights at the intended RMS, logits finite
// and not degenerate. Also: same seed gives the same bytes for 1 or 2 threads, and the
// clawmine-random-model binary end to end with `clawmine logits`.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include "backend/cpu/weight_decode.h"
#include "io/npy.h"
#include "model/deepseek_v4/model.h"
#include "model/deepseek_v4/weight_walk.h"
#include "ops/backend.h"
#include "random_model/random_model.h"
#include "runtime/generate.h"
#include "support/test_support.h"

namespace clawmine {
namespace {

namespace fs = std::filesystem;
namespace dsv4 = model::deepseek_v4;
using namespace clawmine::tools;

RandomModelOptions small_options(const fs::path& out, Layout layout, uint64_t seed = 1, int threads = 2) {
  RandomModelOptions o;
  o.out = out;
  o.geometry = small_geometry();
  o.layout = layout;
  o.seed = seed;
  o.threads = threads;
  return o;
}

std::vector<int32_t> test_ids(int64_t vocab, int n) {
  std::vector<int32_t> ids;
  uint64_t s = 12345;
  for (int i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    ids.push_back(static_cast<int32_t>(2 + (s >> 33) % static_cast<uint64_t>(vocab - 2)));
  }
  return ids;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

class RandomSmallModel : public ::testing::TestWithParam<Layout> {};

TEST_P(RandomSmallModel, LoadsWithValidatedScalesAndRunsFinite) {
  const Layout layout = GetParam();
  test::TempDir tmp;
  const RandomModelStats stats = write_random_model(small_options(tmp.path(), layout));
  EXPECT_EQ(stats.shards, 6u);
  EXPECT_GT(stats.file_bytes, stats.tensor_bytes);

  // Scale validation, and under W4A4 auto the calibration audit of the NVFP4 input scales (the
  // default W4A16 skips it); the forward below runs the CPU backend's own (default) policy.
  dsv4::LoadOptions lo;
  lo.policy.nvfp4 = ops::Nvfp4Path::kW4A4;
  auto model = dsv4::Model::load(tmp.path(), lo);
  const dsv4::ModelConfig& cfg = model->config();
  std::set<dsv4::AttentionKind> kinds(cfg.layer_types.begin(), cfg.layer_types.end());
  EXPECT_EQ(kinds.size(), 3u) << "sliding, CSA and HCA layers";
  EXPECT_EQ(cfg.num_hash_layers(), 3);

  const dsv4::ModelWeights& w = model->weights();
  const auto routed = layout == Layout::kRelease ? dsv4::WeightFormat::kMxfp4 : dsv4::WeightFormat::kNvfp4;
  EXPECT_EQ(w.layers[0].attn.wq_b.format, dsv4::WeightFormat::kFp8Block);
  EXPECT_EQ(w.layers[4].attn.indexer->wq_b.format, dsv4::WeightFormat::kFp8Block);
  EXPECT_EQ(w.layers[4].attn.compressor->wkv.format, dsv4::WeightFormat::kDense);
  EXPECT_EQ(w.layers[4].ffn.shared_experts.w2.format, dsv4::WeightFormat::kFp8Block);
  EXPECT_EQ(w.layers[4].ffn.experts[7].w2.format, routed);
  EXPECT_EQ(w.layers[0].ffn.gate.format, dsv4::WeightFormat::kDense);
  EXPECT_FALSE(w.layers[1].ffn.tid2eid.empty());
  EXPECT_FALSE(w.layers[3].ffn.gate_bias.empty());
  if (layout == Layout::kNvfp4) {
    EXPECT_FALSE(w.layers[4].ffn.experts[7].w2.input_scale.empty());
  }

  // Dequantized weights: mean of W^2 * in_features is 1 per format (RMS 1/sqrt(in)). FP8 blocks
  // are few at this size (about 100, each 1x or 4x), hence the wider band.
  std::map<dsv4::WeightFormat, std::pair<double, double>> ms;  // format -> (sum w^2 * in, count)
  dsv4::for_each_linear(model->mutable_weights(), [&](dsv4::LinearWeight& lw, dsv4::WeightFamily) {
    std::vector<float> row(static_cast<size_t>(lw.in_features));
    for (int64_t r = 0; r < lw.out_features; ++r) {
      backend::cpu::decode_row(lw, r, row.data());
      for (float v : row) ms[lw.format].first += double(v) * v * lw.in_features;
      ms[lw.format].second += lw.in_features;
    }
  });
  for (const auto& [format, acc] : ms) {
    const double ratio = acc.first / acc.second;
    const double tol = format == dsv4::WeightFormat::kFp8Block ? 0.4 : 0.15;
    EXPECT_NEAR(ratio, 1.0, tol) << dsv4::weight_format_name(format) << " mean W^2 * in_features";
  }

  // 64 tokens: past the window (16), several CSA (4) and HCA (8) entries, index_topk 8 < entries.
  const std::vector<int32_t> ids = test_ids(cfg.vocab_size, 64);
  auto be = ops::make_cpu_backend(2);
  Buffer logits = runtime::chunked_logits(*model, *be, ids, 0, {});
  const int64_t T = static_cast<int64_t>(ids.size()), V = cfg.vocab_size;
  ASSERT_EQ(logits.view().shape, (Shape{T, V}));
  const float* l = logits.f32();
  std::set<int64_t> argmaxes;
  for (int64_t t = 0; t < T; ++t) {
    double sum = 0, sq = 0;
    int64_t best = 0;
    for (int64_t v = 0; v < V; ++v) {
      const float x = l[t * V + v];
      ASSERT_TRUE(std::isfinite(x)) << "position " << t << " logit " << v;
      sum += x;
      sq += double(x) * x;
      if (x > l[t * V + best]) best = v;
    }
    const double sd = std::sqrt(sq / V - (sum / V) * (sum / V));
    EXPECT_GT(sd, 0.05) << "position " << t << ": logits nearly constant";
    EXPECT_LT(sd, 100.0) << "position " << t;
    argmaxes.insert(best);
  }
  EXPECT_GE(argmaxes.size(), 8u) << "the argmax barely depends on the input";
}

INSTANTIATE_TEST_SUITE_P(Layouts, RandomSmallModel, ::testing::Values(Layout::kRelease, Layout::kNvfp4),
                         [](const auto& info) { return std::string(layout_name(info.param)); });

TEST(RandomSmallModelWriter, SameSeedSameBytesForAnyThreadCount) {
  test::TempDir a, b, c;
  write_random_model(small_options(a.path(), Layout::kRelease, 5, 1));
  write_random_model(small_options(b.path(), Layout::kRelease, 5, 2));
  write_random_model(small_options(c.path(), Layout::kRelease, 6, 2));
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(a.path())) {
    const std::string name = e.path().filename().string();
    EXPECT_EQ(read_file(e.path()), read_file(b.path() / name)) << name;
    if (name != "config.json") {
      EXPECT_NE(read_file(e.path()), read_file(c.path() / name)) << name << " ignores the seed";
    }
    ++files;
  }
  EXPECT_EQ(files, 8u);  // 6 shards, index, config (no hf_quant_config.json in the release layout)
}

TEST(RandomSmallModelWriter, RefusesANonEmptyDirectoryUnlessForced) {
  test::TempDir tmp;
  { std::ofstream(tmp.path() / "notes.txt") << "keep me"; }
  try {
    write_random_model(small_options(tmp.path(), Layout::kRelease));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos) << e.what();
  }
  // --force replaces an earlier random model and keeps unrelated files; switching to the release
  // layout drops the NVFP4 run's hf_quant_config.json.
  RandomModelOptions o = small_options(tmp.path(), Layout::kNvfp4);
  o.force = true;
  write_random_model(o);
  EXPECT_TRUE(fs::exists(tmp.path() / "hf_quant_config.json"));
  o.layout = Layout::kRelease;
  write_random_model(o);
  EXPECT_FALSE(fs::exists(tmp.path() / "hf_quant_config.json"));
  EXPECT_TRUE(fs::exists(tmp.path() / "notes.txt"));
  EXPECT_NO_THROW(dsv4::Model::load(tmp.path()));
}

fs::path random_model_binary() { return test::clawmine_binary().parent_path() / "clawmine-random-model"; }

TEST(RandomModelCli, WritesAModelThatClawmineLogitsRuns) {
  test::TempDir tmp;
  const fs::path dir = tmp.path() / "m";
  const test::CommandResult w = test::run_command(random_model_binary().string() + " --geometry small --layout nvfp4" +
                                                  " --threads 2 --seed 3 --out " + dir.string());
  ASSERT_EQ(w.exit_code, 0) << w.err;
  EXPECT_NE(w.out.find("bytes"), std::string::npos) << w.out;

  const fs::path npy = tmp.path() / "l.npy";
  const test::CommandResult r = test::run_command(test::clawmine_binary().string() + " logits --threads 2 --model " +
                                                  dir.string() + " --ids 5,17,300,999,42,7,7,8 --out " + npy.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const io::NpyArray a = io::read_npy(npy);
  ASSERT_EQ(a.shape, (Shape{8, 1024}));
  for (float v : a.floats) ASSERT_TRUE(std::isfinite(v));

  const test::CommandResult again = test::run_command(random_model_binary().string() +
                                                      " --geometry small --layout nvfp4 --out " + dir.string());
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("--force"), std::string::npos) << again.err;

  const test::CommandResult dry = test::run_command(random_model_binary().string() + " --dry-run --layout release");
  ASSERT_EQ(dry.exit_code, 0) << dry.err;
  EXPECT_NE(dry.out.find("geometry flash, layout release: 43 layers"), std::string::npos) << dry.out;
}

}  // namespace
}  // namespace clawmine
