// Shared by attention.cu (the FMA kernel, the split merge, the op) and attention_mma.cu (the
// tensor-core kernel): one call's arguments and the split-S partial layout.
//
// Split-S ("flash-decoding"): the S key slots of a query are cut into `splits` consecutive ranges
// of `split_len` slots; a block handles one range and writes, per head, its unnormalised state
//   m = max_s l_s,  l = sum_s e^(l_s - m),  acc[d] = sum_s e^(l_s - m) key[r_s][d]
// over the range's valid slots (m = -inf when it has none; l = NaN when it met an index outside
// [-1, rows)). merge (attention.cu) then combines the ranges in index order with the sink:
//   M = max(sink, m_i),  out = sum_i e^(m_i - M) acc_i / (sum_i e^(m_i - M) l_i + e^(sink - M)).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace clawmine::backend::cuda {
class CudaBackend;
}

namespace clawmine::backend::cuda::attn {

template <typename E>  // element type of q, kv, entries, out
struct AttnArgs {
  const E* q;          // [T, H, Dh]
  const E* kv;         // [n_kv, Dh]
  int64_t n_kv;
  const E* entries;    // [n_rows - n_kv, Dh] or nullptr
  int64_t n_rows;      // rows of the key space [kv; entries]
  const int32_t* idx;  // [T, S]
  int64_t T, S;
  const float* sink;   // [H] or nullptr
  float scale;
  int64_t H, Dh;
  E* out;              // [T, H, Dh]
};

// Partials of query t, split i, head h: acc at ((t * splits + i) * H + h) * Dh (F32, Dh values),
// ml at (t * splits + i) * H + h ((m, l) pairs). splits == 1 with null pointers: the kernels
// write the final output themselves.
struct Partials {
  float* acc = nullptr;
  float2* ml = nullptr;
  int splits = 1;
  int64_t split_len = 0;  // key slots per split (the last may have fewer)
};

// Tensor-core path (BF16/F16, attention_mma.cu): 64 heads per block, 32-key tiles.
constexpr int kMmaHeads = 64;
constexpr int kMmaKeys = 32;
bool mma_supports(int64_t Dh);  // head dims with a compiled instantiation (64, 128, 256, 512)
// Grid (T, ceil(H / 64), part.splits); part.split_len must be a multiple of kMmaKeys.
template <typename T>
void launch_attention_mma(CudaBackend& be, const AttnArgs<T>& a, const Partials& part);

// Decode path: T <= kDecodeMaxT queries. BF16/F16 with a tensor-core head dim take
// attention_decode_mma.cu (a split kernel over the whole device, then a merge launch with the
// optional inverse RoPE of the output: rope_dim > 0, positions [T], inv_freq [rope_dim / 2]), any
// number of key slots; otherwise attention_decode.cu's F32-FMA kernel (one launch that merges the
// splits in its last block per (query, head group)) for lists of at most kDecodeMaxSlots slots.
constexpr int64_t kDecodeMaxT = 4;
// The FMA decode kernel's limit: measured on the H100 it beats the prefill tensor-core kernel +
// merge + rope up to ~250 slots and loses above (S 640: 35.1 vs 30.8 us).
constexpr int64_t kDecodeMaxSlots = 256;
template <typename T>
bool decode_supports(const AttnArgs<T>& a);  // either decode kernel takes the call
template <typename T>
void launch_attention_decode(CudaBackend& be, const AttnArgs<T>& a, const int32_t* positions, const float* inv_freq,
                             int64_t rope_dim);
template <typename T>
bool decode_mma_supports(const AttnArgs<T>& a);  // 16-bit T, T <= kDecodeMaxT, Dh 64/128/256/512, alignment
template <typename T>
void launch_attention_decode_mma(CudaBackend& be, const AttnArgs<T>& a, const int32_t* positions,
                                 const float* inv_freq, int64_t rope_dim);

}  // namespace clawmine::backend::cuda::attn
