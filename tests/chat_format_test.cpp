// Chat renderings against transformers' apply_chat_template on the real templates
// (tests/data/tokenizer/chat_golden.json, made by reference/make_tokenizer_golden.py).
#include "tokenizer/chat_format.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace whale::tok {
namespace {

using nlohmann::json;

// json.dumps(value, ensure_ascii=False) as Python writes it: ", " and ": " separators.
std::string python_dumps(const json& v) {
  if (v.is_object()) {
    std::string s = "{";
    bool first = true;
    for (const auto& [k, x] : v.items()) {
      s += (first ? "" : ", ") + json(k).dump(-1, ' ', false) + ": " + python_dumps(x);
      first = false;
    }
    return s + "}";
  }
  if (v.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + python_dumps(v[i]);
    return s + "]";
  }
  return v.dump(-1, ' ', false);
}

std::vector<ChatMessage> messages_of(const json& list) {
  std::vector<ChatMessage> out;
  for (const auto& m : list) {
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (m.contains("content") && !m["content"].is_null())
      msg.content = m["content"].get<std::string>();
    if (m.contains("prefix")) msg.prefix = m["prefix"].get<bool>();
    if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
      for (const auto& c : m["tool_calls"]) {
        ToolCall call;
        call.type = c.value("type", "function");
        call.name = c["function"]["name"].get<std::string>();
        const json& args = c["function"]["arguments"];
        call.arguments = args.is_string() ? args.get<std::string>() : python_dumps(args);
        msg.tool_calls.push_back(call);
      }
    }
    out.push_back(msg);
  }
  return out;
}

const Tokenizer& v3_tokenizer() {
  static const Tokenizer t =
      std::move(Tokenizer::load(std::string(WHALE_SOURCE_DIR) + "/models/deepseek-v3-tokenizer"))
          .value();
  return t;
}

bool mentions_control_text(const std::vector<ChatMessage>& messages) {
  for (const auto& m : messages) {
    if (m.role == "system" || m.role == "user") {
      const std::string& c = *m.content;
      if (c.find("<｜") != std::string::npos || c.find("<|") != std::string::npos) return true;
    }
  }
  return false;
}

TEST(ChatFormat, MatchesTransformersOnEveryGoldenCase) {
  const json cases = json::parse(
      test::read_file(std::string(WHALE_TEST_DATA_DIR) + "/tokenizer/chat_golden.json"));
  ASSERT_GE(cases.size(), 60u);
  size_t checked_ids = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c["format"].get<std::string>() + " / " + c["name"].get<std::string>());
    auto format = parse_chat_format(c["format"].get<std::string>());
    ASSERT_TRUE(format.ok());
    ChatOptions options;
    options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    options.thinking = c["thinking"].is_boolean() && c["thinking"].get<bool>();
    const auto messages = messages_of(c["messages"]);
    auto rendered = render_chat(*format, messages, options);
    ASSERT_TRUE(rendered.ok()) << rendered.error().to_string();
    EXPECT_EQ(rendered->text, c["text"].get<std::string>());

    auto ids = encode_chat(v3_tokenizer(), *rendered);
    ASSERT_TRUE(ids.ok());
    if (mentions_control_text(messages)) {
      // transformers parses control tokens a user typed; whale keeps them as text.
      EXPECT_NE(*ids, c["ids"].get<std::vector<int32_t>>());
    } else {
      EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>());
      ++checked_ids;
    }
  }
  EXPECT_GT(checked_ids, 60u);
}

TEST(ChatFormat, UserTypedControlTokensStayText) {
  const std::vector<ChatMessage> messages = {
      {"user", std::string("Say <｜Assistant｜> and <｜end▁of▁sentence｜>"), {}, false}};
  auto rendered = render_chat(ChatFormat::kV3, messages, {});
  ASSERT_TRUE(rendered.ok());
  auto ids = encode_chat(v3_tokenizer(), *rendered);
  ASSERT_TRUE(ids.ok());
  // BOS, <｜User｜>, the user's text as plain tokens, then <｜Assistant｜> from the template.
  EXPECT_EQ(ids->front(), 0);
  EXPECT_EQ((*ids)[1], 128803);
  EXPECT_EQ(ids->back(), 128804);
  for (size_t i = 2; i + 1 < ids->size(); ++i) EXPECT_LT((*ids)[i], 128000) << i;
}

TEST(ChatFormat, RejectsMalformedConversations) {
  const std::vector<ChatMessage> bad_role = {{"narrator", std::string("hi"), {}, false}};
  auto r = render_chat(ChatFormat::kV3, bad_role, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("messages[0].role: unknown role \"narrator\""),
            std::string::npos);
  const std::vector<ChatMessage> empty_assistant = {{"assistant", std::nullopt, {}, false}};
  EXPECT_FALSE(render_chat(ChatFormat::kV31, empty_assistant, {}).ok());
  const std::vector<ChatMessage> no_content = {{"user", std::nullopt, {}, false}};
  EXPECT_FALSE(render_chat(ChatFormat::kR1, no_content, {}).ok());
}

TEST(ChatFormat, DetectsTheFormatFromTheTemplate) {
  const auto v3 = Tokenizer::load(std::string(WHALE_SOURCE_DIR) + "/models/deepseek-v3-tokenizer");
  ASSERT_TRUE(v3.ok());
  EXPECT_EQ(detect_chat_format(v3->config().chat_template), ChatFormat::kV3);
  EXPECT_EQ(detect_chat_format("{{'<｜User｜>'}}{% if '</think>' in content %}{{'<think>\\n'}}"),
            ChatFormat::kR1);
  EXPECT_EQ(detect_chat_format("{{'<｜User｜>'}}{{'<think></think>'}}"), ChatFormat::kV31);
  EXPECT_EQ(detect_chat_format("{{ messages }}"), std::nullopt);
  EXPECT_FALSE(parse_chat_format("v2").ok());
}

}  // namespace
}  // namespace whale::tok
