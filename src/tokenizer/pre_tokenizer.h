// The pre-tokenizer of a tokenizer.json: a Sequence of Split steps (regex, behavior "Isolated")
// followed by ByteLevel, as DeepSeek uses. Each step splits every piece the previous step made,
// so a regex never sees across a piece boundary. Regexes run on PCRE2 in UTF + UCP mode with
// JIT; the byte-level mapping itself is folded into the BPE model, which works on raw bytes.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace clawmine::tokenizer {

class SplitRegex;

class PreTokenizer {
 public:
  // `spec` is tokenizer.json's "pre_tokenizer" value; `file` names the file in errors.
  static PreTokenizer from_json(const nlohmann::json& spec, const std::string& file);

  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Appends the pieces of `text` (valid UTF-8, views into it) to `out`, in order.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

  bool byte_level() const { return byte_level_; }

 private:
  void add_step(const nlohmann::json& step, const std::string& file, const std::string& field);

  std::vector<std::unique_ptr<SplitRegex>> steps_;
  bool byte_level_ = false;
};

}  // namespace clawmine::tokenizer
