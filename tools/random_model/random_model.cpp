// The streaming writer: shard k+1 is drawn on the thread pool while shard k is written by a
// second thread (io::write_safetensors needs a shard's tensors in memory, so one shard is the
// unit; two shard buffers alternate). Tensors are drawn in fixed 8 MiB chunks handed out dynamically to the workers; each
// chunk's random stream depends only on (seed, tensor name, chunk index), so the bytes are the
// same for any thread count. Config files and the index are written last: a directory without
// them is an interrupted run.
#include "random_model/random_model.h"

#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <optional>

#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "io/safetensors.h"

namespace clawmine::tools {

namespace {

namespace fs = std::filesystem;

constexpr const char* kLogTag = "random-model";
constexpr int64_t kChunkBytes = 8 << 20;
constexpr const char* kIndexName = "model.safetensors.index.json";

// Two of these alternate (one being drawn, one being written): reusing them avoids faulting in
// ~45 GB of fresh pages for a Flash-size model.
struct Slot {
  std::unique_ptr<uint8_t[]> bytes;
  size_t capacity = 0;
};

struct DrawnShard {
  const Shard* shard = nullptr;
  std::vector<const uint8_t*> data;  // per tensor, shard order, inside a Slot
};

DrawnShard draw_shard(const Shard& shard, uint64_t seed, ThreadPool& pool, Slot& slot) {
  std::vector<size_t> offsets;
  size_t total = 0;
  for (const TensorJob& job : shard.tensors) {
    offsets.push_back(total);
    total += (job.nbytes() + 63) / 64 * 64;
  }
  if (slot.capacity < total) {
    slot.bytes.reset();
    slot.bytes.reset(new uint8_t[total]);
    slot.capacity = total;
  }
  DrawnShard d;
  d.shard = &shard;
  struct Chunk {
    size_t tensor;
    int64_t begin, end, index;
  };
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < shard.tensors.size(); ++t) {
    const TensorJob& job = shard.tensors[t];
    d.data.push_back(slot.bytes.get() + offsets[t]);
    const int64_t units = job.units();
    if (units == 0) continue;
    const int64_t unit_bytes = std::max<int64_t>(1, static_cast<int64_t>(job.nbytes()) / units);
    const int64_t per_chunk = std::max<int64_t>(1, kChunkBytes / unit_bytes);
    for (int64_t b = 0, i = 0; b < units; b += per_chunk, ++i) chunks.push_back({t, b, std::min(units, b + per_chunk), i});
  }
  std::atomic<size_t> next{0};
  pool.parallel_for(0, pool.num_threads(), [&](int64_t, int64_t) {
    for (size_t i = next++; i < chunks.size(); i = next++) {
      const Chunk& c = chunks[i];
      const TensorJob& job = shard.tensors[c.tensor];
      fill_units(job.fill, job.dtype, job.row_len(), slot.bytes.get() + offsets[c.tensor], c.begin, c.end,
                 chunk_seed(seed, job.name.c_str(), static_cast<uint64_t>(c.index)));
    }
  });
  return d;
}

void write_shard(const fs::path& dir, const DrawnShard& d) {
  std::vector<io::TensorToWrite> list;
  for (size_t t = 0; t < d.shard->tensors.size(); ++t) {
    const TensorJob& job = d.shard->tensors[t];
    list.push_back({job.name, job.dtype, job.shape, d.data[t]});
  }
  io::write_safetensors(dir / d.shard->file, list, {{"format", "pt"}, {"producer", "clawmine-random-model"}});
}

bool is_our_output(const fs::path& p) {
  const std::string name = p.filename().string();
  if (name == "config.json" || name == "hf_quant_config.json" || name == kIndexName) return true;
  return name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos && p.extension() == ".safetensors";
}

// `out` must be new or empty; with `force` an earlier random model there is removed first.
void prepare_out_dir(const fs::path& out, bool force) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw Error(str_cat("--out: cannot create directory ", out.string(), ": ", ec.message()));
  std::vector<fs::path> ours;
  size_t others = 0;
  for (const auto& entry : fs::directory_iterator(out)) {
    if (is_our_output(entry.path())) {
      ours.push_back(entry.path());
    } else {
      ++others;
    }
  }
  if (!force && (others > 0 || !ours.empty())) {
    throw Error(str_cat("--out: ", out.string(), " is not empty (", ours.size() + others,
                        " entries); pass --force to replace an earlier random model there"));
  }
  for (const fs::path& p : ours) fs::remove(p);
}

