// Rotary frequencies with YaRN scaling, and the softmax scale that goes with them.
//
// inv_freq_i = base_i·(1 − ramp_i) + (base_i / factor)·ramp_i, base_i = θ^(−2i/d_r),
// ramp_i = clamp((i − low) / (high − low), 0, 1) between the correction dims of beta_fast and
// beta_slow (floored / ceiled). Pairs are adjacent dims (x[2i], x[2i+1]), as DeepSeek stores them.
#pragma once

#include <vector>

#include "model/config.h"

namespace whale::model {

struct RopeTables {
  std::vector<float> inv_freq;  // [qk_rope_head_dim / 2]
  float amplitude = 1.0f;       // cos/sin multiplier (YaRN attention factor)
};

RopeTables make_rope_tables(const ModelConfig& c);

// qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)² under YaRN.
float attention_softmax_scale(const ModelConfig& c);

// YaRN's magnitude correction: 0.1·m·ln(s) + 1 for s > 1, else 1.
double yarn_mscale(double scale, double m);

}  // namespace whale::model
