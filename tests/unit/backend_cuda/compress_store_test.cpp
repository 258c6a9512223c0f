// The decode-step fusions of the KV compressor on CUDA (compressor.cu compress_store,
// linear_multi.cu), each against its unfused composition on CUDA (bit for bit: they share the
// device code) and against the CPU reference:
//  - linear_multi: wkv/wgate-like projections of one x in one launch vs linear() per job, dense
//    F32/BF16 and FP8 weights (FP8 with BF16 x runs the jobs one by one), F32/BF16 x, T = 1, 2, 5
//    and a prefill size, evenly spaced outputs (one launch) and scattered ones (per job).
//  - compress_store: compress_chunk -> norm_rope_qdq -> scatter_rows in one kernel vs the three
//    ops, CSA (overlap, rate 4; hd 512 with FP8 nope, hd 128 with Hadamard FP4) and HCA (rate
//    128), chunks of T = 1, 2, 5 after a prefill of 37 tokens (and from position 0), so windows
//    complete inside a step and not; pooled rows, entry positions, the entry store (BF16 and F32)
//    and the carried state all compared; outputs and state start NaN-poisoned.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "unit/backend_cuda/linear_test_util.h"
#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

class CudaCompressStore : public GpuTest {};

// ---- linear_multi ------------------------------------------------------------------------------

TEST_F(CudaCompressStore, LinearMultiMatchesLinears) {
  const int64_t K = 512, N = 256;
  uint32_t seed = 31000;
  for (const TestFormat f : {TestFormat::kBF16, TestFormat::kF32, TestFormat::kFp8E8M0}) {
    for (const int64_t n_jobs : {2, 3}) {
      std::vector<std::unique_ptr<TestLinear>> ws;
      for (int64_t i = 0; i < n_jobs; ++i)
        ws.push_back(make_linear(*cuda, f, random_normal(N * K, ++seed, 0.05f), N, K, str_cat("w", i)));
      for (const int64_t T : {1, 2, 5, 40}) {
        for (const DType x_t : {DType::kF32, DType::kBF16}) {
          for (const bool even : {true, false}) {
            SCOPED_TRACE(str_cat(format_label(f), " jobs ", n_jobs, " T ", T, " x ", dtype_label(x_t),
                                 even ? " evenly spaced outputs" : " scattered outputs"));
            const std::vector<float> xv = random_normal(T * K, ++seed);
            const OnBoth x = same_floats(*cpu, *cuda, xv, {T, K}, x_t);
            // Outputs: slices of one [n, T, N] buffer (even) or separate buffers with a gap.
            const ops::DeviceBuffer all = poisoned(*cuda, DType::kF32, {n_jobs + 1, T, N});
            std::vector<ops::DeviceBuffer> own;
            std::vector<ops::Backend::LinearJob> jobs;
            for (int64_t i = 0; i < n_jobs; ++i) {
              TensorView o;
              if (even) {
                o = all.view().slice0(i, i + 1).reshaped({T, N});
              } else {
                own.push_back(poisoned(*cuda, DType::kF32, {T + i + 1, N}));
                o = own.back().view().slice0(0, T);
              }
              jobs.push_back({&ws[i]->dev, o});
            }
            cuda->linear_multi(x.gpu.view(), jobs.data(), n_jobs);
            for (int64_t i = 0; i < n_jobs; ++i) {
              const ops::DeviceBuffer ref = poisoned(*cuda, DType::kF32, {T, N});
              cuda->linear(x.gpu.view(), ws[i]->dev, ref.view());
              const ops::DeviceBuffer c_out = poisoned(*cpu, DType::kF32, {T, N});
              cpu->linear(x.cpu.view(), ws[i]->host, c_out.view());
              const std::vector<float> got = download_f32(*cuda, jobs[i].out);
              EXPECT_TRUE(same_bits(got, download_f32(*cuda, ref.view()))) << "job " << i << " vs linear";
              EXPECT_TRUE(within(got, download_f32(*cpu, c_out.view()), 1e-4)) << "job " << i << " vs the CPU";
            }
            if (even)  // the spare slice stays untouched
              for (const float v : download_f32(*cuda, all.view().slice0(n_jobs, n_jobs + 1))) ASSERT_TRUE(std::isnan(v));
          }
        }
      }
    }
  }
}

