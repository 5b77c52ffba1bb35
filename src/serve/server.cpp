#include "serve/server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "serve/api_request.h"
#include "serve/reasoning_splitter.h"
#include "tokenizer/utf8.h"

namespace whale::serve {

extern const std::string_view kChatPage;  // web/chat.html, compiled in

namespace {

constexpr int kMaxJsonDepth = 64;
constexpr size_t kMaxStops = 16;

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t base = std::random_device{}();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%016llx%04llx", prefix, static_cast<unsigned long long>(base),
                static_cast<unsigned long long>(counter++));
  return buf;
}

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string sse(const json& j) { return "data: " + j.dump() + "\n\n"; }

}  // namespace

struct Server::Impl {
  runtime::Engine& engine;
  const tok::Tokenizer& tokenizer;
  ServerOptions options;
  httplib::Server http;
  std::atomic<int> bound_port{0};
  std::atomic<int> in_flight{0};  // responses still being written
  std::atomic<bool> stopped{false};
  std::atomic<bool> listen_returned{false};

  Impl(runtime::Engine& e, const tok::Tokenizer& t, ServerOptions o)
      : engine(e), tokenizer(t), options(std::move(o)) {}

  bool authorized(const httplib::Request& req, httplib::Response& res) {
    if (options.api_key.empty()) return true;
    if (req.get_header_value("Authorization") == "Bearer " + options.api_key) return true;
    send_error(res, {401, "Authentication failed: invalid API key", "", "authentication_error",
                     "invalid_api_key"});
    return false;
  }

