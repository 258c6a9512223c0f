// The doctor's HTML report: one self-contained page (inline CSS and SVG, no scripts, no network)
// with the ranked findings, per-layer plots (worst local cosine per layer, residual drift per
// layer, overflow ratio per input-scaled linear) and the tables of the text report.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "diag/doctor.h"

namespace clawmine::diag {

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string f4(double v) {
  if (!std::isfinite(v)) return "NaN";
  char b[32];
  std::snprintf(b, sizeof b, "%.4f", v);
  return b;
}

struct Bar {
  std::string label;
  double value;  // NaN drawn as a red "NaN" marker
};

// A bar chart [lo, hi] (log10 axis when log_scale) with an optional reference line.
std::string bar_chart(const std::string& title, const std::vector<Bar>& bars, double lo, double hi, bool log_scale,
                      double ref_line, const std::string& id) {
  const int W = 900, H = 260, L = 60, B = 70, T = 30;
  const double plot_w = W - L - 20, plot_h = H - B - T;
  auto y_of = [&](double v) {
    double a = log_scale ? std::log10(std::max(v, 1e-12)) : v, l = log_scale ? std::log10(lo) : lo,
           h = log_scale ? std::log10(hi) : hi;
    const double t = std::clamp((a - l) / (h - l), 0.0, 1.0);
    return T + plot_h * (1 - t);
  };
  std::string s = str_cat("<svg id=\"", id, "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"", W, "\" height=\"", H,
                          "\" viewBox=\"0 0 ", W, " ", H, "\" role=\"img\"><title>", esc(title), "</title>",
                          "<text x=\"", L, "\" y=\"18\" font-size=\"14\" font-weight=\"bold\">", esc(title), "</text>",
                          "<line x1=\"", L, "\" y1=\"", T, "\" x2=\"", L, "\" y2=\"", T + plot_h,
                          "\" stroke=\"#333\"/><line x1=\"", L, "\" y1=\"", T + plot_h, "\" x2=\"", L + plot_w,
                          "\" y2=\"", T + plot_h, "\" stroke=\"#333\"/>");
  for (double v : {lo, hi}) s += str_cat("<text x=\"4\" y=\"", y_of(v) + 4, "\" font-size=\"11\">", f4(v), "</text>");
  if (ref_line > 0)
    s += str_cat("<line x1=\"", L, "\" y1=\"", y_of(ref_line), "\" x2=\"", L + plot_w, "\" y2=\"", y_of(ref_line),
                 "\" stroke=\"#c00\" stroke-dasharray=\"4 3\"/><text x=\"", L + plot_w - 40, "\" y=\"",
                 y_of(ref_line) - 3, "\" font-size=\"10\" fill=\"#c00\">", f4(ref_line), "</text>");
  const double bw = bars.empty() ? 0 : plot_w / static_cast<double>(bars.size());
  for (size_t i = 0; i < bars.size(); ++i) {
    const double x = L + bw * static_cast<double>(i) + bw * 0.15;
    const double v = bars[i].value;
    if (!std::isfinite(v)) {
      s += str_cat("<text x=\"", x, "\" y=\"", T + plot_h - 4, "\" font-size=\"11\" fill=\"#c00\">NaN</text>");
    } else {
      const double y = y_of(v);
      const bool bad = log_scale ? v > ref_line : v < ref_line;
      s += str_cat("<rect x=\"", x, "\" y=\"", y, "\" width=\"", bw * 0.7, "\" height=\"", T + plot_h - y,
                   "\" fill=\"", bad ? "#d9534f" : "#4a7fb5", "\"><title>", esc(bars[i].label), ": ", f4(v),
                   "</title></rect>");
    }
    s += str_cat("<text x=\"", x, "\" y=\"", T + plot_h + 12, "\" font-size=\"10\" transform=\"rotate(35 ", x, " ",
                 T + plot_h + 12, ")\">", esc(bars[i].label.substr(0, 28)), "</text>");
  }
  return s + "</svg>\n";
}

}  // namespace

