// Helpers for the io tests: files written byte by byte, and the message of the clawmine::Error
// a call throws (empty when it does not throw, so a missing error fails the HasSubstr checks).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "core/error.h"

namespace clawmine::io::test {

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("test could not write " + path.string());
}

inline std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file: 8-byte length of `header`, the header text, then `data_bytes` bytes of a
// non-zero pattern.
inline std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string s = le64(header.size()) + header;
  for (size_t i = 0; i < data_bytes; ++i) s += static_cast<char>(i * 37 + 11);
  return s;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const clawmine::Error& e) {
    return e.what();
  }
  return "";
}

// EXPECT_TRUE(contains(message, "name")) prints the whole message when it fails.
inline ::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" not found in \"" << text << "\"";
}

}  // namespace clawmine::io::test
