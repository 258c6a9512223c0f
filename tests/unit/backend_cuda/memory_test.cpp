// The CUDA backend's memory ops (backend/cuda/memory.cu): the long-lived first-fit allocator
// (reuse, coalescing, alignment, a clear error when the arena is exhausted), the scratch bump
// region (marks give the same addresses back), upload/download through the pinned staging ring
// (large random buffers, odd sizes, many small uploads sharing a buffer, the source reusable as
// soon as upload returns), copy with F32/BF16/F16 conversion and fill. Skips without a GPU.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "unit/backend_cuda/cuda_test_util.h"

namespace clawmine::test {
namespace {

using backend::cuda::arena_usage;
using ops::DeviceBuffer;

uintptr_t addr(const TensorView& v) { return reinterpret_cast<uintptr_t>(v.data); }

// Random bytes from splitmix64 (fast enough for hundreds of MiB).
std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> out(n);
  uint64_t x = seed;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(out.data() + i, &z, 8);
  }
  for (; i < n; ++i) out[i] = static_cast<uint8_t>(i * 131 + seed);
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaBackendNoGpu, MakeBackendWithoutDeviceIsAClearError) {
  if (backend::cuda::device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  const std::string msg = error_of([] { backend::cuda::make_cuda_backend({}); });
  EXPECT_NE(msg.find("no CUDA device"), std::string::npos) << msg;
}

TEST(CudaBackendNoGpu, ArenaUsageOfCpuBackendIsZero) {
  auto cpu = ops::make_cpu_backend(1);
  const auto u = arena_usage(*cpu);
  EXPECT_EQ(u.arena_bytes, 0u);
  EXPECT_EQ(u.allocated, 0u);
  EXPECT_EQ(u.scratch_bytes, 0u);
}

class CudaMemoryTest : public GpuTest {};

// Host code only: runs with or without a device.
TEST(CudaBackendNoGpu, EnvCountsAreCheckedAndNamed) {
  const char* name = "CLAWMINE_TEST_ENV_COUNT";
  ::unsetenv(name);
  EXPECT_EQ(backend::cuda::env_count(name, 1, 16), 0);
  ::setenv(name, "", 1);
  EXPECT_EQ(backend::cuda::env_count(name, 1, 16), 0);
  ::setenv(name, "8", 1);
  EXPECT_EQ(backend::cuda::env_count(name, 1, 16), 8);
  for (const char* bad : {"0", "17", "-3", "8x", "x", "99999999999999999999"}) {
    SCOPED_TRACE(bad);
    ::setenv(name, bad, 1);
    try {
      backend::cuda::env_count(name, 1, 16);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(name) + "=" + bad), std::string::npos) << e.what();
    }
  }
  ::unsetenv(name);
}

// env_setting: read once on first use, a test's stored value wins, -1 goes back to the reader; a
// reader that throws stores nothing.
TEST(CudaBackendNoGpu, EnvSettingsAreReadOnceAndOverridable) {
  static int reads = 0;
  static bool fail = false;
  std::atomic<int> v{-1};
  auto read = [] {
    ++reads;
    if (fail) throw Error("bad setting");
    return 2;
  };
  reads = 0;
  EXPECT_EQ(backend::cuda::env_setting(v, read), 2);
  EXPECT_EQ(backend::cuda::env_setting(v, read), 2);
  EXPECT_EQ(reads, 1);
  v.store(0);
  EXPECT_EQ(backend::cuda::env_setting(v, read), 0);
  EXPECT_EQ(reads, 1);
  v.store(-1);
  fail = true;
  EXPECT_NE(error_of([&] { backend::cuda::env_setting(v, read); }).find("bad setting"), std::string::npos);
  EXPECT_EQ(v.load(), -1);
  fail = false;
  EXPECT_EQ(backend::cuda::env_setting(v, read), 2);
  EXPECT_EQ(reads, 3);
}