  // Parses the body; on failure the response is set and nullopt returned.
  std::optional<json> parse_body(const httplib::Request& req, httplib::Response& res) {
    if (json_depth(req.body) > kMaxJsonDepth) {
      send_error(res, {400, "JSON nesting is deeper than " + std::to_string(kMaxJsonDepth)});
      return std::nullopt;
    }
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      send_error(res, {400, "The request body must be a JSON object"});
      return std::nullopt;
    }
    return body;
  }

  // {"token", "logprob", "bytes"} of one token; token text is made valid UTF-8.
  json token_entry(int32_t id, float logprob) const {
    const std::string& bytes = tokenizer.token_bytes(id);
    json b = json::array();
    for (char ch : bytes) b.push_back(static_cast<uint8_t>(ch));
    return {{"token", tok::repair_utf8(bytes)}, {"logprob", logprob}, {"bytes", b}};
  }
  // A chat logprobs.content entry for one generated token.
  json chat_logprob(const runtime::RequestEvent& ev) const {
    json e = token_entry(ev.token, ev.logprob);
    json top = json::array();
    for (const auto& t : ev.top) top.push_back(token_entry(t.token, t.logprob));
    e["top_logprobs"] = top;
    return e;
  }

  bool known_model(const std::string& name) const {
    return name == options.model_name || name == "deepseek-chat" || name == "deepseek-reasoner";
  }

  // Fields shared by chat and completions into a request; sets f.error on bad input.
  runtime::GenerationRequest common_request(Fields& f) {
    runtime::GenerationRequest r;
    r.max_tokens =
        f.integer("max_tokens", std::min<int64_t>(4096, engine.context() - 1), 1, engine.context());
    r.sampling.temperature = static_cast<float>(f.number("temperature", 1.0, 0.0, 2.0));
    r.sampling.top_p = static_cast<float>(f.number("top_p", 1.0, 0.0, 1.0));
    if (r.sampling.top_p == 0.0f) r.sampling.temperature = 0.0f;  // "only the top token"
    if (r.sampling.top_p == 0.0f) r.sampling.top_p = 1.0f;
    r.sampling.frequency_penalty =
        static_cast<float>(f.number("frequency_penalty", 0.0, -2.0, 2.0));
    r.sampling.presence_penalty = static_cast<float>(f.number("presence_penalty", 0.0, -2.0, 2.0));
    r.sampling.seed = static_cast<uint64_t>(
        f.integer("seed", static_cast<int64_t>(std::random_device{}()), INT64_MIN, INT64_MAX));
    if (f.integer("n", 1, 1, 1 << 30) != 1) f.fail("n", "only n = 1 is supported");
    // Chat: logprobs true/false + top_logprobs 0..20. Completions (legacy): logprobs 0..20.
    if (const json* lp = f.get("logprobs"); lp && lp->is_number_integer()) {
      r.logprobs = true;
      r.top_logprobs = static_cast<int>(f.integer("logprobs", 0, 0, 20));
    } else {
      r.logprobs = f.boolean("logprobs", false);
      r.top_logprobs = static_cast<int>(f.integer("top_logprobs", 0, 0, 20));
      if (r.top_logprobs > 0 && !r.logprobs)
        f.fail("top_logprobs", "top_logprobs needs logprobs: true");
    }
    if (const json* stop = f.get("stop")) {
      if (stop->is_string()) {
        if (stop->get<std::string>().empty() || stop->get<std::string>().size() > 128) {
          f.fail("stop", "stop strings must be non-empty and at most 128 bytes");
        }
        r.stop.push_back(stop->get<std::string>());
      } else if (stop->is_array() && stop->size() <= kMaxStops) {
        for (const json& s : *stop) {
          if (!s.is_string() || s.get<std::string>().empty() || s.get<std::string>().size() > 128) {
            f.fail("stop", "stop must hold non-empty strings of at most 128 bytes");
            break;
          }
          r.stop.push_back(s.get<std::string>());
        }
      } else {
        f.fail("stop", "stop must be a string or a list of at most 16 strings");
      }
    }
    r.stop_ids = options.stop_ids;
    return r;
  }

  // The requested model's name (the served model when absent); nullopt after a 400/404.
  std::optional<std::string> request_model(const json& body, httplib::Response& res) {
    if (const auto m = body.find("model"); m != body.end() && !m->is_null() && !m->is_string()) {
      send_error(res, {400, "model must be a string", "model"});
      return std::nullopt;
    }
    std::string model = string_or(body, "model", options.model_name);
    if (!known_model(model)) {
      send_error(res, {404, "The model `" + model + "` does not exist", "model",
                       "invalid_request_error", "model_not_found"});
      return std::nullopt;
    }
    return model;
  }

  // stream_options.include_usage, where given.
  static bool include_usage(Fields& f) {
    const json* so = f.get("stream_options");
    return so && so->is_object() && bool_or(*so, "include_usage", false);
  }

  void handle_chat(const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    auto body = parse_body(req, res);
    if (!body) return;
    Fields f{*body, {}};
    const auto model = request_model(*body, res);
    if (!model) return;
    const json* msgs = f.get("messages");
    if (!msgs)
      f.fail("messages", "messages is required");
    else if (!msgs->is_array() || msgs->empty())
      f.fail("messages", "messages must be a non-empty list");
    std::vector<tok::ChatMessage> messages;
    if (msgs && msgs->is_array()) {
      for (size_t i = 0; i < msgs->size() && !f.error; ++i) {
        const json& m = (*msgs)[i];
        const std::string param = "messages[" + std::to_string(i) + "]";
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
          f.fail(param + ".role", "each message needs a string role");
          break;
        }
        tok::ChatMessage msg;
        msg.role = m["role"].get<std::string>();
        if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" &&
            msg.role != "tool") {
          f.fail(param + ".role", "unknown role \"" + msg.role + "\"");
          break;
        }
        if (m.contains("content")) msg.content = content_text(m["content"], f, param + ".content");
        if (m.contains("prefix") && m["prefix"].is_boolean()) msg.prefix = m["prefix"].get<bool>();
        if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
          for (const json& c : m["tool_calls"]) {
            if (!c.is_object() || !c.contains("function") || !c["function"].is_object() ||
                !c["function"].value("name", json()).is_string()) {
              f.fail(param + ".tool_calls", "each tool call needs function.name");
              break;
            }
            tok::ToolCall call;
            call.type = string_or(c, "type", "function");
            call.name = c["function"]["name"].get<std::string>();
            const json args = c["function"].value("arguments", json("{}"));
            call.arguments = args.is_string() ? args.get<std::string>() : args.dump();
            msg.tool_calls.push_back(std::move(call));
          }
        }
        if (msg.content && !tok::is_valid_utf8(*msg.content))
          f.fail(param + ".content", "content is not valid UTF-8");
        messages.push_back(std::move(msg));
      }
    }
    runtime::GenerationRequest request = common_request(f);
    const bool stream = f.boolean("stream", false);
    const bool usage = include_usage(f);
    // deepseek-reasoner thinks; deepseek-chat does not (V3.1 switches, R1 always thinks).
    bool thinking = *model == "deepseek-reasoner";
    if (const json* t = f.get("thinking"); t && t->is_object())
      thinking = string_or(*t, "type", "") == "enabled";
    if (f.error) return send_error(res, *f.error);
    tok::ChatOptions chat;
    chat.thinking = thinking;
    chat.bos_token = options.bos_token;
    // A final assistant message with prefix: true is continued, not closed.
    const bool prefix =
        !messages.empty() && messages.back().role == "assistant" && messages.back().prefix;
    std::string prefix_text;
    if (prefix) {
      prefix_text = messages.back().content.value_or("");
      messages.pop_back();
      chat.add_generation_prompt = true;
    }
    auto rendered = tok::render_chat(options.chat_format, messages, chat);
    if (!rendered.ok())
      return send_error(res, {400, rendered.error().message, rendered.error().field});
    if (prefix) rendered->text += prefix_text;
    auto ids = tok::encode_chat(tokenizer, *rendered);
    if (!ids.ok()) return send_error(res, {400, ids.error().message});
    request.prompt = std::move(*ids);
    run(request, res, stream, usage, *model, /*chat=*/true,
        !prefix && tok::opens_thinking(*rendered));
  }

  void handle_completion(const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    auto body = parse_body(req, res);
    if (!body) return;
    Fields f{*body, {}};
    const auto model = request_model(*body, res);
    if (!model) return;
    const json* prompt = f.get("prompt");
    if (!prompt || !prompt->is_string()) f.fail("prompt", "prompt must be a string");
    std::string suffix;
    if (const json* s = f.get("suffix")) {
      if (!s->is_string())
        f.fail("suffix", "suffix must be a string");
      else
        suffix = s->get<std::string>();
    }
    if (f.boolean("echo", false)) f.fail("echo", "echo is not supported");
    runtime::GenerationRequest request = common_request(f);
    const bool stream = f.boolean("stream", false);
    const bool usage = include_usage(f);
    if (f.error) return send_error(res, *f.error);
    const std::string text = prompt->get<std::string>();
    if (!tok::is_valid_utf8(text) || !tok::is_valid_utf8(suffix)) {
      return send_error(res, {400, "prompt and suffix must be valid UTF-8", "prompt"});
    }
    // Plain completion: BOS + text. Fill in the middle (DeepSeek's PSM order):
    // BOS <｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>, the model writes the middle.
    tok::RenderedChat r;
    auto control = [&](std::string_view s) {
      r.scaffolding.push_back({r.text.size(), r.text.size() + s.size()});
      r.text += s;
    };
    control(options.bos_token);
    if (body->contains("suffix")) {
      control("<｜fim▁begin｜>");
      r.text += text;
      control("<｜fim▁hole｜>");
      r.text += suffix;
      control("<｜fim▁end｜>");
    } else {
      r.text += text;
    }
    auto ids = tok::encode_chat(tokenizer, r);
    if (!ids.ok()) return send_error(res, {400, ids.error().message});
    request.prompt = std::move(*ids);
    run(request, res, stream, usage, *model, /*chat=*/false, false);
  }

  // Submits and answers, streaming or not.
  void run(runtime::GenerationRequest& request, httplib::Response& res, bool stream,
           bool include_usage, const std::string& model, bool chat, bool thinking) {
    const bool want_logprobs = request.logprobs;
    bool busy = false;
    auto submitted = engine.submit(std::move(request), &busy);
    if (!submitted.ok()) {
      if (busy && !engine.accepting()) {
        return send_error(res,
                          {503, submitted.error().message, "", "server_error", "shutting_down"});
      }
      if (busy)
        return send_error(
            res, {429, submitted.error().message, "", "rate_limit_error", "rate_limit_exceeded"});
      const std::string code = submitted.error().message.find("context holds") != std::string::npos
                                   ? "context_length_exceeded"
                                   : "";
      return send_error(res, {400, submitted.error().to_string(), submitted.error().field,
                              "invalid_request_error", code});
    }
    std::shared_ptr<runtime::RequestStream> rs = *submitted;
    // Counted until its last byte is handed to the socket, so that stop() can drain.
    auto in_flight_guard = std::shared_ptr<void>(nullptr, [this](void*) { --in_flight; });
    ++in_flight;
    const std::string id = random_id(chat ? "chatcmpl" : "cmpl");
    const int64_t created = now_seconds();
    auto usage_json = [](const runtime::RequestEvent& done, int64_t reasoning_tokens,
                         bool chat_usage) {
      json u = {{"prompt_tokens", done.prompt_tokens},
                {"completion_tokens", done.completion_tokens},
                {"total_tokens", done.prompt_tokens + done.completion_tokens},
                {"prompt_cache_hit_tokens", done.cached_prompt_tokens},
                {"prompt_cache_miss_tokens", done.prompt_tokens - done.cached_prompt_tokens}};
      if (chat_usage) u["completion_tokens_details"] = {{"reasoning_tokens", reasoning_tokens}};
      return u;
    };
    // DeepSeek's reasons; a request cut short by a shutdown is "insufficient_system_resource".
    auto finish_name = [](runtime::FinishReason r) {
      switch (r) {
        case runtime::FinishReason::kStop:
          return "stop";
        case runtime::FinishReason::kCancelled:
          return "insufficient_system_resource";
        default:
          return "length";
      }
    };

    if (!stream) {
      ReasoningSplitter split(thinking);
      std::string reasoning, content;
      int64_t reasoning_tokens = 0;
      runtime::RequestEvent ev;
      json chat_lp = json::array();
      json legacy_tokens = json::array(), legacy_lp = json::array(), legacy_top = json::array(),
           legacy_offset = json::array();
      size_t text_offset = 0;
      while (rs->next(&ev)) {
        if (ev.done) break;
        if (want_logprobs && ev.token >= 0) {
          chat_lp.push_back(chat_logprob(ev));
          legacy_tokens.push_back(tok::repair_utf8(tokenizer.token_bytes(ev.token)));
          legacy_lp.push_back(ev.logprob);
          json top = json::object();
          for (const auto& t : ev.top)
            top[tok::repair_utf8(tokenizer.token_bytes(t.token))] = t.logprob;
          legacy_top.push_back(top);
          legacy_offset.push_back(text_offset);
          text_offset += tokenizer.token_bytes(ev.token).size();
        }
        if (ev.token >= 0 && split.thinking()) ++reasoning_tokens;
        auto [r, c] = split.push(ev.text);
        reasoning += r;
        content += c;
      }
      auto [r, c] = split.flush();
      reasoning += r;
      content += c;
      if (!ev.error.empty()) return send_error(res, {500, ev.error, "", "server_error"});
      json body;
      if (chat) {
        json message = {{"role", "assistant"}, {"content", content}};
        if (thinking) message["reasoning_content"] = reasoning;
        body = {{"id", id},
                {"object", "chat.completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({{{"index", 0},
                                          {"message", message},
                                          {"logprobs", want_logprobs ? json({{"content", chat_lp}})
                                                                     : json(nullptr)},
                                          {"finish_reason", finish_name(ev.finish)}}})},
                {"usage", usage_json(ev, reasoning_tokens, true)},
                {"system_fingerprint", "whale"}};
      } else {
        const json legacy = {{"tokens", legacy_tokens},
                             {"token_logprobs", legacy_lp},
                             {"top_logprobs", legacy_top},
                             {"text_offset", legacy_offset}};
        body = {{"id", id},
                {"object", "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({{{"index", 0},
                                          {"text", content},
                                          {"logprobs", want_logprobs ? legacy : json(nullptr)},
                                          {"finish_reason", finish_name(ev.finish)}}})},
                {"usage", usage_json(ev, 0, false)}};
      }
      res.set_content(body.dump(), "application/json");
      return;
    }

    res.set_header("Cache-Control", "no-cache");
    auto split = std::make_shared<ReasoningSplitter>(thinking);
    auto reasoning_tokens = std::make_shared<int64_t>(0);
    auto started = std::make_shared<bool>(false);
    res.set_chunked_content_provider(
        "text/event-stream",
        [=, this](size_t, httplib::DataSink& sink) {
          auto chunk = [&](json delta, json finish, json logprobs = nullptr) {
            json c;
            if (chat) {
              c = {{"id", id},
                   {"object", "chat.completion.chunk"},
                   {"created", created},
                   {"model", model},
                   {"system_fingerprint", "whale"},
                   {"choices", json::array({{{"index", 0},
                                             {"delta", delta},
                                             {"logprobs", logprobs},
                                             {"finish_reason", finish}}})}};
            } else {
              c = {{"id", id},
                   {"object", "text_completion"},
                   {"created", created},
                   {"model", model},
                   {"choices", json::array({{{"index", 0},
                                             {"text", delta.value("content", "")},
                                             {"logprobs", nullptr},
                                             {"finish_reason", finish}}})}};
            }
            const std::string s = sse(c);
            return sink.write(s.data(), s.size());
          };
          auto send_text = [&](const std::pair<std::string, std::string>& rc) {
            bool ok = true;
            if (!rc.first.empty()) ok = chunk({{"reasoning_content", rc.first}}, nullptr);
            if (ok && !rc.second.empty()) ok = chunk({{"content", rc.second}}, nullptr);
            return ok;
          };
          if (!*started) {
            *started = true;
            if (chat && !chunk({{"role", "assistant"}, {"content", ""}}, nullptr)) {
              rs->cancel();
              return false;
            }
          }
          runtime::RequestEvent ev;
          if (!rs->next(&ev)) return false;
          if (!ev.done) {
            if (ev.token >= 0 && split->thinking()) ++*reasoning_tokens;
            if (want_logprobs && chat && ev.token >= 0) {
              // One chunk per token, carrying its logprobs and whatever text it completed.
              auto [r, c] = split->push(ev.text);
              json delta = json::object();
              if (!r.empty()) delta["reasoning_content"] = r;
              if (!c.empty()) delta["content"] = c;
              if (!chunk(delta, nullptr, {{"content", json::array({chat_logprob(ev)})}})) {
                rs->cancel();
                return false;
              }
              return true;
            }
            if (!send_text(split->push(ev.text))) {
              rs->cancel();  // the client went away: stop generating at the next step
              return false;
            }
            return true;
          }
          send_text(split->flush());
          if (!ev.error.empty()) {
            const std::string s =
                sse({{"error", {{"message", ev.error}, {"type", "server_error"}}}});
            sink.write(s.data(), s.size());
          } else {
            chunk(json::object(), finish_name(ev.finish));
            if (include_usage) {
              json u = {{"id", id},
                        {"object", chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created},
                        {"model", model},
                        {"choices", json::array()},
                        {"usage", usage_json(ev, *reasoning_tokens, chat)}};
              const std::string s = sse(u);
              sink.write(s.data(), s.size());
            }
          }
          const std::string end = "data: [DONE]\n\n";
          sink.write(end.data(), end.size());
          sink.done();
          return true;
        },
        [rs, in_flight_guard](bool) { rs->cancel(); });
  }

  void install_routes() {
    http.set_payload_max_length(options.max_body_bytes);
    const int threads = options.http_threads;
    http.new_task_queue = [threads] {
      return new httplib::ThreadPool(static_cast<size_t>(threads));
    };
    http.Get("/", [](const httplib::Request&, httplib::Response& r) {
      r.set_content(std::string(kChatPage), "text/html; charset=utf-8");
    });
    for (const std::string base : {"", "/v1"}) {
      http.Post(base + "/chat/completions",
                [this](const httplib::Request& q, httplib::Response& r) { handle_chat(q, r); });
      http.Post(base + "/completions", [this](const httplib::Request& q, httplib::Response& r) {
        handle_completion(q, r);
      });
      http.Get(base + "/models", [this](const httplib::Request& q, httplib::Response& r) {
        if (!authorized(q, r)) return;
        json data = json::array();
        for (const std::string& name :
             {options.model_name, std::string("deepseek-chat"), std::string("deepseek-reasoner")}) {
          data.push_back({{"id", name}, {"object", "model"}, {"owned_by", "whale"}});
        }
        r.set_content(json({{"object", "list"}, {"data", data}}).dump(), "application/json");
      });
      http.Get(base + "/health", [this](const httplib::Request&, httplib::Response& r) {
        const bool alive = engine.alive();
        r.status = alive ? 200 : 503;
        r.set_content(json({{"status", alive ? "ok" : "unavailable"}}).dump(), "application/json");
      });
      http.Get(base + "/metrics", [this](const httplib::Request& q, httplib::Response& r) {
        if (!authorized(q, r)) return;
        const runtime::EngineMetrics m = engine.metrics();
        std::string out;
        auto metric = [&](const char* name, const char* type, const char* help, int64_t v) {
          out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type +
                 "\n" + name + " " + std::to_string(v) + "\n";
        };
        metric("whale_requests_total", "counter", "Requests admitted to the queue.",
               m.requests_total);
        metric("whale_requests_rejected_total", "counter",
               "Requests refused because the queue was full.", m.requests_rejected);
        metric("whale_prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
               m.prompt_tokens);
        metric("whale_prompt_cache_hit_tokens_total", "counter",
               "Prompt tokens reused from the KV cache.", m.cached_prompt_tokens);
        metric("whale_completion_tokens_total", "counter", "Tokens generated.",
               m.completion_tokens);
        metric("whale_queue_depth", "gauge", "Requests waiting for a slot.", m.queue_depth);
        metric("whale_active_requests", "gauge", "Requests running.", m.active);
        metric("whale_kv_cache_tokens_used", "gauge", "Tokens held in KV caches.",
               m.kv_tokens_used);
        metric("whale_kv_cache_tokens_capacity", "gauge", "Tokens the KV caches can hold.",
               m.kv_tokens_capacity);
        metric("whale_engine_steps_total", "counter", "Batched forward steps.", m.steps);
        auto histogram = [&](const char* name, const char* help,
                             const runtime::LatencyHistogram& h) {
          out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " histogram\n";
          for (size_t i = 0; i < std::size(runtime::LatencyHistogram::kBounds); ++i) {
            char le[32];
            std::snprintf(le, sizeof le, "%g", runtime::LatencyHistogram::kBounds[i]);
            out += std::string(name) + "_bucket{le=\"" + le + "\"} " + std::to_string(h.counts[i]) +
                   "\n";
          }
          out += std::string(name) + "_bucket{le=\"+Inf\"} " + std::to_string(h.count) + "\n";
          out += std::string(name) + "_sum " + std::to_string(h.sum) + "\n";
          out += std::string(name) + "_count " + std::to_string(h.count) + "\n";
        };
        histogram("whale_time_to_first_token_seconds", "From arrival to the first generated token.",
                  m.time_to_first_token);
        histogram("whale_inter_token_latency_seconds", "Between consecutive tokens of a request.",
                  m.inter_token);
        r.set_content(out, "text/plain; version=0.0.4");
      });
    }
    http.set_exception_handler(
        [](const httplib::Request&, httplib::Response& r, std::exception_ptr) {
          send_error(r, {500, "internal error", "", "server_error"});
        });
    http.set_error_handler([](const httplib::Request&, httplib::Response& r) {
      if (!r.body.empty()) return;  // a route already answered with its own error
      if (r.status == 404)
        send_error(r, {404, "Unknown route", "", "invalid_request_error", "not_found"});
      else if (r.status == 413)
        send_error(r, {413, "The request body is too large", "", "invalid_request_error",
                       "payload_too_large"});
    });
  }
};

