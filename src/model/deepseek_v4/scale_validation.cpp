// Scale checks walk every linear, find the checkpoint tensor each scale view points into (so a
// fused shard's slice reports the fused tensor, its file and the element index in it), and
// collect problems. An element seen through two views (a shared fused scalar) is reported once.
#include "model/deepseek_v4/scale_validation.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "model/deepseek_v4/weight_walk.h"

namespace clawmine::model::deepseek_v4 {

namespace {

constexpr size_t kMaxListedPerTensor = 4;  // bad elements listed per tensor before "and N more"

const char* nvfp4_path_name(ops::Nvfp4Path p) { return p == ops::Nvfp4Path::kW4A4 ? "w4a4" : "w4a16"; }
const char* act_scale_name(ops::ActScale a) {
  switch (a) {
    case ops::ActScale::kStatic: return "static";
    case ops::ActScale::kDynamic: return "dynamic";
    case ops::ActScale::kAuto: return "auto";
  }
  return "?";
}

// Maps a pointer into the checkpoint's mappings back to its tensor.
class Locator {
 public:
  explicit Locator(const io::Checkpoint& ckpt) {
    for (const auto& file : ckpt.files())
      for (const io::TensorInfo& t : file->tensors()) spans_.push_back(&t);
    std::sort(spans_.begin(), spans_.end(),
              [](const io::TensorInfo* a, const io::TensorInfo* b) { return a->data < b->data; });
  }

  // The tensor holding `p`, or nullptr (a buffer the model owns).
  const io::TensorInfo* find(const void* p) const {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    auto it = std::upper_bound(spans_.begin(), spans_.end(), b,
                               [](const uint8_t* x, const io::TensorInfo* t) { return x < t->data; });
    if (it == spans_.begin()) return nullptr;
    const io::TensorInfo* t = *(it - 1);
    return b < t->data + std::max<size_t>(t->nbytes, 1) ? t : nullptr;
  }

 private:
  std::vector<const io::TensorInfo*> spans_;
};

// "[3, 1]" for flat element `i` of `shape`; "" for a scalar.
std::string index_str(const Shape& shape, int64_t i) {
  if (shape.empty()) return "";
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] > 0 ? i % shape[d] : 0;
    i = shape[d] > 0 ? i / shape[d] : 0;
  }
  return shape_str(idx);
}

std::string f32_str(float v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return str_cat(v);
}

class Validator {
 public:
  Validator(const io::Checkpoint& ckpt, const ops::LinearPolicy& policy, const std::set<std::string>& dequantized)
      : ckpt_(ckpt), locator_(ckpt), policy_(policy), dequantized_(dequantized) {}

  void linear(LinearWeight& lw) {
    if (!lw.fused_name.empty()) fused_[lw.fused_name].push_back(&lw);
    switch (lw.format) {
      case WeightFormat::kDense: return;
      case WeightFormat::kFp8Block:
        block_scales(lw, "FP8 128x128 block scale");
        return;
      case WeightFormat::kMxfp4:
        block_scales(lw, "MXFP4 per-32 block scale");
        return;
      case WeightFormat::kNvfp4:
        block_scales(lw, "NVFP4 per-16 block scale");
        scalar_f32(lw, lw.weight_scale_2, "F32 global weight scale (amax/2688)", true, "");
        input_scale(lw);
        return;
    }
  }

  // Shards split from one fused module must share format and stored scale layout.
  void fused_consistency() {
    for (const auto& [name, shards] : fused_) {
      if (shards.size() < 2) {
        errors_.push_back(str_cat(name, " [", ckpt_.dir().string(), "]: fused module bound to only ",
                                  shards.size(), " shard (", shards.front()->name, "); expected wq_a and wkv"));
        continue;
      }
      for (const LinearWeight* s : shards) {
        if (s->format != shards.front()->format || s->input_scale.empty() != shards.front()->input_scale.empty())
          errors_.push_back(str_cat(name, ": shards ", shards.front()->name, " and ", s->name,
                                    " differ in format or input_scale presence"));
      }
    }
  }