TEST_F(CudaMemoryTest, OptionsAreChecked) {
  backend::cuda::CudaOptions o;
  o.device = backend::cuda::device_count();
  EXPECT_NE(error_of([&] { backend::cuda::make_cuda_backend(o); }).find("out of range"), std::string::npos);
  o.device = 0;
  o.memory_fraction = 1.5;
  EXPECT_NE(error_of([&] { backend::cuda::make_cuda_backend(o); }).find("--gpu-memory-fraction"), std::string::npos);
  EXPECT_EQ(cuda->device(), Device::kCuda);
  EXPECT_EQ(cuda->act_dtype(), DType::kF32);
}

TEST_F(CudaMemoryTest, AllocateReleaseReuseAndCoalesce) {
  const auto base = arena_usage(*cuda);
  EXPECT_GT(base.arena_bytes, base.scratch_bytes);
  EXPECT_GT(base.scratch_bytes, 0u);

  TensorView a = cuda->allocate(DType::kF32, {1000});  // 4000 bytes -> 4096
  TensorView b = cuda->allocate(DType::kBF16, {3, 7});  // 42 bytes -> 256
  TensorView c = cuda->allocate(DType::kU8, {1});
  for (const TensorView* v : {&a, &b, &c}) {
    EXPECT_EQ(addr(*v) % 256, 0u);
    EXPECT_EQ(v->device, Device::kCuda);
  }
  EXPECT_EQ(addr(b), addr(a) + 4096);  // first fit: adjacent blocks
  EXPECT_EQ(addr(c), addr(b) + 256);
  EXPECT_EQ(arena_usage(*cuda).allocated, base.allocated + 4096 + 256 + 256);

  // A released block is reused by the next request that fits.
  cuda->release(b);
  TensorView b2 = cuda->allocate(DType::kI32, {10});
  EXPECT_EQ(addr(b2), addr(b));
  cuda->release(b2);

  // a and b's hole and c coalesce with the free tail: one request spanning them all fits at a.
  cuda->release(a);
  cuda->release(c);
  EXPECT_EQ(arena_usage(*cuda).allocated, base.allocated);
  TensorView big = cuda->allocate(DType::kU8, {4096 + 256 + 256 + 1000});
  EXPECT_EQ(addr(big), addr(a));
  cuda->release(big);

  // Releasing twice, or something not from this backend, is an error.
  EXPECT_THROW(cuda->release(big), Error);
  float host = 0;
  EXPECT_THROW(cuda->release(TensorView{DType::kF32, Device::kCuda, {1}, &host}), Error);

  // Zero-element tensors still get a distinct, valid address.
  TensorView z = cuda->allocate(DType::kF32, {0, 16});
  EXPECT_NE(z.data, nullptr);
  cuda->release(z);
}

TEST_F(CudaMemoryTest, OverAllocationNamesSizesAndTheFlag) {
  const auto u = arena_usage(*cuda);
  const std::string msg = error_of([&] { cuda->allocate(DType::kU8, {static_cast<int64_t>(u.arena_bytes)}); });
  EXPECT_NE(msg.find("--gpu-memory-fraction"), std::string::npos) << msg;
  EXPECT_NE(msg.find("MiB"), std::string::npos) << msg;
  // The failed request left the allocator intact.
  DeviceBuffer ok(*cuda, DType::kF32, {16});
  EXPECT_NE(ok.view().data, nullptr);
  EXPECT_EQ(arena_usage(*cuda).allocated, u.allocated + 256);
}