std::string doctor_html(const DoctorReport& r) {
  std::string h =
      "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>clawmine doctor</title><style>"
      "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
      "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}"
      ".critical{color:#fff;background:#a00}.error{color:#a00}.warning{color:#a60}.info{color:#555}"
      "</style></head><body>";
  h += str_cat("<h1>clawmine doctor</h1><p>", esc(r.model_dir), " &mdash; ", esc(r.policy), "; ", r.calib_sequences,
               " calibration sequences, ", r.calib_tokens, " tokens; ", f4(r.seconds), " s</p>");
  h += "<h2>Findings</h2>";
  if (r.findings.empty()) h += "<p>No problems found.</p>";
  else {
    h += "<table><tr><th>#</th><th>severity</th><th>problem</th><th>fix</th></tr>";
    int i = 0;
    for (const Finding& f : r.findings)
      h += str_cat("<tr><td>", ++i, "</td><td class=\"", severity_name(f.severity), "\">", severity_name(f.severity),
                   "</td><td>", esc(f.problem), "</td><td><code>", esc(f.fix), "</code></td></tr>");
    h += "</table>";
  }

  // Per layer: the worst local cosine of any quantized op.
  std::map<int, double> worst;
  for (const LocalRow& l : r.local) {
    auto [it, fresh] = worst.try_emplace(l.layer, l.cosine);
    if (!std::isfinite(l.cosine) || (std::isfinite(it->second) && l.cosine < it->second)) it->second = l.cosine;
  }
  std::vector<Bar> local_bars, global_bars, ratio_bars;
  double lo = 0.98;
  for (auto [layer, c] : worst) {
    local_bars.push_back({layer < 0 ? "other" : str_cat("layers.", layer), c});
    if (std::isfinite(c)) lo = std::min(lo, c);
  }
  for (const GlobalRow& g : r.global) {
    global_bars.push_back({str_cat("layers.", g.layer), g.cosine});
    if (std::isfinite(g.cosine)) lo = std::min(lo, g.cosine);
  }
  lo = std::max(-1.0, std::floor(lo * 100) / 100 - 0.01);
  double rmax = 2;
  for (const CalibRow& c : r.calib) {
    ratio_bars.push_back({c.name, c.ratio});
    rmax = std::max(rmax, c.ratio * 1.5);
  }
  h += "<h2>Per-layer plots</h2>";
  h += bar_chart("worst local cosine per layer (quantized op vs W-A16 op, same input)", local_bars, lo, 1.0, false,
                 0.99, "plot-local");
  h += bar_chart("residual stream cosine after each layer (quantized run vs W-A16 run)", global_bars, lo, 1.0, false,
                 0.99, "plot-global");
  if (!ratio_bars.empty())
    h += bar_chart("observed amax / calibrated amax (input_scale x 2688), log scale", ratio_bars, 0.01, rmax, true,
                   1.0, "plot-overflow");

  if (!r.calib.empty()) {
    h += "<h2>Calibration</h2><table><tr><th>linear</th><th>input_scale</th><th>calibrated amax</th>"
         "<th>observed amax</th><th>ratio</th><th>saturating 16-blocks</th></tr>";
    for (const CalibRow& c : r.calib)
      h += str_cat("<tr><td>", esc(c.name), "</td><td>", c.input_scale, "</td><td>", f4(c.calibrated_amax), "</td><td>",
                   f4(c.observed_amax), "</td><td>", f4(c.ratio), "</td><td>", f4(100 * c.saturating_fraction),
                   "%</td></tr>");
    h += "</table>";
  }
  h += "<h2>Local accuracy</h2><table><tr><th>op</th><th>path</th><th>cosine</th><th>rel err</th>"
       "<th>W4A4 static</th><th>W4A4 dynamic</th></tr>";
  for (const LocalRow& l : r.local)
    h += str_cat("<tr><td>", esc(l.name), "</td><td>", esc(l.path), "</td><td>", f4(l.cosine), "</td><td>",
                 f4(l.rel_err), "</td><td>", l.static_cosine > -2 ? f4(l.static_cosine) : "", "</td><td>",
                 l.dynamic_cosine > -2 ? f4(l.dynamic_cosine) : "", "</td></tr>");
  h += "</table>";
  if (r.logits)
    h += str_cat("<h2>Logits</h2><p>median cosine ", f4(r.logits->median_cosine), ", min ", f4(r.logits->min_cosine),
                 ", top-1 agreement ", f4(100 * r.logits->top1), "%, KL ", f4(r.logits->kl), " over ",
                 r.logits->positions, " positions</p>");
  h += "<h2>Modules</h2><table><tr><th>module</th><th>family</th><th>format</th><th>dtype</th><th>shape</th>"
       "<th>path here (default)</th><th>quantized path</th></tr>";
  for (const ModuleRow& m : r.modules)
    h += str_cat("<tr><td>", esc(m.name), "</td><td>", esc(m.family), "</td><td>", esc(m.format), "</td><td>",
                 esc(m.dtype), "</td><td>", esc(m.shape), "</td><td>", esc(m.path_default), "</td><td>",
                 esc(m.path_quant), "</td></tr>");
  return h + "</table></body></html>\n";
}

}  // namespace clawmine::diag
