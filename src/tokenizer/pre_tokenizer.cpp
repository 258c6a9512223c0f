// Split semantics follow HF tokenizers' Split with SplitDelimiterBehavior::Isolated: every match
// becomes its own piece and the text between matches becomes pieces too; empty pieces vanish.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pre_tokenizer.h"

#include <pcre2.h>

#include "core/error.h"

namespace clawmine::tokenizer {

// GPT-2's split pattern, used when a ByteLevel step has use_regex = true.
constexpr std::string_view kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class SplitRegex {
 public:
  SplitRegex(std::string_view pattern, bool literal, const std::string& where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                          &error, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      throw Error(str_cat(where, ": cannot compile regex at offset ", offset, ": ",
                          reinterpret_cast<const char*>(message)));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  }
  ~SplitRegex() { pcre2_code_free(code_); }
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // Isolated split of `piece` into `out`.
  void split(std::string_view piece, pcre2_match_data* md, std::vector<std::string_view>& out) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t last = 0, offset = 0;
    while (offset <= piece.size()) {
      const int rc = pcre2_match(code_, subject, piece.size(), offset, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t begin = ov[0], end = ov[1];
      if (end == begin) {  // empty match: step over one character
        offset = begin + 1;
        while (offset < piece.size() && (static_cast<uint8_t>(piece[offset]) & 0xC0) == 0x80) ++offset;
        continue;
      }
      if (begin > last) out.push_back(piece.substr(last, begin - last));
      out.push_back(piece.substr(begin, end - begin));
      last = offset = end;
    }
    if (last < piece.size()) out.push_back(piece.substr(last));
  }

  pcre2_code* code() const { return code_; }

 private:
  pcre2_code* code_ = nullptr;
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

PreTokenizer PreTokenizer::from_json(const nlohmann::json& spec, const std::string& file) {
  PreTokenizer pre;
  if (spec.is_null()) return pre;
  if (!spec.is_object() || !spec.contains("type") || !spec["type"].is_string()) {
    throw Error(str_cat(file, ": field pre_tokenizer must be an object with a string \"type\""));
  }
  if (spec["type"] == "Sequence") {
    const auto& steps = spec.value("pretokenizers", nlohmann::json());
    if (!steps.is_array()) throw Error(str_cat(file, ": field pre_tokenizer.pretokenizers must be an array"));
    for (size_t i = 0; i < steps.size(); ++i) {
      pre.add_step(steps[i], file, str_cat("pre_tokenizer.pretokenizers[", i, "]"));
    }
  } else {
    pre.add_step(spec, file, "pre_tokenizer");
  }
  return pre;
}

void PreTokenizer::add_step(const nlohmann::json& step, const std::string& file, const std::string& field) {
  const std::string where = str_cat(file, ": field ", field);
  if (!step.is_object() || !step.contains("type") || !step["type"].is_string()) {
    throw Error(str_cat(where, " must be an object with a string \"type\""));
  }
  const std::string type = step["type"];
  if (type == "Split") {
    if (step.value("behavior", "") != "Isolated") {
      throw Error(str_cat(where, ".behavior: only \"Isolated\" is supported"));
    }
    if (step.value("invert", false)) throw Error(str_cat(where, ".invert: true is not supported"));
    const auto& pattern = step.value("pattern", nlohmann::json());
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      steps_.push_back(std::make_unique<SplitRegex>(pattern["Regex"].get<std::string>(), false, where + ".pattern.Regex"));
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      steps_.push_back(std::make_unique<SplitRegex>(pattern["String"].get<std::string>(), true, where + ".pattern.String"));
    } else {
      throw Error(str_cat(where, ".pattern must hold a string \"Regex\" or \"String\""));
    }
  } else if (type == "ByteLevel") {
    if (step.value("add_prefix_space", false)) {
      throw Error(str_cat(where, ".add_prefix_space: true is not supported"));
    }
    if (step.value("use_regex", true)) {
      steps_.push_back(std::make_unique<SplitRegex>(kByteLevelPattern, false, where));
    }
    byte_level_ = true;
  } else {
    throw Error(str_cat(where, ".type: pre-tokenizer \"", type, "\" is not supported"));
  }
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  if (text.empty()) return;
  const size_t first = out.size();
  out.push_back(text);
  std::vector<std::string_view> next;
  for (const auto& step : steps_) {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(step->code(), nullptr);
    next.clear();
    for (size_t i = first; i < out.size(); ++i) step->split(out[i], md, next);
    pcre2_match_data_free(md);
    out.resize(first);
    out.insert(out.end(), next.begin(), next.end());
  }
}

}  // namespace clawmine::tokenizer
