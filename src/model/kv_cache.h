// The caller-owned attention cache of one sequence. MLA caches, per token per layer, only the
// normalised latent c (kv_lora_rank) and the rotated shared key (qk_rope_head_dim).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "model/config.h"

namespace whale::model {

// How the cache stores its values: f32 as computed, or rounded to bf16 (half the memory, and
// decode attention with AVX512-BF16 runs on pairs of them).
enum class KvType { kF32, kBf16 };
std::string_view kv_type_name(KvType t);
// "f32" or "bf16"; nullopt for anything else.
std::optional<KvType> kv_type_from_name(std::string_view name);

class KvCache {
 public:
  // Allocates capacity × layers × (kv_lora_rank + qk_rope_head_dim) values up front.
  KvCache(const ModelConfig& config, int64_t capacity, KvType type = KvType::kF32);

  int64_t capacity() const { return capacity_; }
  int64_t width() const { return width_; }
  int64_t layers() const { return layers_; }
  // Tokens already in the cache; the next token goes at this position.
  int64_t size() const { return size_; }
  void clear() { size_ = 0; }
  // Forgets everything after the first n tokens (n <= size()).
  void truncate(int64_t n) { size_ = n < size_ ? n : size_; }
  // [capacity, width] for layer l: c in the first kv_lora_rank columns, k_rope after it. The
  // one of the two that matches type(); the other is null.
  float* layer(int64_t l) { return f32_.empty() ? nullptr : f32_.data() + offset(l); }
  const float* layer(int64_t l) const { return f32_.empty() ? nullptr : f32_.data() + offset(l); }
  uint16_t* layer_bf16(int64_t l) { return bf16_.empty() ? nullptr : bf16_.data() + offset(l); }
  const uint16_t* layer_bf16(int64_t l) const {
    return bf16_.empty() ? nullptr : bf16_.data() + offset(l);
  }
  int64_t bytes() const { return layers_ * capacity_ * width_ * (type_ == KvType::kF32 ? 4 : 2); }

  // Called by the forward pass after it has written n new rows.
  void advance(int64_t n) { size_ += n; }

 private:
  size_t offset(int64_t l) const { return static_cast<size_t>(l * capacity_ * width_); }

  int64_t capacity_;
  int64_t width_;
  int64_t layers_;
  KvType type_;
  int64_t size_ = 0;
  std::vector<float> f32_;
  std::vector<uint16_t> bf16_;
};

}  // namespace whale::model
