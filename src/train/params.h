// The trainable state of a DeepSeek MLA+MoE model: every weight in one flat buffer (so the
// optimizer, the gradient norm and, later, the gradient all-reduce each run over one array),
// named with the checkpoint's own tensor names, plus the routers' correction biases, which are
// state but not parameters (the balancing rule updates them, not the gradient).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/config.h"

namespace whale::train {

// The most routed experts a layer may have (DeepSeek-V3 has 256).
inline constexpr int64_t kMaxExperts = 1024;

struct ParamInfo {
  std::string name;            // the HF checkpoint name, e.g. model.layers.0.self_attn.o_proj.weight
  std::vector<int64_t> shape;  // [rows, cols] for matrices, [n] for norm weights
  int64_t offset = 0;          // into the flat buffer
  int64_t numel = 0;
  bool decay = false;  // AdamW's weight decay applies (matrices yes, norm weights no)
};

// Indices into ParamLayout::params of one block's weights.
struct AttentionParams {
  size_t q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, o;
};
struct FfnParams {
  size_t gate, up, down;
  int64_t width = 0;
};
struct LayerParams {
  size_t attn_norm, ffn_norm;
  AttentionParams attn;
  bool moe = false;
  FfnParams dense;             // when !moe
  size_t router = 0;           // when moe: [E, d]
  int moe_index = -1;          // when moe: index of this layer's correction bias
  std::vector<FfnParams> experts;
  FfnParams shared;            // shared.width == 0 when there is no shared expert
};
struct MtpParams {
  size_t enorm, hnorm, eh_proj, head_norm;
  LayerParams layer;
};

// Where every weight of a model of this config lives. Only what training supports is accepted:
// deepseek_v3 with a compressed query (q_lora_rank) and sigmoid/noaux_tc routing.
struct ParamLayout {
  model::ModelConfig config;
  std::vector<ParamInfo> params;
  std::map<std::string, size_t> index;
  int64_t total = 0;
  size_t embed = 0, norm = 0, lm_head = 0;
  std::vector<LayerParams> layers;
  std::vector<MtpParams> mtp;  // num_nextn_predict_layers modules, stored as layers N, N+1, ...
  int n_moe_layers = 0;        // main and MTP layers with a router

  static Result<ParamLayout> build(const model::ModelConfig& config);
  const ParamInfo& info(size_t i) const { return params[i]; }
  // The checkpoint name of MoE layer `moe_index`'s correction bias.
  std::string bias_name(int moe_index) const;
  // The checkpoint layer index of MoE layer `moe_index` (main layers first, then MTP modules).
  int64_t moe_layer_number(int moe_index) const { return moe_layers_[size_t(moe_index)]; }

 private:
  std::vector<int64_t> moe_layers_;
  size_t add(const std::string& name, std::vector<int64_t> shape);
  LayerParams add_layer(int64_t layer);
};

// Values (or gradients) of every parameter, in the layout's order.
template <class T>
struct ParamSet {
  const ParamLayout* layout = nullptr;
  std::vector<T> values;
  std::vector<std::vector<T>> biases;  // [n_moe_layers][E] correction biases

  explicit ParamSet(const ParamLayout& l)
      : layout(&l), values(size_t(l.total), T(0)),
        biases(size_t(l.n_moe_layers), std::vector<T>(size_t(l.config.n_routed_experts), T(0))) {}
  T* data(size_t i) { return values.data() + layout->params[i].offset; }
  const T* data(size_t i) const { return values.data() + layout->params[i].offset; }
};

// Norm weights 1, matrices N(0, std²), correction biases 0; reproducible from `seed`.
template <class T>
void init_params(ParamSet<T>& p, double std, uint64_t seed);

}  // namespace whale::train
