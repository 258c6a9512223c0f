// `clawmine bench` on the CPU backend with tiny-a: every section runs (prefill at each length,
// batch-1 decode, round-robin batches, the op profile), the JSON holds consistent figures, the
// ceilings are skipped on the CPU, and bad sizes (and --kernel-trace or --prefill-trace without
// CUDA or a writable path) are one-line errors naming the flag.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "support/test_support.h"

namespace clawmine::test {
namespace {

CommandResult clawmine(const std::string& args) {
  return run_command(str_cat(clawmine_binary().string(), " ", args));
}
std::string tiny_a() { return fixture_dir("models/tiny-a").string(); }

TEST(BenchCommand, RunsEverySectionOnTheCpu) {
  TempDir tmp;
  const std::string json = (tmp.path() / "bench.json").string();
  const CommandResult r = clawmine("bench --model '" + tiny_a() + "' --threads 1 --prompt-lengths 24,40 " +
                                   "--decode-tokens 5 --sampled-tokens 3 --batch-sizes 1,3 --batch-prompt 8 --profile --profile-steps 2 " +
                                   "--json '" + json + "'");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("== clawmine bench"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("round-robin"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("b=3 batched forward"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-- profile: decode"), std::string::npos) << r.out;

  std::ifstream f(json);
  ASSERT_TRUE(f) << json;
  const nlohmann::json j = nlohmann::json::parse(f);
  EXPECT_EQ(j["backend"], "cpu");
  EXPECT_EQ(j["copy_gbps"], 0.0);  // no ceilings on the CPU
  const double weights = j["weight_bytes"], routed = j["routed_expert_bytes"], per_token = j["bytes_per_decode_token"];
  EXPECT_GT(routed, 0);
  EXPECT_LT(routed, weights);
  // tiny-a: a token reads 3 of the 8 routed experts, one row of the embedding (BF16 [512, 64])
  // and one row of each hash layer's tid2eid (layers 0 and 1, I64 [512, 3]); everything else whole.
  const double skipped = routed * 5.0 / 8.0 + (512 * 64 * 2 + 2 * 512 * 3 * 8) * (511.0 / 512.0);
  EXPECT_NEAR(per_token, weights - skipped, 1.0);
  EXPECT_GT(j["matmul_flops_per_token"].get<double>(), 0);

  EXPECT_EQ(j["decode"]["context"], 24);
  EXPECT_EQ(j["decode"]["step_ms"].size(), 5u);
  EXPECT_GT(j["decode"]["median_ms"].get<double>(), 0);
  // Then the same sequence's sampled steps (--sampled-tokens 3), drawn on the host.
  EXPECT_NE(r.out.find("decode b=1 sampled, ctx 29"), std::string::npos) << r.out;
  EXPECT_EQ(j["decode_sampled"]["context"], 29);
  EXPECT_EQ(j["decode_sampled"]["step_ms"].size(), 3u);
  EXPECT_GT(j["decode_sampled"]["draw_median_us"].get<double>(), 0);
  EXPECT_NEAR(j["decode_sampled"]["top_p"].get<double>(), 0.95, 1e-6);
  ASSERT_EQ(j["prefill"].size(), 2u);
  EXPECT_EQ(j["prefill"][1]["tokens"], 40);
  EXPECT_GT(j["prefill"][1]["tokens_per_second"].get<double>(), 0);
  ASSERT_EQ(j["round_robin"].size(), 1u);
  EXPECT_EQ(j["round_robin"][0]["batch"], 3);
  EXPECT_EQ(j["round_robin"][0]["rounds"], 4);  // at least 4 timed rounds, after an untimed one
  ASSERT_EQ(j["batched"].size(), 1u);  // the same sequences, one forward_batch per step
  EXPECT_EQ(j["batched"][0]["batch"], 3);
  EXPECT_EQ(j["batched"][0]["steps"], 12);  // at least 12 timed steps, after an untimed one
  EXPECT_EQ(j["batched"][0]["step_ms"].size(), 12u);
  EXPECT_GT(j["batched"][0]["tokens_per_second"].get<double>(), 0);
  EXPECT_GT(j["batched"][0]["first_step_ms"].get<double>(), 0);
  ASSERT_EQ(j["profile"].size(), 3u);  // prefill, decode, the largest batch's batched steps
  EXPECT_GT(j["profile"][1]["rows"].size(), 5u);
  EXPECT_NE(j["profile"][2]["title"].get<std::string>().find("batched decode of 3 sequences"), std::string::npos);
  EXPECT_GT(j["profile"][2]["rows"].size(), 5u);
  // One linear call per layer and step for wq_b (4 layers).
  bool wq_b = false;
  for (const auto& row : j["profile"][1]["rows"])
    if (row["op"] == "linear" && row["module"] == "attn.wq_b") {
      wq_b = true;
      EXPECT_EQ(row["calls"], 4.0);
    }
  EXPECT_TRUE(wq_b);
}

TEST(BenchCommand, BadSizesNameTheFlag) {
  const std::string m = "bench --model '" + tiny_a() + "' ";
  for (const auto& [args, flag] : {std::pair<std::string, std::string>{"--prompt-lengths 0", "--prompt-lengths"},
                                   {"--prompt-lengths 16,x", "--prompt-lengths"},
                                   {"--batch-sizes ,", "--batch-sizes"}}) {
    const CommandResult r = clawmine(m + args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE(r.err.find(flag), std::string::npos) << args << ": " << r.err;
  }
}

// --kernel-trace and --prefill-trace record GPU kernels: with the CPU backend each is an error
// naming the flag, and a path that cannot be written fails before the model loads; neither touches
// an existing file.
TEST(BenchCommand, KernelTracesNeedCudaAndAWritablePathAndKeepAnExistingFile) {
  for (const std::string flag : {"--kernel-trace", "--prefill-trace"}) {
    SCOPED_TRACE(flag);
    TempDir tmp;
    const std::string keep = (tmp.path() / "keep.csv").string();
    {
      std::ofstream f(keep);
      f << "mine\n";
    }
    const std::string m = "bench --model '" + tiny_a() + "' --threads 1 --prompt-lengths 8 --decode-tokens 1 ";
    CommandResult r = clawmine(m + flag + " '" + keep + "'");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(flag), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("--backend cuda"), std::string::npos) << r.err;
    std::ifstream f(keep);
    std::string line;
    std::getline(f, line);
    EXPECT_EQ(line, "mine") << "a failed run truncated the file";
    const std::string nowhere = (tmp.path() / "no_such_dir" / "t.csv").string();
    r = clawmine(m + flag + " '" + nowhere + "'");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(flag + ": cannot write"), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find("model "), std::string::npos) << "the model loaded before the path was checked";
    EXPECT_FALSE(std::filesystem::exists(tmp.path() / "t.csv"));
  }
}

}  // namespace
}  // namespace clawmine::test
