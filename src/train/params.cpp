#include "train/params.h"

#include <cmath>

#include "core/splitmix.h"

namespace whale::train {

size_t ParamLayout::add(const std::string& name, std::vector<int64_t> shape) {
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (int64_t s : shape) p.numel *= s;
  p.decay = shape.size() >= 2;
  p.shape = std::move(shape);
  p.offset = total;
  total += p.numel;
  index[name] = params.size();
  params.push_back(std::move(p));
  return params.size() - 1;
}

LayerParams ParamLayout::add_layer(int64_t layer) {
  const model::ModelConfig& c = config;
  const int64_t d = c.hidden_size, H = c.num_attention_heads, ql = *c.q_lora_rank;
  const int64_t lat = c.kv_lora_rank, rope = c.qk_rope_head_dim;
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  auto ffn = [&](const std::string& prefix, int64_t width) {
    FfnParams f;
    f.width = width;
    f.gate = add(prefix + "gate_proj.weight", {width, d});
    f.up = add(prefix + "up_proj.weight", {width, d});
    f.down = add(prefix + "down_proj.weight", {d, width});
    return f;
  };
  LayerParams l;
  l.attn_norm = add(p + "input_layernorm.weight", {d});
  l.attn.q_a = add(p + "self_attn.q_a_proj.weight", {ql, d});
  l.attn.q_a_norm = add(p + "self_attn.q_a_layernorm.weight", {ql});
  l.attn.q_b = add(p + "self_attn.q_b_proj.weight", {H * c.qk_head_dim(), ql});
  l.attn.kv_a = add(p + "self_attn.kv_a_proj_with_mqa.weight", {lat + rope, d});
  l.attn.kv_a_norm = add(p + "self_attn.kv_a_layernorm.weight", {lat});
  l.attn.kv_b = add(p + "self_attn.kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), lat});
  l.attn.o = add(p + "self_attn.o_proj.weight", {d, H * c.v_head_dim});
  l.ffn_norm = add(p + "post_attention_layernorm.weight", {d});
  l.moe = c.is_moe_layer(layer);
  if (!l.moe) {
    l.dense = ffn(p + "mlp.", c.intermediate_size);
    return l;
  }
  l.router = add(p + "mlp.gate.weight", {c.n_routed_experts, d});
  l.moe_index = n_moe_layers++;
  moe_layers_.push_back(layer);
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    l.experts.push_back(ffn(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size));
  }
  if (c.n_shared_experts > 0) {
    l.shared = ffn(p + "mlp.shared_experts.", c.n_shared_experts * c.moe_intermediate_size);
  }
  return l;
}

std::string ParamLayout::bias_name(int moe_index) const {
  return "model.layers." + std::to_string(moe_layer_number(moe_index)) +
         ".mlp.gate.e_score_correction_bias";
}

Result<ParamLayout> ParamLayout::build(const model::ModelConfig& c) {
  if (c.family != model::Family::kDeepseekV3) {
    return make_error("training supports model_type deepseek_v3 only", "model_type", {},
                      "DeepSeek-V2's softmax routing has no trainer yet");
  }
  if (!c.q_lora_rank) {
    return make_error("training needs a compressed query (q_lora_rank set)", "q_lora_rank");
  }
  if (c.n_routed_experts > 0 && (c.scoring_func != model::ScoringFunc::kSigmoid ||
                                 c.topk_method != model::TopkMethod::kNoauxTc)) {
    return make_error("training supports sigmoid scoring with noaux_tc routing only", "topk_method");
  }
  if (c.n_routed_experts > kMaxExperts) {
    return make_error("training supports at most " + std::to_string(kMaxExperts) + " routed experts",
                      "n_routed_experts");
  }
  if (c.tie_word_embeddings) {
    return make_error("training does not support tied embeddings", "tie_word_embeddings");
  }
  ParamLayout l;
  l.config = c;
  l.embed = l.add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) l.layers.push_back(l.add_layer(i));
  l.norm = l.add("model.norm.weight", {c.hidden_size});
  l.lm_head = l.add("lm_head.weight", {c.vocab_size, c.hidden_size});
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const int64_t layer = c.num_hidden_layers + k;
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    MtpParams m;
    m.enorm = l.add(p + "enorm.weight", {c.hidden_size});
    m.hnorm = l.add(p + "hnorm.weight", {c.hidden_size});
    m.eh_proj = l.add(p + "eh_proj.weight", {c.hidden_size, 2 * c.hidden_size});
    m.head_norm = l.add(p + "shared_head.norm.weight", {c.hidden_size});
    m.layer = l.add_layer(layer);
    l.mtp.push_back(std::move(m));
  }
  return l;
}

namespace {

// Box-Muller over splitmix64: the same numbers on every platform and standard library.
struct NormalRng : SplitMix64 {
  double normal() {
    return std::sqrt(-2.0 * std::log(open_unit())) * std::cos(6.283185307179586 * open_unit());
  }
};

}  // namespace

template <class T>
void init_params(ParamSet<T>& p, double std, uint64_t seed) {
  NormalRng rng{seed};
  for (const ParamInfo& info : p.layout->params) {
    T* v = p.values.data() + info.offset;
    for (int64_t i = 0; i < info.numel; ++i) v[i] = info.decay ? T(std * rng.normal()) : T(1);
  }
  for (auto& b : p.biases) std::fill(b.begin(), b.end(), T(0));
}

template void init_params(ParamSet<float>&, double, uint64_t);
template void init_params(ParamSet<double>&, double, uint64_t);

}  // namespace whale::train
