// .npy round trips and hand-built files of every supported dtype, byte by byte, plus the
// errors for files we do not read. Header layout checked against what numpy writes.
#include "io/npy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include "support/test_support.h"
#include "unit/io/io_test_util.h"

namespace clawmine::io {
namespace {

// A v1.0 .npy file with the given dict text (padded as numpy does) and raw data bytes.
std::string npy_bytes(const std::string& dict, const std::string& data) {
  std::string header = dict;
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::string s = std::string("\x93NUMPY\x01\x00", 8);
  s += static_cast<char>(header.size() & 0xff);
  s += static_cast<char>(header.size() >> 8);
  return s + header + data;
}

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

TEST(Npy, RoundTripsFloat32Shapes) {
  clawmine::test::TempDir tmp;
  uint32_t seed = 3;
  for (const Shape& shape : {Shape{2, 3}, Shape{5}, Shape{}, Shape{2, 1, 4}, Shape{0, 4}}) {
    const auto path = tmp.path() / "a.npy";
    const std::vector<float> x = clawmine::test::random_normal(static_cast<size_t>(shape_numel(shape)), seed++);
    write_npy(path, x.data(), shape);
    const NpyArray a = read_npy(path);
    EXPECT_EQ(a.shape, shape);
    EXPECT_EQ(a.descr, "<f4");
    EXPECT_FALSE(a.is_int());
    EXPECT_TRUE(a.ints.empty());
    ASSERT_EQ(a.floats.size(), x.size());
    EXPECT_EQ(clawmine::test::max_rel_diff(a.floats, x), 0.0) << shape_str(shape);
  }
}

TEST(Npy, HeaderMatchesNumpyLayout) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "h.npy";
  const std::vector<float> x = {1.0f, -2.0f, 3.5f, 0.25f, 8.0f, -0.5f};
  write_npy(path, x.data(), {2, 3});
  std::ifstream in(path, std::ios::binary);
  const std::string bytes(std::istreambuf_iterator<char>(in), {});
  EXPECT_EQ(bytes, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", raw(x)));
  EXPECT_EQ((bytes.size() - x.size() * 4) % 64, 0u);

  write_npy(path, x.data(), {6});
  EXPECT_EQ(read_npy(path).shape, (Shape{6}));
  std::ifstream in1(path, std::ios::binary);
  const std::string one(std::istreambuf_iterator<char>(in1), {});
  EXPECT_NE(one.find("'shape': (6,), }"), std::string::npos);
}

TEST(Npy, ReadsFloat64AndIntegers) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "t.npy";

  const std::vector<double> d = {0.1, -1e-3, 12345.678, -7.0};
  test::write_bytes(path, npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }", raw(d)));
  NpyArray a = read_npy(path);
  EXPECT_EQ(a.shape, (Shape{2, 2}));
  ASSERT_EQ(a.floats.size(), 4u);
  for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(a.floats[i], static_cast<float>(d[i]));

  const std::vector<int32_t> i4 = {-5, 0, 2147483647, -2147483647 - 1, 9};
  test::write_bytes(path, npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }", raw(i4)));
  a = read_npy(path);
  EXPECT_TRUE(a.is_int());
  EXPECT_TRUE(a.floats.empty());
  EXPECT_EQ(a.ints, (std::vector<int64_t>{-5, 0, 2147483647, -2147483648LL, 9}));

  const std::vector<int64_t> i8 = {-(1LL << 40), 3, 1LL << 62};
  test::write_bytes(path, npy_bytes("{\"descr\": \"<i8\", \"shape\": (3,), \"fortran_order\": False}", raw(i8)));
  a = read_npy(path);
  EXPECT_EQ(a.ints, i8);
  EXPECT_EQ(a.numel(), 3);
}

TEST(Npy, ReadsVersion2Header) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "v2.npy";
  const std::vector<float> x = {4.0f, 5.0f};
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
  std::string s = std::string("\x93NUMPY\x02\x00", 8) + test::le64(dict.size()).substr(0, 4) + dict + raw(x);
  test::write_bytes(path, s);
  EXPECT_EQ(read_npy(path).floats, x);
}

TEST(Npy, ErrorsNameTheFile) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "broken-dump.npy";
  const std::vector<float> x = {1.0f, 2.0f};
  const std::vector<std::string> bad = {
      "",
      "NUMPY\x01\x00 garbage",
      npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", raw(x)),
      npy_bytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", raw(x)),
      npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", raw(x)),
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", raw(x)),
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", raw(x)),
      npy_bytes("{'descr': '<f4', 'shape': (2,), }", raw(x)),
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", raw(x)),
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", raw(x)),
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }", raw(x)),
      npy_bytes("{'descr': '<f4' 'fortran_order': False}", raw(x)),
      std::string("\x93NUMPY\x01\x00\xff\x00{}", 12),
      std::string("\x93NUMPY\x07\x00\x02\x00{}", 12),
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    test::write_bytes(path, bad[i]);
    EXPECT_TRUE(test::contains(test::error_of([&] { read_npy(path); }), path.string())) << "case " << i;
  }
  EXPECT_TRUE(test::contains(test::error_of([&] { read_npy(tmp.path() / "absent.npy"); }), "absent.npy"));
  EXPECT_TRUE(test::contains(test::error_of([&] { write_npy(tmp.path() / "no" / "x.npy", x.data(), {2}); }), "x.npy"));
}

}  // namespace
}  // namespace clawmine::io
