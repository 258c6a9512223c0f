#include "cli/model_options.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace clawmine::cli {

void ModelOptions::add_to(CLI::App& cmd) {
  cmd.add_option("--model", model_dir, "Checkpoint directory (config.json + safetensors)")->required();
  cmd.add_option("--backend", backend, "Compute backend")->check(CLI::IsMember({"cpu"}))->capture_default_str();
  cmd.add_option("--threads", threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd.add_option("--official-qdq", official_qdq,
                 "Quantize-dequantize round trips of DeepSeek's inference code on the KV cache and indexer")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
}

model::deepseek_v4::ForwardOptions ModelOptions::forward_options() const {
  model::deepseek_v4::ForwardOptions o;
  o.official_qdq = official_qdq == "on";
  return o;
}

std::unique_ptr<ops::Backend> ModelOptions::make_backend() const { return ops::make_cpu_backend(threads); }

std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \t\n"), e = item.find_last_not_of(" \t\n");
    if (b == std::string::npos) throw Error(str_cat(flag, ": empty item in the id list"));
    item = item.substr(b, e - b + 1);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 0 || v > INT32_MAX)
      throw Error(str_cat(flag, ": '", item, "' is not a token id (a non-negative integer)"));
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw Error(str_cat(flag, ": no token ids given"));
  return ids;
}

std::vector<int32_t> read_id_file(const std::string& path, const std::string& flag) {
  std::ifstream f(path);
  if (!f) throw Error(str_cat(flag, ": cannot read '", path, "'"));
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  for (char& ch : text)
    if (ch == '[' || ch == ']' || ch == '\n' || ch == '\r' || ch == '\t' || ch == ' ') ch = ',';
  std::string compact;
  for (size_t i = 0; i < text.size(); ++i)
    if (text[i] != ',' || (!compact.empty() && compact.back() != ',')) compact += text[i];
  while (!compact.empty() && compact.back() == ',') compact.pop_back();
  return parse_id_list(compact, str_cat(flag, " (", path, ")"));
}

void check_ids(const std::vector<int32_t>& ids, int64_t vocab, const std::string& flag) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= vocab)
      throw Error(str_cat(flag, ": token id ", ids[i], " at position ", i, " is outside the vocabulary [0, ", vocab, ")"));
}

}  // namespace clawmine::cli
