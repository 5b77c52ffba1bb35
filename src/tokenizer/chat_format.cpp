#include "tokenizer/chat_format.h"

namespace whale::tok {
namespace {

constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kSep = "<｜tool▁sep｜>";
constexpr std::string_view kOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kOutputEnd = "<｜tool▁output▁end｜>";

// Appends text, remembering which parts are scaffolding.
class Writer {
 public:
  void control(std::string_view s) {
    if (s.empty()) return;
    const size_t begin = out_.text.size();
    out_.text += s;
    if (!out_.scaffolding.empty() && out_.scaffolding.back().end == begin) {
      out_.scaffolding.back().end = out_.text.size();
    } else {
      out_.scaffolding.push_back({begin, out_.text.size()});
    }
  }
  void content(std::string_view s) { out_.text += s; }
  RenderedChat take() { return std::move(out_); }

 private:
  RenderedChat out_;
};

Status check_roles(std::span<const ChatMessage> messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string field = "messages[" + std::to_string(i) + "]";
    if (m.role != "system" && m.role != "user" && m.role != "assistant" && m.role != "tool") {
      return make_error("unknown role \"" + m.role + "\"", field + ".role", {},
                        "roles are system, user, assistant and tool");
    }
    if (m.role != "assistant" && !m.tool_calls.empty()) {
      return make_error("only assistant messages carry tool_calls", field);
    }
    if (m.role != "assistant" && !m.content)
      return make_error("content is missing", field + ".content");
    if (m.role == "assistant" && !m.content && m.tool_calls.empty()) {
      return make_error("an assistant message needs content or tool_calls", field);
    }
  }
  return ok_status();
}

// System messages go first whatever their position: V3 and V3.1 join them with a blank line,
// R1's template keeps the last one.
void write_system(Writer& w, std::span<const ChatMessage> messages, bool join) {
  std::string system;
  bool first = true;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    if (join && !first) system += "\n\n";
    system = join ? system + *m.content : *m.content;
    first = false;
  }
  w.content(system);
}

// V3 and R1 share everything but the system prompt, earlier reasoning and the answer prompt.
RenderedChat render_v3_family(std::span<const ChatMessage> messages, const ChatOptions& o,
                              bool r1) {
  Writer w;
  w.control(o.bos_token);
  write_system(w, messages, /*join=*/!r1);
  // The templates never reset these two between turns; the quirks are kept on purpose.
  bool is_first = false, is_tool = false, is_output_first = true;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      is_tool = false;
      w.control(kUser);
      w.content(*m.content);
    } else if (m.role == "assistant" && !m.content) {
      is_tool = false;
      for (const ToolCall& call : m.tool_calls) {
        if (!is_first) {
          w.control(kAssistant);
          w.control(kCallsBegin);
          w.control(kCallBegin);
        } else {
          w.control("\n");
          w.control(kCallBegin);
        }
        w.content(call.type);
        w.control(kSep);
        w.content(call.name);
        w.control("\n```json\n");
        w.content(call.arguments);
        w.control("\n```");
        w.control(kCallEnd);
        // The Dec-2024 template closes the calls only from the second call on.
        if (is_first) {
          w.control(kCallsEnd);
          w.control(kEos);
        }
        is_first = true;
      }
    } else if (m.role == "assistant") {
      if (is_tool) {
        w.control(kOutputsEnd);
        w.content(*m.content);
        w.control(kEos);
        is_tool = false;
      } else {
        std::string_view content = *m.content;
        // R1: an earlier answer keeps only what follows its last </think>.
        if (r1) {
          const size_t cut = content.rfind("</think>");
          if (cut != std::string_view::npos) content = content.substr(cut + 8);
        }
        w.control(kAssistant);
        w.content(content);
        w.control(kEos);
      }
    } else if (m.role == "tool") {
      is_tool = true;
      if (is_output_first) {
        w.control(kOutputsBegin);
        w.control(kOutputBegin);
        is_output_first = false;
      } else {
        w.control("\n");
        w.control(kOutputBegin);
      }
      w.content(*m.content);
      w.control(kOutputEnd);
    }
  }
  if (is_tool) w.control(kOutputsEnd);
  if (o.add_generation_prompt && !is_tool) {
    w.control(kAssistant);
    if (r1) w.control("<think>\n");
  }
  return w.take();
}

