// Glob matching by backtracking over the last `*`, nearest names by Levenshtein distance, and
// exact row-by-row decoding with the CPU backend's decoders.
#include "model/deepseek_v4/dequant.h"

#include <algorithm>

#include "backend/cpu/weight_decode.h"
#include "core/error.h"
#include "core/log.h"
#include "model/deepseek_v4/weight_walk.h"

namespace clawmine::model::deepseek_v4 {

namespace {

constexpr size_t kNearNames = 5;

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string nearest_names(const std::string& glob, const std::vector<std::string>& names) {
  std::vector<std::pair<size_t, const std::string*>> ranked;
  for (const std::string& n : names) ranked.emplace_back(edit_distance(glob, n), &n);
  const size_t k = std::min(kNearNames, ranked.size());
  std::partial_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(k), ranked.end(),
                    [](const auto& x, const auto& y) { return x.first != y.first ? x.first < y.first : *x.second < *y.second; });
  std::string s;
  for (size_t i = 0; i < k; ++i) s += (s.empty() ? "" : ", ") + *ranked[i].second;
  return s;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view name) {
  size_t p = 0, n = 0, star = std::string_view::npos, resume = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

std::vector<std::string> parse_dequant_list(const std::string& text, const std::string& flag) {
  std::vector<std::string> globs;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b == std::string::npos) throw Error(str_cat(flag, ": empty pattern in '", text, "'"));
    globs.push_back(item.substr(b, e - b + 1));
    start = comma + 1;
  }
  return globs;
}

DequantSelection select_dequant(ModelWeights& w, const std::vector<std::string>& globs) {
  DequantSelection sel;
  if (globs.empty()) return sel;
  std::vector<LinearWeight*> all;
  for_each_linear(w, [&](LinearWeight& lw, WeightFamily) { all.push_back(&lw); });
  std::vector<std::string> candidates;
  std::set<std::string> fused_seen;
  for (const LinearWeight* lw : all) {
    candidates.push_back(lw->name);
    if (!lw->fused_name.empty() && fused_seen.insert(lw->fused_name).second) candidates.push_back(lw->fused_name);
  }
  std::vector<std::string> errors;
  for (const std::string& glob : globs) {
    size_t matched = 0;
    for (LinearWeight* lw : all) {
      if (!glob_match(glob, lw->name) && (lw->fused_name.empty() || !glob_match(glob, lw->fused_name))) continue;
      ++matched;
      if (sel.names.insert(lw->name).second) sel.modules.push_back(lw);
    }
    if (matched == 0) {
      errors.push_back(str_cat("--dequant '", glob, "' matches no linear module; nearest names: ",
                               nearest_names(glob, candidates)));
    } else {
      log_info("dequant", "--dequant '", glob, "': ", matched, " linear module(s) matched");
    }
  }
  if (!errors.empty()) {
    std::string all_errors;
    for (const std::string& e : errors) all_errors += (all_errors.empty() ? "" : "\n") + e;
    throw Error(all_errors);
  }
  return sel;
}

std::vector<Buffer> dequantize(const DequantSelection& selection) {
  std::vector<Buffer> owned;
  for (LinearWeight* lw : selection.modules) {
    if (lw->format == WeightFormat::kDense) continue;
    backend::cpu::validate_linear_weight(*lw);
    Buffer b(DType::kF32, {lw->out_features, lw->in_features});
    for (int64_t r = 0; r < lw->out_features; ++r) backend::cpu::decode_row(*lw, r, b.f32() + r * lw->in_features);
    lw->format = WeightFormat::kDense;
    lw->weight = b.view();
    lw->scale = {};
    lw->weight_scale_2 = {};
    lw->input_scale = {};
    owned.push_back(std::move(b));
  }
  if (!owned.empty()) log_info("dequant", owned.size(), " quantized linear(s) decoded to dense F32");
  return owned;
}

}  // namespace clawmine::model::deepseek_v4