// ---- compress_store ----------------------------------------------------------------------------

struct StoreCase {
  const char* name;
  int64_t rate, hd;
  bool overlap;
  ops::Qdq qdq;
  int64_t rope_dim;
};

struct StoreInputs {
  std::vector<float> kv, gate, ape, norm_w, inv_freq;
};

struct StoreRun {
  std::vector<float> pooled;  // every chunk's prepared rows, in order
  std::vector<int32_t> entry_positions;
  std::vector<float> entries, pending_kv, pending_gate, overlap_kv, overlap_gate;  // after the last chunk
};

enum class Path { kOp, kComposition };

StoreRun run_store(ops::Backend& be, Path path, const StoreCase& c, const StoreInputs& in,
                   const std::vector<int64_t>& chunks, DType entries_t) {
  const int64_t m = c.rate, hd = c.hd, W = (c.overlap ? 2 : 1) * hd, R = c.rope_dim;
  int64_t total = 0;
  for (const int64_t T : chunks) total += T;
  const int64_t capacity = total / m + 1;
  ops::DeviceBuffer pend_kv = poisoned(be, DType::kF32, {m, W}), pend_gate = poisoned(be, DType::kF32, {m, W});
  ops::DeviceBuffer ov_kv = poisoned(be, DType::kF32, {m, hd}), ov_gate = poisoned(be, DType::kF32, {m, hd});
  const ops::CompressorStateView state{pend_kv.view(), pend_gate.view(), c.overlap ? ov_kv.view() : TensorView{},
                                       c.overlap ? ov_gate.view() : TensorView{}};
  ops::DeviceBuffer entries = poisoned(be, entries_t, {capacity, hd});
  const ops::DeviceBuffer ape = upload_f32(be, in.ape, {m, W});
  const bool gpu = be.device() == Device::kCuda;
  const ops::DeviceBuffer norm_w = upload_f32(be, in.norm_w, {hd}, gpu ? DType::kBF16 : DType::kF32);
  const ops::DeviceBuffer inv_freq = upload_f32(be, in.inv_freq, {R / 2});
  const TensorView nw = norm_w.view();
  const ops::Backend::VecPrep prep{
      .norm = true, .norm_weight = &nw, .eps = 1e-6f, .rope_dim = R, .qdq = c.qdq, .n_nope = hd - R};
  StoreRun r;
  int64_t p0 = 0;
  for (const int64_t T : chunks) {
    const std::vector<float> kv(in.kv.begin() + p0 * W, in.kv.begin() + (p0 + T) * W);
    const std::vector<float> gate(in.gate.begin() + p0 * W, in.gate.begin() + (p0 + T) * W);
    const ops::DeviceBuffer d_kv = upload_f32(be, kv, {T, W}), d_gate = upload_f32(be, gate, {T, W});
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(p0 + t);
    const ops::DeviceBuffer d_pos = upload_raw(be, TensorView{DType::kI32, Device::kCpu, {T}, pos.data()});
    const int64_t n_out = (p0 + T - 1) / m - p0 / m + 1;
    const ops::DeviceBuffer pooled = poisoned(be, DType::kF32, {n_out, hd});
    const ops::DeviceBuffer entry_pos = poisoned(be, DType::kI32, {n_out});
    if (path == Path::kOp) {
      be.compress_store(d_kv.view(), d_gate.view(), ape.view(), d_pos.view(), m, c.overlap, state, prep,
                        inv_freq.view(), pooled.view(), entry_pos.view(), entries.view());
    } else {
      be.compress_store_unfused(d_kv.view(), d_gate.view(), ape.view(), d_pos.view(), m, c.overlap, state, prep,
                                inv_freq.view(), pooled.view(), entry_pos.view(), entries.view());
    }
    const std::vector<float> pv = download_f32(be, pooled.view());
    r.pooled.insert(r.pooled.end(), pv.begin(), pv.end());
    const std::vector<int32_t> ep = download_as<int32_t>(be, entry_pos.view());
    r.entry_positions.insert(r.entry_positions.end(), ep.begin(), ep.end());
    p0 += T;
  }
  r.entries = download_f32(be, entries.view());
  const int64_t tail = p0 % m;
  const std::vector<float> pk = download_f32(be, pend_kv.view()), pg = download_f32(be, pend_gate.view());
  r.pending_kv.assign(pk.begin(), pk.begin() + tail * W);
  r.pending_gate.assign(pg.begin(), pg.begin() + tail * W);
  if (c.overlap && p0 >= m) {
    r.overlap_kv = download_f32(be, ov_kv.view());
    r.overlap_gate = download_f32(be, ov_gate.view());
  }
  return r;
}

