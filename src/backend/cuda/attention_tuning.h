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

// When the decode attention runs as one range (short lists, or the cap above at 1), its kernel
// finishes the output itself (the sink, the rounding, the inverse RoPE: the merge's arithmetic for
// one split, the same bits) instead of a merge launch after it. mode < 0: the environment's
// CLAWMINE_ATTN_DECODE_FINISH (read once; "1" turns it on, default off until measured); 0 off;
// > 0 on.
void set_attn_decode_finish(int mode = -1);

}  // namespace clawmine::backend::cuda
