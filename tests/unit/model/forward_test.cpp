// The v2 forward pass outside the goldens: a "device" backend that emulates separate device
// memory (the CPU ops behind a wall that rejects any tensor not allocated or handed out by it,
// and any upload/download inside a decode-step graph) runs the placed model bit-identically
// to the CPU backend; forward without place() and a cache shared by two backends are errors;
// all_logits = false returns the last row; a cache moves.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "core/error.h"
#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "support/test_support.h"
#include "unit/model/chunked_run.h"

namespace clawmine::model::deepseek_v4 {
namespace {

using ops::CompressorStateView;
using ops::HcParams;

// CPU ops on "device" memory: every tensor argument must lie in a block this backend allocated
// or handed out as scratch (placed weights, caches, activations), labelled Device::kCuda.
class DeviceEmulator final : public ops::Backend {
 public:
  DeviceEmulator() : cpu_(ops::make_cpu_backend(2)) {}
  const char* name() const override { return "device-emulator"; }
  Device device() const override { return Device::kCuda; }
  size_t placed_bytes() const { return allocated_bytes_; }
  int graphs() const { return graphs_; }
  const std::vector<uint64_t>& graph_keys() const { return keys_; }
  // retire_step_graph calls: the key and how many steps had begun before it.
  const std::vector<std::pair<uint64_t, size_t>>& retired() const { return retired_; }
  // Steps recorded under a key seen before whose ops (names, tensor addresses and shapes) differed:
  // a graph replayed under that key would have computed something else.
  int key_mismatches() const { return key_mismatches_; }
  const std::string& first_mismatch() const { return first_mismatch_; }

  TensorView allocate(DType dtype, const Shape& shape) override {
    TensorView v = cpu_->allocate(dtype, shape);
    add_block(v);
    allocated_bytes_ += v.nbytes();
    return dev(v);
  }
  void release(const TensorView& view) override {
    TensorView h = host(view, "release");
    blocks_.erase(static_cast<char*>(h.data));
    cpu_->release(h);
  }
  TensorView scratch(DType dtype, const Shape& shape) override {
    TensorView v = cpu_->scratch(dtype, shape);
    add_block(v);
    scratch_.push_back(static_cast<char*>(v.data));
    return dev(v);
  }
  size_t scratch_mark() const override { return cpu_->scratch_mark(); }
  void scratch_reset(size_t mark) override {
    while (scratch_.size() > mark) {
      blocks_.erase(scratch_.back());
      scratch_.pop_back();
    }
    cpu_->scratch_reset(mark);
  }
  void upload(const void* src, const TensorView& dst) override {
    if (in_graph_) throw Error("device emulator: upload inside a step graph");
    cpu_->upload(src, host(dst, "upload"));
  }
  void download(const TensorView& src, void* dst) override {
    if (in_graph_) throw Error("device emulator: download inside a step graph");
    cpu_->download(host(src, "download"), dst);
  }
  void copy(const TensorView& src, const TensorView& dst) override { cpu_->copy(host(src, "copy"), host(dst, "copy")); }
  void fill(const TensorView& dst, float value) override { cpu_->fill(host(dst, "fill"), value); }
  void retire_step_graph(uint64_t key) override { retired_.emplace_back(key, keys_.size()); }
  void begin_step_graph(uint64_t key) override {
    if (in_graph_) throw Error("device emulator: nested step graph");
    in_graph_ = true;
    keys_.push_back(key);
    step_ops_.clear();
  }
  void end_step_graph() override {
    if (!in_graph_) throw Error("device emulator: end_step_graph without begin");
    in_graph_ = false;
    ++graphs_;
    auto [it, fresh] = step_ops_by_key_.emplace(keys_.back(), step_ops_);
    if (!fresh && it->second != step_ops_) {
      if (key_mismatches_++ == 0) {
        size_t i = 0;
        while (i < step_ops_.size() && i < it->second.size() && step_ops_[i] == it->second[i]) ++i;
        const size_t from = i > 80 ? i - 80 : 0;
        first_mismatch_ = str_cat("recorded: ...", it->second.substr(from, 200), "\nnow:      ...", step_ops_.substr(from, 200));
      }
    }
  }
  void set_linear_policy(const ops::LinearPolicy& p) override {
    Backend::set_linear_policy(p);
    cpu_->set_linear_policy(p);
  }

