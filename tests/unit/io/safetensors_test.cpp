// Safetensors round trips: every dtype, scalars and zero-size tensors, metadata, the exact
// header bytes the reference writer produces, and writer-side errors.
#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "unit/io/io_test_util.h"
#include "support/test_support.h"

namespace clawmine::io {
namespace {

const DType kAllDTypes[] = {DType::kF32, DType::kF16,  DType::kBF16, DType::kF8E4M3, DType::kF8E8M0,
                            DType::kU8,  DType::kI8,   DType::kI32,  DType::kI64};

// Bytes for `n` elements of dtype t: encoded normals for float types, random bytes otherwise.
std::vector<uint8_t> random_bytes(DType t, size_t n, uint32_t seed) {
  std::vector<uint8_t> out(n * dtype_size(t));
  const std::vector<float> x = clawmine::test::random_normal(n, seed);
  std::mt19937 rng(seed);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::kF32) {
      std::memcpy(&out[4 * i], &x[i], 4);
    } else if (t == DType::kBF16 || t == DType::kF16) {
      const uint16_t h = t == DType::kBF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
      std::memcpy(&out[2 * i], &h, 2);
    } else {
      for (size_t b = 0; b < dtype_size(t); ++b) out[i * dtype_size(t) + b] = static_cast<uint8_t>(rng() | 1);
    }
  }
  return out;
}

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(Safetensors, RoundTripsEveryDType) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "all.safetensors";
  std::vector<std::vector<uint8_t>> data;
  std::vector<TensorToWrite> tensors;
  const Shape shapes[] = {{3, 5}, {7}, {2, 3, 4}};
  uint32_t seed = 1;
  for (DType t : kAllDTypes) {
    const Shape& shape = shapes[seed % 3];
    data.push_back(random_bytes(t, static_cast<size_t>(shape_numel(shape)), seed));
    tensors.push_back({str_cat("layers.", seed, ".", dtype_name(t)), t, shape, data.back().data()});
    ++seed;
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "round trip"}};
  write_safetensors(path, tensors, meta);

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->path(), path.string());
  EXPECT_EQ(f->metadata(), meta);
  ASSERT_EQ(f->tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    // Written contiguously in the given order, so offset order is the given order.
    const TensorInfo& t = f->tensors()[i];
    EXPECT_EQ(t.name, tensors[i].name);
    EXPECT_EQ(t.dtype, tensors[i].dtype);
    EXPECT_EQ(t.shape, tensors[i].shape);
    EXPECT_EQ(t.file, path.string());
    ASSERT_EQ(t.nbytes, data[i].size());
    EXPECT_EQ(std::memcmp(t.data, data[i].data(), t.nbytes), 0) << t.name;
    EXPECT_EQ(f->find(t.name), &t);
    const TensorView v = t.view();
    EXPECT_EQ(v.dtype, t.dtype);
    EXPECT_EQ(v.shape, t.shape);
    EXPECT_EQ(v.device, Device::kCpu);
    EXPECT_EQ(v.data, t.data);
    EXPECT_EQ(v.nbytes(), t.nbytes);
  }
  EXPECT_EQ(f->find("layers.missing"), nullptr);
  // Header padded to 8 bytes, so the data section starts 8-aligned relative to the file.
  const std::string bytes = read_all(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
}

TEST(Safetensors, F32ValuesSurviveThroughView) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "w.safetensors";
  const std::vector<float> w = clawmine::test::random_normal(24, 7);
  write_safetensors(path, {{"w", DType::kF32, {4, 6}, w.data()}});
  auto f = SafetensorsFile::open(path);
  const TensorView v = f->find("w")->view();
  std::vector<float> back(24);
  clawmine::test::poison(back);
  for (size_t i = 0; i < back.size(); ++i) back[i] = load_as_f32(v.data, v.dtype, i);
  EXPECT_EQ(clawmine::test::max_rel_diff(back, w), 0.0);
}

TEST(Safetensors, HeaderBytesMatchTheReferenceWriter) {
  // safetensors (Rust) writes compact JSON in the given key order and pads with spaces to 8.
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "a.safetensors";
  const float a[2] = {1.5f, -2.0f};
  write_safetensors(path, {{"a", DType::kF32, {2}, a}});
  const std::string json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string padded = json + std::string((8 - json.size() % 8) % 8, ' ');
  std::string expected = test::le64(padded.size()) + padded;
  expected.append(reinterpret_cast<const char*>(a), sizeof a);
  EXPECT_EQ(read_all(path), expected);
}