  void finish() {
    fused_consistency();
    for (const auto& [t, lines] : bad_) {
      std::string more;
      const size_t extra = bad_counts_[t] - lines.size();
      if (extra > 0) more = str_cat("; and ", extra, " more bad element(s)");
      std::string joined;
      for (const std::string& l : lines) joined += (joined.empty() ? "" : "; ") + l;
      (bad_is_error_[t] ? errors_ : warnings_).push_back(str_cat(t->name, " [", t->file, "]: ", joined, more));
    }
    for (const std::string& w : warnings_) log_warn("scales", w);
    if (errors_.empty()) return;
    std::string all;
    for (const std::string& e : errors_) all += "\n  " + e;
    throw Error(str_cat("checkpoint ", ckpt_.dir().string(), ": ", errors_.size(), " invalid scale tensor(s):", all));
  }

 private:
  // Records one bad element of the checkpoint tensor behind view `v`, element `i` of the view.
  void bad(const TensorView& v, int64_t i, const std::string& value, const std::string& expected, bool error,
           const std::string& module) {
    const io::TensorInfo* t = locator_.find(v.data);
    if (!t) {
      (error ? errors_ : warnings_).push_back(str_cat(module, " (model-owned scale): element ", i, " = ", value,
                                                      "; expected ", expected));
      return;
    }
    const int64_t elem = (static_cast<const uint8_t*>(v.data) - t->data) / static_cast<int64_t>(dtype_size(v.dtype)) + i;
    if (!seen_.insert({t, elem}).second) return;
    bad_is_error_[t] = bad_is_error_[t] || error;
    if (++bad_counts_[t] > kMaxListedPerTensor) return;
    const std::string where = t->shape.empty() ? "value" : str_cat("element ", index_str(t->shape, elem));
    const bool shared = t->name.rfind(module + ".", 0) == 0 || shape_numel(t->shape) == 1;
    const std::string shard = shared ? "" : str_cat(" (shard ", module, ")");
    bad_[t].push_back(str_cat(where, shard, " = ", value, "; expected ", expected));
  }

  // Block scales: E8M0 (0xff is NaN), E4M3 (0x7f/0xff NaN; sign bit = negative; zero only
  // for an all-zero weight block, as a quantizer may write it), F32 (finite, > 0).
  void block_scales(const LinearWeight& lw, const char* what) {
    const TensorView& s = lw.scale;
    if (s.empty()) return;
    const std::string expected = str_cat("a finite ", what, " > 0");
    const int64_t n = s.numel();
    if (s.dtype == DType::kF8E8M0) {
      const uint8_t* b = s.as<const uint8_t>();
      for (int64_t i = 0; i < n; ++i)
        if (b[i] == 0xff) bad(s, i, "NaN (E8M0 code 0xff)", expected, true, lw.name);
    } else if (s.dtype == DType::kF8E4M3) {
      const uint8_t* b = s.as<const uint8_t>();
      for (int64_t i = 0; i < n; ++i) {
        const uint8_t c = b[i];
        if ((c & 0x7f) == 0x7f) {
          bad(s, i, str_cat("NaN (E4M3 code 0x", std::hex, int{c}, ")"), expected, true, lw.name);
        } else if ((c & 0x7f) == 0 && !nvfp4_block_all_zero(lw, i)) {
          bad(s, i, c ? "-0" : "0", str_cat(expected, " (zero is allowed only for an all-zero weight block)"), true,
              lw.name);
        } else if ((c & 0x80) != 0) {
          bad(s, i, str_cat(e4m3_to_f32(c)), expected, true, lw.name);
        }
      }
    } else if (s.dtype == DType::kF32) {
      const float* f = s.as<const float>();
      for (int64_t i = 0; i < n; ++i)
        if (!(std::isfinite(f[i]) && f[i] > 0.0f)) bad(s, i, f32_str(f[i]), expected, true, lw.name);
    }
  }

