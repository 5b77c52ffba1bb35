#include <cstdio>
#include <nlohmann/json.hpp>

#include "apps/whale/commands.h"
#include "model/config.h"
#include "model/model_info.h"
#include "model/tensor_table.h"

namespace whale::app {

void add_info_command(CLI::App& app, InfoArgs& args) {
  auto* cmd = app.add_subcommand("info", "Describe a model: family, layers, experts, sizes");
  cmd->add_option("MODEL_DIR", args.model_dir, "model directory (config.json + safetensors)")
      ->required();
  cmd->add_flag("--json", args.json, "print one JSON object");
  cmd->add_flag("--config-only", args.config_only, "read config.json only, not the weights");
}

namespace {

std::string human(double v) {
  const char* units[] = {"", "K", "M", "B", "T"};
  int u = 0;
  while (v >= 1000 && u < 4) {
    v /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%s", v, units[u]);
  return buf;
}

}  // namespace

int run_info(const InfoArgs& args) {
  auto config = model::load_config(args.model_dir);
  if (!config.ok()) {
    return report("info", config.error());
  }
  const model::ModelConfig& c = *config;
  std::optional<Checkpoint> ckpt;
  if (!args.config_only) {
    auto opened = Checkpoint::open_dir(args.model_dir);
    if (!opened.ok()) {
      return report("info", opened.error());
    }
    // Checks every tensor against the config, as loading would.
    auto bound = model::bind_weights(c, *opened);
    if (!bound.ok()) {
      return report("info", bound.error());
    }
    ckpt = std::move(*opened);
  }
  const model::ModelSummary s = model::summarize(c, ckpt ? &*ckpt : nullptr);

  if (args.json) {
    nlohmann::ordered_json j;
    j["model_type"] = c.model_type;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["dense_layers"] = s.dense_layers;
    j["moe_layers"] = s.moe_layers;
    j["hidden_size"] = c.hidden_size;
    j["num_attention_heads"] = c.num_attention_heads;
    j["vocab_size"] = c.vocab_size;
    j["n_routed_experts"] = c.n_routed_experts;
    j["n_shared_experts"] = c.n_shared_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["topk_method"] = model::topk_method_name(c.topk_method);
    j["q_lora_rank"] = c.q_lora_rank ? nlohmann::ordered_json(*c.q_lora_rank) : nullptr;
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["params_total"] = s.params_total;
    j["params_active"] = s.params_active;
    j["params_mtp"] = s.params_mtp;
    j["mtp_layers"] = c.num_nextn_predict_layers;
    j["kv_cache_bytes_per_token"] = s.kv_cache_bytes_per_token_bf16;
    j["kv_cache_bytes_per_token_f32"] = s.kv_cache_bytes_per_token_f32;
    j["fp8_block_size"] = c.fp8 ? nlohmann::ordered_json{c.fp8->block_rows, c.fp8->block_cols}
                                : nlohmann::ordered_json(nullptr);
    if (ckpt) {
      j["checkpoint_bytes"] = s.checkpoint_bytes;
      j["bytes_by_dtype"] = s.bytes_by_dtype;
      j["has_mtp_tensors"] = s.has_mtp_tensors;
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("model_type        %s\n", c.model_type.c_str());
  std::printf("layers            %lld (%lld dense, %lld MoE) + %lld MTP\n",
              static_cast<long long>(c.num_hidden_layers), static_cast<long long>(s.dense_layers),
              static_cast<long long>(s.moe_layers),
              static_cast<long long>(c.num_nextn_predict_layers));
  std::printf("hidden / heads    %lld / %lld\n", static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.num_attention_heads));
  std::printf("attention         MLA, q_lora_rank %s, kv_lora_rank %lld, rope %lld\n",
              c.q_lora_rank ? std::to_string(*c.q_lora_rank).c_str() : "none (q_proj)",
              static_cast<long long>(c.kv_lora_rank), static_cast<long long>(c.qk_rope_head_dim));
  std::printf("experts           %lld routed (top-%lld, %s), %lld shared\n",
              static_cast<long long>(c.n_routed_experts),
              static_cast<long long>(c.num_experts_per_tok),
              std::string(model::topk_method_name(c.topk_method)).c_str(),
              static_cast<long long>(c.n_shared_experts));
  std::printf("parameters        %s total, %s active per token, %s in MTP\n",
              human(double(s.params_total)).c_str(), human(double(s.params_active)).c_str(),
              human(double(s.params_mtp)).c_str());
  std::printf("KV cache          %lld bytes/token in bf16 (%lld as f32)\n",
              static_cast<long long>(s.kv_cache_bytes_per_token_bf16),
              static_cast<long long>(s.kv_cache_bytes_per_token_f32));
  if (ckpt) {
    std::printf("checkpoint        %s bytes", human(double(s.checkpoint_bytes)).c_str());
    for (const auto& [dtype, bytes] : s.bytes_by_dtype) {
      std::printf(", %s %s", dtype.c_str(), human(double(bytes)).c_str());
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace whale::app
