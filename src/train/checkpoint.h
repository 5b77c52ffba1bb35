// Training checkpoints: a normal model directory (config.json, model.safetensors in f32 with the
// checkpoint's own tensor names, the tokenizer files) that `whale run` and transformers load,
// plus trainer/state.safetensors with the AdamW moments and, in its metadata, the step, the data
// position and the training settings. A checkpoint is written into a temporary directory and
// renamed into place, so a directory named checkpoint-NNNNNN is always complete.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/params.h"

namespace whale::train {

inline constexpr const char* kStateDir = "trainer";
inline constexpr const char* kStateFile = "state.safetensors";

struct TrainerState {
  int64_t step = 0;       // optimizer steps done
  int64_t adam_step = 0;  // AdamW's step counter
  int64_t data_epoch = 0, data_index = 0;
  std::string settings_json;  // the training settings that produced it
  std::vector<float> m, v;    // AdamW moments [layout.total]
};

struct SaveOptions {
  std::string config_json;    // config.json's text
  std::string tokenizer_dir;  // its tokenizer files are copied when set
  // Called after each file is written, with its path; an error aborts the save (tests use it to
  // simulate a full disk).
  std::function<Status(const std::string&)> after_file;
};

// Writes DIR atomically (DIR.tmp, then renamed; an existing DIR is replaced).
Status save_checkpoint(const std::string& dir, const ParamSet<float>& params,
                       const TrainerState& state, const SaveOptions& options);

// Reads every parameter and correction bias of `params`' layout from a model directory (f32,
// bf16 or f16 tensors). Names and shapes must match.
Status load_params(const std::string& dir, ParamSet<float>& params);
// Reads DIR/trainer/state.safetensors for a layout of `total` parameters.
Result<TrainerState> load_trainer_state(const std::string& dir, int64_t total);

}  // namespace whale::train
