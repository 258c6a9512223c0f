// Shared test helpers: fixture paths, temporary directories, random inputs that are never all
// zero, poisoning of outputs before an op writes them, and error comparisons.
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace clawmine::test {

std::filesystem::path source_dir();                 // repository root
std::filesystem::path fixture_dir(const std::string& rel);  // tests/fixtures/<rel>
std::filesystem::path clawmine_binary();            // the built `clawmine`

// A fresh, empty directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Normal(0, stddev) values; a fixed seed per call site keeps failures reproducible.
std::vector<float> random_normal(size_t n, uint32_t seed, float stddev = 1.0f);
// Fills with NaN so a value the op forgot to write fails every comparison.
void poison(std::vector<float>& v);

// max |a - b| / max |b| (NaN anywhere in a or b gives +inf, so NaN never passes).
double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b);

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs a shell command line; captures stdout and stderr separately.
CommandResult run_command(const std::string& command_line);

}  // namespace clawmine::test
