// The caller-owned attention cache of one sequence. MLA caches, per token per layer, only the
// normalised latent c (kv_lora_rank) and the rotated shared key (qk_rope_head_dim).
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace whale::model {

class KvCache {
 public:
  // Allocates capacity × layers × (kv_lora_rank + qk_rope_head_dim) floats up front.
  KvCache(const ModelConfig& config, int64_t capacity);

  int64_t capacity() const { return capacity_; }
  int64_t width() const { return width_; }
  int64_t layers() const { return static_cast<int64_t>(layers_.size()); }
  // Tokens already in the cache; the next token goes at this position.
  int64_t size() const { return size_; }
  void clear() { size_ = 0; }
  // Forgets everything after the first n tokens (n <= size()).
  void truncate(int64_t n) { size_ = n < size_ ? n : size_; }
  // [capacity, width] for layer l: c in the first kv_lora_rank columns, k_rope after it.
  float* layer(int64_t l) { return layers_[static_cast<size_t>(l)].data(); }
  const float* layer(int64_t l) const { return layers_[static_cast<size_t>(l)].data(); }
  int64_t bytes() const { return static_cast<int64_t>(layers_.size()) * capacity_ * width_ * 4; }

  // Called by the forward pass after it has written n new rows.
  void advance(int64_t n) { size_ += n; }

 private:
  int64_t capacity_;
  int64_t width_;
  int64_t size_ = 0;
  std::vector<std::vector<float>> layers_;
};

}  // namespace whale::model
