#include "model/tensor_table.h"

#include "ops/quant.h"

namespace whale::model {
namespace {

struct TableBuilder {
  const ModelConfig& c;
  std::vector<TensorSpec>& specs;
  TensorGroup group = TensorGroup::kMain;

  void add(std::string logical, std::string checkpoint, std::vector<int64_t> shape, TensorKind kind,
           Matrix* dest, bool routed_expert = false, bool fp8 = false) {
    TensorSpec s;
    s.logical = std::move(logical);
    s.checkpoint = std::move(checkpoint);
    s.shape = std::move(shape);
    s.kind = kind;
    s.group = group;
    s.required = group == TensorGroup::kMain;
    s.routed_expert = routed_expert;
    s.fp8_in_release = fp8;
    s.dest = dest;
    specs.push_back(std::move(s));
  }

  void ffn(const std::string& logical, const std::string& prefix, int64_t width, FfnWeights* w,
           bool routed = false) {
    const int64_t d = c.hidden_size;
    add(logical + ".gate", prefix + "gate_proj.weight", {width, d}, TensorKind::kLinear, &w->gate,
        routed, true);
    add(logical + ".up", prefix + "up_proj.weight", {width, d}, TensorKind::kLinear, &w->up, routed,
        true);
    add(logical + ".down", prefix + "down_proj.weight", {d, width}, TensorKind::kLinear, &w->down,
        routed, true);
  }

  void layer(int64_t l, LayerWeights* w) {
    const int64_t d = c.hidden_size, h = c.num_attention_heads;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm", p + "input_layernorm.weight", {d}, TensorKind::kNorm, &w->attn_norm);
    add(b + "ffn_norm", p + "post_attention_layernorm.weight", {d}, TensorKind::kNorm,
        &w->ffn_norm);

    const std::string a = p + "self_attn.";
    AttentionWeights& at = w->attn;
    if (c.q_lora_rank) {
      const int64_t q = *c.q_lora_rank;
      add(b + "attn.q_a", a + "q_a_proj.weight", {q, d}, TensorKind::kLinear, &at.q_a, false, true);
      add(b + "attn.q_a_norm", a + "q_a_layernorm.weight", {q}, TensorKind::kNorm, &at.q_a_norm);
      add(b + "attn.q_b", a + "q_b_proj.weight", {h * c.qk_head_dim(), q}, TensorKind::kLinear,
          &at.q_b, false, true);
    } else {
      add(b + "attn.q", a + "q_proj.weight", {h * c.qk_head_dim(), d}, TensorKind::kLinear,
          &at.q_proj, false, true);
    }
    add(b + "attn.kv_a", a + "kv_a_proj_with_mqa.weight", {c.kv_cache_width(), d},
        TensorKind::kLinear, &at.kv_a, false, true);
    add(b + "attn.kv_a_norm", a + "kv_a_layernorm.weight", {c.kv_lora_rank}, TensorKind::kNorm,
        &at.kv_a_norm);
    add(b + "attn.kv_b", a + "kv_b_proj.weight",
        {h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}, TensorKind::kLinear, &at.kv_b,
        false, true);
    add(b + "attn.o", a + "o_proj.weight", {d, h * c.v_head_dim}, TensorKind::kLinear, &at.o, false,
        true);

    w->moe = c.is_moe_layer(l);
    if (!w->moe) {
      ffn(b + "ffn", p + "mlp.", c.intermediate_size, &w->dense);
      return;
    }
    MoeWeights& m = w->experts;
    const int64_t e = c.n_routed_experts;
    add(b + "moe.router", p + "mlp.gate.weight", {e, d}, TensorKind::kLinear, &m.router);
    if (c.topk_method == TopkMethod::kNoauxTc) {
      add(b + "moe.router_bias", p + "mlp.gate.e_score_correction_bias", {e}, TensorKind::kNorm,
          &m.correction_bias);
    }
    m.experts.resize(static_cast<size_t>(e));
    for (int64_t i = 0; i < e; ++i) {
      ffn(b + "moe.expert." + std::to_string(i), p + "mlp.experts." + std::to_string(i) + ".",
          c.moe_intermediate_size, &m.experts[static_cast<size_t>(i)], /*routed=*/true);
    }
    if (c.n_shared_experts > 0) {
      ffn(b + "moe.shared", p + "mlp.shared_experts.", c.n_shared_experts * c.moe_intermediate_size,
          &m.shared);
    }
  }
};

// Accepted storage for a kind; fp8 only for projections.
bool dtype_accepted(TensorKind kind, DType t) {
  if (t == DType::kBF16 || t == DType::kF16 || t == DType::kF32) return true;
  return kind == TensorKind::kLinear && t == DType::kF8E4M3;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Binds a tensor in one of whale's block formats (ops::WeightFormat): I8 codes of the logical
// shape, or U8 with two 4-bit codes per byte, each with `<name>_scale`, F16 [rows, cols / 32].
// Returns the problem, if any.
std::optional<std::string> bind_block_quantized(const TensorSpec& s, const TensorView& v,
                                                const Checkpoint& ckpt) {
  using ops::kQuantBlock;
  const bool q4 = v.dtype == DType::kU8;
  const std::string what = q4 ? "U8 (4-bit)" : "I8";
  if (s.shape.size() != 2 || (s.kind != TensorKind::kLinear && s.kind != TensorKind::kTable)) {
    return s.checkpoint + ": " + what + " is only supported for weight matrices";
  }
  const int64_t rows = s.shape[0], cols = s.shape[1];
  if (cols % kQuantBlock != 0) {
    return s.checkpoint + ": " + what + " needs columns in blocks of 32, config.json implies " +
           std::to_string(cols);
  }
  const std::vector<int64_t> stored = {rows, q4 ? cols / 2 : cols};
  if (v.shape != stored) {
    return s.checkpoint + ": " + what + " shape " + shape_to_string(v.shape) + ", expected " +
           shape_to_string(stored) + " for " + shape_to_string(s.shape);
  }
  const std::string scale_name = s.checkpoint + "_scale";
  const StoredTensor* st = ckpt.find(scale_name);
  const std::vector<int64_t> scale_shape = {rows, cols / kQuantBlock};
  if (!st) return scale_name + ": missing (needed by the " + what + " weight)";
  if (st->view.dtype != DType::kF16 || st->view.shape != scale_shape) {
    return scale_name + ": expected F16 of shape " + shape_to_string(scale_shape) + ", found " +
           std::string(dtype_name(st->view.dtype)) + " " + shape_to_string(st->view.shape);
  }
  Matrix& m = *s.dest;
  m.format = q4 ? ops::WeightFormat::kQ4 : ops::WeightFormat::kQ8;
  m.dtype = v.dtype;
  m.data = v.data;
  m.rows = rows;
  m.cols = cols;
  m.scale = st->view.data;
  m.scale_dtype = DType::kF16;
  m.scale_cols = scale_shape[1];
  m.block_rows = 1;
  m.block_cols = kQuantBlock;
  return std::nullopt;
}

}  // namespace

std::vector<TensorSpec> tensor_table(const ModelConfig& c, ModelWeights* w) {
  std::vector<TensorSpec> specs;
  TableBuilder t{c, specs};
  const int64_t d = c.hidden_size, v = c.vocab_size;
  t.add("token_embd", "model.embed_tokens.weight", {v, d}, TensorKind::kTable, &w->embed);
  w->layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) t.layer(l, &w->layers[static_cast<size_t>(l)]);
  t.add("output_norm", "model.norm.weight", {d}, TensorKind::kNorm, &w->norm);
  t.add("output", "lm_head.weight", {v, d}, TensorKind::kTable, &w->lm_head);
  if (c.tie_word_embeddings) specs.back().required = false;

