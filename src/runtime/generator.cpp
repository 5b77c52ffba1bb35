#include "runtime/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace whale::runtime {

std::string_view finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kContext:
      return "context";
    case FinishReason::kCancelled:
      break;
  }
  return "cancelled";
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  held_ += text;
  // The earliest complete stop string wins.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Keep the longest tail that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out = stopped_ ? std::string() : held_;
  held_.clear();
  return out;
}

Generator::Generator(const model::Model& model, const tok::Tokenizer* tokenizer,
                     const ops::Backend& ops, int64_t context, model::KvType kv)
    : model_(model),
      tokenizer_(tokenizer),
      ops_(ops),
      context_(std::min<int64_t>(context, model.config().max_position_embeddings)),
      cache_(model.config(), context_, kv) {
  if (!tokenizer_) return;
  for (int32_t id = 0; id < model.config().vocab_size; ++id) {
    if (!tokenizer_->is_valid_id(id)) undecodable_.push_back(id);
  }
}

Result<GenerationResult> Generator::generate(const GenerationRequest& req,
                                             const TextCallback& on_text,
                                             const std::atomic<bool>* cancel) {
  const int64_t vocab = model_.config().vocab_size;
  if (req.prompt.empty()) {
    return make_error("the prompt is empty", "prompt", {}, "give at least one token");
  }
  WHALE_TRY(model::validate_token_ids(req.prompt, vocab));
  WHALE_TRY(sampling::validate(req.sampling, vocab));
  if (req.max_tokens < 0) return make_error("must not be negative", "max_tokens");
  const auto prompt_len = static_cast<int64_t>(req.prompt.size());
  if (prompt_len >= context_) {
    return make_error("the prompt has " + std::to_string(prompt_len) +
                          " tokens; the context holds " + std::to_string(context_),
                      "prompt", {}, "shorten the prompt or raise --ctx");
  }
  if (!req.stop.empty() && !tokenizer_) {
    return make_error("stop strings need a tokenizer", "stop");
  }
  for (const std::string& s : req.stop) {
    if (s.empty()) return make_error("stop strings must not be empty", "stop");
  }

  using clock = std::chrono::steady_clock;
  GenerationResult result;
  result.stats.prompt_tokens = prompt_len;
  cache_.clear();
  sampling::Sampler sampler(req.sampling, vocab);
  StopMatcher stops(req.stop);
  std::optional<tok::StreamDecoder> decoder;
  if (tokenizer_) decoder.emplace(*tokenizer_);
  auto emit = [&](const std::string& text) {
    if (text.empty()) return;
    result.text += text;
    if (on_text) on_text(text);
  };

  const auto t0 = clock::now();
  // One logits buffer for the whole request: decode steps reuse its memory.
  std::vector<float> logits;
  WHALE_TRY(model_.forward(ops_, req.prompt, cache_, &logits));
  const auto t1 = clock::now();
  result.stats.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  result.finish = FinishReason::kLength;
  while (static_cast<int64_t>(result.tokens.size()) < req.max_tokens) {
    if (cancel && cancel->load()) {
      result.finish = FinishReason::kCancelled;
      break;
    }
    for (int32_t id : undecodable_) logits[static_cast<size_t>(id)] = -INFINITY;
    const int32_t next = sampler.sample(logits, req.prompt);
    if (std::find(req.stop_ids.begin(), req.stop_ids.end(), next) != req.stop_ids.end()) {
      result.finish = FinishReason::kStop;
      break;
    }
    result.tokens.push_back(next);
    if (decoder) {
      WHALE_ASSIGN_OR_RETURN(std::string piece, decoder->push(next));
      emit(stops.push(piece));
      if (stops.stopped()) {
        result.finish = FinishReason::kStop;
        break;
      }
    }
    if (static_cast<int64_t>(result.tokens.size()) >= req.max_tokens) break;
    if (cache_.size() + 1 > context_) {
      result.finish = FinishReason::kContext;
      break;
    }
    const int32_t id = next;
    WHALE_TRY(model_.forward(ops_, std::span(&id, 1), cache_, &logits));
  }
  if (decoder && !stops.stopped()) {
    emit(stops.push(decoder->finish()));
    emit(stops.flush());
  }
  result.stats.generated_tokens = static_cast<int64_t>(result.tokens.size());
  result.stats.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return result;
}

}  // namespace whale::runtime
