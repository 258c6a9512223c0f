// `clawmine perplexity`: token-level perplexity of the model in --model on a text file, with
// the model's own tokenizer (BOS first) and fixed windows (--ctx, --stride); see perplexity.h
// for the window rule and docs/DEMO_MODEL.md for the numbers it reproduces.
#include "cli/perplexity.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace clawmine::cli {

namespace {

// -log softmax(row)[target], in float64.
double token_nll(const float* row, int64_t vocab, int32_t target) {
  const float mx = *std::max_element(row, row + vocab);
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
  return -(static_cast<double>(row[target]) - mx - std::log(sum));
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(str_cat("--text: cannot read '", path, "'"));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

PerplexityResult window_perplexity(const model::deepseek_v4::Model& model, ops::Backend& backend,
                                   const std::vector<int32_t>& ids, int64_t ctx, int64_t stride,
                                   const model::deepseek_v4::ForwardOptions& options) {
  const auto n = static_cast<int64_t>(ids.size());
  if (n < 2) throw Error(str_cat("perplexity: need at least 2 token ids, got ", n));
  if (ctx < 2 || stride < 1 || stride > ctx)
    throw Error(str_cat("perplexity: need ctx >= 2 and 0 < stride <= ctx, got ctx ", ctx, ", stride ", stride));
  const int64_t vocab = model.config().vocab_size;
  PerplexityResult r;
  int64_t prev_end = 1;
  for (int64_t begin = 0;; begin += stride) {
    const int64_t end = std::min(begin + ctx, n);
    const std::vector<int32_t> window(ids.begin() + begin, ids.begin() + end);
    auto cache = model.new_cache();
    const Buffer logits = model.forward(backend, cache, window, options);  // [end - begin, vocab]
    const float* data = logits.f32();
    for (int64_t t = std::max(prev_end, begin + 1); t < end; ++t) {
      const double nll = token_nll(data + (t - 1 - begin) * vocab, vocab, ids[static_cast<size_t>(t)]);
      if (!std::isfinite(nll))
        throw Error(str_cat("perplexity: non-finite log-probability at token ", t, " (window starting at ", begin, ")"));
      r.nll_sum += nll;
      ++r.tokens_scored;
    }
    ++r.windows;
    prev_end = end;
    if (end == n) break;
  }
  r.ppl = std::exp(r.nll_sum / static_cast<double>(r.tokens_scored));
  return r;
}

void add_perplexity_command(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string text;
    int64_t ctx = 512, stride = 256, max_tokens = 0;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("perplexity", "Token-level perplexity of the model on a text file");
  args->model.add_to(*cmd);
  cmd->add_option("--text", args->text, "UTF-8 text file, tokenized with the model's tokenizer (BOS first)")->required();
  cmd->add_option("--ctx", args->ctx, "Window length in tokens")->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--stride", args->stride, "Window start step (each target is scored once)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--max-tokens", args->max_tokens, "Keep only the first N ids, BOS included (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", args->json, "Print the result as JSON");
  cmd->callback([args] {
    args->model.check_available();  // flag errors before any input is read
    if (args->stride > args->ctx) throw Error(str_cat("--stride ", args->stride, " is larger than --ctx ", args->ctx));
    const auto tok = tokenizer::Tokenizer::load(args->model.model_dir);
    std::vector<int32_t> ids;
    if (tok.bos_id()) ids.push_back(*tok.bos_id());
    const auto body = tok.encode(read_text(args->text));
    ids.insert(ids.end(), body.begin(), body.end());
    if (args->max_tokens > 0 && static_cast<int64_t>(ids.size()) > args->max_tokens) ids.resize(args->max_tokens);
    LoadedModel m = args->model.load();
    check_ids(ids, m.model->config().vocab_size, "--text");
    const auto r = window_perplexity(*m.model, *m.backend, ids, args->ctx, args->stride, args->model.forward_options());
    if (args->json) {
      nlohmann::json j = {{"model", args->model.model_dir}, {"text", args->text}, {"ppl", r.ppl},
                          {"nll_sum", r.nll_sum}, {"tokens_scored", r.tokens_scored}, {"ids", ids.size()},
                          {"ctx", args->ctx}, {"stride", args->stride}, {"windows", r.windows},
                          {"official_qdq", args->model.official_qdq}};
      std::printf("%s\n", j.dump(1).c_str());
    } else {
      std::printf("perplexity %.4f over %lld tokens (%zu ids, %lld windows of %lld, stride %lld)\n", r.ppl,
                  static_cast<long long>(r.tokens_scored), ids.size(), static_cast<long long>(r.windows),
                  static_cast<long long>(args->ctx), static_cast<long long>(args->stride));
    }
  });
}

}  // namespace clawmine::cli
