// Shared by the batched-decode tests (CPU: unit/model/batch_test.cpp, CUDA:
// unit/backend_cuda/forward_batch_test.cpp): sequences with prompts of their own, then decode
// steps one sequence at a time (Model::forward) or all at once (Model::forward_batch).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "unit/model/chunked_run.h"

namespace clawmine::model::deepseek_v4 {

// Test names of a suite instantiated over fixture model names ("tiny-a" -> tiny_a).
inline std::string fixture_test_name(const ::testing::TestParamInfo<const char*>& info) {
  std::string n = info.param;
  for (char& ch : n)
    if (ch == '-') ch = '_';
  return n;
}

// Decode tokens of sequence s at step k: below the fixtures' vocabulary, different per sequence.
inline int32_t token(size_t s, int k) {
  return static_cast<int32_t>((s * 131 + static_cast<size_t>(k) * 17 + 5) % 509 + 2);
}

struct Logits {
  std::vector<std::vector<float>> logits;  // [sequence][step * vocab]
};

// Each sequence's prompt through forward(), then `steps` decode tokens: one sequence at a time
// (batched = false) or all sequences per step through forward_batch.
inline Logits decode(const Model& m, ops::Backend& be, const std::vector<int>& prompts, int steps, bool batched) {
  const ForwardOptions fo{.official_qdq = true, .all_logits = false};
  std::vector<SequenceCache> caches;
  for (size_t s = 0; s < prompts.size(); ++s) caches.push_back(m.new_cache());
  for (size_t s = 0; s < prompts.size(); ++s) {
    std::vector<int32_t> ids = test_ids(prompts[s] + static_cast<int>(s));
    ids.erase(ids.begin(), ids.begin() + static_cast<long>(s));  // a different prompt per sequence
    m.forward(be, caches[s], ids, fo);
  }
  Logits r;
  r.logits.resize(prompts.size());
  const int64_t V = m.config().vocab_size;
  for (int k = 0; k < steps; ++k) {
    if (batched) {
      std::vector<SequenceCache*> ptrs;
      std::vector<int32_t> ids;
      for (size_t s = 0; s < prompts.size(); ++s) {
        ptrs.push_back(&caches[s]);
        ids.push_back(token(s, k));
      }
      const Buffer out = m.forward_batch(be, ptrs, ids, fo);
      EXPECT_EQ(out.view().shape, (Shape{static_cast<int64_t>(prompts.size()), V}));
      for (size_t s = 0; s < prompts.size(); ++s)
        r.logits[s].insert(r.logits[s].end(), out.f32() + s * V, out.f32() + (s + 1) * V);
    } else {
      for (size_t s = 0; s < prompts.size(); ++s) {
        const Buffer out = m.forward(be, caches[s], {token(s, k)}, fo);
        r.logits[s].insert(r.logits[s].end(), out.f32(), out.f32() + V);
      }
    }
  }
  for (size_t s = 0; s < prompts.size(); ++s)
    EXPECT_EQ(caches[s].position, prompts[s] + steps) << "sequence " << s;
  return r;
}

// The greedy tokens of forward_greedy / forward_batch_greedy against the first maximum of the
// logits that forward / forward_batch give for the same inputs (separate caches, equal ids):
// exactly equal ids for every prompt and `steps` decode steps of every sequence.
inline void expect_greedy_matches_logits(const Model& m, ops::Backend& be, const std::vector<int>& prompts, int steps,
                                         bool batched) {
  const ForwardOptions fo{.official_qdq = true, .all_logits = false};
  const int64_t V = m.config().vocab_size;
  auto first_max = [&](const float* row) { return static_cast<int32_t>(std::max_element(row, row + V) - row); };
  std::vector<SequenceCache> with_logits, greedy;
  for (size_t s = 0; s < prompts.size(); ++s) {
    with_logits.push_back(m.new_cache());
    greedy.push_back(m.new_cache());
  }
  for (size_t s = 0; s < prompts.size(); ++s) {
    std::vector<int32_t> ids = test_ids(prompts[s] + static_cast<int>(s));
    ids.erase(ids.begin(), ids.begin() + static_cast<long>(s));
    const Buffer out = m.forward(be, with_logits[s], ids, fo);
    const GreedyToken g = m.forward_greedy(be, greedy[s], ids, fo);
    EXPECT_EQ(g.non_finite_at, -1);
    EXPECT_EQ(g.id, first_max(out.f32())) << "prompt of sequence " << s;
  }
  for (int k = 0; k < steps; ++k) {
    std::vector<SequenceCache*> pl, pg;
    std::vector<int32_t> ids;
    for (size_t s = 0; s < prompts.size(); ++s) {
      pl.push_back(&with_logits[s]);
      pg.push_back(&greedy[s]);
      ids.push_back(token(s, k));
    }
    if (batched) {
      const Buffer out = m.forward_batch(be, pl, ids, fo);
      const std::vector<GreedyToken> g = m.forward_batch_greedy(be, pg, ids, fo);
      ASSERT_EQ(g.size(), prompts.size());
      for (size_t s = 0; s < prompts.size(); ++s)
        EXPECT_EQ(g[s].id, first_max(out.f32() + s * V)) << "sequence " << s << ", step " << k;
    } else {
      for (size_t s = 0; s < prompts.size(); ++s) {
        const Buffer out = m.forward(be, with_logits[s], {ids[s]}, fo);
        EXPECT_EQ(m.forward_greedy(be, greedy[s], {ids[s]}, fo).id, first_max(out.f32()))
            << "sequence " << s << ", step " << k;
      }
    }
  }
  for (size_t s = 0; s < prompts.size(); ++s) EXPECT_EQ(greedy[s].position, prompts[s] + steps) << "sequence " << s;
}

}  // namespace clawmine::model::deepseek_v4