TEST(Safetensors, MetadataWrittenOnlyWhenPresent) {
  clawmine::test::TempDir tmp;
  const float a[1] = {3.0f};
  write_safetensors(tmp.path() / "plain.safetensors", {{"a", DType::kF32, {1}, a}});
  EXPECT_EQ(read_all(tmp.path() / "plain.safetensors").find("__metadata__"), std::string::npos);
  write_safetensors(tmp.path() / "meta.safetensors", {{"a", DType::kF32, {1}, a}}, {{"k", "v"}});
  const std::string bytes = read_all(tmp.path() / "meta.safetensors");
  EXPECT_NE(bytes.find(R"("__metadata__":{"k":"v"})"), std::string::npos);
  EXPECT_TRUE(SafetensorsFile::open(tmp.path() / "plain.safetensors")->metadata().empty());
}

TEST(Safetensors, ScalarsZeroSizeAndEmptyFiles) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "z.safetensors";
  const int64_t scalar = -42;
  const float row[3] = {1.0f, 2.0f, 3.0f};
  write_safetensors(path, {{"empty", DType::kBF16, {0, 16}, nullptr},
                           {"scalar", DType::kI64, {}, &scalar},
                           {"also_empty", DType::kF32, {4, 0}, nullptr},
                           {"row", DType::kF32, {3}, row}});
  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), 4u);
  EXPECT_EQ(f->find("empty")->nbytes, 0u);
  EXPECT_EQ(f->find("empty")->shape, (Shape{0, 16}));
  EXPECT_EQ(f->find("also_empty")->nbytes, 0u);
  EXPECT_TRUE(f->find("scalar")->shape.empty());
  int64_t back = 0;
  std::memcpy(&back, f->find("scalar")->data, 8);
  EXPECT_EQ(back, scalar);
  EXPECT_EQ(std::memcmp(f->find("row")->data, row, sizeof row), 0);

  const auto none = tmp.path() / "none.safetensors";
  write_safetensors(none, {});
  EXPECT_TRUE(SafetensorsFile::open(none)->tensors().empty());
}

TEST(Safetensors, TensorsAreListedInOffsetOrder) {
  // Header lists names alphabetically-reversed against their offsets; gaps are allowed.
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "order.safetensors";
  test::write_bytes(path, test::safetensors_bytes(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[10,12]},)"
                                                  R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                                  R"("c":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}})",
                                                  16));
  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "b");
  EXPECT_EQ(f->tensors()[1].name, "c");
  EXPECT_EQ(f->tensors()[2].name, "a");
}

TEST(Safetensors, WriterRejectsBadInputNamingFileAndTensor) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "bad.safetensors";
  const float a[4] = {1, 2, 3, 4};
  std::string e = test::error_of([&] { write_safetensors(path, {{"w", DType::kF32, {1}, a}, {"w", DType::kF32, {1}, a}}); });
  EXPECT_TRUE(test::contains(e, "bad.safetensors"));
  EXPECT_TRUE(test::contains(e, "\"w\""));
  e = test::error_of([&] { write_safetensors(path, {{"neg", DType::kF32, {-1, 4}, a}}); });
  EXPECT_TRUE(test::contains(e, "bad.safetensors"));
  EXPECT_TRUE(test::contains(e, "neg"));
  e = test::error_of([&] { write_safetensors(path, {{"__metadata__", DType::kF32, {1}, a}}); });
  EXPECT_TRUE(test::contains(e, "__metadata__"));
  e = test::error_of([&] { write_safetensors(path, {{"nodata", DType::kF32, {4}, nullptr}}); });
  EXPECT_TRUE(test::contains(e, "nodata"));
  const auto unwritable = tmp.path() / "no_such_dir" / "out.safetensors";
  e = test::error_of([&] { write_safetensors(unwritable, {{"w", DType::kF32, {4}, a}}); });
  EXPECT_TRUE(test::contains(e, unwritable.string()));
}

}  // namespace
}  // namespace clawmine::io
