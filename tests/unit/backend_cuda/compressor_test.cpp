// The CUDA compress_chunk (compressor.cu) against the CPU reference: the same sequence of
// projections fed in chunks (one pass, chunks of 1, chunks of 7, and an uneven split) so chunks
// start at positions that are not multiples of the rate; every chunk's pooled entries within 1e-5
// (F32) / 1e-2 (BF16 kv and pooled) of the CPU's, the carried state (pending tail rows, CSA
// overlap) equal to the CPU's, and the GPU's entries the same for every chunking. HCA and CSA,
// rate 4 and 128, head dims 512 (V4-Flash), 128 (its indexer) and small odd ones. The initial
// state is NaN on both backends: nothing may read it before writing it. Decode (T = 1 steps after
// a prefill, across window boundaries; the one-launch small-T kernel) gives entries and state bit
// for bit equal to the one-pass (pool + state kernels) run. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

class CudaCompressor : public GpuTest {};

struct CompressorCase {
  const char* name;
  int64_t rate, hd;
  bool overlap;
  int64_t total;  // positions 0 .. total-1
};

// Chunk sizes covering `total` positions: every chunk `size` long (the last shorter), or the
// uneven split {first, rest}.
std::vector<int64_t> chunking(int64_t total, int64_t size, int64_t first = 0) {
  std::vector<int64_t> c;
  if (first > 0 && first < total) {
    c = {first, total - first};
    return c;
  }
  if (size <= 0) size = total;
  for (int64_t p = 0; p < total; p += size) c.push_back(std::min(size, total - p));
  return c;
}

struct RunResult {
  std::vector<float> entries;                    // [n_entries, hd], all chunks' complete entries in order
  std::vector<float> partials;                   // each chunk's incomplete last window's entry so far
  std::vector<int32_t> entry_positions;          // every pooled row's window start
  std::vector<float> pending_kv, pending_gate;   // the defined rows only: [total % m, W]
  std::vector<float> overlap_kv, overlap_gate;   // CSA after the first window: [m, hd]
};

