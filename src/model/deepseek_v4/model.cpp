// Loading, placement and the top-level forward pass (spec §3.1-§3.2, §3.5): embed, broadcast to
// hc streams, per layer two hyper-connection sites around attention and MoE, then hc_head, the
// final norm and the head. Residual streams stay float32. Every step is a backend op on
// tensors in the backend's memory; the host only uploads the token ids and downloads the
// logits (the one synchronization of a step).
#include "model/deepseek_v4/model.h"

#include <algorithm>
#include <functional>
#include <map>
#include <utility>

#include "diag/audit.h"
#include "model/deepseek_v4/binder.h"
#include "model/deepseek_v4/dequant.h"
#include "model/deepseek_v4/layer.h"
#include "model/deepseek_v4/rope.h"
#include "model/deepseek_v4/scale_validation.h"
#include "model/deepseek_v4/weight_walk.h"

namespace clawmine::model::deepseek_v4 {
namespace {

// The output head [vocab, D] as a dense linear.
LinearWeight head_linear(const ModelConfig& cfg, const TensorView& head) {
  LinearWeight w;
  w.name = "head";
  w.out_features = cfg.vocab_size;
  w.in_features = cfg.hidden_size;
  w.weight = head;
  return w;
}

Buffer f32_buffer(const std::vector<float>& v) {
  Buffer b(DType::kF32, {static_cast<int64_t>(v.size())});
  std::copy(v.begin(), v.end(), b.f32());
  return b;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir, const LoadOptions& options) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = load_model_config(dir);
  m->checkpoint_ = io::Checkpoint::open(dir);
  m->weights_ = bind_weights(m->checkpoint_, m->config_).weights;
  // --dequant globs resolve first (a pattern matching nothing is an error) so the scale checks
  // know which input_scales no compute path will read; decoding needs valid block scales.
  const DequantSelection dequant = select_dequant(m->weights_, options.dequant);
  validate_scales(m->weights_, m->checkpoint_, options.policy, dequant.names);
  m->owned_ = dequantize(dequant);
  m->inv_freq_main_ = f32_buffer(rope_inv_freq(m->config_, AttentionKind::kSliding));
  m->inv_freq_compress_ = f32_buffer(rope_inv_freq(m->config_, AttentionKind::kHeavilyCompressed));
  m->head_ = head_linear(m->config_, m->weights_.head);
  // The calibration audit of static NVFP4 input scales (diag/audit.h) runs a short forward and
  // marks overflowing scales untrusted; it sees the weights as the compute paths will. Only where
  // its verdict changes what is computed: W4A4 with static or auto activation scales. W4A16 (the
  // default) never reads an input_scale, and the audit's CPU forward costs minutes on a full-size
  // checkpoint (~55 CPU-seconds per V4-Flash layer); `clawmine doctor` audits them on request.
  const bool reads_input_scales =
      options.policy.nvfp4 == ops::Nvfp4Path::kW4A4 && options.policy.act_scale != ops::ActScale::kDynamic;
  if (options.audit && reads_input_scales) diag::run_load_audit(*m, options);
  return m;
}

SequenceCache Model::new_cache() const {
  SequenceCache cache;
  cache.layers.resize(static_cast<size_t>(config_.num_hidden_layers));
  return cache;
}

void Model::place(ops::Backend& be) {
  if (be.device() == Device::kCpu) return;
  if (placed_on_ != Device::kCpu)
    throw Error(str_cat("Model::place: the model is already placed on a device (backend '", be.name(), "')"));
  ModelWeights dw = weights_;
  dw.mtp.reset();
  // Host tensor (address, bytes) -> its device copy: a tensor bound twice (a tied head) is
  // copied once. Quantized weights stay packed; scalars (weight_scale_2, input_scale) become
  // device F32 scalars.
  std::map<std::pair<const void*, size_t>, TensorView> placed;
  std::vector<ops::DeviceBuffer> buffers;
  auto put = [&](TensorView& t) {
    if (t.empty() || t.device != Device::kCpu) return;
    const auto key = std::make_pair(static_cast<const void*>(t.data), t.nbytes());
    auto it = placed.find(key);
    if (it == placed.end()) {
      ops::DeviceBuffer buf(be, t.dtype, t.shape);
      be.upload(t.data, buf.view());
      it = placed.emplace(key, buf.view()).first;
      buffers.push_back(std::move(buf));
    }
    t.data = it->second.data;
    t.device = it->second.device;
  };
  // The walk is written over const weights; `dw` itself is writable (as in for_each_linear).
  for_each_weight(dw, [&](const WeightRef& r) {
    if (r.tensor) {
      put(const_cast<TensorView&>(*r.tensor));
    } else {
      LinearWeight& l = const_cast<LinearWeight&>(*r.linear);
      for (TensorView* t : {&l.weight, &l.scale, &l.weight_scale_2, &l.input_scale}) put(*t);
    }
  });
  put(dw.head);  // tied to embed: the walk visits only embed
  ops::DeviceBuffer main(be, DType::kF32, inv_freq_main_.view().shape);
  be.upload(inv_freq_main_.view().data, main.view());
  ops::DeviceBuffer compress(be, DType::kF32, inv_freq_compress_.view().shape);
  be.upload(inv_freq_compress_.view().data, compress.view());
  device_inv_freq_main_ = main.view();
  device_inv_freq_compress_ = compress.view();
  buffers.push_back(std::move(main));
  buffers.push_back(std::move(compress));
  be.synchronize();  // upload errors surface here, at load, not in the first forward
  device_head_ = head_linear(config_, dw.head);
  device_weights_ = std::move(dw);
  device_buffers_ = std::move(buffers);
  placed_on_ = be.device();
}

namespace {

// The hyper-connection state between sub-layers: the streams X [T, hc, D] F32 (X_next: a buffer
// for the streams out, swapped at each site), the normalized input x [T, D] of the next
// sub-layer and its post [T, hc] / comb [T, hc, hc] gates, which the site after it consumes.
struct HcState {
  TensorView X, X_next, x, post, comb;
  ops::HcParams hp;
  float eps;
};

// x, post, comb = hc_pre(X) with the first sub-layer's weights; x = norm(x).
void hc_enter(ops::Backend& be, HcState& s, const HyperConnectionWeights& w, const TensorView& norm) {
  be.hc_pre(s.X, w, s.hp, s.x, s.post, s.comb);
  be.rms_norm(s.x, &norm, s.eps, s.x);
}

// One site between sub-layers: X = hc_post(y + y_add, X, post, comb) (y_add: the MoE's shared
// expert, or none), then x, post, comb = hc_pre(X) with the next sub-layer's weights and
// x = norm(x), as one backend op (hc_post_pre).
void hc_site(ops::Backend& be, HcState& s, const TensorView& y, const TensorView& y_add,
             const HyperConnectionWeights& w, const TensorView& norm) {
  be.hc_post_pre(y, y_add, s.X, s.post, s.comb, s.X_next, w, s.hp, norm, s.eps, s.x, s.post, s.comb);
  std::swap(s.X, s.X_next);
}

// One decoder block (spec §3.2, the reference Block.forward):
//   x, post, comb = hc_pre(X);  X = hc_post(attention(attn_norm(x)), X, post, comb)
//   x, post, comb = hc_pre(X);  X = hc_post(moe(ffn_norm(x)), X, post, comb)
// Each hc_post is fused with the hc_pre + norm that follows it (the next block's attention site
// for the MoE output: `next`), which also adds the MoE's routed and shared parts; the last
// block's streams go to hc_head (next null). On entry s.x is attn_norm(x) of this block
// (hc_enter or the previous block's last site). The sites take the scope of their hc_post
// (layers.l.hc_attn, layers.l.hc_ffn).
// `attend` is the attention sub-layer over s.x: one sequence's chunk (attention) or a batch of
// sequences' tokens (attention_batch).
template <typename Attend>
void block(const LayerContext& c, const LayerWeights* next, HcState& s, Attend&& attend) {
  ops::ScratchFrame frame(c.be);  // the layer's temporaries
  const ops::BranchScope branches(c.be);  // closed before the frame (an op that failed inside one)
  c.be.set_scope(c.scope("attn"));
  const TensorView a = attend(s.x);
  c.be.set_scope(c.scope("hc_attn"));
  hc_site(c.be, s, a, TensorView{}, c.w.hc_ffn, c.w.ffn_norm);

  c.be.set_scope(c.scope("ffn"));
  const MoeOut f = moe(c, s.x);
  c.be.set_scope(c.scope("hc_ffn"));
  if (next != nullptr) {
    hc_site(c.be, s, f.routed, f.shared, next->hc_attn, next->attn_norm);
  } else {
    c.be.add(f.routed, f.shared, f.routed);
    c.be.hc_post(f.routed, s.X, s.post, s.comb, s.X_next);
    std::swap(s.X, s.X_next);
  }
}

// Everything that shapes a steady decode step's ops besides the values read on the device: the
// model (its placed weights), the cache's buffers (layout_id), where the step's scratch starts,
// and the options. Equal keys mean equal op sequences over equal addresses.
// A batch step (forward_batch, batch = true) hashes every cache's layout in order and the batch
// size; its keys never equal a one-sequence step's (the marker), even for a batch of one.
uint64_t step_key(const std::vector<const SequenceCache*>& caches, bool batch, size_t scratch_mark,
                  const ForwardOptions& options, bool greedy, const void* model) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 1099511628211ull;
  };
  mix(reinterpret_cast<uintptr_t>(model));
  if (batch) {
    mix(0xBA7C4ull);
    mix(caches.size());
  }
  for (const SequenceCache* c : caches) mix(c->layout_id);
  mix(scratch_mark);
  mix(static_cast<uint64_t>(options.official_qdq) | static_cast<uint64_t>(options.all_logits) << 1 |
      static_cast<uint64_t>(greedy) << 2 |
      static_cast<uint64_t>(options.indexer_always) << 3);
  return h;
}

