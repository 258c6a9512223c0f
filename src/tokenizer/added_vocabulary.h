// Added tokens of a tokenizer.json (special and non-special), matched in the input before the
// pre-tokenizer, as HF tokenizers' AddedVocabulary does: leftmost-longest matching, first over
// tokens with normalized = false, then over the remaining text with normalized = true tokens;
// lstrip / rstrip swallow adjacent whitespace into the match, single_word requires word edges.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace clawmine::tokenizer {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool single_word = false;
};

// A run of the input: either an added token (id >= 0) or plain text (id == -1).
struct Segment {
  size_t begin = 0;
  size_t end = 0;
  int32_t id = -1;
};

class AddedVocabulary {
 public:
  // `tokens` is tokenizer.json's "added_tokens" array.
  static AddedVocabulary from_json(const nlohmann::json& tokens, const std::string& file);

  // Splits `text` into segments covering it in order (empty text segments are omitted).
  void split(std::string_view text, std::vector<Segment>& out) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // Byte trie over token contents; one per normalized flag.
  struct Trie {
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;
      int32_t token = -1;  // index into tokens_
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
    void insert(std::string_view s, int32_t token);
    // Longest token starting at text[pos]: index into tokens_ and its length, or -1.
    int32_t longest(std::string_view text, size_t pos, size_t& length) const;
  };
  void split_with(const Trie& trie, std::string_view text, size_t begin, size_t end,
                  std::vector<Segment>& out) const;

  std::vector<AddedToken> tokens_;
  Trie raw_;         // normalized == false
  Trie normalized_;  // normalized == true
};

}  // namespace clawmine::tokenizer
