// Multi-head latent attention (DeepSeek-V2/V3), in both forms:
//  naive:    K and V are expanded per head from the cached latent through kv_b_proj;
//  absorbed: W_UK is folded into the query and W_UV into the output, so attention runs as
//            multi-query attention over the cached [c ; k_rope] rows directly.
#pragma once

#include <span>

#include "core/workspace.h"
#include "model/config.h"
#include "model/rope_yarn.h"
#include "model/weights.h"
#include "ops/backend.h"

namespace whale::model {

// kAuto picks, per call, the form with fewer multiply-adds: absorbed for decode (few new tokens
// over a long cache), naive for prefill (many new tokens, where the absorbed form's attention
// over kv_lora-wide keys and values costs more than expanding K and V).
enum class AttentionForm { kAuto, kAbsorbed, kNaive };



struct MlaContext {
  const ops::Backend& ops;
  const ModelConfig& config;
  const RopeTables& rope;
  float softmax_scale;
  Workspace& scratch;  // the pass's buffers
};

// The rows of one sequence within a batch: rows [row, row + n) of the batch are its tokens at
// positions n_past.., and `cache` ([capacity, kv_lora + rope], this layer) receives them, or
// `cache_bf16` where the cache stores bf16.
struct MlaSequence {
  int64_t row = 0;
  int64_t n = 0;
  int64_t n_past = 0;
  float* cache = nullptr;
  uint16_t* cache_bf16 = nullptr;
};

// The form kAuto resolves to for these sequences.
AttentionForm choose_attention_form(const ModelConfig& c, std::span<const MlaSequence> sequences);

// x: [n_rows, d] normed input of every sequence's new tokens; pos[r] is row r's position in
// its sequence. Projections run over all rows at once (weights are read once per batch);
// attention runs per sequence over its own cache. out: [n_rows, d]. Takes its buffers from
// ctx.scratch and gives them back.
void mla_forward(const MlaContext& ctx, const AttentionWeights& w, const float* x, int64_t n_rows,
                 const int32_t* pos, std::span<const MlaSequence> sequences, AttentionForm form,
                 float* out);

}  // namespace whale::model
