// Checkpoint directories: sharded with an index, plain multi-file, single file, and every
// index/shard disagreement refused with a message naming the tensor, shard and index.
#include <gtest/gtest.h>

#include <cstring>

#include "io/safetensors.h"
#include "support/test_support.h"
#include "unit/io/io_test_util.h"

namespace clawmine::io {
namespace {

namespace fs = std::filesystem;

// Writes F32 tensors of the given names, each of shape [n], with data from a per-name seed.
void write_shard(const fs::path& path, const std::vector<std::string>& names, size_t n = 6) {
  std::vector<std::vector<float>> data;
  std::vector<TensorToWrite> tensors;
  for (const std::string& name : names) data.push_back(clawmine::test::random_normal(n, std::hash<std::string>{}(name)));
  for (size_t i = 0; i < names.size(); ++i) tensors.push_back({names[i], DType::kF32, {static_cast<int64_t>(n)}, data[i].data()});
  write_safetensors(path, tensors);
}

void write_index(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& map) {
  std::string json = "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {";
  for (size_t i = 0; i < map.size(); ++i) json += (i ? ", " : "") + ("\"" + map[i].first + "\": \"" + map[i].second + "\"");
  test::write_bytes(dir / "model.safetensors.index.json", json + "}}");
}

const char* kShard1 = "model-00001-of-00002.safetensors";
const char* kShard2 = "model-00002-of-00002.safetensors";

TEST(Checkpoint, ShardedWithIndexRoundTrips) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / kShard1, {"embed.weight", "layers.0.attn.wq"});
  write_shard(tmp.path() / kShard2, {"layers.1.attn.wq", "head.weight"});
  write_index(tmp.path(), {{"embed.weight", kShard1}, {"layers.0.attn.wq", kShard1}, {"layers.1.attn.wq", kShard2},
                           {"head.weight", kShard2}});
  const Checkpoint ckpt = Checkpoint::open(tmp.path());
  EXPECT_EQ(ckpt.dir(), tmp.path());
  EXPECT_EQ(ckpt.size(), 4u);
  EXPECT_EQ(ckpt.files().size(), 2u);
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"embed.weight", "head.weight", "layers.0.attn.wq", "layers.1.attn.wq"}));
  for (const std::string& name : ckpt.names()) {
    const TensorInfo* t = ckpt.find(name);
    ASSERT_NE(t, nullptr) << name;
    const std::vector<float> want = clawmine::test::random_normal(6, std::hash<std::string>{}(name));
    std::vector<float> got(6);
    clawmine::test::poison(got);
    std::memcpy(got.data(), t->data, t->nbytes);
    EXPECT_EQ(clawmine::test::max_rel_diff(got, want), 0.0) << name;
  }
  EXPECT_TRUE(test::contains(ckpt.find("head.weight")->file, kShard2));
  EXPECT_EQ(ckpt.find("missing"), nullptr);
}

TEST(Checkpoint, MovedCheckpointKeepsValidPointers) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / "a.safetensors", {"x", "y"});
  Checkpoint first = Checkpoint::open(tmp.path());
  const Checkpoint moved = std::move(first);
  ASSERT_NE(moved.find("y"), nullptr);
  EXPECT_EQ(moved.find("y")->name, "y");
}

TEST(Checkpoint, IndexNamesTensorAbsentFromShard) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / kShard1, {"a"});
  write_shard(tmp.path() / kShard2, {"b"});
  write_index(tmp.path(), {{"a", kShard1}, {"b", kShard2}, {"layers.7.ghost", kShard2}});
  const std::string e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, "layers.7.ghost"));
  EXPECT_TRUE(test::contains(e, kShard2));
  EXPECT_TRUE(test::contains(e, "model.safetensors.index.json"));
}

TEST(Checkpoint, ShardTensorMissingFromIndex) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / kShard1, {"a", "layers.3.extra"});
  write_index(tmp.path(), {{"a", kShard1}});
  const std::string e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, "layers.3.extra"));
  EXPECT_TRUE(test::contains(e, kShard1));
  EXPECT_TRUE(test::contains(e, "model.safetensors.index.json"));
}