// The embedding broadcast into the hc streams and the first site's pre-mix: the state before
// layer 0 for the T rows of ids_t.
HcState enter_streams(ops::Backend& be, const ModelConfig& cfg, const ModelWeights& W, const TensorView& ids_t) {
  const int64_t T = ids_t.dim(0), D = cfg.hidden_size, hc = cfg.hc_mult;
  be.set_scope("embed");
  const TensorView e = be.scratch(be.act_dtype(), {T, D});
  be.embed(W.embed, ids_t, e);
  const ops::HcParams hp{hc, cfg.hc_sinkhorn_iters, static_cast<float>(cfg.hc_eps),
                         static_cast<float>(cfg.rms_norm_eps)};
  HcState s{be.scratch(DType::kF32, {T, hc, D}),
            be.scratch(DType::kF32, {T, hc, D}),
            be.scratch(be.act_dtype(), {T, D}),
            be.scratch(DType::kF32, {T, hc}),
            be.scratch(DType::kF32, {T, hc, hc}),
            hp,
            static_cast<float>(cfg.rms_norm_eps)};
  be.hc_expand(e, s.X);
  if (cfg.num_hidden_layers > 0) {
    be.set_scope("layers.0.hc_attn");
    hc_enter(be, s, W.layers[0].hc_attn, W.layers[0].attn_norm);
  }
  return s;
}