TEST_F(CudaCompressStore, FusedMatchesComposition) {
  const StoreCase cases[] = {
      {"CSA rate 4 hd 512 fp8", 4, 512, true, ops::Qdq::kFp8Nope, 64},
      {"indexer CSA rate 4 hd 128 hadamard", 4, 128, true, ops::Qdq::kHadamardFp4, 64},
      {"HCA rate 128 hd 512 fp8", 128, 512, false, ops::Qdq::kFp8Nope, 64},
      {"CSA rate 4 hd 512 no qdq", 4, 512, true, ops::Qdq::kNone, 64},
  };
  uint32_t seed = 32000;
  for (const StoreCase& c : cases) {
    const int64_t m = c.rate, W = (c.overlap ? 2 : 1) * c.hd, R = c.rope_dim;
    // A prefill that leaves a window open, then decode steps across at least one boundary.
    const int64_t prefill = m == 128 ? 128 + 120 : 37, steps = m == 128 ? 16 : 14;
    const int64_t total = prefill + steps + 5;
    StoreInputs in;
    in.kv = random_normal(total * W, ++seed);
    in.gate = random_normal(total * W, ++seed, 2.0f);
    in.ape = random_normal(m * W, ++seed);
    in.norm_w = rounded_to(random_normal(c.hd, ++seed, 0.3f), DType::kBF16);
    for (float& v : in.norm_w) v = bf16_to_f32(f32_to_bf16(v + 1.0f));
    for (int64_t i = 0; i < R / 2; ++i)
      in.inv_freq.push_back(static_cast<float>(1.0 / std::pow(10000.0, static_cast<double>(2 * i) / R)));
    for (const int64_t T : {1, 2, 5, 40}) {
      std::vector<std::vector<int64_t>> chunkings;
      if (T == 40) {
        chunkings.push_back({40});  // prefill size: the composition on both paths
      } else {
        std::vector<int64_t> a{prefill}, b;
        for (int64_t p = prefill; p + T <= prefill + steps; p += T) a.push_back(T);
        for (int64_t p = 0; p + T <= 3 * m + 2 && p + T <= total; p += T) b.push_back(T);  // from position 0
        chunkings.push_back(a);
        if (m < 128) chunkings.push_back(b);
      }
      for (const auto& chunks : chunkings) {
        for (const DType entries_t : {DType::kBF16, DType::kF32}) {
          SCOPED_TRACE(str_cat(c.name, ": T ", T, ", ", chunks.size(), " chunks from ", chunks.size() > 1 ? chunks[0] : 0,
                               ", entries ", dtype_label(entries_t)));
          const StoreRun fused = run_store(*cuda, Path::kOp, c, in, chunks, entries_t);
          const StoreRun comp = run_store(*cuda, Path::kComposition, c, in, chunks, entries_t);
          EXPECT_TRUE(same_bits(fused.pooled, comp.pooled)) << "pooled rows";
          EXPECT_EQ(fused.entry_positions, comp.entry_positions) << "entry positions";
          EXPECT_TRUE(same_bits(fused.entries, comp.entries)) << "entry store";
          EXPECT_TRUE(same_bits(fused.pending_kv, comp.pending_kv)) << "pending kv";
          EXPECT_TRUE(same_bits(fused.pending_gate, comp.pending_gate)) << "pending gate";
          EXPECT_TRUE(same_bits(fused.overlap_kv, comp.overlap_kv)) << "overlap kv";
          EXPECT_TRUE(same_bits(fused.overlap_gate, comp.overlap_gate)) << "overlap gate";
          EXPECT_EQ(reported_op_error(*cuda), "");
          if (entries_t == DType::kF32) {  // the CPU keeps F32 entries
            const StoreRun ref = run_store(*cpu, Path::kOp, c, in, chunks, DType::kF32);
            // The norm weight is BF16 on the GPU and the same values in F32 on the CPU. FP8/FP4
            // round trips flip a grid point now and then on F32 rounding differences.
            const double budget = c.qdq == ops::Qdq::kNone ? kF32Budget : 1e-3;
            EXPECT_TRUE(within(fused.pooled, ref.pooled, budget)) << "pooled rows vs the CPU";
            EXPECT_TRUE(within(fused.entries, ref.entries, budget)) << "entry store vs the CPU";
            EXPECT_EQ(fused.entry_positions, ref.entry_positions) << "entry positions vs the CPU";
            EXPECT_TRUE(same_bits(fused.pending_gate, ref.pending_gate)) << "pending gate vs the CPU";
          }
        }
      }
    }
  }
}

