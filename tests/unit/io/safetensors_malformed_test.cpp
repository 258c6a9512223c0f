// Malformed safetensors files, written byte by byte: each must be refused at open with one
// clawmine::Error whose message names the file and, where there is one, the tensor.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <random>

#include "io/safetensors.h"
#include "support/test_support.h"
#include "unit/io/io_test_util.h"

namespace clawmine::io {
namespace {

struct Malformed {
  const char* case_name;
  std::string bytes;  // the whole file
  std::string tensor;  // must appear in the message; "" when the error is about the file
};

// Lets GoogleTest print a case by name instead of dumping its bytes.
void PrintTo(const Malformed& m, std::ostream* os) { *os << m.case_name; }

// One well-formed entry with a given data_offsets/shape/dtype, for building headers.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
}

std::string header_file(const std::string& json, size_t data_bytes) {
  return test::safetensors_bytes(json, data_bytes);
}

std::vector<Malformed> malformed_cases() {
  const std::string good = entry("model.ok", "F32", "[2]", "[0,8]");
  std::vector<Malformed> c;
  c.push_back({"Empty", "", ""});
  c.push_back({"ShorterThanLength", std::string("\x05\x00\x00", 3), ""});
  c.push_back({"HeaderLengthZero", test::le64(0) + std::string(16, 'x'), ""});
  c.push_back({"HeaderLengthHuge", test::le64(kMaxHeaderBytes + 1) + "{}", ""});
  c.push_back({"HeaderLengthAllOnes", test::le64(~0ull) + "{}", ""});
  c.push_back({"HeaderPastEnd", test::le64(64) + "{\"a\":1}", ""});
  c.push_back({"InvalidJson", header_file("{\"model.ok\": {\"dtype\": ", 0), ""});
  c.push_back({"TrailingGarbage", header_file("{} x", 0), ""});
  c.push_back({"NotAnObject", header_file("[1,2,3]", 0), ""});
  c.push_back({"EntryNotObject", header_file("{\"model.w\": 5}", 0), "model.w"});
  c.push_back({"MissingDtype", header_file("{\"model.w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "model.w"});
  c.push_back({"MissingShape", header_file("{\"model.w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8), "model.w"});
  c.push_back({"MissingOffsets", header_file("{\"model.w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8), "model.w"});
  c.push_back({"DtypeNotString",
               header_file("{\"model.w\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "model.w"});
  c.push_back({"ShapeNotArray",
               header_file("{\"model.w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8), "model.w"});
  c.push_back({"ShapeFloat", header_file("{" + entry("model.w", "F32", "[2.0]", "[0,8]") + "}", 8), "model.w"});
  c.push_back({"ShapeString", header_file("{" + entry("model.w", "F32", "[\"2\"]", "[0,8]") + "}", 8), "model.w"});
  c.push_back({"UnknownDtype", header_file("{" + entry("model.w", "F4", "[2]", "[0,1]") + "}", 8), "model.w"});
  c.push_back({"LowercaseDtype", header_file("{" + entry("model.w", "f32", "[2]", "[0,8]") + "}", 8), "model.w"});
  c.push_back({"NegativeDim", header_file("{" + entry("model.w", "F32", "[-2,2]", "[0,8]") + "}", 8), "model.w"});
  c.push_back({"ShapeOverflow",
               header_file("{" + entry("model.w", "F32", "[4611686018427387904,4]", "[0,8]") + "}", 8), "model.w"});
  c.push_back({"ShapeBeyondUint64",
               header_file("{" + entry("model.w", "U8", "[18446744073709551616]", "[0,8]") + "}", 8), "model.w"});
  c.push_back({"OffsetsOneElement", header_file("{" + entry("model.w", "F32", "[2]", "[8]") + "}", 8), "model.w"});
  c.push_back({"OffsetsThreeElements",
               header_file("{" + entry("model.w", "F32", "[2]", "[0,8,8]") + "}", 8), "model.w"});
  c.push_back({"OffsetsNotArray", header_file("{" + entry("model.w", "F32", "[2]", "\"0-8\"") + "}", 8), "model.w"});
  c.push_back({"OffsetsStrings", header_file("{" + entry("model.w", "F32", "[2]", "[\"0\",\"8\"]") + "}", 8),
               "model.w"});
  c.push_back({"OffsetsNegative", header_file("{" + entry("model.w", "F32", "[2]", "[-8,0]") + "}", 8), "model.w"});
  c.push_back({"OffsetsBeginAfterEnd", header_file("{" + entry("model.w", "F32", "[0]", "[8,0]") + "}", 8),
               "model.w"});
  c.push_back({"OffsetsPastData", header_file("{" + entry("model.w", "F32", "[2]", "[8,16]") + "}", 12), "model.w"});
  c.push_back({"OffsetsHuge",
               header_file("{" + entry("model.w", "F32", "[2]", "[18446744073709551608,18446744073709551615]") + "}", 8),
               "model.w"});
  c.push_back({"SizeMismatch", header_file("{" + entry("model.w", "F32", "[3]", "[0,8]") + "}", 16), "model.w"});
  c.push_back({"SizeMismatchDtype", header_file("{" + entry("model.w", "BF16", "[2]", "[0,8]") + "}", 8), "model.w"});
  c.push_back({"Overlap",
               header_file("{" + good + "," + entry("model.w", "F32", "[2]", "[4,12]") + "}", 16), "model.w"});
  c.push_back({"SameOffsets",
               header_file("{" + good + "," + entry("model.w", "F32", "[2]", "[0,8]") + "}", 16), "model.w"});
  c.push_back({"DuplicateName",
               header_file("{" + entry("model.w", "F32", "[2]", "[0,8]") + "," + entry("model.w", "F32", "[2]", "[8,16]") +
                               "}",
                           16),
               "model.w"});
  c.push_back({"DuplicateField",
               header_file("{\"model.w\":{\"dtype\":\"F32\",\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
               "model.w"});
  c.push_back({"MetadataNotObject", header_file("{\"__metadata__\":[\"a\"]," + good + "}", 8), "__metadata__"});
  c.push_back({"MetadataValueNotString", header_file("{\"__metadata__\":{\"format\":1}," + good + "}", 8), "format"});
  c.push_back({"MetadataDuplicateKey",
               header_file("{\"__metadata__\":{\"format\":\"pt\",\"format\":\"np\"}," + good + "}", 8), "format"});
  c.push_back({"InvalidUtf8Name", header_file("{\"model.\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
               ""});
  return c;
}

class SafetensorsMalformed : public ::testing::TestWithParam<Malformed> {};

TEST_P(SafetensorsMalformed, ErrorNamesFileAndTensor) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "bad-shard.safetensors";
  test::write_bytes(path, GetParam().bytes);
  const std::string e = test::error_of([&] { SafetensorsFile::open(path); });
  ASSERT_FALSE(e.empty()) << "no error for " << GetParam().case_name;
  EXPECT_TRUE(test::contains(e, path.string()));
  if (!GetParam().tensor.empty()) {
    EXPECT_TRUE(test::contains(e, GetParam().tensor));
  }
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

INSTANTIATE_TEST_SUITE_P(AllCases, SafetensorsMalformed, ::testing::ValuesIn(malformed_cases()),
                         [](const ::testing::TestParamInfo<Malformed>& info) { return info.param.case_name; });

TEST(SafetensorsOpen, MissingFileAndDirectoryAreErrors) {
  clawmine::test::TempDir tmp;
  const auto missing = tmp.path() / "absent.safetensors";
  EXPECT_TRUE(test::contains(test::error_of([&] { SafetensorsFile::open(missing); }), missing.string()));
  EXPECT_TRUE(test::contains(test::error_of([&] { SafetensorsFile::open(tmp.path()); }), tmp.path().string()));
}

TEST(SafetensorsOpen, AcceptsGapsTrailingBytesPaddingAndNullMetadata) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "loose.safetensors";
  test::write_bytes(path, test::safetensors_bytes("{\"__metadata__\":null," + entry("w", "U8", "[2]", "[4,6]") +
                                                      "," + entry("z", "F32", "[0,3]", "[6,6]") + "}   \n  ",
                                                  9));
  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_EQ(f->find("w")->nbytes, 2u);
  EXPECT_EQ(f->find("z")->nbytes, 0u);
}

}  // namespace
}  // namespace clawmine::io

namespace clawmine::io {
namespace {

// Random corruptions of a valid file (byte flips, truncation, a rewritten length): open must
// either succeed with in-bounds tensors or throw clawmine::Error. Run under ASan this is the
// memory-safety check of the parser.
TEST(SafetensorsOpen, CorruptedBytesNeverCrash) {
  clawmine::test::TempDir tmp;
  const auto path = tmp.path() / "fuzz.safetensors";
  const std::vector<float> w = clawmine::test::random_normal(12, 11);
  const uint16_t h[4] = {1, 2, 3, 4};
  write_safetensors(path, {{"a.w", DType::kF32, {3, 4}, w.data()}, {"b", DType::kBF16, {4}, h}}, {{"k", "v"}});
  std::ifstream in(path, std::ios::binary);
  const std::string valid(std::istreambuf_iterator<char>(in), {});
  std::mt19937 rng(5);
  int refused = 0;
  for (int iter = 0; iter < 400; ++iter) {
    std::string bytes = valid;
    const int kind = iter % 3;
    if (kind == 0) {
      for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    } else if (kind == 1) {
      bytes.resize(rng() % bytes.size());
    } else {
      bytes.replace(0, 8, test::le64(rng() % (bytes.size() + 16)));
    }
    test::write_bytes(path, bytes);
    try {
      auto f = SafetensorsFile::open(path);
      for (const TensorInfo& t : f->tensors()) {
        ASSERT_LE(t.nbytes, bytes.size()) << t.name;
        volatile uint8_t sink = 0;  // touch every byte: a view past the mapping faults here
        for (size_t i = 0; i < t.nbytes; ++i) sink = sink ^ t.data[i];
      }
    } catch (const Error& e) {
      EXPECT_TRUE(test::contains(e.what(), path.string()));
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace clawmine::io
