// The first version of the engine: one request at a time. A request's prompt is prefilled
// into a KV cache the generator owns, then tokens are decoded one by one until a stop.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/deepseek.h"
#include "ops/backend.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"

namespace whale::runtime {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  sampling::SamplingParams sampling;
  int64_t max_tokens = 256;
  std::vector<std::string> stop;  // stop strings, matched on the text; not emitted
  std::vector<int32_t> stop_ids;  // end-of-sequence ids; not emitted
  bool logprobs = false;          // report each generated token's log-probability
  int top_logprobs = 0;           // and the most likely alternatives (at most 20)
};

enum class FinishReason {
  kStop,       // an end-of-sequence id or a stop string
  kLength,     // max_tokens
  kContext,    // the context is full
  kCancelled,  // the caller asked to stop
};
std::string_view finish_reason_name(FinishReason r);

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids, the stopping id excluded
  std::string text;             // their text, cut before a stop string
  FinishReason finish = FinishReason::kStop;
  GenerationStats stats;
};

// Called with each piece of text as soon as it is final (complete UTF-8, and no longer able to
// be the start of a stop string).
using TextCallback = std::function<void(std::string_view)>;

class Generator {
 public:
  // `tokenizer` may be null: then no text is produced and stop strings are not allowed.
  // Allocates a KV cache of `context` tokens, stored as `kv`.
  Generator(const model::Model& model, const tok::Tokenizer* tokenizer, const ops::Backend& ops,
            int64_t context, model::KvType kv = model::KvType::kF32);

  int64_t context() const { return context_; }

  // Runs a request to its end. `cancel`, if given, is checked between steps.
  Result<GenerationResult> generate(const GenerationRequest& request, const TextCallback& on_text,
                                    const std::atomic<bool>* cancel = nullptr);

 private:
  const model::Model& model_;
  const tok::Tokenizer* tokenizer_;
  const ops::Backend& ops_;
  int64_t context_;
  model::KvCache cache_;
  // Ids the head can produce but the tokenizer cannot decode (V3: 128815..129279); they are
  // never sampled.
  std::vector<int32_t> undecodable_;
};

// Holds back text that could still turn into a stop string, and finds stop strings that span
// token boundaries.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Adds text; returns what can be emitted now. Sets stopped() when a stop string completes
  // (the text before it is returned, the rest dropped).
  std::string push(std::string_view text);
  // At the end of generation: everything still held back.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace whale::runtime
