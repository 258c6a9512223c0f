// Tuning and test hooks of the decode attention (attention_decode_mma.cu). Plain C++ header (the
// GPU tests include it). Not thread-safe: set them while no attention call runs; every setter's
// default argument restores the default.
#pragma once

namespace clawmine::backend::cuda {

// The most key-slot splits of the tensor-core decode attention (its blocks, each a range of
// slots, then the merge launch). By default the slots split into up to 64 ranges of 16-slot tiles,
// aiming at 4 blocks per multiprocessor: at a 128-token context a V4-Flash layer's ~190 slots give
// 12 one-tile ranges. Fewer splits give each block more tiles and the merge fewer partials (the
// results differ from the default's in the last bits: another summation grouping). n <= 0: the
// environment's CLAWMINE_ATTN_DECODE_SPLITS (read once; an integer in [1, 64]; unset: no cap).
void set_attn_decode_max_splits(int n = -1);

}  // namespace clawmine::backend::cuda
