// A model directory's tokenizer: tokenizer.json (normalizer, pre-tokenizer, byte-level BPE,
// added tokens) plus tokenizer_config.json (BOS/EOS and whether encode adds BOS). Encoding
// treats invalid UTF-8 input like Python's bytes.decode(errors="replace") before tokenizing;
// decoding is lossless for valid text and replaces broken sequences with U+FFFD.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/pre_tokenizer.h"

namespace clawmine::tokenizer {

class Tokenizer {
 public:
  // Reads DIR/tokenizer.json and, if present, DIR/tokenizer_config.json.
  static Tokenizer load(const std::filesystem::path& dir);
  // From already-read file contents; the names are used in error messages only.
  static Tokenizer from_strings(std::string_view tokenizer_json, const std::string& tokenizer_file,
                                std::string_view config_json = {}, const std::string& config_file = {});

  // Token ids of `text`; with add_special_tokens, prepends BOS when the config says so.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // UTF-8 text of `ids`; throws clawmine::Error naming an out-of-range id.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Raw bytes a token stands for (may be an incomplete UTF-8 sequence).
  const std::string& token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;
  // Id of an added token's content, else of a vocabulary string (byte-level form).
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }

  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  bool add_bos() const { return add_bos_; }
  const AddedVocabulary& added_vocabulary() const { return added_; }

 private:
  void check_id(int32_t id) const;

  BpeModel bpe_;
  PreTokenizer pre_;
  AddedVocabulary added_;
  std::vector<std::string> token_bytes_;  // by id
  std::vector<uint8_t> special_;          // by id
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
  bool add_bos_ = false;
};

}  // namespace clawmine::tokenizer
