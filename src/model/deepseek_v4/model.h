// A loaded DeepSeek V4 model and its forward pass. The model is data (config, bound weights,
// RoPE tables); forward() runs a chunk of tokens through it on any ops::Backend, reading and
// extending a per-sequence cache, and returns float32 logits for every position of the chunk.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "model/deepseek_v4/cache.h"
#include "model/deepseek_v4/config.h"
#include "model/deepseek_v4/weights.h"

#include "ops/backend.h"

namespace clawmine::model::deepseek_v4 {

struct ForwardOptions {
  // The official inference code's quantize-dequantize round trips (spec §3.0): FP8 on the KV
  // nope dims and compressed entries, Hadamard + FP4 on the indexer q and keys. On by default
  // (the model was trained against them); transformers-parity runs turn it off.
  bool official_qdq = true;
  // false: forward returns only the last position's logits [1, vocab] (decode, sampling);
  // true: every position's [T, vocab] (goldens, perplexity, prompt logprobs).
  bool all_logits = true;
  // CSA layers skip the lightning indexer (its query and head-weight projections, scores and
  // top-k) while its top-k would pick every entry a query may see: k = min(index_topk, N) over
  // the indexer's N stored rows, so while N <= index_topk every finite score is selected and the
  // key set is HCA's rule (spec §3.3 E; parity #26). Only the order of the keys differs.
  // true: run the indexer anyway (to check it; CLI --indexer always).
  bool indexer_always = false;
};

// Whether a CSA layer's indexer top-k takes every entry of its store (k = min(index_topk, rows)),
// so that the layer skips the indexer unless ForwardOptions::indexer_always. True for a layer
// without an indexer store.
bool indexer_takes_every_entry(const ModelConfig& cfg, const CompressorCache& indexer);

// A greedy next token taken on the backend (Model::forward_greedy): id, or where the logits were
// not finite, the first NaN/Inf entry (never a token).
struct GreedyToken {
  int32_t id = -1;             // the argmax, ties to the lowest id; -1 when non_finite_at >= 0
  int64_t non_finite_at = -1;  // token id of the first non-finite logit, or -1
  float non_finite_value = 0;  // its value
};

struct LoadOptions {
  // Modules kept in BF16 (dequantized at load): globs over release names ("layers.*.attn.wq_a")
  // and fused checkpoint names ("layers.0.attn.fused_wqa_wkv"). A glob matching nothing is an error.
  std::vector<std::string> dequant;
  // The compute policy decides which scales are read (an invalid input_scale is an error only
  // when a static W4A4 path would use it; otherwise a warning).
  ops::LinearPolicy policy;
  bool audit = true;  // calibration audit of static input scales (under W4A4 static / auto only)
};

class Model {
 public:
  // Reads DIR/config.json (+ hf_quant_config.json), opens the safetensors and binds weights.
  static std::unique_ptr<Model> load(const std::filesystem::path& dir, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // Writable weights for load-time passes (the calibration audit sets input_scale_trusted).
  ModelWeights& mutable_weights() { return weights_; }
  const io::Checkpoint& checkpoint() const { return checkpoint_; }

  // A cache with no state yet: its rows are allocated from the backend of the first forward()
  // that uses it (and released with it), so one cache serves one backend.
  SequenceCache new_cache() const;

  // Copies every weight and RoPE table into `backend`'s memory (Backend::allocate + upload,
  // staged from the mmap) so forward() on that backend reads them there. A no-op for a backend
  // whose device() is the CPU, which reads the mmapped weights directly. Call once after load
  // (and after load-time passes that edit weights_). The MTP block is not placed (forward never
  // runs it). The device copies are released with the Model: `backend` must outlive it.
  void place(ops::Backend& backend);

  // Feeds ids at positions cache.position, cache.position+1, ...; returns logits [T, vocab]
  // (options.all_logits) or the last position's [1, vocab], downloaded to the host.
  Buffer forward(ops::Backend& backend, SequenceCache& cache, const std::vector<int32_t>& ids,
                 const ForwardOptions& options) const;

  // One decode step of several sequences: ids[b] at position caches[b]->position of sequence b
  // (distinct caches, any positions); returns logits [B, vocab], row b sequence b's, each as
  // forward() would give for that sequence alone (options.all_logits does not apply). The
  // row-wise work (projections, MoE, hyper-connections, head) runs once over the B rows, the
  // attention per sequence; on CUDA the step is recorded as one graph.
  // More than kMaxBatchRows sequences run as consecutive groups of at most that many.
  Buffer forward_batch(ops::Backend& backend, const std::vector<SequenceCache*>& caches,
                       const std::vector<int32_t>& ids, const ForwardOptions& options) const;
  // forward / forward_batch for greedy decoding: the argmax of each sequence's last logits row
  // (ties to the lowest id) runs on the backend, inside a decode step's graph, and only the ids
  // come to the host (4 bytes a sequence instead of the vocabulary's logits: on the H100 the
  // download and a host argmax took ~0.5 ms per token). A row with a NaN/Inf logit yields no
  // token but names the entry (GreedyToken). options.all_logits does not apply.
  GreedyToken forward_greedy(ops::Backend& backend, SequenceCache& cache, const std::vector<int32_t>& ids,
                             const ForwardOptions& options) const;
  std::vector<GreedyToken> forward_batch_greedy(ops::Backend& backend, const std::vector<SequenceCache*>& caches,
                                                const std::vector<int32_t>& ids, const ForwardOptions& options) const;

  // Where a step leaves its results on the backend: logits [rows, vocab] and, for a greedy step,
  // their argmax [rows] I32 (empty otherwise).
  struct StepOut {
    TensorView logits;
    TensorView tokens;
  };

  // Past 32 rows the CUDA projections leave the weight-streaming GEMV for BF16 weight copies and
  // cuBLAS: on the H100 a V4-Flash step of 64 sequences took 201 ms, one of 32 took 62 ms
  // (docs/PERFORMANCE.md).
  static constexpr int64_t kMaxBatchRows = 32;

 private:
  Model() = default;
  // The weights and RoPE tables `backend` reads (what: the caller, for errors).
  struct Tables {
    const ModelWeights& weights;
    const LinearWeight& head;
    TensorView inv_main;
    TensorView inv_compress;
  };
  Tables tables_for(ops::Backend& backend, const char* what) const;
  // Checks that `cache` belongs to this model and binds it to `backend` on first use.
  void claim_cache(ops::Backend& backend, SequenceCache& cache, const char* what) const;
  // The ops of one forward (a decode step's graph recorded or replayed), up to the logits of
  // `rows` last positions (greedy: and their argmax), inside the caller's scratch frame.
  StepOut issue_forward(ops::Backend& backend, SequenceCache& cache, const std::vector<int32_t>& ids,
                        const ForwardOptions& options, int64_t rows, bool greedy) const;
  // forward_batch(_greedy): checks the caches (distinct, one id each; `what` names the call in
  // errors) and claims them; then per group of at most kMaxBatchRows sequences, in a scratch
  // frame, issue_group and take(first row, results), and the group's positions advance.
  void run_groups(ops::Backend& backend, const std::vector<SequenceCache*>& caches, const std::vector<int32_t>& ids,
                  const ForwardOptions& options, bool greedy, const char* what,
                  const std::function<void(int64_t, const StepOut&)>& take) const;
  // forward_batch's ops for one group (distinct, claimed caches; at most kMaxBatchRows).
  StepOut issue_group(ops::Backend& backend, const std::vector<SequenceCache*>& caches,
                      const std::vector<int32_t>& ids, const ForwardOptions& options, bool greedy) const;
  // The tokens of a greedy step (`tokens` downloaded; a non-finite row's value read from logits).
  std::vector<GreedyToken> download_greedy(ops::Backend& backend, const StepOut& step) const;
  io::Checkpoint checkpoint_;
  ModelConfig config_;
  ModelWeights weights_;
  std::vector<Buffer> owned_;  // dense F32 weights made by --dequant; weights_ points into them
  Buffer inv_freq_main_;      // [rope_dim/2] F32, sliding layers
  Buffer inv_freq_compress_;  // [rope_dim/2] F32, compressed layers, their compressors and indexers
  LinearWeight head_;         // the head as a dense linear over weights_.head (a stable address per model)

  // place(): device copies of weights_ (MTP block excluded: forward never runs it) and of the
  // RoPE tables, owned by device_buffers_. The placing backend must outlive the Model.
  Device placed_on_ = Device::kCpu;  // kCpu: not placed
  ModelWeights device_weights_;
  LinearWeight device_head_;
  TensorView device_inv_freq_main_, device_inv_freq_compress_;
  std::vector<ops::DeviceBuffer> device_buffers_;
};

}  // namespace clawmine::model::deepseek_v4
