#include "serve/api_request.h"

#include <httplib.h>

namespace whale::serve {

void send_error(httplib::Response& res, const ApiError& e) {
  json body = {{"error",
                {{"message", e.message},
                 {"type", e.type},
                 {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                 {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
  res.status = e.status;
  res.set_content(body.dump(), "application/json");
}

// Nesting depth of a JSON text, counted outside strings (checked before parsing, so that a
// hostile body cannot exhaust the parser's stack).
int json_depth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

// obj[key] if it is a string, else `fallback` (never throws on a wrong type).
std::string string_or(const json& obj, const char* key, const std::string& fallback) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : fallback;
}
bool bool_or(const json& obj, const char* key, bool fallback) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::optional<std::string> content_text(const json& c, Fields& f, const std::string& param) {
  if (c.is_null()) return std::nullopt;
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {
    std::string out;
    for (const json& part : c) {
      if (!part.is_object() || string_or(part, "type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        f.fail(param, "only text content parts are supported");
        return std::nullopt;
      }
      out += part["text"].get<std::string>();
    }
    return out;
  }
  f.fail(param, "content must be a string, a list of text parts, or null");
  return std::nullopt;
}

}  // namespace whale::serve
