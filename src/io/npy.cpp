// .npy format: magic "\x93NUMPY", version bytes, a little-endian header length (2 bytes in
// v1.0, 4 in v2.0/3.0), then a Python dict literal {'descr': .., 'fortran_order': .., 'shape': (..)}
// padded with spaces and '\n' so the data starts 64-byte aligned, then the raw array.
#include "io/npy.h"

#include <bit>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"

namespace clawmine::io {

static_assert(std::endian::native == std::endian::little, ".npy I/O assumes a little-endian host");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

std::string shape_tuple(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// The header dict: string values, True/False, and a tuple of non-negative integers.
struct HeaderValue {
  std::string str;
  bool flag = false;
  Shape tuple;
};

class DictParser {
 public:
  DictParser(std::string_view text, const std::string& file) : s_(text), file_(file) {}

  std::map<std::string, HeaderValue> parse() {
    std::map<std::string, HeaderValue> out;
    expect('{');
    while (!peek('}')) {
      const std::string key = quoted();
      expect(':');
      out[key] = value();
      if (!peek('}')) expect(',');
    }
    expect('}');
    skip_space();
    if (pos_ != s_.size()) fail("trailing characters after the header dict");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(str_cat(file_, ": bad .npy header at character ", pos_, ": ", what));
  }
  void skip_space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool peek(char c) {
    skip_space();
    return pos_ < s_.size() && s_[pos_] == c;
  }
  void expect(char c) {
    if (!peek(c)) fail(str_cat("expected '", c, "'"));
    ++pos_;
  }
  std::string quoted() {
    skip_space();
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) fail("expected a quoted string");
    const char q = s_[pos_++];
    const size_t end = s_.find(q, pos_);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string out(s_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return out;
  }
  HeaderValue value() {
    HeaderValue v;
    skip_space();
    if (s_.substr(pos_, 4) == "True") {
      v.flag = true;
      pos_ += 4;
    } else if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
    } else if (peek('(')) {
      ++pos_;
      while (!peek(')')) {
        skip_space();
        int64_t d = 0;
        size_t digits = 0;
        while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
          if (__builtin_mul_overflow(d, int64_t{10}, &d) || __builtin_add_overflow(d, s_[pos_] - '0', &d)) {
            fail("shape dimension too large");
          }
          ++pos_;
          ++digits;
        }
        if (digits == 0) fail("expected a non-negative integer in the shape tuple");
        v.tuple.push_back(d);
        if (!peek(')')) expect(',');
      }
      ++pos_;
    } else {
      v.str = quoted();
    }
    return v;
  }

  std::string_view s_;
  const std::string& file_;
  size_t pos_ = 0;
};

}  // namespace

void write_npy(const std::filesystem::path& path, const float* data, const Shape& shape) {
  const std::string file = path.string();
  for (int64_t d : shape) {
    if (d < 0) throw Error(str_cat(file, ": negative dimension in shape ", shape_str(shape)));
  }
  const size_t n = static_cast<size_t>(shape_numel(shape));
  if (n > 0 && data == nullptr) throw Error(str_cat(file, ": no data"));
  std::string header = str_cat("{'descr': '<f4', 'fortran_order': False, 'shape': ", shape_tuple(shape), ", }");
  // 10 bytes of magic, version and length precede the dict; numpy aligns the data to 64.
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  if (header.size() > 0xffff) throw Error(str_cat(file, ": shape ", shape_str(shape), " too long for .npy v1.0"));

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(str_cat(file, ": cannot open for writing"));
  const char prefix[10] = {kMagic[0], kMagic[1], kMagic[2], kMagic[3], kMagic[4], kMagic[5], 1, 0,
                           static_cast<char>(header.size() & 0xff), static_cast<char>(header.size() >> 8)};
  out.write(prefix, sizeof prefix);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  if (n > 0) out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(float)));
  out.close();
  if (!out) throw Error(str_cat(file, ": write failed"));
}

NpyArray read_npy(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(file, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();

  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, kMagicLen) != 0) {
    throw Error(str_cat(file, ": not a .npy file (bad magic)"));
  }
  const auto u8 = [&](size_t i) { return static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])); };
  const int major = static_cast<int>(u8(6));
  size_t header_start = 0, header_len = 0;
  if (major == 1) {
    header_start = 10;
    header_len = u8(8) | u8(9) << 8;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw Error(str_cat(file, ": truncated .npy header"));
    header_start = 12;
    header_len = u8(8) | u8(9) << 8 | u8(10) << 16 | u8(11) << 24;
  } else {
    throw Error(str_cat(file, ": unsupported .npy format version ", major));
  }
  if (header_len > bytes.size() - header_start) throw Error(str_cat(file, ": truncated .npy header"));

  const auto dict = DictParser(std::string_view(bytes).substr(header_start, header_len), file).parse();
  for (const char* key : {"descr", "fortran_order", "shape"}) {
    if (!dict.count(key)) throw Error(str_cat(file, ": .npy header has no '", key, "'"));
  }
  NpyArray a;
  a.descr = dict.at("descr").str;
  a.shape = dict.at("shape").tuple;
  if (dict.at("fortran_order").flag) throw Error(str_cat(file, ": Fortran-order arrays are not supported"));
  size_t item = 0;
  if (a.descr == "<f4" || a.descr == "<i4") {
    item = 4;
  } else if (a.descr == "<f8" || a.descr == "<i8") {
    item = 8;
  } else {
    throw Error(str_cat(file, ": unsupported dtype '", a.descr, "' (want <f4, <f8, <i4 or <i8)"));
  }
  uint64_t n = 1;
  for (int64_t d : a.shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) throw Error(str_cat(file, ": shape too large"));
  }
  const size_t data_start = header_start + header_len;
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(item), &nbytes) || nbytes != bytes.size() - data_start) {
    throw Error(str_cat(file, ": data is ", bytes.size() - data_start, " bytes but ", a.descr, " ",
                        shape_str(a.shape), " needs ", n, " elements of ", item, " bytes"));
  }
  const char* p = bytes.data() + data_start;
  if (a.descr[1] == 'f') {
    a.floats.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (item == 4) {
        std::memcpy(&a.floats[i], p + 4 * i, 4);
      } else {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        a.floats[i] = static_cast<float>(d);
      }
    }
  } else {
    a.ints.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (item == 4) {
        int32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        a.ints[i] = v;
      } else {
        std::memcpy(&a.ints[i], p + 8 * i, 8);
      }
    }
  }
  return a;
}

}  // namespace clawmine::io