  // NVFP4 block `i` of the scale view ([out, in/16]) holds only +-0 codes.
  static bool nvfp4_block_all_zero(const LinearWeight& lw, int64_t i) {
    if (lw.format != WeightFormat::kNvfp4 || lw.weight.empty()) return false;
    const int64_t groups = lw.in_features / 16, row = i / groups, g = i % groups;
    const uint8_t* p = lw.weight.as<const uint8_t>() + row * (lw.in_features / 2) + g * 8;
    for (int k = 0; k < 8; ++k)
      if ((p[k] & 0x77) != 0) return false;
    return true;
  }

  // Returns whether the one F32 value of `v` is finite and > 0; records it otherwise.
  bool scalar_f32(const LinearWeight& lw, const TensorView& v, const std::string& what, bool error,
                  const std::string& note) {
    if (v.empty()) return false;
    const float f = *v.as<const float>();
    if (std::isfinite(f) && f > 0.0f) return true;
    bad(v, 0, f32_str(f), str_cat("a finite ", what, " > 0", note), error, lw.name);
    return false;
  }

  // input_scale is read only by W4A4 with act-scale static, or auto while trusted.
  void input_scale(LinearWeight& lw) {
    const bool w4a4 = policy_.nvfp4 == ops::Nvfp4Path::kW4A4;
    const bool is_dequantized = dequantized_.count(lw.name) > 0;
    const bool required = w4a4 && policy_.act_scale == ops::ActScale::kStatic && !is_dequantized;
    if (lw.input_scale.empty()) {
      lw.input_scale_trusted = false;
      if (required)
        errors_.push_back(str_cat(lw.name, ".input_scale [not in ", ckpt_.dir().string(), "]: NVFP4 linear ", lw.name,
                                  " has no input_scale, which --nvfp4-path w4a4 --act-scale static reads; ",
                                  "use --act-scale dynamic or auto, or --nvfp4-path w4a16"));
      return;
    }
    std::string note;
    if (!required) {
      if (is_dequantized) {
        note = str_cat("; not used: ", lw.name, " is dequantized by --dequant");
      } else if (!w4a4 || policy_.act_scale == ops::ActScale::kDynamic) {
        note = str_cat("; not used by the chosen policy (--nvfp4-path ", nvfp4_path_name(policy_.nvfp4),
                       " --act-scale ", act_scale_name(policy_.act_scale), ")");
      } else {
        note = "; marked untrusted: --act-scale auto quantizes this linear's activations dynamically";
      }
    }
    const std::string what = "F32 static activation scale (calibrated amax/2688)";
    if (!scalar_f32(lw, lw.input_scale, what, required, note)) lw.input_scale_trusted = false;
  }

  const io::Checkpoint& ckpt_;
  Locator locator_;
  const ops::LinearPolicy& policy_;
  const std::set<std::string>& dequantized_;
  std::map<std::string, std::vector<LinearWeight*>> fused_;
  std::set<std::pair<const io::TensorInfo*, int64_t>> seen_;
  std::map<const io::TensorInfo*, std::vector<std::string>> bad_;
  std::map<const io::TensorInfo*, size_t> bad_counts_;
  std::map<const io::TensorInfo*, bool> bad_is_error_;
  std::vector<std::string> errors_;
  std::vector<std::string> warnings_;
};

}  // namespace

void validate_scales(ModelWeights& w, const io::Checkpoint& ckpt, const ops::LinearPolicy& policy,
                     const std::set<std::string>& dequantized) {
  Validator v(ckpt, policy, dequantized);
  for_each_linear(w, [&](LinearWeight& lw, WeightFamily) { v.linear(lw); });
  v.finish();
}

}  // namespace clawmine::model::deepseek_v4
