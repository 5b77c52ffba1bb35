// Training: the backward passes against finite differences (double precision), and the whole
// objective, gradients and optimizer steps against PyTorch/transformers goldens.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "model/config.h"
#include "train/network.h"
#include "train/params.h"

namespace whale::train {
namespace {

// A very small deepseek_v3: one dense layer, one MoE layer (4 experts, 2 groups), one MTP module.
const char* kTinyConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2,
  "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 8, "kv_lora_rank": 8,
  "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4, "intermediate_size": 24,
  "moe_intermediate_size": 8, "n_routed_experts": 4, "n_shared_experts": 1,
  "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5,
  "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": true,
  "first_k_dense_replace": 1, "moe_layer_freq": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000,
  "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "max_position_embeddings": 64, "num_nextn_predict_layers": 1, "tie_word_embeddings": false
})";

ParamLayout tiny_layout() {
  auto config = model::parse_config(kTinyConfig, "tiny");
  EXPECT_TRUE(config.ok()) << config.error().to_string();
  auto layout = ParamLayout::build(*config);
  EXPECT_TRUE(layout.ok()) << layout.error().to_string();
  return std::move(layout).value();
}

// Every parameter tensor's gradient, at a few elements each, against central differences of the
// whole objective (main + MTP + balance loss) in double precision: this covers the backward of
// each block (embedding, norms, MLA with rope, attention, SwiGLU, router, experts, MTP, head).
TEST(TrainBackward, EveryParameterMatchesFiniteDifferences) {
  const ParamLayout layout = tiny_layout();
  ThreadPool pool(2);
  Network<double> net(layout, pool);
  ParamSet<double> params(layout), grads(layout);
  init_params(params, 0.3, 7);
  for (auto& b : params.biases) {
    for (size_t e = 0; e < b.size(); ++e) b[e] = 0.01 * double(e % 3);
  }
  const int64_t B = 2, S = 6;
  std::mt19937 rng(3);
  std::vector<int32_t> tokens(size_t(B * (S + 1)));
  for (auto& t : tokens) t = int32_t(rng() % 32);
  LossSettings settings;
  settings.mtp_lambda = 0.3;
  settings.balance_alpha = 0.1;
  const Losses base = net.run(params, tokens, B, S, settings, &grads, 1.0, nullptr);
  ASSERT_TRUE(std::isfinite(base.total));
  EXPECT_GT(base.mtp, 0);
  EXPECT_GT(base.balance, 0);

  const double h = 1e-5;
  int checked = 0;
  for (const ParamInfo& info : layout.params) {
    double worst = 0, scale = 0;
    for (int k = 0; k < 4; ++k) {
      const int64_t i = info.offset + int64_t(rng() % uint32_t(info.numel));
      const double keep = params.values[size_t(i)];
      params.values[size_t(i)] = keep + h;
      const double up = net.run(params, tokens, B, S, settings, nullptr, 1.0, nullptr).total;
      params.values[size_t(i)] = keep - h;
      const double down = net.run(params, tokens, B, S, settings, nullptr, 1.0, nullptr).total;
      params.values[size_t(i)] = keep;
      const double fd = (up - down) / (2 * h);
      worst = std::max(worst, std::abs(fd - grads.values[size_t(i)]));
      scale = std::max(scale, std::abs(fd));
      ++checked;
    }
    EXPECT_LE(worst, 1e-6 * std::max(1.0, scale)) << info.name;
  }
  EXPECT_EQ(checked, int(layout.params.size()) * 4);
}

}  // namespace
}  // namespace whale::train
