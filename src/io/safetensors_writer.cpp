// Safetensors writer. Like the reference implementation, the JSON header is padded with
// spaces to a multiple of 8 bytes so the data section (and every tensor whose offset is a
// multiple of its size) stays aligned in a mapping; data_offsets follow the given order.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

namespace clawmine::io {

namespace {

// Closes the FILE on every path out of write_safetensors.
struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string file = path.string();
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  std::vector<uint64_t> sizes;
  for (const TensorToWrite& t : tensors) {
    const std::string where = str_cat(file, ": tensor \"", t.name, "\"");
    if (t.name == "__metadata__") throw Error(str_cat(where, ": name is reserved"));
    if (!names.insert(t.name).second) throw Error(str_cat(where, ": name given twice"));
    uint64_t nbytes = dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) throw Error(str_cat(where, ": negative dimension in shape ", shape_str(t.shape)));
      if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes)) {
        throw Error(str_cat(where, ": shape ", shape_str(t.shape), " is too large"));
      }
    }
    if (nbytes > 0 && t.data == nullptr) throw Error(str_cat(where, ": no data"));
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    sizes.push_back(nbytes);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(file, ": cannot encode header: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  std::unique_ptr<std::FILE, FileCloser> out(std::fopen(file.c_str(), "wb"));
  if (!out) throw Error(str_cat(file, ": cannot open for writing: ", std::strerror(errno)));
  bool ok = std::fwrite(len_bytes, 1, 8, out.get()) == 8 &&
            std::fwrite(text.data(), 1, text.size(), out.get()) == text.size();
  for (size_t i = 0; ok && i < tensors.size(); ++i) {
    if (sizes[i] > 0) ok = std::fwrite(tensors[i].data, 1, sizes[i], out.get()) == sizes[i];
  }
  ok = ok && std::fflush(out.get()) == 0;
  if (std::fclose(out.release()) != 0) ok = false;
  if (!ok) throw Error(str_cat(file, ": write failed"));
}

}  // namespace clawmine::io
