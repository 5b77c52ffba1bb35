#include "runtime/engine.h"

#include <algorithm>
#include <cmath>

namespace whale::runtime {

namespace {

// log-softmax of `logits` at `chosen`, and the `top` most likely tokens.
void fill_logprobs(const std::vector<float>& logits, int32_t chosen, int top, RequestEvent* ev) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l) - max_logit);
  const double log_z = max_logit + std::log(sum);
  ev->logprob = static_cast<float>(logits[static_cast<size_t>(chosen)] - log_z);
  if (top <= 0) return;
  std::vector<int32_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::partial_sort(order.begin(), order.begin() + top, order.end(), [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  });
  for (int k = 0; k < top; ++k) {
    const int32_t id = order[static_cast<size_t>(k)];
    ev->top.push_back({id, static_cast<float>(logits[static_cast<size_t>(id)] - log_z)});
  }
}

}  // namespace

bool RequestStream::next(RequestEvent* event) {
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return !events_.empty() || finished_; });
  if (events_.empty()) return false;
  *event = std::move(events_.front());
  events_.pop_front();
  if (event->done) finished_ = true;
  return true;
}

void RequestStream::push(RequestEvent event) {
  {
    std::lock_guard lock(mutex_);
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
}

// A running request and the KV cache it holds.
struct Engine::Slot {
  Slot(const model::ModelConfig& c, int64_t context, model::KvType kv) : cache(c, context, kv) {}
  model::KvCache cache;
  std::vector<int32_t> cached;  // the tokens whose KV is in the cache, in order
  // The request, while one runs here.
  std::shared_ptr<RequestStream> stream;
  GenerationRequest request;
  size_t prompt_done = 0;  // prompt tokens already in the cache
  int64_t reused = 0;
  std::vector<int32_t> generated;
  std::optional<sampling::Sampler> sampler;
  std::optional<tok::StreamDecoder> decoder;
  std::optional<StopMatcher> stops;
  int32_t pending = -1;  // sampled, not yet run through the model
  std::chrono::steady_clock::time_point submitted, last_token;
  bool busy() const { return stream != nullptr; }
};

Engine::Engine(const model::Model& model, const tok::Tokenizer& tokenizer, const ops::Backend& ops,
               EngineOptions options)
    : model_(model), tokenizer_(tokenizer), ops_(ops), options_(options) {
  options_.context = std::min<int64_t>(options_.context, model.config().max_position_embeddings);
  for (int i = 0; i < options_.parallel; ++i) {
    slots_.push_back(std::make_unique<Slot>(model.config(), options_.context, options_.kv_type));
  }
  for (int32_t id = 0; id < model.config().vocab_size; ++id) {
    if (!tokenizer.is_valid_id(id)) undecodable_.push_back(id);
  }
  metrics_.kv_tokens_capacity = options_.context * options_.parallel;
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { shutdown(std::chrono::milliseconds(0)); }

Result<std::shared_ptr<RequestStream>> Engine::submit(GenerationRequest req, bool* busy) {
  if (busy) *busy = false;
  const int64_t vocab = model_.config().vocab_size;
  if (req.prompt.empty()) return make_error("the prompt is empty", "prompt");
  WHALE_TRY(model::validate_token_ids(req.prompt, vocab));
  WHALE_TRY(sampling::validate(req.sampling, vocab));
  if (req.max_tokens < 1) return make_error("must be at least 1", "max_tokens");
  if (req.top_logprobs < 0 || req.top_logprobs > 20) {
    return make_error("must be between 0 and 20", "top_logprobs");
  }
  const auto n = static_cast<int64_t>(req.prompt.size());
  if (n >= options_.context) {
    return make_error("the prompt has " + std::to_string(n) + " tokens; the context holds " +
                          std::to_string(options_.context),
                      "messages");
  }
  for (const std::string& s : req.stop) {
    if (s.empty()) return make_error("stop strings must not be empty", "stop");
  }
  auto stream = std::make_shared<RequestStream>();
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      if (busy) *busy = true;
      return make_error("the server is shutting down", "");
    }
    // Requests beyond the free slots wait; beyond max_queue of them, refuse.
    const int64_t free_slots = options_.parallel - metrics_.active;
    if (static_cast<int64_t>(queue_.size()) >= options_.max_queue + free_slots) {
      ++metrics_.requests_rejected;
      if (busy) *busy = true;
      return make_error("too many requests are waiting; try again shortly", "");
    }
    queue_.push_back({std::move(req), stream, std::chrono::steady_clock::now()});
    ++metrics_.requests_total;
  }
  cv_.notify_all();
  return stream;
}

