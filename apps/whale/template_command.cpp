#include <cstdio>
#include <nlohmann/json.hpp>

#include "apps/whale/commands.h"
#include "core/mapped_file.h"
#include "tokenizer/chat_format.h"

namespace whale::app {

void add_template_command(CLI::App& app, TemplateArgs& args) {
  auto* cmd = app.add_subcommand("template", "Render a conversation in the model's chat format");
  cmd->add_option("DIR", args.dir, "model or tokenizer directory")->required();
  cmd->add_option("--messages", args.messages,
                  "JSON file: a list of {role, content, tool_calls} messages (OpenAI style)")
      ->required();
  cmd->add_option("--chat-format", args.format,
                  "v3, r1 or v3.1 (default: recognised from tokenizer_config.json)");
  cmd->add_flag("--thinking", args.thinking, "V3.1: open the answer in thinking mode");
  cmd->add_flag("--no-generation-prompt", args.no_generation_prompt,
                "do not open an assistant turn at the end");
  cmd->add_flag("--ids", args.ids, "print token ids (a JSON array) instead of the text");
}

namespace {

using nlohmann::json;

Result<std::vector<tok::ChatMessage>> parse_messages(const std::string& text,
                                                     const std::string& path) {
  const json list = json::parse(text, nullptr, false);
  if (list.is_discarded() || !list.is_array()) {
    return make_error("must be a JSON list of messages", {}, path);
  }
  std::vector<tok::ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& m = list[i];
    const std::string field = "[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return make_error("needs a string role", field, path);
    }
    tok::ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (m.contains("content") && !m["content"].is_null()) {
      if (!m["content"].is_string())
        return make_error("must be a string or null", field + ".content", path);
      msg.content = m["content"].get<std::string>();
    }
    if (m.contains("prefix")) msg.prefix = m["prefix"].is_boolean() && m["prefix"].get<bool>();
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      if (!m["tool_calls"].is_array())
        return make_error("must be a list", field + ".tool_calls", path);
      for (const json& c : m["tool_calls"]) {
        if (!c.is_object() || !c.contains("function") || !c["function"].is_object() ||
            !c["function"].contains("name") || !c["function"]["name"].is_string()) {
          return make_error("each call needs function.name", field + ".tool_calls", path);
        }
        tok::ToolCall call;
        call.type = c.value("type", "function");
        call.name = c["function"]["name"].get<std::string>();
        const json args = c["function"].value("arguments", json("{}"));
        call.arguments = args.is_string() ? args.get<std::string>() : args.dump();
        msg.tool_calls.push_back(std::move(call));
      }
    }
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace

int run_template(const TemplateArgs& args) {
  auto tokenizer = tok::Tokenizer::load(args.dir);
  if (!tokenizer.ok()) return report("template", tokenizer.error());
  auto text = read_text_file(args.messages);
  if (!text.ok()) return report("template", text.error());
  auto messages = parse_messages(*text, args.messages);
  if (!messages.ok()) return report("template", messages.error());

  tok::ChatFormat format;
  if (!args.format.empty()) {
    auto f = tok::parse_chat_format(args.format);
    if (!f.ok()) return report("template", f.error());
    format = *f;
  } else if (auto f = tok::detect_chat_format(tokenizer->config().chat_template)) {
    format = *f;
  } else {
    return report("template",
                  make_error("the model's chat template is not one whale knows", "chat_template",
                             args.dir, "pass --chat-format v3, r1 or v3.1"));
  }
  tok::ChatOptions options;
  options.thinking = args.thinking;
  options.add_generation_prompt = !args.no_generation_prompt;
  if (tokenizer->config().bos_token) options.bos_token = *tokenizer->config().bos_token;
  auto rendered = tok::render_chat(format, *messages, options);
  if (!rendered.ok()) return report("template", rendered.error());
  if (!args.ids) {
    std::fwrite(rendered->text.data(), 1, rendered->text.size(), stdout);
    std::printf("\n");
    return 0;
  }
  auto ids = tok::encode_chat(*tokenizer, *rendered);
  if (!ids.ok()) return report("template", ids.error());
  std::printf("%s\n", json(*ids).dump().c_str());
  return 0;
}

}  // namespace whale::app
