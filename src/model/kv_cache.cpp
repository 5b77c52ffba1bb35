#include "model/kv_cache.h"

namespace whale::model {

std::string_view kv_type_name(KvType t) { return t == KvType::kF32 ? "f32" : "bf16"; }

std::optional<KvType> kv_type_from_name(std::string_view name) {
  if (name == "f32") return KvType::kF32;
  if (name == "bf16") return KvType::kBf16;
  return std::nullopt;
}

KvCache::KvCache(const ModelConfig& config, int64_t capacity, KvType type)
    : capacity_(capacity),
      width_(config.kv_cache_width()),
      layers_(config.num_hidden_layers),
      type_(type) {
  const auto values = static_cast<size_t>(layers_ * capacity_ * width_);
  if (type == KvType::kF32) {
    f32_.assign(values, 0.0f);
  } else {
    bf16_.assign(values, 0);
  }
}

}  // namespace whale::model
