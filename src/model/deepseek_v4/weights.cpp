// Names of the weight storage formats (weights.h), as used in messages and `clawmine info`.
#include "model/deepseek_v4/weights.h"

namespace clawmine::model::deepseek_v4 {

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kDense: return "dense";
    case WeightFormat::kFp8Block: return "fp8-block";
    case WeightFormat::kMxfp4: return "mxfp4";
    case WeightFormat::kNvfp4: return "nvfp4";
  }
  return "?";
}

}  // namespace clawmine::model::deepseek_v4
