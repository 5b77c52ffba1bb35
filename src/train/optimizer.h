// AdamW (decoupled weight decay, as torch.optim.AdamW), the learning-rate schedule, global-norm
// gradient clipping, and DeepSeek-V3's auxiliary-loss-free balancing of the routers' biases.
#pragma once

#include <cstdint>
#include <vector>

#include "train/params.h"

namespace whale::train {

struct AdamWSettings {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // on matrices only (ParamInfo::decay)
};

struct Schedule {
  double peak_lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 100;
  int64_t total_steps = 1000;
  // Linear warm-up to peak over warmup_steps (step s gets peak·(s+1)/warmup), then cosine decay
  // to min_lr at total_steps.
  double lr(int64_t step) const;
};

class AdamW {
 public:
  AdamW(const ParamLayout& layout, AdamWSettings settings);
  // One update of `params` from `grads` at learning rate lr; step counts from 1.
  void update(ParamSet<float>& params, const ParamSet<float>& grads, double lr);
  int64_t step() const { return step_; }
  // The moments, for checkpoints.
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }
  void set_step(int64_t step) { step_ = step; }

 private:
  const ParamLayout* layout_;
  AdamWSettings settings_;
  std::vector<float> m_, v_;
  int64_t step_ = 0;
};

// The L2 norm of every gradient (in double).
double global_norm(const std::vector<float>& grads);
// Scales the gradients down to norm `max_norm` if they exceed it (torch's clip_grad_norm_:
// factor max_norm/(norm + 1e-6) when below 1). Returns the norm before clipping.
double clip_gradients(std::vector<float>& grads, double max_norm);

// Loss-free balancing (DeepSeek-V3 §2.1.2): for each MoE layer, b_i += γ·sign(c̄ − c_i) from the
// tokens c_i each expert received in this step (over the whole global batch).
void update_biases(ParamSet<float>& params, const std::vector<std::vector<int64_t>>& counts,
                   double gamma);

// Max load over mean load of one layer's counts (1 is perfectly even).
double max_over_mean(const std::vector<int64_t>& counts);

}  // namespace whale::train
