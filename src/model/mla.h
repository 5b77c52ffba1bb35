// Multi-head latent attention (DeepSeek-V2/V3), in both forms:
//  naive:    K and V are expanded per head from the cached latent through kv_b_proj;
//  absorbed: W_UK is folded into the query and W_UV into the output, so attention runs as
//            multi-query attention over the cached [c ; k_rope] rows directly.
#pragma once

#include "model/config.h"
#include "model/rope_yarn.h"
#include "model/weights.h"
#include "ops/backend.h"

namespace whale::model {

enum class AttentionForm { kAbsorbed, kNaive };

struct MlaContext {
  const ops::Backend& ops;
  const ModelConfig& config;
  const RopeTables& rope;
  float softmax_scale;
};

// x: [n, d] normed input of n new tokens at positions n_past.. (pos[t] = n_past + t).
// cache: [capacity, kv_lora + rope] of this layer; rows n_past..n_past+n-1 are written.
// out: [n, d]. Allocates its scratch.
void mla_forward(const MlaContext& ctx, const AttentionWeights& w, const float* x, int64_t n,
                 const int32_t* pos, float* cache, int64_t n_past, AttentionForm form, float* out);

}  // namespace whale::model
