// `--dequant GLOB[,GLOB...]`: per-module precision override at load. Every linear whose release
// name (`layers.3.ffn.experts.5.w1`) or fused checkpoint name (`layers.0.attn.fused_wqa_wkv`)
// matches a glob is decoded exactly (backend/cpu decode_row) into a dense F32 weight the Model
// owns. F32, not BF16: E2M1 x E4M3 x F32 products are not always BF16-exact, and the CPU
// reference keeps them exact; "kept in BF16" in the issue means "a 16-bit-or-wider dense weight".
#pragma once

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "model/deepseek_v4/weights.h"

namespace clawmine::model::deepseek_v4 {

// fnmatch-style: `*` any run of characters (dots included), `?` one character.
bool glob_match(std::string_view pattern, std::string_view name);

// "a, b,c" -> {"a", "b", "c"}; an empty item is an error naming `flag`.
std::vector<std::string> parse_dequant_list(const std::string& text, const std::string& flag = "--dequant");

struct DequantSelection {
  std::vector<LinearWeight*> modules;  // in walk order, each once
  std::set<std::string> names;         // their release names
};

// Resolves the globs against every bound linear of `w`. A glob matching nothing throws
// clawmine::Error listing the 5 nearest linear / fused names. Logs one line per glob.
DequantSelection select_dequant(ModelWeights& w, const std::vector<std::string>& globs);

// Decodes every selected quantized linear into a new F32 [out, in] buffer and points the
// LinearWeight at it (format dense, scales cleared); dense ones stay as they are. The returned
// buffers must outlive the weights.
std::vector<Buffer> dequantize(const DequantSelection& selection);

}  // namespace clawmine::model::deepseek_v4
