// Sizes of a model from its config (and checkpoint, when given): parameters total and per
// token, KV cache per token, bytes by stored dtype.
#pragma once

#include <map>
#include <string>

#include "formats/safetensors.h"
#include "model/config.h"

namespace whale::model {

struct ModelSummary {
  int64_t params_total = 0;   // main model (embedding and head included), MTP excluded
  int64_t params_active = 0;  // per token: routed experts count k of E
  int64_t params_mtp = 0;     // MTP modules, their embedding/head copies included
  int64_t dense_layers = 0;
  int64_t moe_layers = 0;
  int64_t kv_cache_bytes_per_token_bf16 = 0;      // the latent cache at 2 bytes per value
  int64_t kv_cache_bytes_per_token_f32 = 0;       // with --kv-cache f32
  std::map<std::string, int64_t> bytes_by_dtype;  // of every stored tensor, scales included
  int64_t checkpoint_bytes = 0;
  bool has_mtp_tensors = false;
};

// Counts from the tensor table of `config`; `ckpt` (nullable) adds stored bytes.
ModelSummary summarize(const ModelConfig& config, const Checkpoint* ckpt);

}  // namespace whale::model