EngineMetrics Engine::metrics() const {
  std::lock_guard lock(mutex_);
  EngineMetrics m = metrics_;
  m.queue_depth = static_cast<int64_t>(queue_.size());
  return m;
}

void Engine::shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard lock(mutex_);
    if (!thread_.joinable()) return;
    stopping_ = true;
    accepting_ = false;
    deadline_ = std::chrono::steady_clock::now() + grace;
  }
  cv_.notify_all();
  thread_.join();
  alive_ = false;
}

// Moves queued requests into free slots, each into the free slot whose cached tokens share the
// longest prefix with its prompt.
bool Engine::admit_locked() {
  bool any = false;
  while (!queue_.empty()) {
    Slot* best = nullptr;
    size_t best_common = 0;
    const std::vector<int32_t>& prompt = queue_.front().request.prompt;
    for (auto& s : slots_) {
      if (s->busy()) continue;
      size_t common = 0;
      while (common < s->cached.size() && common < prompt.size() &&
             s->cached[common] == prompt[common])
        ++common;
      if (!best || common > best_common) {
        best = s.get();
        best_common = common;
      }
    }
    if (!best) break;
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    if (p.stream->cancelled_) {  // its client left while it waited
      RequestEvent done;
      done.done = true;
      done.finish = FinishReason::kCancelled;
      done.prompt_tokens = static_cast<int64_t>(p.request.prompt.size());
      p.stream->push(std::move(done));
      continue;
    }
    Slot& s = *best;
    // Keep at least the last prompt token to run: its logits start the answer.
    const size_t reuse = std::min(best_common, p.request.prompt.size() - 1);
    s.cache.truncate(static_cast<int64_t>(reuse));
    s.cached.resize(reuse);
    s.prompt_done = reuse;
    s.reused = static_cast<int64_t>(reuse);
    s.generated.clear();
    s.pending = -1;
    s.sampler.emplace(p.request.sampling, model_.config().vocab_size);
    s.decoder.emplace(tokenizer_);
    s.stops.emplace(p.request.stop);
    s.request = std::move(p.request);
    s.stream = std::move(p.stream);
    s.submitted = p.submitted;
    any = true;
  }
  return any;
}

void Engine::finish(Slot& s, FinishReason reason, const std::string& error) {
  if (error.empty() && !s.stops->stopped()) {
    RequestEvent tail;
    tail.text = s.stops->push(s.decoder->finish());
    tail.text += s.stops->flush();
    if (!tail.text.empty()) s.stream->push(std::move(tail));
  }
  RequestEvent done;
  done.done = true;
  done.finish = reason;
  done.error = error;
  done.prompt_tokens = static_cast<int64_t>(s.request.prompt.size());
  done.cached_prompt_tokens = s.reused;
  done.completion_tokens = static_cast<int64_t>(s.generated.size());
  {
    std::lock_guard lock(mutex_);
    metrics_.prompt_tokens += done.prompt_tokens;
    metrics_.cached_prompt_tokens += done.cached_prompt_tokens;
    metrics_.completion_tokens += done.completion_tokens;
  }
  s.stream->push(std::move(done));
  s.stream.reset();
  s.sampler.reset();
  s.decoder.reset();
  s.stops.reset();
}

