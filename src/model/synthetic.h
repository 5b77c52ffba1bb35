// Synthetic checkpoints: random weights under the real DeepSeek tensor names and shapes of any
// config, so that real-size runs (speed, memory) need no download. Norm weights are 1, the
// router bias 0, every other weight uniform with standard deviation `std`. When the config has
// an fp8 quantization_config, the tensors DeepSeek ships in FP8 are written as e4m3 blocks with
// their `weight_scale_inv`.
#pragma once

#include <string>

#include "core/error.h"
#include "model/config.h"

namespace whale::model {

struct SynthOptions {
  uint64_t seed = 1;
  float std = 0.02f;
};

// Writes OUT_DIR/config.json (`config_text` verbatim) and OUT_DIR/model.safetensors. Refuses to
// overwrite existing files. Streams tensor by tensor: memory stays small whatever the size.
Status write_synthetic_checkpoint(const ModelConfig& config, const std::string& config_text,
                                  const std::string& out_dir, const SynthOptions& options);

}  // namespace whale::model