TEST_F(CudaMemoryTest, ScratchMarkResetGivesTheSameAddresses) {
  std::vector<uintptr_t> first, second;
  for (int round = 0; round < 2; ++round) {
    ops::ScratchFrame frame(*cuda);
    auto& got = round == 0 ? first : second;
    got.push_back(addr(cuda->scratch(DType::kF32, {17})));
    got.push_back(addr(cuda->scratch(DType::kBF16, {5, 300})));
    {
      ops::ScratchFrame inner(*cuda);
      got.push_back(addr(cuda->scratch(DType::kI32, {1})));
    }
    got.push_back(addr(cuda->scratch(DType::kU8, {0})));
  }
  EXPECT_EQ(first, second);
  for (uintptr_t p : first) EXPECT_EQ(p % 256, 0u);
  EXPECT_EQ(first[1], first[0] + 256);  // 68 bytes -> 256
  EXPECT_EQ(first[2], first[1] + 3072);  // 3000 bytes -> 3072
  EXPECT_EQ(first[3], first[2]);         // the inner frame returned its view
  EXPECT_EQ(cuda->scratch_mark(), 0u);
  EXPECT_GE(arena_usage(*cuda).scratch_peak, 256u + 3072u + 256u);

  // Exhausting the region is an error naming the sizes; the region stays usable.
  const auto u = arena_usage(*cuda);
  const std::string msg =
      error_of([&] { cuda->scratch(DType::kU8, {static_cast<int64_t>(u.scratch_bytes) + 1}); });
  EXPECT_NE(msg.find("scratch region is exhausted"), std::string::npos) << msg;
  EXPECT_NE(msg.find("MiB"), std::string::npos) << msg;
  EXPECT_NO_THROW(cuda->scratch(DType::kF32, {4}));
  cuda->scratch_reset(0);
}

// > 256 MiB of random bytes (several staging buffers, a ragged tail), the host source scribbled
// over as soon as upload returns: the device must hold the bytes as they were at the call.
TEST_F(CudaMemoryTest, LargeUploadDownloadRoundTrip) {
  const size_t n = (size_t{300} << 20) + 12345;
  const std::vector<uint8_t> want = random_bytes(n, 7);
  std::vector<uint8_t> src = want;
  DeviceBuffer d(*cuda, DType::kU8, {static_cast<int64_t>(n)});
  cuda->upload(src.data(), d.view());
  std::memset(src.data(), 0xee, src.size());
  std::vector<uint8_t> got(n, 0x5a);
  cuda->download(d.view(), got.data());
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += got[i] != want[i];
  EXPECT_EQ(bad, 0u);

  // A second, different buffer through the same ring (staging reuse after a download).
  const std::vector<uint8_t> want2 = random_bytes(n, 8);
  cuda->upload(want2.data(), d.view());
  cuda->download(d.view(), got.data());
  EXPECT_TRUE(got == want2);
}

// Many small uploads share a staging buffer; each must land intact.
TEST_F(CudaMemoryTest, ManySmallUploads) {
  constexpr int kCount = 3000;
  std::vector<DeviceBuffer> bufs;
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < kCount; ++i) {
    const int64_t len = 1 + (i * 37) % 5000;
    std::vector<int32_t> v(static_cast<size_t>(len));
    for (int64_t j = 0; j < len; ++j) v[static_cast<size_t>(j)] = i * 100003 + static_cast<int32_t>(j);
    bufs.emplace_back(*cuda, DType::kI32, Shape{len});
    cuda->upload(v.data(), bufs.back().view());
    std::fill(v.begin(), v.end(), -1);  // the source is free once upload returns
    for (int64_t j = 0; j < len; ++j) v[static_cast<size_t>(j)] = i * 100003 + static_cast<int32_t>(j);
    want.push_back(std::move(v));
  }
  for (int i = 0; i < kCount; ++i) {
    const auto got = download_as<int32_t>(*cuda, bufs[static_cast<size_t>(i)].view());
    ASSERT_EQ(got, want[static_cast<size_t>(i)]) << "upload " << i;
  }
}

