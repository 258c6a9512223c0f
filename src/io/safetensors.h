// Safetensors files, memory-mapped and validated, and sharded checkpoints. A tensor is a
// zero-copy view into the mapping; every header field and offset is checked at open, so a
// view handed out is always in bounds. Errors name the file and the tensor.
// Format: 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section; offsets are relative to the data section.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace clawmine::io {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const uint8_t* data = nullptr;  // into the file mapping
  size_t nbytes = 0;
  std::string file;  // path of the file that holds it (for messages)

  TensorView view() const;  // host view of the mapped bytes (read-only by convention)
};

inline constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // 100 MiB of JSON is not a sane header

class SafetensorsFile {
 public:
  // Throws clawmine::Error for: missing/unreadable file, file shorter than 8 bytes, header
  // length over kMaxHeaderBytes or past the end, invalid JSON, unknown dtype, bad shape,
  // data_offsets out of range / overlapping / not matching dtype*shape, duplicate names.
  static std::unique_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data-offset order
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors.index.json (weight_map name -> shard) when present,
// otherwise every *.safetensors file in the directory. Tensor names are unique across shards.
class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const TensorInfo* find(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return index_.size(); }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> index_;
};

// Writing (tests, the quantizer, fixtures). Tensors are written in the given order.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const void* data = nullptr;  // dtype_size(dtype) * numel(shape) bytes
};
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace clawmine::io
