#include "support/test_support.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

namespace clawmine::test {

std::filesystem::path source_dir() { return CLAWMINE_SOURCE_DIR; }
std::filesystem::path fixture_dir(const std::string& rel) { return source_dir() / "tests" / "fixtures" / rel; }
std::filesystem::path clawmine_binary() { return CLAWMINE_BINARY; }

TempDir::TempDir() {
  std::string templ = (std::filesystem::temp_directory_path() / "clawmine-test-XXXXXX").string();
  if (mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::vector<float> random_normal(size_t n, uint32_t seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void poison(std::vector<float>& v) {
  for (float& x : v) x = std::numeric_limits<float>::quiet_NaN();
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return std::numeric_limits<double>::infinity();
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[i])));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

CommandResult run_command(const std::string& command_line) {
  TempDir tmp;
  const auto out_path = tmp.path() / "out", err_path = tmp.path() / "err";
  const std::string full = command_line + " >" + out_path.string() + " 2>" + err_path.string();
  CommandResult r;
  const int status = std::system(full.c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto slurp = [](const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  return r;
}

}  // namespace clawmine::test