Server::Server(runtime::Engine& engine, const tok::Tokenizer& tokenizer, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, std::move(options))) {
  impl_->install_routes();
}

Server::~Server() = default;

Status Server::listen() {
  const int port = impl_->options.port == 0
                       ? impl_->http.bind_to_any_port(impl_->options.host)
                       : (impl_->http.bind_to_port(impl_->options.host, impl_->options.port)
                              ? impl_->options.port
                              : -1);
  if (port < 0) {
    impl_->listen_returned = true;
    return make_error(
        "cannot listen on " + impl_->options.host + ":" + std::to_string(impl_->options.port),
        "--port", {}, "is another server using the port?");
  }
  impl_->bound_port = port;
  const bool clean = impl_->http.listen_after_bind();
  impl_->listen_returned = true;
  if (!clean && !impl_->stopped) {
    return make_error("the server stopped accepting connections", "--port");
  }
  return ok_status();
}

int Server::port() const { return impl_->bound_port; }

void Server::stop(std::chrono::milliseconds drain) {
  // Responses still being written get their last chunks out first.
  const auto deadline = std::chrono::steady_clock::now() + drain;
  while (impl_->in_flight > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  impl_->stopped = true;
  // httplib's stop() only takes effect once listening has begun: wait for that, or for
  // listen() to have failed or returned.
  while (!impl_->http.is_running() && !impl_->listen_returned) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  impl_->http.stop();
}

}  // namespace whale::serve