// hc_head -> norm -> head over the last `rows` rows of the streams: logits [rows, vocab].
TensorView head_logits(ops::Backend& be, const ModelConfig& cfg, const ModelWeights& W, const LinearWeight& head,
                       const HcState& s, int64_t rows) {
  const int64_t T = s.X.dim(0);
  be.set_scope("head");
  const TensorView y = be.scratch(be.act_dtype(), {rows, cfg.hidden_size});
  be.hc_head(s.X.slice0(T - rows, T), W.hc_head, s.hp, y);
  be.rms_norm(y, &W.norm, static_cast<float>(cfg.rms_norm_eps), y);
  const TensorView logits = be.scratch(DType::kF32, {rows, cfg.vocab_size});
  be.linear(y, head, logits);
  return logits;
}

// Embedding, then every block over the T rows of ids_t; attend(c, x, l) is layer l's attention
// sub-layer (one sequence's chunk, or a batch of sequences' tokens). Returns the streams' state.
template <typename Attend>
HcState run_blocks(ops::Backend& be, const ModelConfig& cfg, const ModelWeights& W, const TensorView& inv_main,
                   const TensorView& inv_compress, const TensorView& positions, const TensorView& ids_t, int64_t p0,
                   const ForwardOptions& options, Attend&& attend) {
  HcState s = enter_streams(be, cfg, W, ids_t);
  const int64_t L = cfg.num_hidden_layers;
  for (int64_t l = 0; l < L; ++l) {
    const AttentionKind kind = cfg.layer_types[static_cast<size_t>(l)];
    const LayerContext c{be,   cfg, W.layers[static_cast<size_t>(l)], static_cast<int>(l),
                         kind, kind == AttentionKind::kSliding ? inv_main : inv_compress,
                         positions, ids_t, p0, options};
    block(c, l + 1 < L ? &W.layers[static_cast<size_t>(l + 1)] : nullptr, s,
          [&](const TensorView& x) { return attend(c, x, l); });
  }
  return s;
}

