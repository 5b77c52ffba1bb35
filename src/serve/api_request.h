// Reading API requests: OpenAI-shaped errors and typed access to JSON fields that names the
// field in every 400.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace httplib {
struct Response;
}

namespace whale::serve {

using nlohmann::json;

// An API error in OpenAI's shape.
struct ApiError {
  ApiError(int s, std::string m, std::string p = {}, std::string t = "invalid_request_error",
           std::string c = {})
      : status(s),
        message(std::move(m)),
        param(std::move(p)),
        type(std::move(t)),
        code(std::move(c)) {}
  int status;
  std::string message;
  std::string param;
  std::string type;
  std::string code;
};

// Writes the error as {"error": {"message", "type", "param", "code"}} with its status.
void send_error(httplib::Response& res, const ApiError& e);

// Nesting depth of a JSON text, counted outside strings (checked before parsing, so that a
// hostile body cannot exhaust the parser's stack).
int json_depth(std::string_view s);

// obj[key] if it is a string (or a bool), else `fallback`: never throws on a wrong type.
std::string string_or(const json& obj, const char* key, const std::string& fallback);
bool bool_or(const json& obj, const char* key, bool fallback);

// Typed access to request fields, failing with a 400 that names the field.
struct Fields {
  const json& body;
  std::optional<ApiError> error;

  const json* get(const char* key) {
    const auto it = body.find(key);
    return it == body.end() || it->is_null() ? nullptr : &*it;
  }
  void fail(const std::string& param, const std::string& message) {
    if (!error) error = ApiError{400, message, param};
  }
  double number(const char* key, double fallback, double lo, double hi) {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number()) {
      fail(key, std::string(key) + " must be a number");
      return fallback;
    }
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi) {
      fail(key,
           std::string(key) + " must be between " + json(lo).dump() + " and " + json(hi).dump());
      return fallback;
    }
    return x;
  }
  int64_t integer(const char* key, int64_t fallback, int64_t lo, int64_t hi) {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number_integer()) {
      fail(key, std::string(key) + " must be an integer");
      return fallback;
    }
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) {
      fail(key, std::string(key) + " must be at most " + std::to_string(hi));
      return fallback;
    }
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) {
      fail(key, std::string(key) + " must be between " + std::to_string(lo) + " and " +
                    std::to_string(hi));
      return fallback;
    }
    return x;
  }
  bool boolean(const char* key, bool fallback) {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_boolean()) {
      fail(key, std::string(key) + " must be true or false");
      return fallback;
    }
    return v->get<bool>();
  }
};

// Text of a message's content: a string, or a list of {"type": "text", "text": ...} parts.
std::optional<std::string> content_text(const json& c, Fields& f, const std::string& param);

}  // namespace whale::serve