TEST_F(CudaMemoryTest, CopyConvertsBetweenFloatTypes) {
  const int64_t n = 100003;
  const std::vector<float> x = random_normal(static_cast<size_t>(n), 11, 3.0f);
  DeviceBuffer f32 = upload_f32(*cuda, x, {n});

  // Same dtype: a byte copy.
  DeviceBuffer same = poisoned(*cuda, DType::kF32, {n});
  cuda->copy(f32.view(), same.view());
  EXPECT_EQ(download_f32(*cuda, same.view()), x);

  // F32 -> BF16 / F16 round to nearest even, exactly as core/dtype.h does on the host.
  DeviceBuffer bf = poisoned(*cuda, DType::kBF16, {n});
  DeviceBuffer hf = poisoned(*cuda, DType::kF16, {n});
  cuda->copy(f32.view(), bf.view());
  cuda->copy(f32.view(), hf.view());
  const auto bf_bits = download_as<uint16_t>(*cuda, bf.view());
  const auto hf_bits = download_as<uint16_t>(*cuda, hf.view());
  size_t bad_bf = 0, bad_hf = 0;
  for (int64_t i = 0; i < n; ++i) {
    bad_bf += bf_bits[static_cast<size_t>(i)] != f32_to_bf16(x[static_cast<size_t>(i)]);
    bad_hf += hf_bits[static_cast<size_t>(i)] != f32_to_f16(x[static_cast<size_t>(i)]);
  }
  EXPECT_EQ(bad_bf, 0u);
  EXPECT_EQ(bad_hf, 0u);

  // BF16 -> F32 and F16 -> BF16 widen exactly (F16 -> BF16 rounds once, from the exact value).
  DeviceBuffer back = poisoned(*cuda, DType::kF32, {n});
  cuda->copy(bf.view(), back.view());
  const auto wide = download_f32(*cuda, back.view());
  DeviceBuffer hb = poisoned(*cuda, DType::kBF16, {n});
  cuda->copy(hf.view(), hb.view());
  const auto hb_bits = download_as<uint16_t>(*cuda, hb.view());
  size_t bad_wide = 0, bad_hb = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    bad_wide += wide[k] != bf16_to_f32(bf_bits[k]);
    bad_hb += hb_bits[k] != f32_to_bf16(f16_to_f32(hf_bits[k]));
  }
  EXPECT_EQ(bad_wide, 0u);
  EXPECT_EQ(bad_hb, 0u);

  // Element counts must match; integer dtypes do not convert.
  DeviceBuffer shorter = poisoned(*cuda, DType::kF32, {n - 1});
  EXPECT_THROW(cuda->copy(f32.view(), shorter.view()), Error);
  DeviceBuffer ints(*cuda, DType::kI32, {n});
  EXPECT_THROW(cuda->copy(ints.view(), f32.view()), Error);
  // Host tensors are rejected by name.
  std::vector<float> host(static_cast<size_t>(n));
  const std::string msg =
      error_of([&] { cuda->copy(TensorView{DType::kF32, Device::kCpu, {n}, host.data()}, f32.view()); });
  EXPECT_NE(msg.find("host memory"), std::string::npos) << msg;
}

TEST_F(CudaMemoryTest, FillWritesEveryElement) {
  const int64_t n = (int64_t{1} << 22) + 7;  // more elements than the capped grid has threads
  for (const DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    DeviceBuffer d(*cuda, t, {n});
    cuda->fill(d.view(), std::nanf(""));
    auto v = download_f32(*cuda, d.view());
    size_t not_nan = 0;
    for (float f : v) not_nan += !std::isnan(f);
    EXPECT_EQ(not_nan, 0u) << dtype_name(t);
    cuda->fill(d.view(), -1.5f);
    v = download_f32(*cuda, d.view());
    size_t wrong = 0;
    for (float f : v) wrong += f != -1.5f;
    EXPECT_EQ(wrong, 0u) << dtype_name(t);
  }
  DeviceBuffer ints(*cuda, DType::kI32, {4});
  EXPECT_THROW(cuda->fill(ints.view(), 1.0f), Error);
  cuda->synchronize();
}

}  // namespace
}  // namespace clawmine::test
