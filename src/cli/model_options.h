// Flags that every model-running subcommand shares (--model, --backend, --threads,
// --official-qdq) and the token-id list parser, so each command declares them the same way.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

#include "model/deepseek_v4/model.h"
#include "ops/backend.h"

namespace clawmine::cli {

struct ModelOptions {
  std::string model_dir;
  std::string backend = "cpu";
  int threads = 0;
  std::string official_qdq = "on";

  void add_to(CLI::App& cmd);
  model::deepseek_v4::ForwardOptions forward_options() const;
  std::unique_ptr<ops::Backend> make_backend() const;
};

// "0,17,42" -> ids; errors name `flag` and the offending item.
std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag);
// A file of ids: a JSON array or whitespace/comma separated integers.
std::vector<int32_t> read_id_file(const std::string& path, const std::string& flag);
// Every id within [0, vocab) or an error naming the flag, the position and the vocabulary size.
void check_ids(const std::vector<int32_t>& ids, int64_t vocab, const std::string& flag);

}  // namespace clawmine::cli