// An entry row past the store is reported (scatter_rows' error), as by the composition.
TEST_F(CudaCompressStore, EntryRowOutsideTheStoreIsReported) {
  const int64_t m = 4, hd = 128, W = 2 * hd, R = 64;
  const ops::DeviceBuffer kv = upload_f32(*cuda, random_normal(W, 1), {1, W});
  const ops::DeviceBuffer gate = upload_f32(*cuda, random_normal(W, 2), {1, W});
  const ops::DeviceBuffer ape = upload_f32(*cuda, random_normal(m * W, 3), {m, W});
  std::vector<float> inv(R / 2, 0.01f);
  const ops::DeviceBuffer inv_freq = upload_f32(*cuda, inv, {R / 2});
  int32_t p = 4 * 5 + 3;  // window 5
  const ops::DeviceBuffer pos = upload_raw(*cuda, TensorView{DType::kI32, Device::kCpu, {1}, &p});
  ops::DeviceBuffer pk = poisoned(*cuda, DType::kF32, {m, W}), pg = poisoned(*cuda, DType::kF32, {m, W});
  ops::DeviceBuffer ok = poisoned(*cuda, DType::kF32, {m, hd}), og = poisoned(*cuda, DType::kF32, {m, hd});
  const ops::DeviceBuffer entries = poisoned(*cuda, DType::kBF16, {3, hd});  // rows 0..2 only
  const ops::DeviceBuffer pooled = poisoned(*cuda, DType::kF32, {1, hd}), ep = poisoned(*cuda, DType::kI32, {1});
  const ops::Backend::VecPrep prep{.norm = true, .rope_dim = R, .qdq = ops::Qdq::kHadamardFp4, .n_nope = hd - R};
  cuda->compress_store(kv.view(), gate.view(), ape.view(), pos.view(), m, true,
                       {pk.view(), pg.view(), ok.view(), og.view()}, prep, inv_freq.view(), pooled.view(), ep.view(),
                       entries.view());
  EXPECT_NE(reported_op_error(*cuda), "");
}

}  // namespace
}  // namespace clawmine::test
