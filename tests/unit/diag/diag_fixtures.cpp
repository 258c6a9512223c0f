#include "unit/diag/diag_fixtures.h"

#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/test_support.h"

namespace clawmine::test {

void copy_model(const std::string& name, const std::filesystem::path& dir) {
  for (const auto& e : std::filesystem::directory_iterator(fixture_dir("models/" + name)))
    std::filesystem::copy_file(e.path(), dir / e.path().filename(), std::filesystem::copy_options::overwrite_existing);
}

void patch_tensor(const std::filesystem::path& dir, const std::string& tensor, int64_t first, int64_t count,
                  float value) {
  const auto file = dir / "model.safetensors";
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  const auto h = nlohmann::json::parse(header).at(tensor);
  const std::string dtype = h.at("dtype");
  const int64_t begin = h.at("data_offsets")[0].get<int64_t>();
  const int64_t size = dtype == "BF16" ? 2 : dtype == "F32" ? 4 : 0;
  if (!size) throw std::runtime_error("patch_tensor: unsupported dtype " + dtype);
  uint32_t bits = 0;
  std::memcpy(&bits, &value, 4);
  for (int64_t i = first; i < first + count; ++i) {
    f.seekp(static_cast<std::streamoff>(8 + n + begin + i * size));
    if (size == 2) {
      const uint16_t b = static_cast<uint16_t>(bits >> 16);
      f.write(reinterpret_cast<const char*>(&b), 2);
    } else {
      f.write(reinterpret_cast<const char*>(&bits), 4);
    }
  }
}

}  // namespace clawmine::test