  void embed(const TensorView& table, const TensorView& ids, const TensorView& out) override {
    cpu_->embed(host(table, "embed"), host(ids, "embed"), host(out, "embed"));
  }
  void hc_expand(const TensorView& e, const TensorView& X) override {
    cpu_->hc_expand(host(e, "hc_expand"), host(X, "hc_expand"));
  }
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) override {
    TensorView w;
    if (weight) w = host(*weight, "rms_norm");
    cpu_->rms_norm(host(x, "rms_norm"), weight ? &w : nullptr, eps, host(out, "rms_norm"));
  }
  void linear(const TensorView& x, const LinearWeight& w, const TensorView& out) override {
    cpu_->linear(host(x, "linear"), host(w), host(out, "linear"));
  }
  void grouped_linear(const TensorView& x, const LinearWeight& w, int64_t groups, const TensorView& out) override {
    cpu_->grouped_linear(host(x, "grouped_linear"), host(w), groups, host(out, "grouped_linear"));
  }
  void rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
            bool inverse) override {
    cpu_->rope(host(x, "rope"), host(positions, "rope"), host(inv_freq, "rope"), rope_dim, inverse);
  }
  void iota(const TensorView& out, int64_t start, int64_t step) override { cpu_->iota(host(out, "iota"), start, step); }
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override {
    cpu_->add(host(a, "add"), host(b, "add"), host(out, "add"));
  }
  void qdq(const TensorView& x, ops::Qdq kind, int64_t n_nope) override { cpu_->qdq(host(x, "qdq"), kind, n_nope); }
  void hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& x_in,
              const TensorView& post, const TensorView& comb) override {
    cpu_->hc_pre(host(X, "hc_pre"), host(w), p, host(x_in, "hc_pre"), host(post, "hc_pre"), host(comb, "hc_pre"));
  }
  void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
               const TensorView& X_out) override {
    cpu_->hc_post(host(y, "hc_post"), host(X, "hc_post"), host(post, "hc_post"), host(comb, "hc_post"),
                  host(X_out, "hc_post"));
  }
  void hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& y) override {
    cpu_->hc_head(host(X, "hc_head"), host(w), p, host(y, "hc_head"));
  }
  void attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                       int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) override {
    cpu_->attention_index(host(positions, "attention_index"), n_prev, window, entry_base, n_entries, rate,
                          host(selected, "attention_index"), host(idx, "attention_index"));
  }
  void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries, const TensorView& idx,
                        const TensorView& sink, float scale, const TensorView& out) override {
    const char* op = "sparse_attention";
    cpu_->sparse_attention(host(q, op), host(kv, op), host(entries, op), host(idx, op), host(sink, op), scale,
                           host(out, op));
  }
  void compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape, const TensorView& positions,
                      int64_t rate, bool overlap, const CompressorStateView& s, const TensorView& pooled,
                      const TensorView& entry_positions) override {
    const char* op = "compress_chunk";
    const CompressorStateView hs{host(s.pending_kv, op), host(s.pending_gate, op), host(s.overlap_kv, op),
                                 host(s.overlap_gate, op)};
    cpu_->compress_chunk(host(kv, op), host(gate, op), host(ape, op), host(positions, op), rate, overlap, hs,
                         host(pooled, op), host(entry_positions, op));
  }
  void scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) override {
    cpu_->scatter_rows(host(src, "scatter_rows"), host(keys, "scatter_rows"), divisor, host(dst, "scatter_rows"));
  }
  void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights, float weight_scale,
                      const TensorView& positions, int64_t rate, const TensorView& scores) override {
    const char* op = "indexer_scores";
    cpu_->indexer_scores(host(q, op), host(keys, op), host(weights, op), weight_scale, host(positions, op), rate,
                         host(scores, op));
  }
  void topk(const TensorView& values, int64_t k, const TensorView& out) override {
    cpu_->topk(host(values, "topk"), k, host(out, "topk"));
  }
  void argmax_rows(const TensorView& values, const TensorView& out) override {
    cpu_->argmax_rows(host(values, "argmax_rows"), host(out, "argmax_rows"));
  }
  void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid, const TensorView& ids,
                 float routed_scaling, const TensorView& idx, const TensorView& weight) override {
    const char* op = "moe_route";
    cpu_->moe_route(host(logits, op), host(bias, op), host(tid2eid, op), host(ids, op), routed_scaling, host(idx, op),
                    host(weight, op));
  }
  void moe_experts(const TensorView& x, const std::vector<ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override {
    std::vector<ExpertWeights> h;
    for (const ExpertWeights& e : experts) h.push_back(host(e));
    cpu_->moe_experts(host(x, "moe_experts"), h, host(idx, "moe_experts"), host(weight, "moe_experts"), swiglu_limit,
                      host(out, "moe_experts"));
  }
  void swiglu_mlp(const TensorView& x, const ExpertWeights& w, float swiglu_limit, const TensorView& out) override {
    cpu_->swiglu_mlp(host(x, "swiglu_mlp"), host(w), swiglu_limit, host(out, "swiglu_mlp"));
  }

 private:
  static TensorView dev(TensorView v) {
    v.device = Device::kCuda;
    return v;
  }
  void add_block(const TensorView& v) { blocks_[static_cast<char*>(v.data)] = std::max<size_t>(v.nbytes(), 1); }
  // The host view of a device tensor, after checking that it lies inside one of our blocks.
  TensorView host(const TensorView& v, const char* op) const {
    if (v.empty()) return v;
    if (v.device != Device::kCuda) throw Error(str_cat("device emulator ", op, ": a tensor is not on the device"));
    const char* p = static_cast<const char*>(v.data);
    auto it = blocks_.upper_bound(const_cast<char*>(p));
    if (it == blocks_.begin() || p + v.nbytes() > std::prev(it)->first + std::prev(it)->second)
      throw Error(str_cat("device emulator ", op, ": tensor ", shape_str(v.shape), " at ", v.data,
                          " is not in device memory"));
    if (in_graph_) {
      // Scratch comes from malloc here (the CUDA arena hands out equal addresses for equal
      // request sequences): name a scratch tensor by its request's place in the scratch stack.
      const char* block = std::prev(it)->first;
      const auto sit = std::find(scratch_.begin(), scratch_.end(), block);
      if (sit != scratch_.end())
        step_ops_ += str_cat(op, "@s", sit - scratch_.begin(), "+", p - block, shape_str(v.shape), ";");
      else
        step_ops_ += str_cat(op, "@", v.data, shape_str(v.shape), ";");
    }
    TensorView h = v;
    h.device = Device::kCpu;
    return h;
  }
  LinearWeight host(const LinearWeight& w) const {
    LinearWeight h = w;
    for (TensorView* t : {&h.weight, &h.scale, &h.weight_scale_2, &h.input_scale}) *t = host(*t, w.name.c_str());
    return h;
  }
  ExpertWeights host(const ExpertWeights& e) const { return {host(e.w1), host(e.w3), host(e.w2)}; }
  HyperConnectionWeights host(const HyperConnectionWeights& w) const {
    return {host(w.fn, "hc"), host(w.base, "hc"), host(w.scale, "hc")};
  }

  std::unique_ptr<ops::Backend> cpu_;
  std::map<char*, size_t> blocks_;  // live allocations and scratch: address -> bytes
  std::vector<char*> scratch_;
  size_t allocated_bytes_ = 0;
  bool in_graph_ = false;
  int graphs_ = 0;
  std::vector<uint64_t> keys_;
  std::vector<std::pair<uint64_t, size_t>> retired_;
  mutable std::string step_ops_;  // the current step's ops as recorded by host()
  std::map<uint64_t, std::string> step_ops_by_key_;
  int key_mismatches_ = 0;
  std::string first_mismatch_;
};

