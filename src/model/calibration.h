// Importance data for the quantizers: how large the activations are that each column of each
// weight matrix multiplies. A block's rounding error costs the model in proportion to the
// squares of the inputs it meets, so `whale quantize --calibration` weighs each column's error
// by the mean square of its inputs over calibration text, run through the unquantized model.
#pragma once

#include <map>
#include <span>
#include <string>
#include <vector>

#include "model/deepseek.h"

namespace whale::model {

struct ColumnImportance {
  std::vector<float> mean_square;  // per input column: mean of x² over the rows multiplied
  int64_t rows = 0;                // activation rows the matrix was multiplied with
};

// By checkpoint tensor name ("model.layers.3.mlp.experts.7.up_proj.weight"). A matrix the
// calibration never reached (an expert no token chose, the MTP module) is absent.
using ImportanceTable = std::map<std::string, ColumnImportance>;

// Runs `ids` through `model` on `ops` as independent sequences of `window` tokens, each from an
// empty cache (in the naive attention form, logits for every position), and returns every
// weight matrix's per-column mean square of its inputs.
Result<ImportanceTable> measure_importance(const Model& model, const ops::Backend& ops,
                                           std::span<const int32_t> ids, int64_t window);

}  // namespace whale::model
