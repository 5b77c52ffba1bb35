// The serving engine: one compute loop, many requests. Requests wait in a queue, take one of
// `parallel` slots, and run by continuous batching: every step is one forward over the rows of
// all active slots (a chunk of prompt for those prefilling, one token for those decoding), so
// weights are read once per step whatever the number of requests. A slot keeps the tokens it
// last held in its KV cache; a new request takes the free slot sharing the longest prefix with
// its prompt and skips that part of prefill (prompt cache hits).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "runtime/generator.h"

namespace whale::runtime {

struct EngineOptions {
  int parallel = 4;             // slots: requests running at once
  int64_t context = 4096;       // tokens per slot (prompt + answer)
  int max_queue = 64;           // requests waiting beyond the slots; more are refused
  int64_t prefill_chunk = 256;  // prompt tokens per slot per step
  model::KvType kv_type = model::KvType::kF32;  // how the slots' caches store their values
};

// One thing that happened to a request, in order.
// Log-probability of a token under the model (log-softmax of the raw logits).
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
};

struct RequestEvent {
  int32_t token = -1;             // the token generated (-1 for the final event)
  float logprob = 0;              // of `token`, when the request asked for logprobs
  std::vector<TokenLogprob> top;  // the most likely tokens at this step (top_logprobs of them)
  std::string text;               // text made final by it (whole UTF-8, stop strings held back)
  bool done = false;              // the last event: finish and counts are set
  FinishReason finish = FinishReason::kStop;
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // reused from an earlier request's KV cache
  int64_t completion_tokens = 0;
  std::string error;  // set when the request failed after admission
};

// The caller's side of a submitted request. Thread-safe.
class RequestStream {
 public:
  // Waits for the next event; false after the final one has been taken.
  bool next(RequestEvent* event);
  // Asks the engine to stop this request at the next step.
  void cancel() { cancelled_ = true; }

 private:
  friend class Engine;
  void push(RequestEvent event);
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<RequestEvent> events_;
  bool finished_ = false;
  std::atomic<bool> cancelled_{false};
};

// Cumulative histogram in seconds with Prometheus' "le" buckets.
struct LatencyHistogram {
  static constexpr double kBounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  int64_t counts[std::size(kBounds)] = {};
  int64_t count = 0;
  double sum = 0;
  void add(double seconds) {
    for (size_t i = 0; i < std::size(kBounds); ++i) counts[i] += seconds <= kBounds[i];
    ++count;
    sum += seconds;
  }
};

struct EngineMetrics {
  int64_t requests_total = 0;
  int64_t requests_rejected = 0;
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t queue_depth = 0;
  int64_t active = 0;
  int64_t kv_tokens_used = 0;
  int64_t kv_tokens_capacity = 0;
  int64_t steps = 0;
  LatencyHistogram time_to_first_token;  // from submit to the first generated token
  LatencyHistogram inter_token;          // between consecutive tokens of a request
};

class Engine {
 public:
  Engine(const model::Model& model, const tok::Tokenizer& tokenizer, const ops::Backend& ops,
         EngineOptions options);
  ~Engine();  // stops the loop; running requests end as cancelled

  // Queues a request. Errors: invalid input (a 400), or the queue is full (a 429: `busy`).
  Result<std::shared_ptr<RequestStream>> submit(GenerationRequest request, bool* busy = nullptr);

  // Stops admitting; running and queued requests finish until `grace` runs out, then are
  // cancelled. Blocks until the loop has stopped.
  void shutdown(std::chrono::milliseconds grace);

  // Running and taking requests (false once shutdown has begun).
  bool alive() const { return alive_ && accepting_; }
  bool accepting() const { return accepting_; }
  int64_t context() const { return options_.context; }
  EngineMetrics metrics() const;

 private:
  struct Slot;
  struct Pending {
    GenerationRequest request;
    std::shared_ptr<RequestStream> stream;
    std::chrono::steady_clock::time_point submitted;
  };
  void loop();
  bool admit_locked();
  void step();
  void update_gauges_locked();
  void finish(Slot& slot, FinishReason reason, const std::string& error = {});

  const model::Model& model_;
  const tok::Tokenizer& tokenizer_;
  const ops::Backend& ops_;
  EngineOptions options_;
  std::vector<int32_t> undecodable_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  std::vector<std::unique_ptr<Slot>> slots_;
  bool stopping_ = false;
  std::chrono::steady_clock::time_point deadline_;
  std::atomic<bool> alive_{true};
  std::atomic<bool> accepting_{true};
  EngineMetrics metrics_;
  std::thread thread_;
};

}  // namespace whale::runtime