RenderedChat render_v31(std::span<const ChatMessage> messages, const ChatOptions& o) {
  Writer w;
  w.control(o.bos_token);
  write_system(w, messages, /*join=*/true);
  bool is_tool = false, is_last_user = false;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      is_tool = false;
      is_last_user = true;
      w.control(kUser);
      w.content(*m.content);
    } else if (m.role == "assistant" && !m.tool_calls.empty()) {
      if (is_last_user) {
        w.control(kAssistant);
        w.control("<think></think>");
      }
      is_last_user = false;
      is_tool = false;
      bool first = true;
      for (const ToolCall& call : m.tool_calls) {
        if (first) {
          if (m.content) w.content(*m.content);
          w.control(kCallsBegin);
        }
        first = false;
        w.control(kCallBegin);
        w.content(call.name);
        w.control(kSep);
        w.content(call.arguments);
        w.control(kCallEnd);
      }
      w.control(kCallsEnd);
      w.control(kEos);
    } else if (m.role == "assistant") {
      if (is_last_user) {
        w.control(kAssistant);
        w.control(m.prefix && o.thinking ? "<think>" : "<think></think>");
      }
      is_last_user = false;
      std::string_view content = *m.content;
      if (is_tool) {
        is_tool = false;
      } else {
        // V3.1: an earlier answer keeps what follows its first </think>.
        const size_t cut = content.find("</think>");
        if (cut != std::string_view::npos) content = content.substr(cut + 8);
      }
      w.content(content);
      w.control(kEos);
    } else if (m.role == "tool") {
      is_last_user = false;
      is_tool = true;
      w.control(kOutputBegin);
      w.content(*m.content);
      w.control(kOutputEnd);
    }
  }
  if (o.add_generation_prompt && is_last_user && !is_tool) {
    w.control(kAssistant);
    w.control(o.thinking ? "<think>" : "<think></think>");
  }
  return w.take();
}

}  // namespace

Result<RenderedChat> render_chat(ChatFormat format, std::span<const ChatMessage> messages,
                                 const ChatOptions& options) {
  WHALE_TRY(check_roles(messages));
  switch (format) {
    case ChatFormat::kV3:
      return render_v3_family(messages, options, /*r1=*/false);
    case ChatFormat::kR1:
      return render_v3_family(messages, options, /*r1=*/true);
    case ChatFormat::kV31:
      break;
  }
  return render_v31(messages, options);
}

bool opens_thinking(const RenderedChat& chat) {
  return chat.text.ends_with("<think>") || chat.text.ends_with("<think>\n");
}

Result<std::vector<int32_t>> encode_chat(const Tokenizer& tokenizer, const RenderedChat& chat) {
  return tokenizer.encode_with_scaffolding(chat.text, chat.scaffolding);
}

Result<ChatFormat> parse_chat_format(std::string_view name) {
  if (name == "v3") return ChatFormat::kV3;
  if (name == "r1") return ChatFormat::kR1;
  if (name == "v3.1") return ChatFormat::kV31;
  return make_error("unknown chat format \"" + std::string(name) + "\"", "--chat-format", {},
                    "choose v3, r1 or v3.1");
}

std::string_view chat_format_name(ChatFormat format) {
  switch (format) {
    case ChatFormat::kV3:
      return "v3";
    case ChatFormat::kR1:
      return "r1";
    case ChatFormat::kV31:
      break;
  }
  return "v3.1";
}

std::optional<ChatFormat> detect_chat_format(std::string_view t) {
  if (t.find("<｜User｜>") == std::string_view::npos) return std::nullopt;
  // V3.1 switches on a `thinking` variable and closes empty reasoning with <think></think>.
  if (t.find("<think></think>") != std::string_view::npos) return ChatFormat::kV31;
  // R1 cuts earlier answers at </think> and opens the answer with <think>.
  if (t.find("</think>") != std::string_view::npos) return ChatFormat::kR1;
  return ChatFormat::kV3;
}

}  // namespace whale::tok
