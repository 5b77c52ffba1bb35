// The DeepSeek platform API on top of the engine: HTTP + JSON only. Routes, each also under
// /v1: POST /chat/completions, POST /completions (FIM with `suffix`), GET /models, GET /health,
// GET /metrics.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "core/error.h"
#include "runtime/engine.h"
#include "tokenizer/chat_format.h"

namespace whale::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;     // empty: no authentication
  std::string model_name;  // the id /models lists (besides deepseek-chat / deepseek-reasoner)
  size_t max_body_bytes = 4u << 20;
  // HTTP worker threads: a streaming answer holds one for its whole length, so there must be
  // one for every running and queued request, plus a few for short calls.
  int http_threads = 16;
  std::vector<int32_t> stop_ids;
  std::optional<int32_t> bos_id;
  tok::ChatFormat chat_format = tok::ChatFormat::kV3;
  std::string bos_token = "<｜begin▁of▁sentence｜>";
};

class Server {
 public:
  Server(runtime::Engine& engine, const tok::Tokenizer& tokenizer, ServerOptions options);
  ~Server();
  // Binds and serves until stop(); an error if the address cannot be bound.
  Status listen();
  // The port actually bound (useful with port 0).
  int port() const;
  // Waits up to `drain` for responses being written, then stops listening. Safe to call
  // before listen() has started: it waits for it.
  void stop(std::chrono::milliseconds drain = std::chrono::seconds(10));

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace whale::serve
