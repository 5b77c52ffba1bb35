// DeepSeek conversation formats, written out from their chat templates (no template engine):
//  kV3    DeepSeek-V3 (tokenizer_config.json of the Dec-2024 release)
//  kR1    DeepSeek-R1: as V3, earlier answers lose their reasoning, the answer opens "<think>\n"
//  kV31   DeepSeek-V3.1: thinking and non-thinking modes, its own tool-call layout
// Each renders exactly what transformers' apply_chat_template renders with that template,
// template quirks included (tests/data/tokenizer/chat_golden.json).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace whale::tok {

enum class ChatFormat { kV3, kR1, kV31 };

struct ToolCall {
  std::string type = "function";
  std::string name;
  std::string arguments;  // JSON text, inserted as given
};

struct ChatMessage {
  std::string role;  // system, user, assistant, tool
  std::optional<std::string> content;
  std::vector<ToolCall> tool_calls;
  bool prefix = false;  // V3.1: an assistant turn the model should continue
};

struct ChatOptions {
  bool add_generation_prompt = true;
  bool thinking = false;  // V3.1 only
  std::string bos_token = "<｜begin▁of▁sentence｜>";
};

// The rendered conversation, and which byte ranges are template scaffolding: only there may
// special tokens be recognised; everything a user or tool wrote is plain text.
struct RenderedChat {
  std::string text;
  std::vector<Span> scaffolding;
};

Result<RenderedChat> render_chat(ChatFormat format, std::span<const ChatMessage> messages,
                                 const ChatOptions& options);

// Whether the answer starts inside reasoning: the rendered prompt ends by opening <think>.
bool opens_thinking(const RenderedChat& chat);

// Token ids of a rendered chat: special tokens recognised in the scaffolding only.
Result<std::vector<int32_t>> encode_chat(const Tokenizer& tokenizer, const RenderedChat& chat);

// "v3", "r1", "v3.1".
Result<ChatFormat> parse_chat_format(std::string_view name);
std::string_view chat_format_name(ChatFormat format);
// The format a model's chat template is, recognised by its distinctive pieces; nullopt if it is
// none of the three.
std::optional<ChatFormat> detect_chat_format(std::string_view chat_template);

}  // namespace whale::tok
