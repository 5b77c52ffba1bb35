// The tokenizer against HF tokenizers' ids (tests/data/tokenizer, made by reference/), and its
// own invariants: round trips, streaming, bad input.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "tests/test_util.h"
#include "tokenizer/utf8.h"

namespace whale::tok {
namespace {

std::string models_dir() { return std::string(WHALE_SOURCE_DIR) + "/models"; }
std::string data_dir() { return std::string(WHALE_TEST_DATA_DIR) + "/tokenizer"; }

const Tokenizer& v3() {
  static const Tokenizer t = [] {
    auto r = Tokenizer::load(models_dir() + "/deepseek-v3-tokenizer");
    if (!r.ok()) throw std::runtime_error(r.error().to_string());
    return std::move(*r);
  }();
  return t;
}

const Tokenizer& v4() {
  static const Tokenizer t = [] {
    auto r = Tokenizer::load(models_dir() + "/deepseek-v4-tokenizer");
    if (!r.ok()) throw std::runtime_error(r.error().to_string());
    return std::move(*r);
  }();
  return t;
}

std::vector<std::string> read_jsonl_field(const std::string& path, const char* field) {
  std::ifstream in(path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    out.push_back(nlohmann::json::parse(line)[field].get<std::string>());
  return out;
}

std::vector<int32_t> ids_of(const Tokenizer& t, std::string_view text, SpecialTokens mode) {
  auto r = t.encode(text, mode);
  EXPECT_TRUE(r.ok());
  return r.ok() ? *r : std::vector<int32_t>{};
}

TEST(Tokenizer, PublishedVectors) {
  using V = std::vector<int32_t>;
  EXPECT_EQ(ids_of(v3(), "Hello world", SpecialTokens::kIgnore), (V{19923, 2058}));
  EXPECT_EQ(ids_of(v3(), " 12345 abc", SpecialTokens::kIgnore), (V{223, 6895, 1883, 71490}));
  EXPECT_EQ(ids_of(v3(), "3333333", SpecialTokens::kIgnore), (V{11722, 11722, 21}));
  EXPECT_EQ(ids_of(v3(), "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
                   SpecialTokens::kIgnore),
            (V{19923, 14,    383, 98513, 3,    1730, 477,   440, 53769, 226,
               4054,  11458, 445, 42123, 1472, 9049, 19453, 19,  954,   9596}));
  EXPECT_EQ(ids_of(v3(), "<｜User｜>Hi<｜Assistant｜>", SpecialTokens::kParse),
            (V{128803, 23166, 128804}));
  EXPECT_EQ(
      ids_of(v4(), "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>",
             SpecialTokens::kParse),
      (V{128803, 30594, 128804, 128821, 36101, 128822, 7624, 1}));
}

TEST(Tokenizer, UserTextNeverBecomesControlTokens) {
  // V3 (Dec 2024) has no <think> token; V4 has one.
  for (const Tokenizer* t : {&v3(), &v4()}) {
    for (const char* text : {"<｜User｜>", "<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁hole｜>"}) {
      const auto plain = ids_of(*t, text, SpecialTokens::kIgnore);
      for (int32_t id : plain) EXPECT_LT(id, 128000) << text;
      EXPECT_NE(plain, ids_of(*t, text, SpecialTokens::kParse)) << text;
    }
  }
  EXPECT_EQ(ids_of(v4(), "<think>", SpecialTokens::kParse), (std::vector<int32_t>{128821}));
  EXPECT_NE(ids_of(v4(), "<think>", SpecialTokens::kIgnore), (std::vector<int32_t>{128821}));
  EXPECT_EQ(ids_of(v3(), "<｜User｜>", SpecialTokens::kParse), (std::vector<int32_t>{128803}));
}

// Every corpus line, both modes, id for id against HF tokenizers.
void check_golden(const Tokenizer& t, const std::string& golden_file) {
  const auto texts = read_jsonl_field(data_dir() + "/corpus.jsonl", "text");
  std::ifstream in(data_dir() + "/" + golden_file);
  ASSERT_TRUE(in) << golden_file;
  ASSERT_GE(texts.size(), 2000u);
  std::string line;
  size_t n = 0, mismatches = 0;
  for (; std::getline(in, line); ++n) {
    ASSERT_LT(n, texts.size());
    const auto golden = nlohmann::json::parse(line);
    const auto special = ids_of(t, texts[n], SpecialTokens::kParse);
    const auto plain = ids_of(t, texts[n], SpecialTokens::kIgnore);
    if (special != golden["special"].get<std::vector<int32_t>>() ||
        plain != golden["plain"].get<std::vector<int32_t>>()) {
      if (++mismatches <= 5)
        ADD_FAILURE() << golden_file << " line " << n + 1 << ": " << texts[n].substr(0, 80);
    }
  }
  EXPECT_EQ(n, texts.size());
  EXPECT_EQ(mismatches, 0u) << "of " << n << " lines";
}

TEST(TokenizerGolden, V3MatchesHfTokenizers) { check_golden(v3(), "v3_golden.jsonl"); }
TEST(TokenizerGolden, V4MatchesHfTokenizers) { check_golden(v4(), "v4_golden.jsonl"); }

TEST(TokenizerGolden, RoundTripAndStreaming) {
  const auto texts = read_jsonl_field(data_dir() + "/corpus.jsonl", "text");
  for (const std::string& text : texts) {
    for (SpecialTokens mode : {SpecialTokens::kParse, SpecialTokens::kIgnore}) {
      const auto ids = ids_of(v3(), text, mode);
      auto decoded = v3().decode(ids);
      ASSERT_TRUE(decoded.ok());
      ASSERT_EQ(*decoded, text);
      // Streaming emits the same text, in pieces that are always valid UTF-8.
      StreamDecoder stream(v3());
      std::string joined;
      for (int32_t id : ids) {
        auto piece = stream.push(id);
        ASSERT_TRUE(piece.ok());
        ASSERT_TRUE(is_valid_utf8(*piece));
        joined += *piece;
      }
      joined += stream.finish();
      ASSERT_EQ(joined, text);
    }
  }
}

TEST(Tokenizer, StreamingHoldsSplitCharacters) {
  // "😁" is one 4-byte character spread over three byte-level tokens in the vectors above.
  const auto ids = ids_of(v3(), "😁", SpecialTokens::kIgnore);
  ASSERT_GT(ids.size(), 1u);
  StreamDecoder stream(v3());
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(*stream.push(ids[i]), "");
  EXPECT_EQ(*stream.push(ids.back()), "😁");
  EXPECT_EQ(stream.finish(), "");
  // A stream cut inside a character ends with U+FFFD, not a broken byte.
  StreamDecoder cut(v3());
  EXPECT_EQ(*cut.push(ids[0]), "");
  EXPECT_EQ(cut.finish(), "\xEF\xBF\xBD");
}

TEST(Tokenizer, DecodeRejectsIdsOutOfRange) {
  const std::vector<int32_t> bad = {19923, 129280};
  auto r = v3().decode(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("token id 129280 at index 1 is not in the vocabulary"),
            std::string::npos);
  EXPECT_FALSE(v3().decode(std::vector<int32_t>{-1}).ok());
  StreamDecoder stream(v3());
  EXPECT_FALSE(stream.push(1 << 30).ok());
}

TEST(Tokenizer, InvalidUtf8IsReplacedLikeHf) {
  // One U+FFFD per maximal invalid sequence, then tokenized as text.
  EXPECT_EQ(repair_utf8("a\xFF"
                        "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(repair_utf8("\xE2\x82"), "\xEF\xBF\xBD");  // truncated 3-byte sequence
  EXPECT_EQ(repair_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(repair_utf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong
  EXPECT_EQ(ids_of(v3(),
                   "a\xFF"
                   "b",
                   SpecialTokens::kIgnore),
            ids_of(v3(),
                   "a\xEF\xBF\xBD"
                   "b",
                   SpecialTokens::kIgnore));
  EXPECT_EQ(complete_utf8_prefix("ab\xF0\x9F\x98"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xF0\x9F\x98\x81"), 6u);
  EXPECT_EQ(complete_utf8_prefix("ab\xFF"), 3u);  // invalid, not pending: let it out (as U+FFFD)
}

TEST(Tokenizer, LongInputsEncodeInLinearTime) {
  // One 4 MB "word", one 4 MB run of spaces and 1 MB of digits: single pieces for the regexes
  // and for BPE. Quadratic behaviour would take minutes here.
  for (const std::string& text :
       {std::string(4 << 20, 'a'), std::string(4 << 20, ' '), std::string(1 << 20, '7') + "x"}) {
    const auto start = std::chrono::steady_clock::now();
    auto ids = v3().encode(text, SpecialTokens::kIgnore);
    ASSERT_TRUE(ids.ok());
    EXPECT_FALSE(ids->empty());
    EXPECT_EQ(*v3().decode(*ids), text);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(s, 60.0);  // a guard against hangs, not a speed goal
  }
}

TEST(Tokenizer, MalformedTokenizerJsonGivesClearErrors) {
  const std::string good = test::read_file(models_dir() + "/deepseek-v3-tokenizer/tokenizer.json");
  auto base = nlohmann::json::parse(good);
  struct Case {
    std::function<void(nlohmann::json&)> mutate;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](auto& j) { j.erase("model"); }, "model: missing object"},
      {[](auto& j) { j["model"]["type"] = "WordPiece"; }, "model.type: only BPE"},
      {[](auto& j) { j["model"]["vocab"] = nlohmann::json::array(); },
       "model.vocab: missing object"},
      {[](auto& j) { j["model"]["vocab"]["!"] = "one"; }, "id must be an integer"},
      {[](auto& j) { j["model"]["merges"][0] = "abc"; }, "is not \"left right\""},
      {[](auto& j) { j["model"]["merges"].push_back("Ġ zzzzzz"); },
       "uses a token missing from the vocab"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][2]["pattern"]["Regex"] = "(a+)+$"; },
       "unknown Split pattern"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }, "Isolated"},
      {[](auto& j) {
         j["normalizer"] = {{"type", "NFKC"}};
       },
       "normalizers are not supported"},
      {[](auto& j) { j["added_tokens"][0].erase("id"); }, "added_tokens"},
      {[](auto& j) { j["decoder"] = nullptr; }, "decoder: must be ByteLevel"},
      {[](auto& j) { j["model"]["vocab"].erase("!"); }, "byte 33 has no token"},
  };
  for (const auto& c : cases) {
    nlohmann::json j = base;
    c.mutate(j);
    auto t = Tokenizer::from_json(j.dump(), "tokenizer.json");
    ASSERT_FALSE(t.ok()) << c.expected;
    EXPECT_NE(t.error().to_string().find(c.expected), std::string::npos) << t.error().to_string();
  }
  auto t = Tokenizer::from_json("{\"model\": ", "tokenizer.json");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().to_string().find("not valid JSON"), std::string::npos);
  auto missing = Tokenizer::load("/nonexistent");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().to_string().find("tokenizer.json not found"), std::string::npos);
}

}  // namespace
}  // namespace whale::tok
