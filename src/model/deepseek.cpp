#include "model/deepseek.h"

#include "model/moe.h"
#include "model/tensor_table.h"

namespace whale::model {

Status validate_token_ids(std::span<const int32_t> ids, int64_t vocab_size) {
  if (ids.empty()) return make_error("no token ids given", "ids");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return make_error("token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                            " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")",
                        "ids");
    }
  }
  return ok_status();
}

Result<Model> Model::load(const std::string& model_dir,
                          const std::function<void(size_t, size_t)>& progress) {
  Model m;
  WHALE_ASSIGN_OR_RETURN(m.config_, load_config(model_dir));
  WHALE_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::open_dir(model_dir, progress));
  m.checkpoint_ = std::make_unique<Checkpoint>(std::move(ckpt));
  WHALE_ASSIGN_OR_RETURN(m.weights_, bind_weights(m.config_, *m.checkpoint_));
  m.rope_ = make_rope_tables(m.config_);
  m.softmax_scale_ = attention_softmax_scale(m.config_);
  return m;
}

Result<std::vector<float>> Model::forward(const ops::Backend& ops, std::span<const int32_t> ids,
                                          KvCache& cache, const ForwardOptions& options) const {
  const BatchItem item{ids, &cache, options.all_logits};
  return forward_batch(ops, std::span(&item, 1), options.attention);
}

Status Model::forward(const ops::Backend& ops, std::span<const int32_t> ids, KvCache& cache,
                      std::vector<float>* logits, const ForwardOptions& options) const {
  const BatchItem item{ids, &cache, options.all_logits};
  return forward_batch(ops, std::span(&item, 1), logits, options.attention);
}

Result<std::vector<float>> Model::forward_batch(const ops::Backend& ops,
                                                std::span<const BatchItem> items,
                                                AttentionForm attention) const {
  std::vector<float> logits;
  WHALE_TRY(forward_batch(ops, items, &logits, attention));
  return logits;
}

Status Model::forward_batch(const ops::Backend& ops, std::span<const BatchItem> items,
                            std::vector<float>* logits, AttentionForm attention) const {
  const ModelConfig& c = config_;
  if (items.empty()) return make_error("no sequences given", "batch");
  int64_t n = 0, n_out = 0;
  for (const BatchItem& item : items) {
    WHALE_TRY(validate_token_ids(item.ids, c.vocab_size));
    const KvCache& cache = *item.cache;
    const auto len = static_cast<int64_t>(item.ids.size());
    if (cache.width() != c.kv_cache_width() || cache.layers() != c.num_hidden_layers) {
      return make_error("the KV cache was made for another model", "cache");
    }
    if (cache.size() + len > c.max_position_embeddings) {
      return make_error(
          std::to_string(cache.size() + len) + " tokens exceed the model's context of " +
              std::to_string(c.max_position_embeddings) + " (max_position_embeddings)",
          "ids");
    }
    if (cache.size() + len > cache.capacity()) {
      return make_error("context is full: " + std::to_string(cache.size()) + " cached + " +
                            std::to_string(len) + " new tokens exceed the cache of " +
                            std::to_string(cache.capacity()),
                        "ctx", {}, "start a new sequence or allocate a larger cache");
    }
    n += len;
    n_out += item.all_logits ? len : 1;
  }
  const int64_t d = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);

  thread_local Workspace scratch;
  const Workspace::Scope scope(scratch);

  // Rows of all items back to back, with each row's position in its own sequence.
  const std::span<int32_t> ids = scratch.take<int32_t>(n), pos = scratch.take<int32_t>(n);
  const std::span<MlaSequence> seqs = scratch.take<MlaSequence>(std::ssize(items));
  for (size_t s = 0, row = 0; s < items.size(); ++s) {
    const BatchItem& item = items[s];
    seqs[s] = {static_cast<int64_t>(row), static_cast<int64_t>(item.ids.size()), item.cache->size(),
               nullptr};
    for (size_t t = 0; t < item.ids.size(); ++t, ++row) {
      ids[row] = item.ids[t];
      pos[row] = static_cast<int32_t>(item.cache->size() + static_cast<int64_t>(t));
    }
  }

  // Written whole before they are read: by the embedding, norms and branches.
  const std::span<float> h = scratch.take<float>(n * d);  // [n, d] residual stream
  const std::span<float> normed = scratch.take<float>(n * d), branch = scratch.take<float>(n * d);
  ops.embedding(h.data(), weights_.embed, ids.data(), n);

  const MlaContext mla{ops, c, rope_, softmax_scale_, scratch};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_.layers[static_cast<size_t>(l)];
    for (size_t s = 0; s < items.size(); ++s) {
      seqs[s].cache = items[s].cache->layer(l);
      seqs[s].cache_bf16 = items[s].cache->layer_bf16(l);
    }
    ops.rmsnorm(normed.data(), d, h.data(), d, n, d, lw.attn_norm, eps);
    mla_forward(mla, lw.attn, normed.data(), n, pos.data(), seqs, attention, branch.data());
    for (size_t i = 0; i < h.size(); ++i) h[i] += branch[i];

    ops.rmsnorm(normed.data(), d, h.data(), d, n, d, lw.ffn_norm, eps);
    if (lw.moe) {
      moe_forward(ops, c, lw.experts, normed.data(), n, branch.data(), scratch);
    } else {
      ffn_forward(ops, lw.dense, normed.data(), n, branch.data(), scratch);
    }
    for (size_t i = 0; i < h.size(); ++i) h[i] += branch[i];
  }
  for (const BatchItem& item : items) item.cache->advance(static_cast<int64_t>(item.ids.size()));

  // Only the rows that will be read go through the head.
  const std::span<float> out_rows = scratch.take<float>(n_out * d);  // [n_out, d]
  int64_t r = 0;
  for (size_t s = 0; s < items.size(); ++s) {
    const int64_t first = items[s].all_logits ? seqs[s].row : seqs[s].row + seqs[s].n - 1;
    const int64_t count = seqs[s].row + seqs[s].n - first;
    std::copy_n(h.data() + first * d, count * d, out_rows.data() + r * d);
    r += count;
  }
  ops.rmsnorm(out_rows.data(), d, out_rows.data(), d, n_out, d, weights_.norm, eps);
  logits->resize(static_cast<size_t>(n_out * c.vocab_size));
  ops.matmul(logits->data(), c.vocab_size, out_rows.data(), d, n_out, weights_.lm_head);
  return ok_status();
}

}  // namespace whale::model
