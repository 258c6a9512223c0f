// BPE merging keeps the word as a doubly linked list of symbols and a min-heap of candidate
// merges keyed by (rank, position); stale heap entries are skipped when popped. This is
// O(n log n) per word, so long runs (base64, repeated characters) stay fast.
#include "tokenizer/bpe_model.h"

#include <queue>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace clawmine::tokenizer {
namespace {

constexpr size_t kCacheMaxWordBytes = 64;
constexpr size_t kCacheMaxEntries = 1 << 18;

struct Symbol {
  int32_t id;
  int32_t prev;  // index of the previous live symbol, -1 at the start
  int32_t next;  // index of the next live symbol, -1 at the end
  bool alive;
};

struct Candidate {
  int32_t rank;
  int32_t pos;  // index of the left symbol
  int32_t new_id;
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

BpeModel::BpeModel(BpeModel&& o) noexcept
    : vocab_(std::move(o.vocab_)),
      id_to_token_(std::move(o.id_to_token_)),
      merges_(std::move(o.merges_)),
      byte_ids_(o.byte_ids_),
      ignore_merges_(o.ignore_merges_) {}

BpeModel& BpeModel::operator=(BpeModel&& o) noexcept {
  vocab_ = std::move(o.vocab_);
  id_to_token_ = std::move(o.id_to_token_);
  merges_ = std::move(o.merges_);
  byte_ids_ = o.byte_ids_;
  ignore_merges_ = o.ignore_merges_;
  cache_.clear();
  return *this;
}

BpeModel BpeModel::from_json(const nlohmann::json& model, const std::string& file) {
  if (!model.is_object()) throw Error(str_cat(file, ": field model must be an object"));
  if (model.value("type", "BPE") != "BPE") {
    throw Error(str_cat(file, ": field model.type: only \"BPE\" is supported"));
  }
  for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix", "unk_token"}) {
    if (model.contains(key) && !model[key].is_null()) {
      throw Error(str_cat(file, ": field model.", key, " must be null (not supported)"));
    }
  }
  if (model.value("byte_fallback", false)) {
    throw Error(str_cat(file, ": field model.byte_fallback: true is not supported"));
  }
  BpeModel bpe;
  bpe.ignore_merges_ = model.value("ignore_merges", false);

  const auto& vocab = model.value("vocab", nlohmann::json());
  if (!vocab.is_object() || vocab.empty()) throw Error(str_cat(file, ": field model.vocab must be a non-empty object"));
  bpe.vocab_.reserve(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 || id_json.get<int64_t>() > (1 << 30)) {
      throw Error(str_cat(file, ": field model.vocab[\"", token, "\"] must be a non-negative integer id"));
    }
    const auto id = id_json.get<int32_t>();
    bpe.vocab_.emplace(token, id);
    if (static_cast<size_t>(id) >= bpe.id_to_token_.size()) bpe.id_to_token_.resize(id + 1);
    bpe.id_to_token_[id] = token;
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = bpe.vocab_.find(byte_symbol(static_cast<uint8_t>(b)));
    if (it == bpe.vocab_.end()) {
      throw Error(str_cat(file, ": field model.vocab lacks the byte-level symbol for byte ", b));
    }
    bpe.byte_ids_[b] = it->second;
  }

  const auto& merges = model.value("merges", nlohmann::json());
  if (!merges.is_array()) throw Error(str_cat(file, ": field model.merges must be an array"));
  bpe.merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {  // "left right"
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos) throw Error(str_cat(file, ": field model.merges[", rank, "] is not \"a b\""));
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0];
      right = m[1];
    } else {
      throw Error(str_cat(file, ": field model.merges[", rank, "] must be \"a b\" or [\"a\", \"b\"]"));
    }
    const auto l = bpe.vocab_.find(left), r = bpe.vocab_.find(right), lr = bpe.vocab_.find(left + right);
    if (l == bpe.vocab_.end() || r == bpe.vocab_.end() || lr == bpe.vocab_.end()) {
      throw Error(str_cat(file, ": field model.merges[", rank, "] (\"", left, "\" + \"", right,
                          "\") uses a token missing from model.vocab"));
    }
    bpe.merges_.emplace(pair_key(l->second, r->second), Merge{static_cast<int32_t>(rank), lr->second});
  }
  return bpe;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view symbols) const {
  const auto it = vocab_.find(std::string(symbols));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string& BpeModel::id_to_token(int32_t id) const {
  static const std::string kEmpty;
  return id >= 0 && static_cast<size_t>(id) < id_to_token_.size() ? id_to_token_[id] : kEmpty;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() == 1) {
    out.push_back(byte_ids_[static_cast<uint8_t>(word[0])]);
    return;
  }
  if (word.size() > kCacheMaxWordBytes) {
    merge_word(word, out);
    return;
  }
  std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  merge_word(word, out);
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() >= kCacheMaxEntries) cache_.clear();
  cache_.emplace(std::move(key), std::vector<int32_t>(out.begin() + start, out.end()));
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    std::string symbols;
    for (char c : word) symbols += byte_symbol(static_cast<uint8_t>(c));
    const auto it = vocab_.find(symbols);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const int32_t n = static_cast<int32_t>(word.size());
  std::vector<Symbol> sym(n);
  for (int32_t i = 0; i < n; ++i) {
    sym[i] = Symbol{byte_ids_[static_cast<uint8_t>(word[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push_pair = [&](int32_t left) {
    const int32_t right = sym[left].next;
    if (right < 0) return;
    const auto it = merges_.find(pair_key(sym[left].id, sym[right].id));
    if (it != merges_.end()) heap.push(Candidate{it->second.rank, left, it->second.id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);

  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = sym[c.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[left.next];
    const auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.rank != c.rank || it->second.id != c.new_id) continue;  // stale
    left.id = c.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = c.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace clawmine::tokenizer
