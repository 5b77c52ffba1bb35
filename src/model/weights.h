// Views of every weight of a DeepSeek MLA+MoE model, pointing into the mapped checkpoint.
#pragma once

#include <optional>
#include <vector>

#include "ops/matrix.h"

namespace whale::model {

using ops::Matrix;

struct AttentionWeights {
  Matrix q_proj;     // [H·(nope+rope), d]          only when q_lora_rank is null
  Matrix q_a;        // [q_lora, d]
  Matrix q_a_norm;   // [1, q_lora]
  Matrix q_b;        // [H·(nope+rope), q_lora]      head h: rows h·(nope+rope) .. +nope = q_nope
  Matrix kv_a;       // [kv_lora + rope, d]          c_kv first, then the shared rope key
  Matrix kv_a_norm;  // [1, kv_lora]
  Matrix kv_b;       // [H·(nope+v), kv_lora]        head h: W_UK rows then W_UV rows
  Matrix o;          // [d, H·v]
};

struct FfnWeights {
  Matrix gate;  // [width, d]
  Matrix up;    // [width, d]
  Matrix down;  // [d, width]
};

struct MoeWeights {
  Matrix router;                    // [E, d]
  Matrix correction_bias;           // [1, E]   noaux_tc only (e_score_correction_bias)
  std::vector<FfnWeights> experts;  // E experts of width moe_intermediate_size
  FfnWeights shared;                // width n_shared·moe_intermediate_size, if any
};

struct LayerWeights {
  Matrix attn_norm;  // [1, d] input_layernorm
  Matrix ffn_norm;   // [1, d] post_attention_layernorm
  AttentionWeights attn;
  bool moe = false;
  FfnWeights dense;    // when !moe
  MoeWeights experts;  // when moe
};

// Multi-token prediction module (stored as layer num_hidden_layers + k).
struct MtpWeights {
  Matrix enorm;      // [1, d]
  Matrix hnorm;      // [1, d]
  Matrix eh_proj;    // [d, 2d]  input is [norm(embedding) ; norm(hidden)]
  Matrix embed;      // [vocab, d]  copy of the main embedding
  Matrix head_norm;  // [1, d]
  Matrix head;       // [vocab, d]  copy of lm_head
  LayerWeights layer;
};

struct ModelWeights {
  Matrix embed;  // [vocab, d]
  std::vector<LayerWeights> layers;
  Matrix norm;                  // [1, d]
  Matrix lm_head;               // [vocab, d]
  std::vector<MtpWeights> mtp;  // empty when the checkpoint carries no MTP tensors
};

}  // namespace whale::model