  t.group = TensorGroup::kMtp;
  w->mtp.resize(static_cast<size_t>(c.num_nextn_predict_layers));
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const int64_t l = c.num_hidden_layers + k;
    MtpWeights& m = w->mtp[static_cast<size_t>(k)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string b = "mtp." + std::to_string(k) + ".";
    t.add(b + "enorm", p + "enorm.weight", {d}, TensorKind::kNorm, &m.enorm);
    t.add(b + "hnorm", p + "hnorm.weight", {d}, TensorKind::kNorm, &m.hnorm);
    t.add(b + "eh_proj", p + "eh_proj.weight", {d, 2 * d}, TensorKind::kLinear, &m.eh_proj);
    t.add(b + "head_norm", p + "shared_head.norm.weight", {d}, TensorKind::kNorm, &m.head_norm);
    t.group = TensorGroup::kMtpShared;
    t.add(b + "embed", p + "embed_tokens.weight", {v, d}, TensorKind::kTable, &m.embed);
    t.add(b + "head", p + "shared_head.head.weight", {v, d}, TensorKind::kTable, &m.head);
    t.group = TensorGroup::kMtp;
    t.layer(l, &m.layer);
  }
  return specs;
}

Result<ModelWeights> bind_weights(const ModelConfig& c, const Checkpoint& ckpt) {
  ModelWeights w;
  const std::vector<TensorSpec> specs = tensor_table(c, &w);
  // The first problems are kept as text, the rest only counted: a config that disagrees with
  // everything must not build millions of messages.
  struct Problems {
    std::vector<std::string> shown;
    size_t count = 0;
    void push_back(std::string p) {
      if (count++ < 20) shown.push_back(std::move(p));
    }
    bool empty() const { return count == 0; }
  } problems;
  int64_t mtp_found = 0, mtp_total = 0;
  std::string first_missing_mtp;

  for (const TensorSpec& s : specs) {
    const StoredTensor* t = ckpt.find(s.checkpoint);
    if (s.group == TensorGroup::kMtp) ++mtp_total;
    if (!t) {
      if (s.required) problems.push_back(s.checkpoint + ": missing");
      if (s.group == TensorGroup::kMtp && first_missing_mtp.empty())
        first_missing_mtp = s.checkpoint;
      continue;
    }
    if (s.group == TensorGroup::kMtp) ++mtp_found;
    const TensorView& v = t->view;
    if (v.dtype == DType::kU8 && c.q4_levels != ops::kQ4LevelsName) {
      // An older whale wrote 4-bit codes as scale · (q − 8); read with today's levels they
      // would give wrong numbers without any error.
      problems.push_back(s.checkpoint +
                         ": 4-bit (U8) weights need config.json's "
                         "whale_quantization.q4_levels to be \"" +
                         std::string(ops::kQ4LevelsName) + "\", found \"" + c.q4_levels +
                         "\"; rewrite the model with whale quantize");
      continue;
    }
    if (v.dtype == DType::kI8 || v.dtype == DType::kU8) {
      if (std::optional<std::string> p = bind_block_quantized(s, v, ckpt)) problems.push_back(*p);
      continue;
    }
    if (v.shape != s.shape) {
      problems.push_back(s.checkpoint + ": shape " + shape_to_string(v.shape) +
                         ", config.json implies " + shape_to_string(s.shape));
      continue;
    }
    if (!dtype_accepted(s.kind, v.dtype)) {
      problems.push_back(s.checkpoint + ": dtype " + std::string(dtype_name(v.dtype)) +
                         " is not supported here");
      continue;
    }
    Matrix& m = *s.dest;
    m.dtype = v.dtype;
    m.data = v.data;
    m.rows = s.shape.size() == 2 ? s.shape[0] : 1;
    m.cols = s.shape.back();
    if (v.dtype != DType::kF8E4M3) continue;

    // FP8 block weights need their scales and the block size from quantization_config.
    if (!c.fp8) {
      problems.push_back(s.checkpoint +
                         ": F8_E4M3 weight but config.json has no fp8 quantization_config");
      continue;
    }
    const std::string scale_name = s.checkpoint + "_scale_inv";
    const StoredTensor* st = ckpt.find(scale_name);
    const std::vector<int64_t> scale_shape = {ceil_div(m.rows, c.fp8->block_rows),
                                              ceil_div(m.cols, c.fp8->block_cols)};
    if (!st) {
      problems.push_back(scale_name + ": missing (needed by the F8_E4M3 weight)");
      continue;
    }
    if (st->view.shape != scale_shape ||
        (st->view.dtype != DType::kF32 && st->view.dtype != DType::kE8M0)) {
      problems.push_back(scale_name + ": expected F32 or F8_E8M0 of shape " +
                         shape_to_string(scale_shape) + ", found " +
                         std::string(dtype_name(st->view.dtype)) + " " +
                         shape_to_string(st->view.shape));
      continue;
    }
    m.scale = st->view.data;
    m.scale_dtype = st->view.dtype;
    m.scale_cols = scale_shape[1];
    m.block_rows = c.fp8->block_rows;
    m.block_cols = c.fp8->block_cols;
  }
  if (mtp_found > 0 && mtp_found < mtp_total) {
    problems.push_back(first_missing_mtp +
                       ": missing (the checkpoint has some MTP tensors but not all)");
  }
  if (!problems.empty()) {
    std::string msg = std::to_string(problems.count) + " tensor problem(s): ";
    for (size_t i = 0; i < problems.shown.size(); ++i) msg += (i ? "; " : "") + problems.shown[i];
    if (problems.count > problems.shown.size()) msg += "; ...";
    return make_error(msg, {}, ckpt.dir(), "the weights do not match config.json");
  }
  if (mtp_found == 0) w.mtp.clear();
  if (c.tie_word_embeddings && !w.lm_head.data) w.lm_head = w.embed;
  for (MtpWeights& m : w.mtp) {
    if (!m.embed.data) m.embed = w.embed;
    if (!m.head.data) m.head = w.lm_head;
  }
  return w;
}

}  // namespace whale::model