// Feeds the whole sequence through `be` chunk by chunk. kv_dtype: kv, state.pending_kv,
// state.overlap_kv (rounded values on the CPU); out_dtype: pooled.
RunResult run(ops::Backend& be, bool is_cpu, const CompressorCase& c, const std::vector<int64_t>& chunks,
              const std::vector<float>& kv, const std::vector<float>& gate, const std::vector<float>& ape,
              DType kv_dtype, DType out_dtype) {
  const int64_t m = c.rate, W = (c.overlap ? 2 : 1) * c.hd;
  const DType kv_t = is_cpu ? DType::kF32 : kv_dtype, out_t = is_cpu ? DType::kF32 : out_dtype;
  ops::DeviceBuffer pend_kv = poisoned(be, kv_t, {m, W}), pend_gate = poisoned(be, DType::kF32, {m, W});
  ops::DeviceBuffer ov_kv, ov_gate;
  if (c.overlap) {
    ov_kv = poisoned(be, kv_t, {m, c.hd});
    ov_gate = poisoned(be, DType::kF32, {m, c.hd});
  }
  const ops::CompressorStateView state{pend_kv.view(), pend_gate.view(), ov_kv.view(), ov_gate.view()};
  ops::DeviceBuffer d_ape = upload_f32(be, ape, {m, W});
  RunResult r;
  int64_t p0 = 0;
  for (const int64_t T : chunks) {
    const std::vector<float> kv_rows(kv.begin() + p0 * W, kv.begin() + (p0 + T) * W);
    const std::vector<float> gate_rows(gate.begin() + p0 * W, gate.begin() + (p0 + T) * W);
    ops::DeviceBuffer d_kv = upload_f32(be, kv_rows, {T, W}, kv_t), d_gate = upload_f32(be, gate_rows, {T, W});
    const int64_t last = p0 + T - 1, j0 = p0 / m, n_out = last / m - j0 + 1;
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(p0 + t);
    ops::DeviceBuffer d_pos = upload_raw(be, TensorView{DType::kI32, Device::kCpu, {T}, pos.data()});
    ops::DeviceBuffer pooled = poisoned(be, out_t, {n_out, c.hd}), entry_pos = poisoned(be, DType::kI32, {n_out});
    be.compress_chunk(d_kv.view(), d_gate.view(), d_ape.view(), d_pos.view(), m, c.overlap, state, pooled.view(),
                      entry_pos.view());
    const std::vector<float> e = download_f32(be, pooled.view());
    const std::vector<int32_t> ep = download_as<int32_t>(be, entry_pos.view());
    r.entry_positions.insert(r.entry_positions.end(), ep.begin(), ep.end());
    for (int64_t n = 0; n < n_out; ++n) {
      const bool complete = (j0 + n + 1) * m - 1 <= last;
      std::vector<float>& dst = complete ? r.entries : r.partials;
      dst.insert(dst.end(), e.begin() + n * c.hd, e.begin() + (n + 1) * c.hd);
    }
    p0 += T;
  }
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

void check_case(ops::Backend& cpu, ops::Backend& cuda, const CompressorCase& c, DType kv_dtype, DType out_dtype,
                uint32_t seed) {
  const int64_t m = c.rate, W = (c.overlap ? 2 : 1) * c.hd;
  const std::vector<float> kv = rounded_to(random_normal(c.total * W, seed + 1), kv_dtype);
  const std::vector<float> gate = random_normal(c.total * W, seed + 2, 2.0f);  // varied softmax weights
  const std::vector<float> ape = random_normal(m * W, seed + 3);
  const double budget = kv_dtype == DType::kF32 && out_dtype == DType::kF32 ? kF32Budget : kBf16Budget;
  const std::vector<std::vector<int64_t>> chunkings = {chunking(c.total, c.total), chunking(c.total, 1),
                                                       chunking(c.total, 7), chunking(c.total, 0, c.total / 3 + 1)};
  std::vector<float> gpu_one_pass;
  for (const auto& chunks : chunkings) {
    SCOPED_TRACE(str_cat(c.name, " kv ", dtype_label(kv_dtype), " pooled ", dtype_label(out_dtype), ", ",
                         chunks.size(), " chunks, first of ", chunks.front()));
    const RunResult ref = run(cpu, true, c, chunks, kv, gate, ape, kv_dtype, out_dtype);
    const RunResult got = run(cuda, false, c, chunks, kv, gate, ape, kv_dtype, out_dtype);
    ASSERT_EQ(got.entries.size(), static_cast<size_t>(c.total / m * c.hd));
    EXPECT_TRUE(within(got.entries, ref.entries, budget)) << "pooled entries";
    EXPECT_TRUE(within(got.partials, ref.partials, budget)) << "incomplete windows' entries so far";
    EXPECT_EQ(got.entry_positions, ref.entry_positions) << "entry positions";
    // The state holds copies (gate: f32 sum gate + ape on both sides): bit-exact.
    EXPECT_TRUE(same_bits(got.pending_kv, ref.pending_kv)) << "pending kv";
    EXPECT_TRUE(same_bits(got.pending_gate, ref.pending_gate)) << "pending gate";
    EXPECT_TRUE(same_bits(got.overlap_kv, ref.overlap_kv)) << "overlap kv";
    EXPECT_TRUE(same_bits(got.overlap_gate, ref.overlap_gate)) << "overlap gate";
    if (gpu_one_pass.empty()) {
      gpu_one_pass = got.entries;
    } else {
      EXPECT_TRUE(within(got.entries, gpu_one_pass, 1e-6)) << "chunking changes the GPU's entries";
    }
  }
}

TEST_F(CudaCompressor, V4FlashDims) {
  const CompressorCase cases[] = {
      {"CSA rate 4 hd 512", 4, 512, true, 4 * 9 + 3},
      {"HCA rate 128 hd 512", 128, 512, false, 128 * 2 + 77},
      {"indexer CSA rate 4 hd 128", 4, 128, true, 4 * 20 + 1},
  };
  uint32_t seed = 5000;
  for (const CompressorCase& c : cases) {
    check_case(*cpu, *cuda, c, DType::kF32, DType::kF32, seed += 10);
    check_case(*cpu, *cuda, c, DType::kBF16, DType::kBF16, seed += 10);
  }
}

TEST_F(CudaCompressor, SmallOddDims) {
  const CompressorCase cases[] = {
      {"CSA rate 4 hd 8", 4, 8, true, 23},     {"HCA rate 4 hd 36", 4, 36, false, 30},
      {"HCA rate 3 hd 5", 3, 5, false, 17},    {"CSA rate 3 hd 7", 3, 7, true, 20},
      {"CSA rate 128 hd 64", 128, 64, true, 300}, {"HCA rate 1 hd 130", 1, 130, false, 9},
      {"CSA rate 2 hd 3, less than a window", 2, 3, true, 1},
  };
  uint32_t seed = 6000;
  for (const CompressorCase& c : cases) {
    check_case(*cpu, *cuda, c, DType::kF32, DType::kF32, seed += 10);
    check_case(*cpu, *cuda, c, DType::kF32, DType::kBF16, seed += 10);
  }
}

// Decode: a prefill chunk (the pool + state kernels), then T = 1 steps across window boundaries
// (HCA: 250 -> 270 crosses 256; CSA: 39 steps cross several), then the rest in one chunk; and
// T = 1 from position 0. Against the CPU as in check_case, and bit for bit against one pass.
void check_decode(ops::Backend& cpu, ops::Backend& cuda, const CompressorCase& c, int64_t prefill, DType kv_dtype,
                  DType out_dtype, uint32_t seed) {
  const int64_t m = c.rate, W = (c.overlap ? 2 : 1) * c.hd;
  const std::vector<float> kv = rounded_to(random_normal(c.total * W, seed + 1), kv_dtype);
  const std::vector<float> gate = random_normal(c.total * W, seed + 2, 2.0f);
  const std::vector<float> ape = random_normal(m * W, seed + 3);
  const double budget = kv_dtype == DType::kF32 && out_dtype == DType::kF32 ? kF32Budget : kBf16Budget;
  const RunResult one = run(cuda, false, c, chunking(c.total, c.total), kv, gate, ape, kv_dtype, out_dtype);
  std::vector<int64_t> steps = {prefill};
  for (int64_t p = prefill; p < c.total && p < prefill + 20; ++p) steps.push_back(1);
  if (prefill + 20 < c.total) steps.push_back(c.total - prefill - 20);
  for (const auto& chunks : {steps, chunking(c.total, 1)}) {
    SCOPED_TRACE(str_cat(c.name, " kv ", dtype_label(kv_dtype), " pooled ", dtype_label(out_dtype), ", first chunk ",
                         chunks.front(), " of ", chunks.size()));
    const RunResult ref = run(cpu, true, c, chunks, kv, gate, ape, kv_dtype, out_dtype);
    const RunResult got = run(cuda, false, c, chunks, kv, gate, ape, kv_dtype, out_dtype);
    EXPECT_TRUE(within(got.entries, ref.entries, budget)) << "pooled entries";
    EXPECT_TRUE(within(got.partials, ref.partials, budget)) << "incomplete windows' entries so far";
    EXPECT_TRUE(same_bits(got.pending_kv, ref.pending_kv)) << "pending kv";
    EXPECT_TRUE(same_bits(got.pending_gate, ref.pending_gate)) << "pending gate";
    EXPECT_TRUE(same_bits(got.overlap_kv, ref.overlap_kv)) << "overlap kv";
    EXPECT_TRUE(same_bits(got.overlap_gate, ref.overlap_gate)) << "overlap gate";
    EXPECT_TRUE(same_bits(got.entries, one.entries)) << "entries differ from the one-pass run's";
    EXPECT_TRUE(same_bits(got.pending_kv, one.pending_kv) && same_bits(got.pending_gate, one.pending_gate) &&
                same_bits(got.overlap_kv, one.overlap_kv) && same_bits(got.overlap_gate, one.overlap_gate))
        << "state differs from the one-pass run's";
  }
}

TEST_F(CudaCompressor, DecodeStepsBitEqualOnePass) {
  struct Case {
    CompressorCase c;
    int64_t prefill;
  };
  const Case cases[] = {
      {{"CSA rate 4 hd 512", 4, 512, true, 4 * 20 + 3}, 21},
      {{"HCA rate 128 hd 512", 128, 512, false, 128 * 2 + 77}, 250},
      {{"indexer CSA rate 4 hd 128", 4, 128, true, 4 * 20 + 1}, 18},
      {{"CSA rate 128 hd 64", 128, 64, true, 300}, 250},
      {{"HCA rate 3 hd 5", 3, 5, false, 40}, 17},
  };
  uint32_t seed = 7000;
  for (const Case& k : cases) {
    check_decode(*cpu, *cuda, k.c, k.prefill, DType::kF32, DType::kF32, seed += 10);
    check_decode(*cpu, *cuda, k.c, k.prefill, DType::kBF16, DType::kBF16, seed += 10);
  }
}

}  // namespace
}  // namespace clawmine::test