// The step's head: logits [rows, vocab] and, when greedy, their argmax [rows] I32.
Model::StepOut step_head(ops::Backend& be, const ModelConfig& cfg, const ModelWeights& W, const LinearWeight& head,
                  const HcState& s, int64_t rows, bool greedy) {
  Model::StepOut o{head_logits(be, cfg, W, head, s, rows), {}};
  if (greedy) {
    o.tokens = be.scratch(DType::kI32, {rows});
    be.argmax_rows(o.logits, o.tokens);
  }
  return o;
}

// Runs issue_ops (the step's ops; returns where the results land) directly, or as the step graph
// of `key` (the results' place kept in `owner`). A key is recorded on its owner's second
// consecutive step under it and replayed after: a key that lasts one step (a batch whose members
// change again at once) costs no recording, which takes ~20-80 ms on the H100 against one eager
// step's extra ~1-5 ms (docs/PERFORMANCE.md, nineteenth session).
template <typename Issue>
Model::StepOut run_step(ops::Backend& be, bool graph, uint64_t key, SequenceCache& owner, Issue&& issue_ops) {
  if (graph && owner.step_key == key && be.replay_step_graph(key)) {
    return {owner.step_logits, owner.step_tokens};  // the recorded ops ran again; their scratch addresses repeat
  }
  if (graph) graph = std::exchange(owner.seen_key, key) == key;  // the second step under this key
  if (graph && owner.step_key != 0 && owner.step_key != key) be.retire_step_graph(owner.step_key);
  if (graph) be.begin_step_graph(key);
  const Model::StepOut out = issue_ops();
  if (graph) {
    be.end_step_graph();
    owner.step_key = key;
    owner.step_logits = out.logits;
    owner.step_tokens = out.tokens;
  }
  return out;
}

}  // namespace

Model::Tables Model::tables_for(ops::Backend& be, const char* what) const {
  // The weights and RoPE tables this backend reads: the mmapped ones on the CPU, place()'s copies elsewhere.
  const bool host = be.device() == Device::kCpu;
  if (!host && placed_on_ != be.device())
    throw Error(str_cat("Model::", what, " on backend '", be.name(),
                        "': its tensors live on the device; call Model::place(backend) first"));
  return {host ? weights_ : device_weights_, host ? head_ : device_head_,
          host ? inv_freq_main_.view() : device_inv_freq_main_,
          host ? inv_freq_compress_.view() : device_inv_freq_compress_};
}

void Model::claim_cache(ops::Backend& be, SequenceCache& cache, const char* what) const {
  CLAWMINE_CHECK(static_cast<int64_t>(cache.layers.size()) == config_.num_hidden_layers,
                 "cache was made for another model");
  if (cache.backend == nullptr) cache.backend = &be;
  if (cache.backend != &be)
    throw Error(str_cat("Model::", what, ": this cache holds rows of another backend ('", cache.backend->name(),
                        "'); a cache serves the backend of its first forward"));
}

