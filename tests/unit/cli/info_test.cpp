// `clawmine info`: the same model in release and transformers naming prints the same summary
// except the naming line (text and JSON); quantized formats are named; a bad --model path or a
// broken checkpoint is a one-line error with a non-zero exit.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "support/test_support.h"
#include "support/tiny_checkpoint.h"

namespace clawmine::test {
namespace {

CommandResult info(const std::filesystem::path& dir, const std::string& extra = "") {
  return run_command(str_cat(clawmine_binary().string(), " info --model '", dir.string(), "'", extra));
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }
std::string after_first_line(const std::string& s) { return s.substr(s.find('\n') + 1); }

// Text summaries of two checkpoints; expects success and identical output past the naming line.
void expect_same_summary(const std::filesystem::path& a, const std::filesystem::path& b, const std::string& naming_a,
                         const std::string& naming_b) {
  const CommandResult ra = info(a), rb = info(b);
  ASSERT_EQ(ra.exit_code, 0) << ra.err;
  ASSERT_EQ(rb.exit_code, 0) << rb.err;
  EXPECT_EQ(first_line(ra.out), "naming: " + naming_a);
  EXPECT_EQ(first_line(rb.out), "naming: " + naming_b);
  EXPECT_EQ(after_first_line(ra.out), after_first_line(rb.out));
  EXPECT_GT(std::count(ra.out.begin(), ra.out.end(), '\n'), 10) << ra.out;
}

struct TinyPair {
  TempDir release, transformers;
};

std::unique_ptr<TinyPair> write_pair(TinyQuant quant) {
  auto p = std::make_unique<TinyPair>();
  const auto cfg = tiny_model_config();
  write_tiny_checkpoint(p->release.path(), cfg, {.naming = TinyNaming::kRelease, .quant = quant});
  write_tiny_checkpoint(p->transformers.path(), cfg, {.naming = TinyNaming::kTransformers, .quant = quant});
  return p;
}

TEST(InfoCommand, DenseReleaseAndTransformersNamingPrintTheSameSummary) {
  auto p = write_pair(TinyQuant::kDense);
  expect_same_summary(p->release.path(), p->transformers.path(), "release", "transformers");
  const std::string out = info(p->release.path()).out;
  EXPECT_NE(out.find("layers: 0:sliding/hash 1:csa(4)/hash 2:hca(8)/routed 3:csa(4)/routed\n"), std::string::npos)
      << out;
  EXPECT_NE(out.find("mtp: present"), std::string::npos) << out;
  EXPECT_NE(out.find("quantization: dense BF16\n"), std::string::npos) << out;
  EXPECT_NE(out.find("model: vocab 64, hidden 32, layers 4\n"), std::string::npos) << out;
}

TEST(InfoCommand, QuantizedFormatsAreNamedPerFamily) {
  auto p = write_pair(TinyQuant::kFp8Mxfp4);
  expect_same_summary(p->release.path(), p->transformers.path(), "release", "transformers");
  const std::string out = info(p->release.path()).out;
  EXPECT_NE(out.find("  attention: fp8-block F8_E4M3 + F8_E8M0 scales x25\n"), std::string::npos) << out;
  EXPECT_NE(out.find("  routed experts: mxfp4 I8 + F8_E8M0 scales x"), std::string::npos) << out;
  EXPECT_NE(out.find("  compressor: dense BF16 x"), std::string::npos) << out;
}

TEST(InfoCommand, JsonIsTheSameExceptNaming) {
  auto p = write_pair(TinyQuant::kFp8Nvfp4);
  const CommandResult ra = info(p->release.path(), " --json"), rb = info(p->transformers.path(), " --json");
  ASSERT_EQ(ra.exit_code, 0) << ra.err;
  ASSERT_EQ(rb.exit_code, 0) << rb.err;
  nlohmann::json a = nlohmann::json::parse(ra.out), b = nlohmann::json::parse(rb.out);
  EXPECT_EQ(a["naming"], "release");
  EXPECT_EQ(b["naming"], "transformers");
  a.erase("naming");
  b.erase("naming");
  EXPECT_EQ(a, b);
  EXPECT_EQ(a["config"]["n_routed_experts"], 4);
  EXPECT_GT(a["parameters"]["total"].get<int64_t>(), a["parameters"]["mtp"].get<int64_t>());
  EXPECT_TRUE(a["quantization"]["routed experts"].contains(
      "nvfp4 U8 + F8_E4M3 scales + F32 global scale + input scale"))
      << a["quantization"].dump();
}

TEST(InfoCommand, FixtureReleaseAndTransformersSavedPrintTheSameSummary) {
  const auto rel = fixture_dir("models/tiny-a"), hf = fixture_dir("models/tiny-a-hf");
  if (!std::filesystem::exists(hf / "model.safetensors")) GTEST_SKIP() << "no fixture " << hf;
  expect_same_summary(rel, hf, "release", "transformers-saved");
}

TEST(InfoCommand, BadModelPathIsAOneLineError) {
  const CommandResult r = info("/nonexistent/clawmine-model");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/clawmine-model"), std::string::npos) << r.err;
}

TEST(InfoCommand, BrokenCheckpointFailsNamingTheTensor) {
  TempDir dir;
  const auto cfg = tiny_model_config();
  auto tensors = tiny_tensors(cfg, {});
  tensors.erase(std::find_if(tensors.begin(), tensors.end(),
                             [](const TinyTensor& t) { return t.name == "layers.2.attn.compressor.wgate.weight"; }));
  write_tiny_tensors(dir.path() / "model.safetensors", tensors);
  {
    std::ofstream f(dir.path() / "config.json");
    f << tiny_config_json(cfg);
  }
  const CommandResult r = info(dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find("layers.2.attn.compressor.wgate.weight"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace clawmine::test
