// The one table that drives loading: for each weight, its logical name, checkpoint name,
// shape, accepted storage and whether it is required, and where its view goes.
#pragma once

#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace whale::model {

enum class TensorKind {
  kLinear,  // a projection: bf16 / f16 / f32, or fp8 e4m3 with `<name>_scale_inv`
  kNorm,    // a norm weight: bf16 / f16 / f32, used as [1, n]
  kBias,    // the router's correction bias: f32 in releases (bf16 / f16 accepted), [1, n]
  kTable,   // embedding or output head: bf16 / f16 / f32
};

// kMtpShared: an MTP module's copies of the embedding and output head. DeepSeek's checkpoints
// store them; a checkpoint may leave them out, and the module then uses the main ones (which is
// what training shares anyway).
enum class TensorGroup { kMain, kMtp, kMtpShared };

struct TensorSpec {
  std::string logical;     // "blk.3.attn.kv_b"
  std::string checkpoint;  // "model.layers.3.self_attn.kv_b_proj.weight"
  std::vector<int64_t> shape;
  TensorKind kind = TensorKind::kLinear;
  TensorGroup group = TensorGroup::kMain;
  bool required = true;
  bool routed_expert = false;   // counted as k/E of its parameters per token
  bool fp8_in_release = false;  // stored as FP8 blocks in DeepSeek's FP8 releases
  Matrix* dest = nullptr;
};

// The table for `config`, with destinations inside `weights` (resized to fit). MTP tensors are
// listed with group kMtp and required = false: a checkpoint carries all of them or none.
std::vector<TensorSpec> tensor_table(const ModelConfig& config, ModelWeights* weights);

// Binds every table entry to the checkpoint: checks presence, shape and dtype, and fills the
// views. Reports every problem found, by checkpoint name, in one error.
Result<ModelWeights> bind_weights(const ModelConfig& config, const Checkpoint& ckpt);

}  // namespace whale::model