void Engine::step() {
  // Every busy slot contributes rows: the next prompt chunk, or the token it last sampled.
  std::vector<model::BatchItem> items;
  std::vector<Slot*> owners;
  std::vector<std::vector<int32_t>> rows;
  rows.reserve(slots_.size());
  for (auto& sp : slots_) {
    Slot& s = *sp;
    if (!s.busy()) continue;
    if (s.stream->cancelled_) {
      finish(s, FinishReason::kCancelled);
      continue;
    }
    if (s.prompt_done < s.request.prompt.size()) {
      const size_t n = std::min<size_t>(static_cast<size_t>(options_.prefill_chunk),
                                        s.request.prompt.size() - s.prompt_done);
      rows.emplace_back(s.request.prompt.begin() + static_cast<long>(s.prompt_done),
                        s.request.prompt.begin() + static_cast<long>(s.prompt_done + n));
    } else {
      if (s.cache.size() + 1 > s.cache.capacity()) {
        finish(s, FinishReason::kContext);
        continue;
      }
      rows.push_back({s.pending});
    }
    owners.push_back(&s);
  }
  if (owners.empty()) return;
  for (size_t i = 0; i < owners.size(); ++i) items.push_back({rows[i], &owners[i]->cache, false});
  auto logits = model_.forward_batch(ops_, items);
  {
    std::lock_guard lock(mutex_);
    ++metrics_.steps;
  }
  if (!logits.ok()) {
    for (Slot* s : owners) finish(*s, FinishReason::kStop, logits.error().to_string());
    return;
  }
  const int64_t vocab = model_.config().vocab_size;
  for (size_t i = 0; i < owners.size(); ++i) {
    Slot& s = *owners[i];
    s.cached.insert(s.cached.end(), rows[i].begin(), rows[i].end());
    if (s.prompt_done < s.request.prompt.size()) {
      s.prompt_done += rows[i].size();
      if (s.prompt_done < s.request.prompt.size()) continue;  // more prompt to go
    }
    std::span<float> row(logits->data() + static_cast<int64_t>(i) * vocab,
                         static_cast<size_t>(vocab));
    for (int32_t id : undecodable_) row[static_cast<size_t>(id)] = -INFINITY;
    std::vector<float> raw;  // the model's own distribution, before sampling settings
    if (s.request.logprobs) raw.assign(row.begin(), row.end());
    const int32_t next = s.sampler->sample(row, s.request.prompt);
    const auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard lock(mutex_);
      if (s.generated.empty()) {
        metrics_.time_to_first_token.add(std::chrono::duration<double>(now - s.submitted).count());
      } else {
        metrics_.inter_token.add(std::chrono::duration<double>(now - s.last_token).count());
      }
    }
    s.last_token = now;
    if (std::find(s.request.stop_ids.begin(), s.request.stop_ids.end(), next) !=
        s.request.stop_ids.end()) {
      finish(s, FinishReason::kStop);
      continue;
    }
    s.generated.push_back(next);
    auto piece = s.decoder->push(next);
    RequestEvent ev;
    ev.token = next;
    if (s.request.logprobs) fill_logprobs(raw, next, s.request.top_logprobs, &ev);
    ev.text = piece.ok() ? s.stops->push(*piece) : std::string();
    s.stream->push(std::move(ev));
    if (s.stops->stopped()) {
      finish(s, FinishReason::kStop);
    } else if (static_cast<int64_t>(s.generated.size()) >= s.request.max_tokens) {
      finish(s, FinishReason::kLength);
    } else {
      s.pending = next;
    }
  }
}

void Engine::loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] {
        const bool active =
            std::any_of(slots_.begin(), slots_.end(), [](auto& s) { return s->busy(); });
        return stopping_ || active || !queue_.empty();
      });
      if (stopping_) {
        const bool late = std::chrono::steady_clock::now() >= deadline_;
        if (late) {
          for (auto& p : queue_) {
            RequestEvent done;
            done.done = true;
            done.finish = FinishReason::kCancelled;
            done.prompt_tokens = static_cast<int64_t>(p.request.prompt.size());
            p.stream->push(std::move(done));
          }
          queue_.clear();
        }
      }
      admit_locked();
      update_gauges_locked();
      if (stopping_ && metrics_.active == 0 && queue_.empty()) return;
      if (stopping_ && std::chrono::steady_clock::now() >= deadline_) {
        for (auto& s : slots_) {
          if (s->busy()) s->stream->cancel();
        }
      }
    }
    step();
    std::lock_guard lock(mutex_);
    update_gauges_locked();
  }
}

void Engine::update_gauges_locked() {
  int64_t active = 0, used = 0;
  for (auto& s : slots_) {
    active += s->busy();
    used += s->cache.size();
  }
  metrics_.active = active;
  metrics_.kv_tokens_used = used;
}

}  // namespace whale::runtime