Model::StepOut Model::issue_forward(ops::Backend& be, SequenceCache& cache, const std::vector<int32_t>& ids,
                                    const ForwardOptions& options, int64_t rows, bool greedy) const {
  const ModelConfig& cfg = config_;
  const int64_t T = static_cast<int64_t>(ids.size());
  CLAWMINE_CHECK(T > 0, "forward needs at least one token");
  const Tables tables = tables_for(be, "forward");
  claim_cache(be, cache, "forward");
  const int64_t p0 = cache.position;
  reserve_cache(be, cfg, cache, p0 + T);

  // Per-step values go up before the step's ops: the ops read them on the device.
  const TensorView ids_t = be.scratch(DType::kI32, {T});
  be.upload(ids.data(), ids_t);
  std::vector<int32_t> host_positions(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) host_positions[static_cast<size_t>(t)] = static_cast<int32_t>(p0 + t);
  const TensorView positions = be.scratch(DType::kI32, {T});
  be.upload(host_positions.data(), positions);

  // A decode step (one token) is the same sequence of ops every step until the cache's entry
  // stores grow (its window pool holds W-1 rows at every position): it is recorded once as a
  // graph and replayed.
  const bool graph = T == 1;
  const uint64_t key = graph ? step_key({&cache}, false, be.scratch_mark(), options, greedy, this) : 0;
  return run_step(be, graph, key, cache, [&]() -> StepOut {
    const HcState s = run_blocks(be, cfg, tables.weights, tables.inv_main, tables.inv_compress, positions, ids_t, p0,
                                 options, [&](const LayerContext& c, const TensorView& x, int64_t l) {
                                   return attention(c, x, cache.layers[static_cast<size_t>(l)]);
                                 });
    return step_head(be, cfg, tables.weights, tables.head, s, rows, greedy);
  });
}

Buffer Model::forward(ops::Backend& be, SequenceCache& cache, const std::vector<int32_t>& ids,
                      const ForwardOptions& options) const {
  const int64_t T = static_cast<int64_t>(ids.size());
  ops::ScratchFrame pass(be);
  const int64_t rows = options.all_logits ? T : 1;
  const StepOut step = issue_forward(be, cache, ids, options, rows, false);
  Buffer out(DType::kF32, {rows, config_.vocab_size});
  be.download(step.logits, out.view().data);
  cache.position += T;
  return out;
}

std::vector<GreedyToken> Model::download_greedy(ops::Backend& be, const StepOut& step) const {
  const int64_t R = step.tokens.dim(0), V = config_.vocab_size;
  std::vector<int32_t> ids(static_cast<size_t>(R));
  be.download(step.tokens, ids.data());
  std::vector<GreedyToken> out(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    GreedyToken& g = out[static_cast<size_t>(r)];
    const int32_t v = ids[static_cast<size_t>(r)];
    if (v >= 0) {
      CLAWMINE_CHECK(v < V, "argmax_rows gave token ", v, " outside the vocabulary of ", V);
      g.id = v;
      continue;
    }
    g.non_finite_at = -1 - static_cast<int64_t>(v);
    CLAWMINE_CHECK(g.non_finite_at < V, "argmax_rows named entry ", g.non_finite_at, " outside the vocabulary of ", V);
    TensorView one = step.logits;
    one.shape = {1};
    one.data = step.logits.f32() + r * V + g.non_finite_at;
    be.download(one, &g.non_finite_value);
  }
  return out;
}

GreedyToken Model::forward_greedy(ops::Backend& be, SequenceCache& cache, const std::vector<int32_t>& ids,
                                  const ForwardOptions& options) const {
  ForwardOptions last_only = options;
  last_only.all_logits = false;
  ops::ScratchFrame pass(be);
  const StepOut step = issue_forward(be, cache, ids, last_only, 1, true);
  std::vector<GreedyToken> tok = download_greedy(be, step);
  cache.position += static_cast<int64_t>(ids.size());
  return tok[0];
}