void check_space(const fs::path& out, size_t needed) {
  std::error_code ec;
  const fs::space_info s = fs::space(out, ec);
  if (ec) return;  // unknown: let the writes tell
  if (s.available < needed + (64u << 20)) {
    throw Error(str_cat("--out: ", out.string(), " has ", s.available / 1e9, " GB free, the checkpoint needs ",
                        needed / 1e9, " GB"));
  }
}

void write_json(const fs::path& path, const nlohmann::json& j) {
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  if (!f) throw Error(str_cat("--out: cannot write ", path.string()));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

RandomModelStats write_random_model(const RandomModelOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  PlanOptions po;
  po.input_scales = options.input_scales;
  const ModelPlan plan = plan_model(options.geometry, options.layout, po);
  prepare_out_dir(options.out, options.force);
  check_space(options.out, plan.nbytes());
  log_info(kLogTag, "geometry ", plan.geometry.name, ", layout ", layout_name(plan.layout), ", seed ", options.seed,
           ": ", plan.shards.size(), " shards, ", plan.num_tensors(), " tensors, ", plan.nbytes() / 1e9, " GB");

  ThreadPool pool(options.threads);
  Slot slots[2];
  std::optional<DrawnShard> writing;
  std::future<void> pending;
  for (size_t k = 0; k < plan.shards.size(); ++k) {
    const auto t_draw = std::chrono::steady_clock::now();
    DrawnShard drawn = draw_shard(plan.shards[k], options.seed, pool, slots[k % 2]);
    const double draw_s = seconds_since(t_draw);
    if (pending.valid()) pending.get();  // the previous shard is on disk (or its error is thrown)
    writing = std::move(drawn);
    const DrawnShard& w = *writing;
    pending = std::async(std::launch::async, [&options, &w] { write_shard(options.out, w); });
    log_info(kLogTag, "shard ", k + 1, "/", plan.shards.size(), " ", plan.shards[k].what, ": ",
             plan.shards[k].nbytes() / 1e6, " MB drawn in ", draw_s, " s");
  }
  if (pending.valid()) pending.get();
  writing.reset();

  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", plan.nbytes()},
                       {"producer", "clawmine-random-model"},
                       {"geometry", plan.geometry.name},
                       {"layout", layout_name(plan.layout)},
                       {"seed", options.seed}};
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (const Shard& s : plan.shards)
    for (const TensorJob& t : s.tensors) weight_map[t.name] = s.file;
  index["weight_map"] = std::move(weight_map);
  {
    std::ofstream f(options.out / kIndexName);
    f << index.dump(2) << "\n";
    if (!f) throw Error(str_cat("--out: cannot write ", (options.out / kIndexName).string()));
  }
  write_json(options.out / "config.json", plan.config);
  if (!plan.hf_quant_config.is_null()) write_json(options.out / "hf_quant_config.json", plan.hf_quant_config);

  RandomModelStats stats;
  stats.tensor_bytes = plan.nbytes();
  stats.tensors = plan.num_tensors();
  stats.shards = plan.shards.size();
  for (const auto& entry : fs::directory_iterator(options.out))
    if (is_our_output(entry.path())) stats.file_bytes += fs::file_size(entry.path());
  stats.seconds = seconds_since(t0);
  return stats;
}

}  // namespace clawmine::tools
