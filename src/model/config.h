// One validated struct for config.json of the DeepSeek MLA+MoE families (deepseek_v3 for
// V3/R1/V3.1, deepseek_v2 for V2/V2-Lite/Coder-V2). Every feature is an explicit field read
// from the file; nothing is inferred from a dimension.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/error.h"

namespace whale::model {

enum class Family { kDeepseekV2, kDeepseekV3 };
enum class ScoringFunc { kSoftmax, kSigmoid };
enum class TopkMethod {
  kGreedy,              // V2-Lite: plain top-k of softmax probabilities
  kGroupLimitedGreedy,  // V2: groups ranked by their best probability
  kNoauxTc,             // V3: sigmoid + correction bias, groups ranked by their top-2 sum
};

struct YarnScaling {
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;                     // 0 when absent in the file
  double mscale_all_dim = 0.0;             // 0 when absent in the file
  std::optional<double> attention_factor;  // explicit cos/sin amplitude, rarely present
};

struct Fp8Quantization {
  int64_t block_rows = 128;       // weight_block_size[0], along the output dimension
  int64_t block_cols = 128;       // weight_block_size[1], along the input dimension
  bool scale_ue8m0 = false;       // scale_fmt "ue8m0": every scale is a power of two (V3.1+)
  std::string activation_scheme;  // "dynamic" in released checkpoints
};

struct ModelConfig {
  Family family = Family::kDeepseekV3;
  std::string model_type;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;             // d
  int64_t num_hidden_layers = 0;       // main layers; MTP layers are stored after them
  int64_t num_attention_heads = 0;     // H
  int64_t num_key_value_heads = 0;     // unused by MLA, kept for `whale info`
  std::optional<int64_t> q_lora_rank;  // nullopt: plain q_proj (V2-Lite)
  int64_t kv_lora_rank = 0;            // width of the cached latent
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t intermediate_size = 0;      // dense FFN width
  int64_t moe_intermediate_size = 0;  // width of each routed and shared expert
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;  // top-k
  int64_t n_group = 1;
  int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;
  ScoringFunc scoring_func = ScoringFunc::kSigmoid;
  TopkMethod topk_method = TopkMethod::kNoauxTc;
  bool norm_topk_prob = false;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<YarnScaling> rope_scaling;
  int64_t max_position_embeddings = 0;
  int64_t num_nextn_predict_layers = 0;  // MTP modules stored as layers N, N+1, ...
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
  std::optional<Fp8Quantization> fp8;
  // whale_quantization.q4_levels: the name of the level table of 4-bit (U8) weights, as
  // `whale quantize` wrote it; empty when absent.
  std::string q4_levels;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // DeepSeek's rule: MoE iff layer >= first_k_dense_replace and layer % moe_layer_freq == 0.
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // Per token per layer: the latent plus the rotary key.
  int64_t kv_cache_width() const { return kv_lora_rank + qk_rope_head_dim; }
};

// Parses and validates config.json text; `path` is used in messages.
Result<ModelConfig> parse_config(const std::string& json_text, const std::string& path);
// Reads MODEL_DIR/config.json.
Result<ModelConfig> load_config(const std::string& model_dir);

std::string_view family_name(Family f);
std::string_view topk_method_name(TopkMethod m);

}  // namespace whale::model