void Model::run_groups(ops::Backend& be, const std::vector<SequenceCache*>& caches, const std::vector<int32_t>& ids,
                       const ForwardOptions& options, bool greedy, const char* what,
                       const std::function<void(int64_t, const StepOut&)>& take) const {
  const int64_t B = static_cast<int64_t>(ids.size());
  CLAWMINE_CHECK(B > 0 && caches.size() == ids.size(), what, ": ", ids.size(), " token ids for ", caches.size(),
                 " caches (one token per sequence, at least one)");
  for (int64_t b = 0; b < B; ++b) {
    SequenceCache* cache = caches[static_cast<size_t>(b)];
    CLAWMINE_CHECK(cache != nullptr, what, ": cache ", b, " is null");
    for (int64_t a = 0; a < b; ++a)
      CLAWMINE_CHECK(caches[static_cast<size_t>(a)] != cache, what, ": sequence ", a, " and ", b,
                     " are the same cache (each sequence of a batch takes one token)");
    claim_cache(be, *cache, what);
  }
  for (int64_t g0 = 0; g0 < B; g0 += kMaxBatchRows) {
    const int64_t g1 = std::min(B, g0 + kMaxBatchRows);
    const std::vector<SequenceCache*> group(caches.begin() + g0, caches.begin() + g1);
    ops::ScratchFrame pass(be);
    take(g0, issue_group(be, group, {ids.begin() + g0, ids.begin() + g1}, options, greedy));
    for (SequenceCache* cache : group) cache->position += 1;
  }
}

Buffer Model::forward_batch(ops::Backend& be, const std::vector<SequenceCache*>& caches,
                            const std::vector<int32_t>& ids, const ForwardOptions& options) const {
  const int64_t V = config_.vocab_size;
  Buffer out(DType::kF32, {static_cast<int64_t>(ids.size()), V});
  run_groups(be, caches, ids, options, false, "forward_batch",
             [&](int64_t g0, const StepOut& step) { be.download(step.logits, out.f32() + g0 * V); });
  return out;
}

std::vector<GreedyToken> Model::forward_batch_greedy(ops::Backend& be, const std::vector<SequenceCache*>& caches,
                                                     const std::vector<int32_t>& ids,
                                                     const ForwardOptions& options) const {
  std::vector<GreedyToken> out;
  run_groups(be, caches, ids, options, true, "forward_batch_greedy", [&](int64_t, const StepOut& step) {
    const std::vector<GreedyToken> tok = download_greedy(be, step);
    out.insert(out.end(), tok.begin(), tok.end());
  });
  return out;
}

Model::StepOut Model::issue_group(ops::Backend& be, const std::vector<SequenceCache*>& caches,
                                  const std::vector<int32_t>& ids, const ForwardOptions& options, bool greedy) const {
  const ModelConfig& cfg = config_;
  const int64_t B = static_cast<int64_t>(ids.size());
  const Tables tables = tables_for(be, "forward_batch");
  std::vector<int64_t> p0(static_cast<size_t>(B));
  std::vector<int32_t> host_positions(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    p0[static_cast<size_t>(b)] = caches[static_cast<size_t>(b)]->position;
    host_positions[static_cast<size_t>(b)] = static_cast<int32_t>(caches[static_cast<size_t>(b)]->position);
  }
  for (SequenceCache* cache : caches) reserve_cache(be, cfg, *cache, cache->position + 1);

  const TensorView ids_t = be.scratch(DType::kI32, {B});
  be.upload(ids.data(), ids_t);
  const TensorView positions = be.scratch(DType::kI32, {B});
  be.upload(host_positions.data(), positions);

  // Recorded once and replayed while no entry store grows (the same condition as a one-sequence
  // step, for each); the record lives in the first cache.
  const uint64_t key = step_key({caches.begin(), caches.end()}, true, be.scratch_mark(), options, greedy, this);
  return run_step(be, true, key, *caches[0], [&]() -> StepOut {
    std::vector<LayerCache*> layer_caches(static_cast<size_t>(B));
    const HcState s = run_blocks(be, cfg, tables.weights, tables.inv_main, tables.inv_compress, positions, ids_t,
                                 p0[0], options, [&](const LayerContext& c, const TensorView& x, int64_t l) {
                                   for (int64_t b = 0; b < B; ++b)
                                     layer_caches[static_cast<size_t>(b)] =
                                         &caches[static_cast<size_t>(b)]->layers[static_cast<size_t>(l)];
                                   return attention_batch(c, x, layer_caches, p0);
                                 });
    return step_head(be, cfg, tables.weights, tables.head, s, B, greedy);
  });
}

}  // namespace clawmine::model::deepseek_v4
