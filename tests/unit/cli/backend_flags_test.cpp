// The backend flags every model-running command shares (--backend, --act-dtype,
// --gpu-memory-fraction, --cuda-graphs): on a machine without a usable GPU, --backend cuda is a
// one-line error naming the flag and a non-zero exit (before any model is read or any port is
// opened); --act-dtype bf16 on the CPU and a fraction outside (0, 1] are errors naming their
// flag; f32 on the CPU with the GPU flags present runs as before.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "core/error.h"
#include "support/test_support.h"

#ifdef CLAWMINE_HAVE_CUDA
#include "backend/cuda/device.h"
#endif

namespace clawmine::test {
namespace {

bool gpu_present() {
#ifdef CLAWMINE_HAVE_CUDA
  return backend::cuda::device_count() > 0;
#else
  return false;
#endif
}

std::string tiny_a() { return fixture_dir("models/tiny-a").string(); }

CommandResult clawmine(const std::string& args) {
  return run_command(str_cat(clawmine_binary().string(), " ", args));
}

void expect_error(const CommandResult& r, const std::string& needle) {
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected one line: " << r.err;  // no log noise, no trace
}

TEST(BackendFlags, CudaWithoutAGpuIsAClearErrorInEveryCommand) {
  if (gpu_present()) GTEST_SKIP() << "a CUDA device is present";
  TempDir tmp;
  const std::string m = " --model '" + tiny_a() + "' --backend cuda";
  const std::string out = " --out '" + (tmp.path() / "l.npy").string() + "'";
  expect_error(clawmine("logits" + m + " --ids 1,2,3" + out), "--backend cuda");
  expect_error(clawmine("generate" + m + " --ids 1,2,3 --max-tokens 2"), "--backend cuda");
  expect_error(clawmine("info" + m), "--backend cuda");
  expect_error(clawmine("perplexity" + m + " --text '" + tiny_a() + "/config.json'"), "--backend cuda");
  expect_error(clawmine("doctor" + m), "--backend cuda");
  // serve fails before it listens (its model loads in the background otherwise).
  expect_error(clawmine("serve" + m + " --port 0"), "--backend cuda");
  EXPECT_FALSE(std::filesystem::exists(tmp.path() / "l.npy"));
}

TEST(BackendFlags, Bf16ActivationsOnTheCpuNameTheFlag) {
  const std::string m = " --model '" + tiny_a() + "'";
  expect_error(clawmine("logits" + m + " --ids 1,2 --out /nonexistent/x.npy --act-dtype bf16"), "--act-dtype bf16");
  expect_error(clawmine("generate" + m + " --ids 1,2 --backend cpu --act-dtype bf16"), "--act-dtype bf16");
  expect_error(clawmine("info" + m + " --act-dtype bf16"), "--act-dtype bf16");
  const CommandResult bad = clawmine("logits" + m + " --ids 1 --out x.npy --act-dtype f16");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--act-dtype"), std::string::npos) << bad.err;
}

TEST(BackendFlags, MemoryFractionOutsideTheUnitIntervalIsAnError) {
  const std::string m = " --model '" + tiny_a() + "' --ids 1,2 --max-tokens 1";
  expect_error(clawmine("generate" + m + " --gpu-memory-fraction 0"), "--gpu-memory-fraction");
  expect_error(clawmine("generate" + m + " --gpu-memory-fraction 1.5"), "--gpu-memory-fraction");
  const CommandResult unknown = clawmine("generate" + m + " --backend tpu");
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.err.find("--backend"), std::string::npos) << unknown.err;
  const CommandResult graphs = clawmine("generate" + m + " --cuda-graphs maybe");
  EXPECT_NE(graphs.exit_code, 0);
  EXPECT_NE(graphs.err.find("--cuda-graphs"), std::string::npos) << graphs.err;
}

TEST(BackendFlags, CpuWithF32AndGpuFlagsRunsAsBefore) {
  TempDir tmp;
  const CommandResult r =
      clawmine("generate --model '" + tiny_a() +
               "' --ids 1,2,3 --max-tokens 2 --temperature 0 --json --backend cpu --act-dtype f32 "
               "--gpu-memory-fraction 0.5 --cuda-graphs off");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"tokens\""), std::string::npos) << r.out;
}

}  // namespace
}  // namespace clawmine::test
