// Safetensors reader: maps the file read-only and validates the whole header before handing
// out any view, so every TensorInfo is in bounds, sized dtype*shape, and disjoint from the
// others. Gaps between tensors and trailing bytes are allowed; zero-size tensors too.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "core/error.h"
#include "io/json_parse.h"

namespace clawmine::io {

namespace {

using nlohmann::json;

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A non-negative JSON integer, or nullopt (floats, negatives, other types).
std::optional<uint64_t> as_u64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

// Parses one header entry; `base` is the start of the data section, `data_size` its length.
TensorInfo parse_entry(const std::string& file, const std::string& name, const json& entry,
                       const uint8_t* base, uint64_t data_size) {
  const std::string where = str_cat(file, ": tensor \"", name, "\"");
  if (!entry.is_object()) throw Error(str_cat(where, ": header entry is not a JSON object"));
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) throw Error(str_cat(where, ": header entry has no \"", key, "\""));
  }
  TensorInfo t;
  t.name = name;
  t.file = file;

  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) throw Error(str_cat(where, ": \"dtype\" is not a string"));
  const auto parsed = dtype_from_name(dtype.get<std::string>());
  if (!parsed) throw Error(str_cat(where, ": unknown dtype \"", dtype.get<std::string>(), "\""));
  t.dtype = *parsed;

  const json& shape = entry["shape"];
  if (!shape.is_array()) throw Error(str_cat(where, ": \"shape\" is not an array"));
  uint64_t nbytes = dtype_size(t.dtype);
  for (const json& d : shape) {
    if (!d.is_number_integer()) throw Error(str_cat(where, ": shape ", shape.dump(), " has a non-integer dimension"));
    if (!d.is_number_unsigned() && d.get<int64_t>() < 0) {
      throw Error(str_cat(where, ": shape ", shape.dump(), " has a negative dimension"));
    }
    const uint64_t dim = *as_u64(d);
    if (dim > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(nbytes, dim, &nbytes)) {
      throw Error(str_cat(where, ": shape ", shape.dump(), " is too large (byte size overflows)"));
    }
    t.shape.push_back(static_cast<int64_t>(dim));
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !as_u64(offsets[0]) || !as_u64(offsets[1])) {
    throw Error(str_cat(where, ": \"data_offsets\" ", offsets.dump(), " is not [begin, end] of non-negative integers"));
  }
  const uint64_t begin = *as_u64(offsets[0]), end = *as_u64(offsets[1]);
  if (begin > end) throw Error(str_cat(where, ": data_offsets [", begin, ", ", end, "] has begin > end"));
  if (end > data_size) {
    throw Error(str_cat(where, ": data_offsets [", begin, ", ", end, "] run past the data section (", data_size,
                        " bytes)"));
  }
  if (end - begin != nbytes) {
    throw Error(str_cat(where, ": data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but ",
                        dtype_name(t.dtype), " ", shape_str(t.shape), " needs ", nbytes));
  }
  t.data = base + begin;
  t.nbytes = static_cast<size_t>(nbytes);
  return t;
}

std::map<std::string, std::string> parse_metadata(const std::string& file, const json& meta) {
  std::map<std::string, std::string> out;
  if (meta.is_null()) return out;
  if (!meta.is_object()) throw Error(str_cat(file, ": \"__metadata__\" is not a JSON object"));
  for (const auto& [key, value] : meta.items()) {
    if (!value.is_string()) throw Error(str_cat(file, ": \"__metadata__\" value of \"", key, "\" is not a string"));
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

}  // namespace

TensorView TensorInfo::view() const {
  TensorView v;
  v.dtype = dtype;
  v.device = Device::kCpu;
  v.shape = shape;
  v.data = const_cast<uint8_t*>(data);
  return v;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path.string();
  const std::string& file = f->path_;

  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(str_cat(file, ": cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(str_cat(file, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(str_cat(file, ": file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw Error(str_cat(file, ": mmap failed: ", std::strerror(map_errno)));
  f->map_ = map;
  f->map_size_ = size;
  const auto* bytes = static_cast<const uint8_t*>(map);

  const uint64_t header_len = read_le64(bytes);
  if (header_len == 0) throw Error(str_cat(file, ": header length is 0"));
  if (header_len > kMaxHeaderBytes) {
    throw Error(str_cat(file, ": header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  }
  if (header_len > size - 8) {
    throw Error(str_cat(file, ": header length ", header_len, " runs past the end of the file (", size, " bytes)"));
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), header_len);
  const json header = parse_json_strict(text, file, "tensor name");
  if (!header.is_object()) throw Error(str_cat(file, ": header is not a JSON object"));

  const uint8_t* base = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      f->metadata_ = parse_metadata(file, entry);
    } else {
      f->tensors_.push_back(parse_entry(file, name, entry, base, data_size));
    }
  }

  std::sort(f->tensors_.begin(), f->tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.data != b.data ? a.data < b.data : a.nbytes != b.nbytes ? a.nbytes < b.nbytes : a.name < b.name;
  });
  // Zero-size tensors occupy no bytes and overlap nothing.
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : f->tensors_) {
    if (t.nbytes == 0) continue;
    if (prev && t.data < prev->data + prev->nbytes) {
      throw Error(str_cat(file, ": tensors \"", prev->name, "\" and \"", t.name, "\" overlap in the data section"));
    }
    prev = &t;
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_.emplace(f->tensors_[i].name, i);
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace clawmine::io
