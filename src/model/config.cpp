#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"

namespace whale::model {
namespace {

using nlohmann::json;

// Limits far above any released model (V3: hidden 7168, 61 layers, 256 experts) yet low enough
// that parameter counts cannot overflow int64 and the tensor table stays small.
constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 256;
constexpr int64_t kMaxExperts = 1024;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxExpertMatrices = 1 << 16;  // layers × experts: the tensor table's size
constexpr double kMaxParameters = 1e14;          // 60× DeepSeek-V4-Pro

// Reads typed fields of one JSON object, naming the field in every error.
class FieldReader {
 public:
  FieldReader(const json& obj, std::string prefix, std::string path)
      : obj_(obj), prefix_(std::move(prefix)), path_(std::move(path)) {}

  Error error(const std::string& field, const std::string& message, std::string hint = {}) const {
    return make_error(message, prefix_ + field, path_, std::move(hint));
  }
  bool has(const std::string& field) const {
    const auto it = obj_.find(field);
    return it != obj_.end() && !it->is_null();
  }
  const json* find(const std::string& field) const {
    const auto it = obj_.find(field);
    return it == obj_.end() ? nullptr : &*it;
  }

  // An integer in [lo, hi]; `fallback` when absent (nullopt: the field is required).
  Result<int64_t> integer(const std::string& field, int64_t lo, int64_t hi,
                          std::optional<int64_t> fallback = std::nullopt) const {
    const json* v = find(field);
    if (!v || v->is_null()) {
      if (fallback) return *fallback;
      return error(field, "required field is missing");
    }
    if (!v->is_number_integer()) return error(field, "must be an integer, got " + type_of(*v));
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) {
      return error(field, "must be at most " + std::to_string(hi));
    }
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) {
      return error(field, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                              "], got " + std::to_string(x));
    }
    return x;
  }
  // An integer, or null (nullopt) — required to be present unless `may_be_absent`.
  Result<std::optional<int64_t>> nullable_integer(const std::string& field, int64_t lo, int64_t hi,
                                                  bool may_be_absent) const {
    const json* v = find(field);
    if (!v) {
      if (may_be_absent) return std::optional<int64_t>{};
      return error(field, "required field is missing", "use null when the feature is absent");
    }
    if (v->is_null()) return std::optional<int64_t>{};
    WHALE_ASSIGN_OR_RETURN(int64_t x, integer(field, lo, hi));
    return std::optional<int64_t>{x};
  }
  Result<double> number(const std::string& field, double lo, double hi,
                        std::optional<double> fallback = std::nullopt) const {
    const json* v = find(field);
    if (!v || v->is_null()) {
      if (fallback) return *fallback;
      return error(field, "required field is missing");
    }
    if (!v->is_number()) return error(field, "must be a number, got " + type_of(*v));
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi) {
      return error(field, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    return x;
  }
  Result<bool> boolean(const std::string& field, std::optional<bool> fallback) const {
    const json* v = find(field);
    if (!v || v->is_null()) {
      if (fallback) return *fallback;
      return error(field, "required field is missing");
    }
    if (!v->is_boolean()) return error(field, "must be true or false, got " + type_of(*v));
    return v->get<bool>();
  }
  Result<std::string> string(const std::string& field,
                             std::optional<std::string> fallback = std::nullopt) const {
    const json* v = find(field);
    if (!v || v->is_null()) {
      if (fallback) return *fallback;
      return error(field, "required field is missing");
    }
    if (!v->is_string()) return error(field, "must be a string, got " + type_of(*v));
    return v->get<std::string>();
  }

  static std::string type_of(const json& v) { return std::string(v.type_name()); }

 private:
  const json& obj_;
  std::string prefix_;
  std::string path_;
};

Result<YarnScaling> parse_yarn(const json& obj, const std::string& prefix,
                               const std::string& path) {
  FieldReader r(obj, prefix, path);
  std::string type;
  if (r.has("type")) {
    WHALE_ASSIGN_OR_RETURN(type, r.string("type"));
  } else {
    WHALE_ASSIGN_OR_RETURN(type, r.string("rope_type"));
  }
  if (type != "yarn") {
    return r.error(r.has("type") ? "type" : "rope_type",
                   "unsupported rope scaling \"" + type + "\"", "DeepSeek models use \"yarn\"");
  }
  YarnScaling y;
  WHALE_ASSIGN_OR_RETURN(y.factor, r.number("factor", 1.0, 1e6));
  WHALE_ASSIGN_OR_RETURN(y.original_max_position_embeddings,
                         r.integer("original_max_position_embeddings", 1, kMaxDim * 64));
  // Defaults are transformers': beta 32/1, mscale 1, mscale_all_dim 0 (absent).
  WHALE_ASSIGN_OR_RETURN(y.beta_fast, r.number("beta_fast", 1e-6, 1e6, 32.0));
  WHALE_ASSIGN_OR_RETURN(y.beta_slow, r.number("beta_slow", 1e-6, 1e6, 1.0));
  WHALE_ASSIGN_OR_RETURN(y.mscale, r.number("mscale", 0.0, 1e3, 0.0));
  WHALE_ASSIGN_OR_RETURN(y.mscale_all_dim, r.number("mscale_all_dim", 0.0, 1e3, 0.0));
  if (r.has("attention_factor")) {
    WHALE_ASSIGN_OR_RETURN(double af, r.number("attention_factor", 1e-6, 1e3));
    y.attention_factor = af;
  }
  if (y.beta_fast <= y.beta_slow) {
    return r.error("beta_fast", "must be greater than beta_slow");
  }
  return y;
}

Result<Fp8Quantization> parse_quantization(const json& obj, const std::string& path) {
  FieldReader r(obj, "quantization_config.", path);
  WHALE_ASSIGN_OR_RETURN(std::string method, r.string("quant_method"));
  if (method != "fp8") {
    return r.error("quant_method", "unsupported quantization \"" + method + "\"",
                   "whale reads DeepSeek's fp8 block checkpoints");
  }
  WHALE_ASSIGN_OR_RETURN(std::string fmt, r.string("fmt", "e4m3"));
  if (fmt != "e4m3") return r.error("fmt", "unsupported fp8 format \"" + fmt + "\"");
  Fp8Quantization q;
  WHALE_ASSIGN_OR_RETURN(q.activation_scheme, r.string("activation_scheme", "dynamic"));
  const json* bs = r.find("weight_block_size");
  if (!bs || !bs->is_array() || bs->size() != 2 || !(*bs)[0].is_number_integer() ||
      !(*bs)[1].is_number_integer() || (*bs)[0].get<int64_t>() < 1 || (*bs)[1].get<int64_t>() < 1 ||
      (*bs)[0].get<int64_t>() > kMaxDim || (*bs)[1].get<int64_t>() > kMaxDim) {
    return r.error("weight_block_size", "must be [rows, cols] with positive integers");
  }
  q.block_rows = (*bs)[0].get<int64_t>();
  q.block_cols = (*bs)[1].get<int64_t>();
  WHALE_ASSIGN_OR_RETURN(std::string scale_fmt, r.string("scale_fmt", ""));
  if (!scale_fmt.empty() && scale_fmt != "ue8m0") {
    return r.error("scale_fmt", "unsupported scale format \"" + scale_fmt + "\"");
  }
  q.scale_ue8m0 = scale_fmt == "ue8m0";
  return q;
}

Status validate(const ModelConfig& c, const FieldReader& r) {
  if (c.qk_rope_head_dim % 2 != 0) return r.error("qk_rope_head_dim", "must be even");
  if (c.n_routed_experts > 0) {
    if (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.n_routed_experts) {
      return r.error("num_experts_per_tok", "must be between 1 and n_routed_experts (" +
                                                std::to_string(c.n_routed_experts) + ")");
    }
    if (c.n_routed_experts % c.n_group != 0) {
      return r.error("n_group", "n_routed_experts (" + std::to_string(c.n_routed_experts) +
                                    ") is not divisible by n_group (" + std::to_string(c.n_group) +
                                    ")");
    }
    if (c.topk_group > c.n_group) return r.error("topk_group", "must not exceed n_group");
    const int64_t per_group = c.n_routed_experts / c.n_group;
    if (c.topk_method != TopkMethod::kGreedy && c.num_experts_per_tok > c.topk_group * per_group) {
      return r.error("num_experts_per_tok", "top-k " + std::to_string(c.num_experts_per_tok) +
                                                " is larger than the " +
                                                std::to_string(c.topk_group * per_group) +
                                                " experts that topk_group groups hold");
    }
    if (c.topk_method == TopkMethod::kNoauxTc && per_group < 2) {
      return r.error("n_group",
                     "noaux_tc ranks groups by their top-2 experts: each group needs at least 2");
    }
  }
  if ((c.num_hidden_layers + c.num_nextn_predict_layers) * c.n_routed_experts >
      kMaxExpertMatrices) {
    return r.error("n_routed_experts",
                   "layers × experts exceeds " + std::to_string(kMaxExpertMatrices));
  }
  // Rough parameter count in floating point, so that later int64 sums cannot overflow.
  const double d = double(c.hidden_size), h = double(c.num_attention_heads);
  const double q = c.q_lora_rank ? double(*c.q_lora_rank) * (d + h * double(c.qk_head_dim()))
                                 : d * h * double(c.qk_head_dim());
  const double attention = q + d * double(c.kv_cache_width()) +
                           double(c.kv_lora_rank) * h * double(c.qk_nope_head_dim + c.v_head_dim) +
                           h * double(c.v_head_dim) * d;
  const double ffn =
      3 * d *
      std::max(double(c.intermediate_size),
               double(c.moe_intermediate_size) * double(c.n_routed_experts + c.n_shared_experts));
  const double params =
      double(c.num_hidden_layers + c.num_nextn_predict_layers) * (attention + ffn) +
      4 * double(c.vocab_size) * d;
  if (params > kMaxParameters) {
    return r.error("hidden_size", "the configuration describes about " +
                                      std::to_string(static_cast<int64_t>(params / 1e12)) +
                                      "T parameters, beyond any model whale can hold");
  }
  if (c.first_k_dense_replace > c.num_hidden_layers) {
    return r.error("first_k_dense_replace", "is larger than num_hidden_layers");
  }
  if (c.family == Family::kDeepseekV3 &&
      (c.scoring_func != ScoringFunc::kSigmoid || c.topk_method != TopkMethod::kNoauxTc)) {
    return r.error("topk_method",
                   "deepseek_v3 routes with scoring_func \"sigmoid\" and topk_method \"noaux_tc\"");
  }
  if (c.family == Family::kDeepseekV2 &&
      (c.scoring_func != ScoringFunc::kSoftmax || c.topk_method == TopkMethod::kNoauxTc)) {
    return r.error("topk_method",
                   "deepseek_v2 routes with scoring_func \"softmax\" and topk_method \"greedy\" or "
                   "\"group_limited_greedy\"");
  }
  return ok_status();
}

}  // namespace

