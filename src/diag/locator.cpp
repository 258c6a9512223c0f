#include "diag/locator.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "diag/linear_path.h"

namespace clawmine::diag {

std::string short_num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

nlohmann::json NonFiniteFinding::to_json() const {
  nlohmann::json in = nlohmann::json::object();
  for (const auto& [role, s] : inputs) in[role] = s.to_json();
  return {{"seq", seq},       {"forward", forward}, {"op_name", op_name}, {"op", op},
          {"path", path},     {"inputs_finite", inputs_finite},          {"inputs", in},
          {"output", output.to_json()}, {"cause", cause}, {"message", message}};
}

namespace {

std::string count_text(const TensorStats& s) { return str_cat(s.nan, " NaN and ", s.inf, " Inf of ", s.count); }

std::string inputs_text(const NonFiniteFinding& f) {
  std::string t;
  for (const auto& [role, s] : f.inputs)
    t += str_cat(t.empty() ? "" : ", ", role, " amax ", short_num(s.amax), " rms ", short_num(s.rms()),
                 s.all_finite() ? "" : str_cat(" (", s.nan, " NaN, ", s.inf, " Inf)"));
  return t;
}

}  // namespace

void explain_linear(NonFiniteFinding& f, const ops::LinearPolicy& policy, const ops::LinearWeight& w, const float* x,
                    int64_t rows) {
  const LinearPath p = linear_path(policy, w);
  f.path = p.label;
  std::string head = str_cat(linear_display_name(w), " (", p.label.substr(0, p.label.find(" (")));
  if (p.static_scale && p.input_scale > 0.0f)
    head += str_cat(", input_scale ", short_num(p.input_scale), " -> global ", short_num(p.global));
  head += ")";
  const int64_t bad_row = first_non_finite_weight_row(w);
  if (!f.inputs_finite) {
    f.cause = str_cat("its input is already non-finite (", inputs_text(f), "): produced outside the traced ops");
  } else if (bad_row >= 0) {
    f.cause = str_cat("weight ", w.name, " holds NaN/Inf (first in row ", bad_row, ")");
  } else if (p.w4a4) {
    const BlockScaleStats b = block_scale_stats(x, rows, w.in_features, p.static_scale ? p.global : 0.0f);
    if (b.over_448 > 0)
      f.cause = str_cat("activation block scales reach ", short_num(b.max_scale), " > 448 in ", b.over_448, " of ",
                        b.blocks, " 16-blocks (input amax ", short_num(f.inputs.empty() ? 0.0 : f.inputs[0].second.amax),
                        policy.saturate ? ")" : "); the non-saturating E4M3 cast turns them into NaN");
    else
      f.cause = str_cat("output has ", count_text(f.output), " from finite inputs (", inputs_text(f),
                        "; block scales stay <= ", short_num(b.max_scale), ")");
  } else {
    f.cause = str_cat("output has ", count_text(f.output), " from finite inputs (", inputs_text(f), ")");
  }
  if (!w.fused_name.empty()) f.cause += str_cat(" [shard ", w.name, "]");
  f.message = str_cat(head, ": ", f.cause);
}

void explain_embed(NonFiniteFinding& f, const std::vector<int32_t>& ids, const TensorView& out) {
  const int64_t T = out.dim(0), D = out.numel() / std::max<int64_t>(T, 1);
  std::string bad;
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* row = out.f32() + t * D;
    bool finite = true;
    for (int64_t d = 0; d < D && finite; ++d) finite = std::isfinite(row[d]);
    if (!finite && n++ < 8) bad += str_cat(bad.empty() ? "" : ", ", ids[static_cast<size_t>(t)]);
  }
  f.cause = str_cat("the embedding table row of token id ", bad, n > 8 ? ", ..." : "",
                    " holds NaN/Inf (tensor embed.weight)");
  f.message = str_cat(f.op_name, ": ", f.cause);
}

void explain_generic(NonFiniteFinding& f) {
  f.cause = f.inputs_finite ? str_cat("output has ", count_text(f.output), " from finite inputs (", inputs_text(f), ")")
                            : str_cat("its input is already non-finite (", inputs_text(f),
                                      "): produced outside the traced ops");
  f.message = str_cat(f.op_name, " (", f.op, "): ", f.cause);
}

}  // namespace clawmine::diag
