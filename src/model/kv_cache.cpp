#include "model/kv_cache.h"

namespace whale::model {

KvCache::KvCache(const ModelConfig& config, int64_t capacity)
    : capacity_(capacity), width_(config.kv_cache_width()) {
  layers_.resize(static_cast<size_t>(config.num_hidden_layers));
  for (auto& l : layers_) l.assign(static_cast<size_t>(capacity_ * width_), 0.0f);
}

}  // namespace whale::model
