// Whitespace for lstrip/rstrip is Unicode White_Space and word characters for single_word are
// ASCII alphanumerics, '_' and any non-ASCII letter-like byte sequence (an approximation of
// Rust's char::is_alphanumeric that suffices for DeepSeek, whose added tokens use neither flag).
#include "tokenizer/added_vocabulary.h"

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace clawmine::tokenizer {
namespace {

bool is_white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

bool is_word_char(uint32_t cp) {
  return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
         cp == '_' || (cp >= 0x80 && !is_white_space(cp));
}

// Codepoint ending right before byte offset `pos` (pos > 0), and its start offset.
uint32_t codepoint_before(std::string_view s, size_t pos, size_t& start) {
  start = pos - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  size_t i = start;
  return utf8_next(s, i);
}

}  // namespace

void AddedVocabulary::Trie::insert(std::string_view s, int32_t token) {
  int32_t node = 0;
  for (char ch : s) {
    const auto c = static_cast<uint8_t>(ch);
    int32_t child = -1;
    for (const auto& [byte, index] : nodes[node].children) {
      if (byte == c) child = index;
    }
    if (child < 0) {
      child = static_cast<int32_t>(nodes.size());
      nodes[node].children.emplace_back(c, child);
      nodes.emplace_back();
    }
    node = child;
  }
  if (nodes[node].token < 0) nodes[node].token = token;
  first_byte[static_cast<uint8_t>(s[0])] = true;
}

int32_t AddedVocabulary::Trie::longest(std::string_view text, size_t pos, size_t& length) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto c = static_cast<uint8_t>(text[i]);
    int32_t child = -1;
    for (const auto& [byte, index] : nodes[node].children) {
      if (byte == c) {
        child = index;
        break;
      }
    }
    if (child < 0) break;
    node = child;
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      length = i + 1 - pos;
    }
  }
  return best;
}

AddedVocabulary AddedVocabulary::from_json(const nlohmann::json& tokens, const std::string& file) {
  AddedVocabulary vocab;
  if (tokens.is_null()) return vocab;
  if (!tokens.is_array()) throw Error(str_cat(file, ": field added_tokens must be an array"));
  for (size_t i = 0; i < tokens.size(); ++i) {
    const auto& t = tokens[i];
    const std::string field = str_cat(file, ": field added_tokens[", i, "]");
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || t["id"].get<int64_t>() < 0) {
      throw Error(str_cat(field, ".id must be a non-negative integer"));
    }
    if (!t.contains("content") || !t["content"].is_string() || t["content"].get_ref<const std::string&>().empty()) {
      throw Error(str_cat(field, ".content must be a non-empty string"));
    }
    AddedToken token;
    token.id = t["id"].get<int32_t>();
    token.content = t["content"];
    if (!utf8_is_valid(token.content)) throw Error(str_cat(field, ".content is not valid UTF-8"));
    token.special = t.value("special", false);
    token.lstrip = t.value("lstrip", false);
    token.rstrip = t.value("rstrip", false);
    token.normalized = t.value("normalized", !token.special);
    token.single_word = t.value("single_word", false);
    const auto index = static_cast<int32_t>(vocab.tokens_.size());
    (token.normalized ? vocab.normalized_ : vocab.raw_).insert(token.content, index);
    vocab.tokens_.push_back(std::move(token));
  }
  return vocab;
}

void AddedVocabulary::split(std::string_view text, std::vector<Segment>& out) const {
  std::vector<Segment> first;
  split_with(raw_, text, 0, text.size(), first);
  for (const Segment& s : first) {
    if (s.id >= 0) {
      out.push_back(s);
    } else {
      split_with(normalized_, text, s.begin, s.end, out);
    }
  }
}

void AddedVocabulary::split_with(const Trie& trie, std::string_view text, size_t begin, size_t end,
                                 std::vector<Segment>& out) const {
  const std::string_view view = text.substr(0, end);
  size_t last = begin;  // end of the previous emitted segment
  size_t pos = begin;
  while (pos < end) {
    if (!trie.first_byte[static_cast<uint8_t>(view[pos])]) {
      ++pos;
      continue;
    }
    size_t length = 0;
    const int32_t index = trie.longest(view, pos, length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[index];
    size_t match_begin = pos, match_end = pos + length;
    if (token.single_word) {
      size_t start = 0, i = match_end;
      const bool word_before = match_begin > begin && is_word_char(codepoint_before(view, match_begin, start));
      const bool word_after = match_end < end && is_word_char(utf8_next(view, i));
      if (word_before || word_after) {
        ++pos;
        continue;
      }
    }
    if (token.lstrip) {
      size_t start = 0;
      while (match_begin > last && is_white_space(codepoint_before(view, match_begin, start))) match_begin = start;
    }
    if (token.rstrip) {
      for (size_t i = match_end; i < end;) {
        if (!is_white_space(utf8_next(view, i))) break;
        match_end = i;
      }
    }
    if (match_begin > last) out.push_back(Segment{last, match_begin, -1});
    out.push_back(Segment{match_begin, match_end, token.id});
    last = pos = match_end;
  }
  if (last < end) out.push_back(Segment{last, end, -1});
}

}  // namespace clawmine::tokenizer
