#include "model/model_info.h"

#include "model/tensor_table.h"

namespace whale::model {

ModelSummary summarize(const ModelConfig& c, const Checkpoint* ckpt) {
  ModelSummary s;
  ModelWeights scratch;
  int64_t routed = 0;
  for (const TensorSpec& spec : tensor_table(c, &scratch)) {
    int64_t numel = 1;
    for (int64_t dim : spec.shape) numel *= dim;
    if (spec.group != TensorGroup::kMain) {  // the MTP module, its embedding and head copies too
      s.params_mtp += numel;
      if (ckpt && ckpt->find(spec.checkpoint)) s.has_mtp_tensors = true;
      continue;
    }
    if (spec.checkpoint == "lm_head.weight" && c.tie_word_embeddings) continue;
    s.params_total += numel;
    if (spec.routed_expert) routed += numel;
  }
  s.params_active = s.params_total - routed;
  if (c.n_routed_experts > 0)
    s.params_active += routed / c.n_routed_experts * c.num_experts_per_tok;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    (c.is_moe_layer(l) ? s.moe_layers : s.dense_layers)++;
  s.kv_cache_bytes_per_token_bf16 = c.num_hidden_layers * c.kv_cache_width() * 2;
  s.kv_cache_bytes_per_token_f32 = c.num_hidden_layers * c.kv_cache_width() * 4;
  if (ckpt) {
    for (const auto& [name, t] : ckpt->tensors()) {
      s.bytes_by_dtype[std::string(dtype_name(t->view.dtype))] += t->view.nbytes();
      s.checkpoint_bytes += t->view.nbytes();
    }
  }
  return s;
}

}  // namespace whale::model