class PlacedForward : public ::testing::TestWithParam<const char*> {};

TEST_P(PlacedForward, DeviceMemoryGivesCpuBits) {
  DeviceEmulator dev;  // declared first: outlives the model's device copies
  auto model = Model::load(test::fixture_dir(std::string("models/") + GetParam()));
  auto cpu = ops::make_cpu_backend(2);
  const std::vector<int32_t> ids = test_ids(75);  // windows complete in chunks and in decode steps
  const std::vector<float> ref = chunked_run(*model, *cpu, ids, true);

  SequenceCache unplaced = model->new_cache();
  try {
    model->forward(dev, unplaced, {1, 2}, {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("call Model::place(backend) first"), std::string::npos) << e.what();
  }

  model->place(dev);
  EXPECT_GT(dev.placed_bytes(), 0u);
  const std::vector<float> got = chunked_run(*model, dev, ids, true);
  ASSERT_EQ(got.size(), ref.size());
  EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0);
  EXPECT_EQ(dev.graphs(), 75 - 30 - 1);  // one step graph per decode token after the first (run_step
                                        // records a key on its second consecutive step)
  // Steady decode steps repeat their key (a graph would be replayed, not re-recorded) and a key
  // always names the same ops over the same addresses.
  const std::vector<uint64_t>& keys = dev.graph_keys();
  const std::set<uint64_t> distinct(keys.begin(), keys.end());
  EXPECT_LT(distinct.size() * 3, keys.size()) << distinct.size() << " keys over " << keys.size() << " steps";
  EXPECT_EQ(dev.key_mismatches(), 0) << dev.first_mismatch();
  // The host weights stay usable on the CPU after place().
  EXPECT_EQ(chunked_run(*model, *cpu, ids, true), ref);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PlacedForward, ::testing::Values("tiny-c", "tiny-b-nvfp4-all-fused", "tiny-a-fp8"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// The model retires a step graph's key (ops::Backend::retire_step_graph) when its owner's next
// step has another key: after an entry store's growth (tiny-a's CSA rate 4: 64 rows cover 256
// positions) and when a batch's second member changes. Each retired key was recorded before and,
// here, is not recorded again (a grown cache's key never comes back).
TEST(Forward, RetiresTheOwnersPreviousStepKey) {
  DeviceEmulator dev;
  auto model = Model::load(test::fixture_dir("models/tiny-a"));
  model->place(dev);
  const ForwardOptions fo{.official_qdq = true, .all_logits = false};
  SequenceCache a = model->new_cache();
  model->forward(dev, a, test_ids(250), fo);
  for (int k = 0; k < 12; ++k) model->forward(dev, a, {static_cast<int32_t>(3 + k)}, fo);
  std::vector<SequenceCache> c;
  for (int s = 0; s < 3; ++s) c.push_back(model->new_cache());
  for (int s = 0; s < 3; ++s) model->forward(dev, c[static_cast<size_t>(s)], test_ids(20 + 10 * s), fo);
  for (size_t second : {1, 2})
    for (int k = 0; k < 3; ++k) model->forward_batch(dev, {&c[0], &c[second]}, {7, static_cast<int32_t>(9 + k)}, fo);

  const std::vector<uint64_t>& keys = dev.graph_keys();
  ASSERT_EQ(dev.retired().size(), 2u);  // the growth at 256, the new member
  for (const auto& [key, at] : dev.retired()) {
    EXPECT_NE(std::find(keys.begin(), keys.begin() + static_cast<long>(at), key), keys.begin() + static_cast<long>(at))
        << "a key retired before it was recorded";
    EXPECT_EQ(std::find(keys.begin() + static_cast<long>(at), keys.end(), key), keys.end())
        << "a retired key recorded again";
  }
  EXPECT_EQ(dev.key_mismatches(), 0) << dev.first_mismatch();
}

// A step key is recorded from its owner's second consecutive step: a batch whose members change
// after one step records nothing for it (the emulator never replays, so each later step records).
TEST(Forward, AKeyLastingOneStepIsNotRecorded) {
  DeviceEmulator dev;
  auto model = Model::load(test::fixture_dir("models/tiny-a"));
  model->place(dev);
  const ForwardOptions fo{.official_qdq = true, .all_logits = false};
  std::vector<SequenceCache> c;
  for (int s = 0; s < 3; ++s) c.push_back(model->new_cache());
  for (int s = 0; s < 3; ++s) model->forward(dev, c[static_cast<size_t>(s)], test_ids(20 + 10 * s), fo);
  model->forward_batch(dev, {&c[0], &c[1]}, {7, 9}, fo);
  EXPECT_EQ(dev.graphs(), 0);
  for (int k = 0; k < 3; ++k) model->forward_batch(dev, {&c[0], &c[2]}, {7, static_cast<int32_t>(9 + k)}, fo);
  ASSERT_EQ(dev.graph_keys().size(), 2u);  // the second and third steps of {c0, c2}
  EXPECT_EQ(dev.graph_keys()[0], dev.graph_keys()[1]);
  EXPECT_TRUE(dev.retired().empty());  // c0 had recorded no key before
}

TEST(Forward, LastRowOnlyEqualsLastRowOfAll) {
  auto model = Model::load(test::fixture_dir("models/tiny-c"));
  auto be = ops::make_cpu_backend(2);
  const int64_t V = model->config().vocab_size;
  const std::vector<int32_t> ids = test_ids(40);
  SequenceCache a = model->new_cache(), b = model->new_cache();
  ForwardOptions all, last;
  last.all_logits = false;
  const Buffer la = model->forward(*be, a, ids, all);
  const Buffer lb = model->forward(*be, b, ids, last);
  ASSERT_EQ(lb.view().shape, (Shape{1, V}));
  EXPECT_EQ(std::memcmp(lb.f32(), la.f32() + (ids.size() - 1) * V, V * sizeof(float)), 0);
  // A decode step after either gives the same row: the cache does not depend on all_logits.
  const Buffer da = model->forward(*be, a, {5}, last), db = model->forward(*be, b, {5}, last);
  EXPECT_EQ(std::memcmp(da.f32(), db.f32(), V * sizeof(float)), 0);
}

TEST(Forward, CacheServesOneBackendAndMoves) {
  auto model = Model::load(test::fixture_dir("models/tiny-c"));
  auto be1 = ops::make_cpu_backend(1), be2 = ops::make_cpu_backend(1);
  const std::vector<int32_t> ids = test_ids(20);
  SequenceCache whole = model->new_cache();
  const Buffer ref = model->forward(*be1, whole, ids, {});

  SequenceCache c = model->new_cache();
  const Buffer first = model->forward(*be1, c, std::vector<int32_t>(ids.begin(), ids.begin() + 12), {});
  EXPECT_THROW(model->forward(*be2, c, {ids[12]}, {}), Error);
  SequenceCache moved = std::move(c);  // the scheduler keeps caches in movable structs
  const Buffer rest = model->forward(*be1, moved, std::vector<int32_t>(ids.begin() + 12, ids.end()), {});
  const int64_t V = model->config().vocab_size;
  EXPECT_EQ(moved.position, 20);
  EXPECT_EQ(std::memcmp(rest.f32(), ref.f32() + 12 * V, 8 * V * sizeof(float)), 0);
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
