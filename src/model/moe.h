// Feed-forward blocks: SwiGLU FFN (dense layers, experts) and DeepSeekMoE routing.
#pragma once

#include <cstdint>

#include "core/workspace.h"
#include "model/config.h"
#include "model/weights.h"
#include "ops/backend.h"

namespace whale::model {

// out[n, d] = down(silu(gate·x) ⊙ up·x) for x [n, d]. Takes its buffers from `scratch` and
// gives them back.
void ffn_forward(const ops::Backend& ops, const FfnWeights& w, const float* x, int64_t n,
                 float* out, Workspace& scratch);

// Picks num_experts_per_tok experts for one token from its router logits [E] and writes their
// ids and final weights (normalised if norm_topk_prob, times routed_scaling_factor).
//  noaux_tc:              s = sigmoid(logit); select on s + bias within the topk_group groups
//                         with the largest top-2 sums; weights are the unbiased s.
//  greedy:                p = softmax(logits); plain top-k.
//  group_limited_greedy:  p = softmax(logits); groups ranked by their largest p.
// `bias` is the correction bias [E] for noaux_tc, else ignored. Allocates nothing once a thread
// has routed for a model of this many experts.
void route_token(const ModelConfig& c, const float* logits, const float* bias, int32_t* experts,
                 float* weights);

// out[n, d] = Σ_k w_k·Expert_k(x) + Shared(x). Takes its buffers from `scratch` and gives them
// back.
void moe_forward(const ops::Backend& ops, const ModelConfig& c, const MoeWeights& w, const float* x,
                 int64_t n, float* out, Workspace& scratch);

}  // namespace whale::model
