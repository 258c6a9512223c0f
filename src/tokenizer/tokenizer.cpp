// Loading validates every field it uses and names the file and field on failure. Decoding a
// token follows HF's ByteLevel decoder: if every character of its string is a byte-level symbol
// the bytes are mapped back, else the string's own UTF-8 bytes are used (DeepSeek's vocabulary
// holds <｜begin▁of▁sentence｜> etc. at ids 0-2 in that raw form).
#include "tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

namespace clawmine::tokenizer {
namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(path.string(), ": cannot open file"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json parse_json(std::string_view text, const std::string& file) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat(file, ": invalid JSON: ", e.what()));
  }
}

void check_normalizer(const nlohmann::json& n, const std::string& file) {
  if (n.is_null()) return;
  if (n.is_object() && n.value("type", "") == "Sequence" && n.value("normalizers", nlohmann::json::array()).empty()) {
    return;
  }
  throw Error(str_cat(file, ": field normalizer: only null or an empty Sequence is supported"));
}

// A special token entry of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> config_token(const nlohmann::json& config, const char* key, const std::string& file) {
  if (!config.contains(key) || config[key].is_null()) return std::nullopt;
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  throw Error(str_cat(file, ": field ", key, " must be a string or an object with a string \"content\""));
}

}  // namespace

Tokenizer Tokenizer::load(const std::filesystem::path& dir) {
  const auto tok_path = dir / "tokenizer.json";
  const auto cfg_path = dir / "tokenizer_config.json";
  const std::string tok = read_file(tok_path);
  const std::string cfg = std::filesystem::exists(cfg_path) ? read_file(cfg_path) : std::string();
  return from_strings(tok, tok_path.string(), cfg, cfg_path.string());
}

Tokenizer Tokenizer::from_strings(std::string_view tokenizer_json, const std::string& tokenizer_file,
                                  std::string_view config_json, const std::string& config_file) {
  const nlohmann::json j = parse_json(tokenizer_json, tokenizer_file);
  if (!j.is_object()) throw Error(str_cat(tokenizer_file, ": top level must be an object"));
  if (!j.contains("model")) throw Error(str_cat(tokenizer_file, ": field model is missing"));
  Tokenizer t;
  check_normalizer(j.value("normalizer", nlohmann::json()), tokenizer_file);
  t.pre_ = PreTokenizer::from_json(j.value("pre_tokenizer", nlohmann::json()), tokenizer_file);
  if (!t.pre_.byte_level()) {
    throw Error(str_cat(tokenizer_file, ": field pre_tokenizer: a ByteLevel step is required (byte-level BPE)"));
  }
  const auto& decoder = j.value("decoder", nlohmann::json());
  if (!decoder.is_null() && decoder.value("type", "") != "ByteLevel") {
    throw Error(str_cat(tokenizer_file, ": field decoder.type: only \"ByteLevel\" is supported"));
  }
  t.bpe_ = BpeModel::from_json(j["model"], tokenizer_file);
  t.added_ = AddedVocabulary::from_json(j.value("added_tokens", nlohmann::json()), tokenizer_file);

  int32_t max_id = t.bpe_.max_id();
  for (const auto& a : t.added_.tokens()) max_id = std::max(max_id, a.id);
  t.token_bytes_.assign(max_id + 1, std::string());
  t.special_.assign(max_id + 1, 0);
  for (int32_t id = 0; id <= t.bpe_.max_id(); ++id) {
    const std::string& symbols = t.bpe_.id_to_token(id);
    if (symbols.empty()) continue;
    t.token_bytes_[id] = byte_level_decode(symbols).value_or(symbols);
  }
  for (const auto& a : t.added_.tokens()) {
    t.token_bytes_[a.id] = byte_level_decode(a.content).value_or(a.content);
    t.special_[a.id] = a.special;
  }

  if (!config_json.empty()) {
    const nlohmann::json c = parse_json(config_json, config_file);
    if (!c.is_object()) throw Error(str_cat(config_file, ": top level must be an object"));
    t.add_bos_ = c.value("add_bos_token", false);
    const auto resolve = [&](const char* key) -> std::optional<int32_t> {
      const auto content = config_token(c, key, config_file);
      if (!content) return std::nullopt;
      const auto id = t.token_to_id(*content);
      if (!id) throw Error(str_cat(config_file, ": field ", key, ": token \"", *content, "\" is not in the vocabulary"));
      return id;
    };
    t.bos_id_ = resolve("bos_token");
    t.eos_id_ = resolve("eos_token");
    if (t.add_bos_ && !t.bos_id_) throw Error(str_cat(config_file, ": field add_bos_token is true but bos_token is missing"));
  }
  return t;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const auto& a : added_.tokens()) {
    if (a.content == token) return a.id;
  }
  return bpe_.token_to_id(token);
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw Error(str_cat("token id ", id, " is out of range [0, ", vocab_size(), ")"));
  }
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  check_id(id);
  return token_bytes_[id];
}

bool Tokenizer::is_special(int32_t id) const {
  check_id(id);
  return special_[id] != 0;
}

std::vector<int32_t> Tokenizer::encode(std::string_view raw, bool add_special_tokens) const {
  const std::string text = utf8_sanitize(raw);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens && add_bos_) ids.push_back(*bos_id_);
  std::vector<Segment> segments;
  added_.split(text, segments);
  std::vector<std::string_view> words;
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
      continue;
    }
    words.clear();
    pre_.split(std::string_view(text).substr(s.begin, s.end - s.begin), words);
    for (std::string_view w : words) bpe_.encode_word(w, ids);
  }
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    check_id(id);
    if (skip_special_tokens && special_[id]) continue;
    bytes += token_bytes_[id];
  }
  return utf8_sanitize(bytes);
}

}  // namespace clawmine::tokenizer
