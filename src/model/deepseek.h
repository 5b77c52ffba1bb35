// A loaded DeepSeek MLA+MoE model (deepseek_v3, deepseek_v2) and its forward pass:
//   h = embed[ids]; per layer: h += MLA(norm(h)); h += FFN_or_MoE(norm(h));
//   logits = lm_head(norm(h)).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/mla.h"
#include "model/rope_yarn.h"
#include "model/weights.h"
#include "ops/backend.h"

namespace whale::model {

struct ForwardOptions {
  AttentionForm attention = AttentionForm::kAuto;
  bool all_logits = false;  // logits for every new token, else only for the last one
};

// One sequence's share of a batched forward: its new tokens and its cache.
struct BatchItem {
  std::span<const int32_t> ids;
  KvCache* cache = nullptr;
  bool all_logits = false;  // logits for every new token, else only for the last one
};

class Model {
 public:
  // Maps the checkpoint in MODEL_DIR and binds every weight in place (no copies).
  // `progress(done, total)` reports the checkpoint files opened so far.
  static Result<Model> load(const std::string& model_dir,
                            const std::function<void(size_t, size_t)>& progress = {});

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const Checkpoint& checkpoint() const { return *checkpoint_; }

  // Runs `ids` at positions cache.size().. and appends them to the cache. Returns logits
  // [n_out, vocab_size] in f32, n_out = ids.size() or 1. Checks ids and cache room first.
  Result<std::vector<float>> forward(const ops::Backend& ops, std::span<const int32_t> ids,
                                     KvCache& cache, const ForwardOptions& options = {}) const;
  // forward into *logits, whose memory is reused (see forward_batch below).
  Status forward(const ops::Backend& ops, std::span<const int32_t> ids, KvCache& cache,
                 std::vector<float>* logits, const ForwardOptions& options = {}) const;
  // Several sequences in one pass: every projection and expert runs once over all their rows
  // (weights are read once per step), attention per sequence over its own cache. Returns the
  // logits rows of all items in order ([rows, vocab_size]). Checks every item first; on error
  // no cache has changed.
  Result<std::vector<float>> forward_batch(
      const ops::Backend& ops, std::span<const BatchItem> items,
      AttentionForm attention = AttentionForm::kAuto) const;
  // forward_batch into *logits (resized to [rows, vocab_size]). The activations come from a
  // per-thread workspace that keeps its memory, so a decode step that follows another of its
  // shape allocates nothing (neither here nor in the CPU backend), given *logits' capacity.
  Status forward_batch(const ops::Backend& ops, std::span<const BatchItem> items,
                       std::vector<float>* logits,
                       AttentionForm attention = AttentionForm::kAuto) const;

 private:
  ModelConfig config_;
  std::unique_ptr<Checkpoint> checkpoint_;
  ModelWeights weights_;
  RopeTables rope_;
  float softmax_scale_ = 1.0f;
};

// Checks that every id is in [0, vocab_size) and that there is at least one.
Status validate_token_ids(std::span<const int32_t> ids, int64_t vocab_size);

}  // namespace whale::model
