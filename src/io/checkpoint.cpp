// Checkpoint directories: with model.safetensors.index.json the weight_map decides which shard
// holds each tensor, and index and shards must agree exactly (no tensor missing from its shard,
// none left out of the index, none in two shards); without it every *.safetensors file is
// opened and names must be unique across files. A single .safetensors path is a checkpoint too.
#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/json_parse.h"
#include "io/safetensors.h"

namespace clawmine::io {

namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(path.string(), ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(str_cat(path.string(), ": read failed"));
  return ss.str();
}

// weight_map of the index file: tensor name -> shard file name (relative to the directory).
std::map<std::string, std::string> read_weight_map(const fs::path& index_path) {
  const std::string file = index_path.string();
  const nlohmann::json index = parse_json_strict(read_text(index_path), file);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    throw Error(str_cat(file, ": no \"weight_map\" object"));
  }
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) throw Error(str_cat(file, ": weight_map entry \"", name, "\" is not a string"));
    out.emplace(name, shard.get<std::string>());
  }
  if (out.empty()) throw Error(str_cat(file, ": weight_map is empty"));
  return out;
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir) {
  Checkpoint ckpt;
  ckpt.dir_ = dir;
  std::error_code ec;
  if (fs::is_regular_file(dir, ec) && dir.extension() == ".safetensors") {
    ckpt.files_.push_back(SafetensorsFile::open(dir));
    for (const TensorInfo& t : ckpt.files_.back()->tensors()) ckpt.index_.emplace(t.name, &t);
    return ckpt;
  }
  if (!fs::is_directory(dir, ec)) {
    throw Error(str_cat(dir.string(), ": not a checkpoint directory or .safetensors file"));
  }

  const fs::path index_path = dir / kIndexName;
  if (fs::exists(index_path, ec)) {
    const std::string index_file = index_path.string();
    const auto weight_map = read_weight_map(index_path);
    std::set<std::string> shard_names;
    for (const auto& [name, shard] : weight_map) shard_names.insert(shard);
    std::map<std::string, SafetensorsFile*> shards;  // shard name -> opened file, in name order
    for (const std::string& shard : shard_names) {
      try {
        ckpt.files_.push_back(SafetensorsFile::open(dir / shard));
      } catch (const Error& e) {
        throw Error(str_cat(e.what(), " (shard listed in ", index_file, ")"));
      }
      shards.emplace(shard, ckpt.files_.back().get());
    }
    for (const auto& [name, shard] : weight_map) {
      const TensorInfo* t = shards.at(shard)->find(name);
      if (!t) {
        throw Error(str_cat(index_file, ": tensor \"", name, "\" is mapped to shard ", shards.at(shard)->path(),
                            " which does not contain it"));
      }
      ckpt.index_.emplace(name, t);
    }
    for (const auto& [shard, file] : shards) {
      for (const TensorInfo& t : file->tensors()) {
        auto it = weight_map.find(t.name);
        if (it == weight_map.end()) {
          throw Error(str_cat(index_file, ": tensor \"", t.name, "\" in shard ", file->path(),
                              " is missing from the weight_map"));
        }
        if (it->second != shard) {
          throw Error(str_cat(index_file, ": tensor \"", t.name, "\" appears in shard ", file->path(),
                              " and in shard ", shards.at(it->second)->path()));
        }
      }
    }
    return ckpt;
  }

  std::vector<fs::path> paths;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (it->path().extension() == ".safetensors" && it->is_regular_file(type_ec)) paths.push_back(it->path());
  }
  if (ec) throw Error(str_cat(dir.string(), ": cannot list directory: ", ec.message()));
  if (paths.empty()) throw Error(str_cat(dir.string(), ": no .safetensors files in the checkpoint directory"));
  std::sort(paths.begin(), paths.end());
  for (const fs::path& p : paths) {
    ckpt.files_.push_back(SafetensorsFile::open(p));
    for (const TensorInfo& t : ckpt.files_.back()->tensors()) {
      auto [it, inserted] = ckpt.index_.emplace(t.name, &t);
      if (!inserted) {
        throw Error(str_cat(dir.string(), ": tensor \"", t.name, "\" appears in both ", it->second->file, " and ",
                            t.file));
      }
    }
  }
  return ckpt;
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, t] : index_) out.push_back(name);
  return out;
}

}  // namespace clawmine::io
