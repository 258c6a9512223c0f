// clawmine doctor: the seed fixture's culprits come first (layer 0 attention projections with
// their overflow ratios); a clean NVFP4 fixture has no problem; a NaN weight is named; the CLI
// prints the culprits in its first lines within 60 s; the HTML report renders in headless
// Chromium with its plots.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <limits>
#include <sstream>

#include "diag/doctor.h"
#include "support/test_support.h"
#include "unit/diag/diag_fixtures.h"

namespace clawmine::diag {
namespace {

DoctorReport doctor(const std::string& dir, ops::ActScale scale = ops::ActScale::kAuto) {
  DoctorOptions o;
  o.model_dir = dir;
  o.act_scale = scale;
  o.threads = 2;
  return run_doctor(o);
}

int64_t problems(const DoctorReport& r) {
  return std::count_if(r.findings.begin(), r.findings.end(),
                       [](const Finding& f) { return f.severity >= Severity::kWarning; });
}

TEST(Doctor, SeedFixtureFirstFindingIsLayer0AttentionWithOverflowRatio) {
  const DoctorReport r = doctor(test::fixture_dir("models/tiny-b-seed").string());
  ASSERT_GE(r.findings.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.findings[i].layer, 0) << r.findings[i].problem;
    EXPECT_EQ(r.findings[i].subject.rfind("layers.0.attn.", 0), 0u) << r.findings[i].subject;
    EXPECT_NE(r.findings[i].problem.find("x the amax its input_scale was calibrated for"), std::string::npos);
  }
  EXPECT_EQ(r.findings[0].subject, "layers.0.attn.fused_wqa_wkv");
  EXPECT_GE(r.findings[0].severity, Severity::kError);
  EXPECT_NE(r.findings[0].fix.find("--act-scale dynamic"), std::string::npos);
  EXPECT_NE(r.findings[0].fix.find("--dequant layers.0.attn.fused_wqa_wkv"), std::string::npos);
  // The overflow ratio in the calibration table: the seed's scales are 10-50x too small.
  bool seen = false;
  for (const CalibRow& c : r.calib)
    if (c.name.rfind("layers.0.attn.fused_wqa_wkv", 0) == 0) {
      seen = true;
      EXPECT_GT(c.ratio, 10.0);
      EXPECT_LT(c.ratio, 60.0);
      EXPECT_GT(c.saturating_fraction, 0.5);
    }
  EXPECT_TRUE(seen);
  ASSERT_TRUE(r.logits);
  EXPECT_FALSE(r.non_finite);  // auto goes dynamic on the overflowing scales, saturating casts
}

TEST(Doctor, SeedFixtureStaticLocalCosineFallsAndDynamicIsTheFix) {
  const DoctorReport r = doctor(test::fixture_dir("models/tiny-b-seed").string(), ops::ActScale::kStatic);
  bool seen = false;
  for (const LocalRow& l : r.local)
    if (l.name.rfind("layers.0.attn.fused_wqa_wkv", 0) == 0) {
      seen = true;
      EXPECT_LT(l.cosine, 0.98) << l.name;
      EXPECT_GE(l.dynamic_cosine, 0.99) << l.name;
    }
  EXPECT_TRUE(seen);
}

TEST(Doctor, CleanNvfp4FixtureHasNoProblem) {
  const DoctorReport r = doctor(test::fixture_dir("models/tiny-a-nvfp4-experts").string());
  EXPECT_EQ(problems(r), 0) << doctor_text(r);
  EXPECT_FALSE(r.local.empty());
  for (const LocalRow& l : r.local) EXPECT_GT(l.cosine, 0.97) << l.name;
}

TEST(Doctor, NanWeightIsNamed) {
  test::TempDir dir;
  test::copy_model("tiny-a", dir.path());
  test::patch_tensor(dir.path(), "layers.1.attn.wq_b.weight", 100, 1, std::numeric_limits<float>::quiet_NaN());
  const DoctorReport r = doctor(dir.path().string());
  ASSERT_FALSE(r.findings.empty());
  EXPECT_EQ(r.findings[0].severity, Severity::kCritical);
  EXPECT_EQ(r.findings[0].subject, "layers.1.attn.wq_b.weight") << r.findings[0].problem;
  EXPECT_NE(r.findings[0].problem.find("NaN"), std::string::npos);
}

TEST(DoctorCli, SeedCulpritsInFirstLinesUnder60Seconds) {
  test::TempDir tmp;
  const auto json = tmp.path() / "r.json", html = tmp.path() / "r.html";
  const auto t0 = std::chrono::steady_clock::now();
  const auto res = test::run_command(test::clawmine_binary().string() + " doctor --threads 2 --model " +
                                     test::fixture_dir("models/tiny-b-seed").string() + " --json " + json.string() +
                                     " --html " + html.string());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_LT(s, 60.0);
  std::istringstream lines(res.out);
  std::string first, second;
  std::getline(lines, first);
  std::getline(lines, second);
  EXPECT_NE(second.find("layers.0.attn.fused_wqa_wkv"), std::string::npos) << res.out.substr(0, 600);
  EXPECT_NE(second.find("31"), std::string::npos) << second;  // its overflow ratio
  std::ifstream in(json);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["findings"][0]["subject"], "layers.0.attn.fused_wqa_wkv");
  EXPECT_TRUE(std::filesystem::exists(html));
}

TEST(DoctorHtml, RendersInHeadlessChromiumWithPlots) {
  if (test::run_command("command -v chromium").exit_code != 0) GTEST_SKIP() << "chromium not installed (scripts/setup.sh)";
  test::TempDir tmp;
  const auto html = tmp.path() / "report.html", png = tmp.path() / "shot.png";
  {
    std::ofstream out(html);
    out << doctor_html(doctor(test::fixture_dir("models/tiny-b-seed").string()));
  }
  const std::string flags = " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
                            "--disable-background-networking --disable-component-update --disable-sync --user-data-dir=" +
                            (tmp.path() / "profile").string();
  const auto dom = test::run_command("chromium" + flags + " --dump-dom file://" + html.string() + " 2>/dev/null");
  ASSERT_EQ(dom.exit_code, 0);
  for (const char* id : {"plot-local", "plot-global", "plot-overflow"})
    EXPECT_NE(dom.out.find(std::string("<svg id=\"") + id), std::string::npos) << id;
  EXPECT_NE(dom.out.find("<rect"), std::string::npos);
  const auto shot = test::run_command("chromium" + flags + " --window-size=1200,2000 --screenshot=" + png.string() +
                                      " file://" + html.string() + " 2>/dev/null");
  ASSERT_EQ(shot.exit_code, 0);
  ASSERT_TRUE(std::filesystem::exists(png));
  // Not blank: a white 1200x2000 PNG compresses to a few KB; text, tables and bars do not.
  EXPECT_GT(std::filesystem::file_size(png), 30000u);
}

}  // namespace
}  // namespace clawmine::diag
