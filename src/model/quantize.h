// `whale quantize`: rewrites a checkpoint with its weight matrices in bf16 or in whale's block
// formats (ops::WeightFormat), by recipe. The output is a model directory whale loads like any
// other: config.json (without an FP8 quantization_config, with a `whale_quantization` note),
// one model.safetensors, and the tokenizer files.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/calibration.h"

namespace whale::model {

enum class QuantRecipe {
  kBf16,       // every matrix in bf16 (an FP8 checkpoint dequantized)
  kQ8,         // every matrix in q8
  kQ4,         // every matrix in q4, the output head in q8
  kQ4Experts,  // routed experts in q4; attention, dense and shared FFNs and the head in q8
};

// "bf16", "q8", "q4", "q4-experts".
Result<QuantRecipe> parse_recipe(const std::string& name);
std::string recipe_name(QuantRecipe r);

struct QuantizeReport {
  // Tensors written per stored form ("q4", "q8", "BF16", "F32", ...).
  std::map<std::string, int64_t> tensors_by_form;
  int64_t bytes_in = 0;   // stored bytes of the input weights
  int64_t bytes_out = 0;  // of the output weights
  int64_t kept_bf16 = 0;  // matrices the recipe wanted quantized but whose width is not a
                          // multiple of 32
};

// What the quantizers weigh their rounding errors by (see calibration.h), and where it came from
// (noted in config.json).
struct Calibration {
  ImportanceTable importance;
  std::string text;    // the calibration text's file name
  int64_t tokens = 0;  // its tokens that were run
};

// The router (small, and its scores choose experts) stays bf16 or finer. With `calibration`, each
// q8/q4 block's scale is chosen for the least error weighed by its columns' importance, for every
// matrix the calibration reached often enough (see kMinCalibrationRows); the others as without.
Result<QuantizeReport> quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                           QuantRecipe recipe, ThreadPool& pool,
                                           const std::function<void(size_t, size_t)>& progress,
                                           const Calibration* calibration = nullptr);

}  // namespace whale::model
