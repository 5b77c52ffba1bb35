// `whale train`: the training loop around Network, AdamW and the data stream, with evaluation,
// progress lines, a JSON-lines log and atomic checkpoints that resume exactly.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "train/checkpoint.h"

namespace whale::train {

struct TrainSettings {
  nlohmann::json model;               // config.json fields of the model to train
  std::string init_from;              // a model directory to start from instead of random weights
  std::vector<std::string> data;      // shard files or directories (train_*.bin)
  std::vector<std::string> val_data;  // default: the val_*.bin shards beside `data`, if any
  std::string tokenizer;              // copied into every checkpoint
  std::string out;                    // output directory
  std::string resume;                 // a checkpoint directory, or "auto" for OUT's latest
  int64_t seq_len = 256;
  int64_t batch_size = 8;  // sequences per micro-batch
  int64_t grad_accum = 1;  // micro-batches per optimizer step
  int64_t steps = 1000;
  int64_t stop_at = 0;     // end this run (with a checkpoint) after this step; 0: at `steps`
  double lr = 3e-4, min_lr = 3e-5;
  int64_t warmup = 100;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, grad_clip = 1.0;
  double mtp_lambda = 0.3;       // λ
  double bias_gamma = 0.001;     // γ of loss-free balancing
  double balance_alpha = 1e-4;   // α of the sequence-wise balance loss
  uint64_t seed = 1;
  double init_std = 0.02;
  int64_t eval_interval = 100, eval_batches = 4;
  int64_t checkpoint_interval = 500;
  int64_t log_interval = 10;
  int threads = 0;

  // Reads and checks the fields of a settings object (unknown fields are errors).
  static Result<TrainSettings> from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
};

// The fields every flag of `whale train` may set, as "name": kind ("int", "number", "string",
// "list", "bool").
const std::vector<std::pair<std::string, std::string>>& train_setting_fields();

struct TrainReport {
  bool root = true;  // this process is rank 0 (the one that writes and reports)
  int64_t steps_done = 0;
  double first_loss = 0, last_loss = 0;  // main next-token loss of the first and last step
  double val_loss = -1;  // last evaluation, -1 if none
  std::vector<double> first_load, last_load;  // max/mean expert load per MoE layer
  std::string last_checkpoint;
  double tokens_per_second = 0, mfu = 0, peak_flops = 0;
};

struct TrainHooks {
  std::FILE* progress = nullptr;  // progress lines, or none
  std::function<Status(const std::string&)> after_checkpoint_file;  // see SaveOptions
};

Result<TrainReport> run_training(const TrainSettings& settings, const TrainHooks& hooks = {});

}  // namespace whale::train