TEST(Checkpoint, TensorInTwoShards) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / kShard1, {"a", "shared.w"});
  write_shard(tmp.path() / kShard2, {"b", "shared.w"});
  write_index(tmp.path(), {{"a", kShard1}, {"b", kShard2}, {"shared.w", kShard1}});
  const std::string e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, "shared.w"));
  EXPECT_TRUE(test::contains(e, kShard1));
  EXPECT_TRUE(test::contains(e, kShard2));
}

TEST(Checkpoint, MissingShardFileAndBadIndex) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / kShard1, {"a"});
  write_index(tmp.path(), {{"a", kShard1}, {"b", kShard2}});
  std::string e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, kShard2));
  EXPECT_TRUE(test::contains(e, "model.safetensors.index.json"));

  test::write_bytes(tmp.path() / "model.safetensors.index.json", "{\"metadata\": {}}");
  e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, "model.safetensors.index.json"));
  EXPECT_TRUE(test::contains(e, "weight_map"));

  test::write_bytes(tmp.path() / "model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}");
  e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, "model.safetensors.index.json"));
  EXPECT_TRUE(test::contains(e, "\"a\""));

  test::write_bytes(tmp.path() / "model.safetensors.index.json",
                    std::string("{\"weight_map\": {\"a\": \"") + kShard1 + "\", \"a\": \"" + kShard1 + "\"}}");
  e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, "model.safetensors.index.json"));
  EXPECT_TRUE(test::contains(e, "\"a\""));

  test::write_bytes(tmp.path() / "model.safetensors.index.json", "{\"weight_map\": ");
  e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, "model.safetensors.index.json"));
}

TEST(Checkpoint, WithoutIndexOpensEverySafetensorsFileSorted) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / "b.safetensors", {"second"});
  write_shard(tmp.path() / "a.safetensors", {"first"});
  test::write_bytes(tmp.path() / "config.json", "{}");
  const Checkpoint ckpt = Checkpoint::open(tmp.path());
  ASSERT_EQ(ckpt.files().size(), 2u);
  EXPECT_TRUE(test::contains(ckpt.files()[0]->path(), "a.safetensors"));
  EXPECT_TRUE(test::contains(ckpt.files()[1]->path(), "b.safetensors"));
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"first", "second"}));
}

TEST(Checkpoint, WithoutIndexDuplicateNameNamesBothFiles) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / "part-a.safetensors", {"x", "dup.w"});
  write_shard(tmp.path() / "part-b.safetensors", {"dup.w"});
  const std::string e = test::error_of([&] { Checkpoint::open(tmp.path()); });
  EXPECT_TRUE(test::contains(e, "dup.w"));
  EXPECT_TRUE(test::contains(e, "part-a.safetensors"));
  EXPECT_TRUE(test::contains(e, "part-b.safetensors"));
}

TEST(Checkpoint, SingleFilePath) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / "one.safetensors", {"w", "v"});
  write_shard(tmp.path() / "other.safetensors", {"w"});
  const Checkpoint ckpt = Checkpoint::open(tmp.path() / "one.safetensors");
  EXPECT_EQ(ckpt.size(), 2u);
  EXPECT_EQ(ckpt.files().size(), 1u);
}

TEST(Checkpoint, MissingOrEmptyDirectoryNamesIt) {
  clawmine::test::TempDir tmp;
  const fs::path missing = tmp.path() / "no-such-checkpoint";
  EXPECT_TRUE(test::contains(test::error_of([&] { Checkpoint::open(missing); }), missing.string()));
  const fs::path empty = tmp.path() / "empty-ckpt";
  fs::create_directory(empty);
  test::write_bytes(empty / "config.json", "{}");
  EXPECT_TRUE(test::contains(test::error_of([&] { Checkpoint::open(empty); }), empty.string()));
  EXPECT_TRUE(test::contains(test::error_of([&] { Checkpoint::open(empty / "config.json"); }), "config.json"));
}

TEST(Checkpoint, BadShardErrorNamesShard) {
  clawmine::test::TempDir tmp;
  write_shard(tmp.path() / "a.safetensors", {"w"});
  test::write_bytes(tmp.path() / "broken.safetensors", test::le64(3) + "{}");
  EXPECT_TRUE(test::contains(test::error_of([&] { Checkpoint::open(tmp.path()); }), "broken.safetensors"));
}

}  // namespace
}  // namespace clawmine::io