std::string_view family_name(Family f) {
  return f == Family::kDeepseekV2 ? "deepseek_v2" : "deepseek_v3";
}

std::string_view topk_method_name(TopkMethod m) {
  switch (m) {
    case TopkMethod::kGreedy:
      return "greedy";
    case TopkMethod::kGroupLimitedGreedy:
      return "group_limited_greedy";
    case TopkMethod::kNoauxTc:
      break;
  }
  return "noaux_tc";
}

Result<ModelConfig> parse_config(const std::string& json_text, const std::string& path) {
  const json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return make_error("not valid JSON", {}, path);
  if (!root.is_object()) return make_error("must be a JSON object", {}, path);
  FieldReader r(root, "", path);

  ModelConfig c;
  WHALE_ASSIGN_OR_RETURN(c.model_type, r.string("model_type"));
  if (c.model_type == "deepseek_v3") {
    c.family = Family::kDeepseekV3;
  } else if (c.model_type == "deepseek_v2") {
    c.family = Family::kDeepseekV2;
  } else {
    return r.error("model_type", "unsupported model_type \"" + c.model_type + "\"",
                   "whale runs deepseek_v3 (V3, R1, V3.1) and deepseek_v2 (V2, V2-Lite)");
  }
  const bool v3 = c.family == Family::kDeepseekV3;

  WHALE_ASSIGN_OR_RETURN(c.vocab_size, r.integer("vocab_size", 1, int64_t{1} << 24));
  WHALE_ASSIGN_OR_RETURN(c.hidden_size, r.integer("hidden_size", 1, kMaxDim));
  WHALE_ASSIGN_OR_RETURN(c.num_hidden_layers, r.integer("num_hidden_layers", 1, kMaxLayers));
  WHALE_ASSIGN_OR_RETURN(c.num_attention_heads, r.integer("num_attention_heads", 1, kMaxHeads));
  WHALE_ASSIGN_OR_RETURN(c.num_key_value_heads,
                         r.integer("num_key_value_heads", 1, kMaxHeads, c.num_attention_heads));
  WHALE_ASSIGN_OR_RETURN(c.q_lora_rank, r.nullable_integer("q_lora_rank", 1, kMaxDim, false));
  WHALE_ASSIGN_OR_RETURN(c.kv_lora_rank, r.integer("kv_lora_rank", 1, kMaxDim));
  WHALE_ASSIGN_OR_RETURN(c.qk_nope_head_dim, r.integer("qk_nope_head_dim", 1, kMaxDim));
  WHALE_ASSIGN_OR_RETURN(c.qk_rope_head_dim, r.integer("qk_rope_head_dim", 2, kMaxDim));
  WHALE_ASSIGN_OR_RETURN(c.v_head_dim, r.integer("v_head_dim", 1, kMaxDim));
  WHALE_ASSIGN_OR_RETURN(c.intermediate_size, r.integer("intermediate_size", 1, kMaxDim));
  WHALE_ASSIGN_OR_RETURN(c.moe_intermediate_size, r.integer("moe_intermediate_size", 1, kMaxDim));
  WHALE_ASSIGN_OR_RETURN(c.n_routed_experts, r.integer("n_routed_experts", 1, kMaxExperts));
  WHALE_ASSIGN_OR_RETURN(c.n_shared_experts, r.integer("n_shared_experts", 0, 64, 0));
  WHALE_ASSIGN_OR_RETURN(c.num_experts_per_tok, r.integer("num_experts_per_tok", 1, kMaxExperts));
  WHALE_ASSIGN_OR_RETURN(c.n_group, r.integer("n_group", 1, kMaxExperts, 1));
  WHALE_ASSIGN_OR_RETURN(c.topk_group, r.integer("topk_group", 1, kMaxExperts, 1));
  WHALE_ASSIGN_OR_RETURN(c.routed_scaling_factor,
                         r.number("routed_scaling_factor", 1e-6, 1e6, 1.0));
  WHALE_ASSIGN_OR_RETURN(std::string scoring, r.string("scoring_func", v3 ? "sigmoid" : "softmax"));
  if (scoring == "sigmoid") {
    c.scoring_func = ScoringFunc::kSigmoid;
  } else if (scoring == "softmax") {
    c.scoring_func = ScoringFunc::kSoftmax;
  } else {
    return r.error("scoring_func", "unsupported \"" + scoring + "\"",
                   "expected sigmoid or softmax");
  }
  WHALE_ASSIGN_OR_RETURN(std::string topk, r.string("topk_method", v3 ? "noaux_tc" : "greedy"));
  if (topk == "noaux_tc") {
    c.topk_method = TopkMethod::kNoauxTc;
  } else if (topk == "greedy") {
    c.topk_method = TopkMethod::kGreedy;
  } else if (topk == "group_limited_greedy") {
    c.topk_method = TopkMethod::kGroupLimitedGreedy;
  } else {
    return r.error("topk_method", "unsupported \"" + topk + "\"",
                   "expected noaux_tc, greedy or group_limited_greedy");
  }
  WHALE_ASSIGN_OR_RETURN(c.norm_topk_prob, r.boolean("norm_topk_prob", v3));
  WHALE_ASSIGN_OR_RETURN(c.first_k_dense_replace,
                         r.integer("first_k_dense_replace", 0, kMaxLayers, 0));
  WHALE_ASSIGN_OR_RETURN(c.moe_layer_freq, r.integer("moe_layer_freq", 1, kMaxLayers, 1));
  WHALE_ASSIGN_OR_RETURN(c.rms_norm_eps, r.number("rms_norm_eps", 1e-30, 1.0));
  WHALE_ASSIGN_OR_RETURN(c.max_position_embeddings, r.integer("max_position_embeddings", 1,
                                                              std::numeric_limits<int32_t>::max()));
  WHALE_ASSIGN_OR_RETURN(c.num_nextn_predict_layers,
                         r.integer("num_nextn_predict_layers", 0, 16, 0));
  WHALE_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.boolean("tie_word_embeddings", false));
  if (r.has("bos_token_id")) {
    WHALE_ASSIGN_OR_RETURN(c.bos_token_id,
                           r.nullable_integer("bos_token_id", 0, c.vocab_size - 1, true));
  }
  // eos_token_id may be one id or a list (the first is kept here).
  if (const json* eos = r.find("eos_token_id"); eos && eos->is_array()) {
    for (size_t i = 0; i < eos->size(); ++i) {
      const json& e = (*eos)[i];
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= c.vocab_size) {
        return r.error("eos_token_id", "must hold token ids in [0, vocab_size)");
      }
      if (i == 0) c.eos_token_id = e.get<int64_t>();
    }
  } else if (r.has("eos_token_id")) {
    WHALE_ASSIGN_OR_RETURN(c.eos_token_id,
                           r.nullable_integer("eos_token_id", 0, c.vocab_size - 1, true));
  }
  WHALE_ASSIGN_OR_RETURN(std::string act, r.string("hidden_act", "silu"));
  if (act != "silu") return r.error("hidden_act", "unsupported activation \"" + act + "\"");
  WHALE_ASSIGN_OR_RETURN(bool attention_bias, r.boolean("attention_bias", false));
  if (attention_bias) return r.error("attention_bias", "attention biases are not supported");

  // RoPE: classic `rope_theta` + `rope_scaling`, or transformers v5's `rope_parameters`.
  const json* rope_params = r.find("rope_parameters");
  if (rope_params && !rope_params->is_null() && !rope_params->is_object()) {
    return r.error("rope_parameters", "must be an object");
  }
  if (rope_params && rope_params->is_object() && !r.has("rope_scaling")) {
    FieldReader rp(*rope_params, "rope_parameters.", path);
    WHALE_ASSIGN_OR_RETURN(c.rope_theta, rp.number("rope_theta", 1.0, 1e12, 10000.0));
    WHALE_ASSIGN_OR_RETURN(std::string type, rp.string("rope_type", "default"));
    if (type != "default") {
      WHALE_ASSIGN_OR_RETURN(c.rope_scaling, parse_yarn(*rope_params, "rope_parameters.", path));
    }
  } else {
    WHALE_ASSIGN_OR_RETURN(c.rope_theta, r.number("rope_theta", 1.0, 1e12, 10000.0));
    if (r.has("rope_scaling")) {
      const json* rs = r.find("rope_scaling");
      if (!rs->is_object()) return r.error("rope_scaling", "must be an object or null");
      WHALE_ASSIGN_OR_RETURN(c.rope_scaling, parse_yarn(*rs, "rope_scaling.", path));
    }
  }
  if (r.has("quantization_config")) {
    const json* q = r.find("quantization_config");
    if (!q->is_object()) return r.error("quantization_config", "must be an object");
    WHALE_ASSIGN_OR_RETURN(c.fp8, parse_quantization(*q, path));
  }
  if (r.has("whale_quantization")) {
    const json* q = r.find("whale_quantization");
    if (!q->is_object()) return r.error("whale_quantization", "must be an object");
    FieldReader wq(*q, "whale_quantization.", path);
    WHALE_ASSIGN_OR_RETURN(c.q4_levels, wq.string("q4_levels", std::string()));
  }
  WHALE_TRY(validate(c, r));
  return c;
}

Result<ModelConfig> load_config(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return make_error("config.json not found", {}, model_dir,
                      "pass a model directory as published on Hugging Face");
  }
  WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  return parse_config(text, path);
}

}  // namespace whale::model
