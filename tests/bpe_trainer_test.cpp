// The BPE trainer: its merges against a plain recount-everything implementation, and the
// tokenizer it writes loaded back by whale (HF tokenizers loads it in tokenizer_train_test.py).
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "tokenizer/bpe_trainer.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace whale::tok {
namespace {

const char* kCorpus[] = {
    "the cat sat on the mat, and the cat was glad.\n",
    "aaaa aaa aa a abab ababab bababa\n",
    "In 1811 the first of the novels appeared; in 1813 the second.\n",
    "我们在学习。我们很高兴。ひらがなとカタカナ\n",
    "  indented line\twith tabs\r\nand CRLF\r\n",
    "emoji 🐋🐋 and symbols: ++ -- ==> <== !!\n",
};

// Merges learned by recounting every pair of every piece before each merge (the definition
// the incremental trainer must reproduce): most frequent pair, ties to the smaller ids.
std::vector<std::pair<std::string, std::string>> naive_merges(const std::string& text, int n) {
  std::vector<Span> pieces{{0, text.size()}}, next;
  for (SplitPattern p : {SplitPattern::kDigits, SplitPattern::kCjkKana, SplitPattern::kWords}) {
    next.clear();
    for (const Span& s : pieces) split(p, text, s, next);
    pieces.swap(next);
  }
  std::map<std::string, int64_t> counts;
  for (const Span& s : pieces) ++counts[text.substr(s.begin, s.end - s.begin)];
  std::vector<std::pair<std::vector<int>, int64_t>> words;
  for (const auto& [w, c] : counts) {
    std::vector<int> syms(w.begin(), w.end());
    for (int& x : syms) x &= 0xff;
    words.push_back({syms, c});
  }
  std::vector<std::string> token(256);
  for (int b = 0; b < 256; ++b) token[size_t(b)] = std::string(1, char(b));
  std::vector<std::pair<std::string, std::string>> merges;
  for (int m = 0; m < n; ++m) {
    std::map<std::pair<int, int>, int64_t> pairs;
    for (const auto& [s, c] : words) {
      for (size_t i = 0; i + 1 < s.size(); ++i) pairs[{s[i], s[i + 1]}] += c;
    }
    std::pair<int, int> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, c] : pairs) {  // ordered by ids: the first maximum wins ties
      if (c > best_count) {
        best = p;
        best_count = c;
      }
    }
    if (best_count < 2) break;
    const int z = int(token.size());
    token.push_back(token[size_t(best.first)] + token[size_t(best.second)]);
    merges.push_back({byte_level_encode(token[size_t(best.first)]), byte_level_encode(token[size_t(best.second)])});
    for (auto& [s, c] : words) {
      std::vector<int> out;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) {
          out.push_back(z);
          i += 2;
        } else {
          out.push_back(s[i++]);
        }
      }
      s = out;
    }
  }
  return merges;
}

std::string corpus_text() {
  std::string text;
  for (int rep = 0; rep < 3; ++rep) {
    for (const char* line : kCorpus) text += line;
  }
  return text;
}

TEST(BpeTrainer, MergesEqualARecountingTrainer) {
  const std::string text = corpus_text();
  BpeTrainer trainer;
  trainer.add_text(text);
  BpeTrainOptions o;
  o.vocab_size = 256 + 120;
  auto r = trainer.train(o);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  const auto j = nlohmann::json::parse(r->tokenizer_json);
  const auto want = naive_merges(text, 120);
  ASSERT_EQ(j["model"]["merges"].size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(j["model"]["merges"][i].get<std::string>(), want[i].first + " " + want[i].second) << i;
  }
}

TEST(BpeTrainer, WritesATokenizerThatRoundTrips) {
  BpeTrainer trainer;
  trainer.add_text(corpus_text());
  BpeTrainOptions o;
  o.vocab_size = 340;
  o.added_tokens = deepseek_added_tokens();
  auto r = trainer.train(o);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->vocab_size, 340);
  EXPECT_EQ(r->merges, 340 - 256 - int(o.added_tokens.size()));
  auto tokenizer = Tokenizer::from_json(r->tokenizer_json, "trained");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().to_string();
  EXPECT_EQ(tokenizer->vocab_size(), 340);
  for (const char* text : {"the cat sat on the mat", "unseen words: zebra quagga 42",
                           "我们 ひらがな 🐋", "tabs\tand\r\nlines\n\n"}) {
    auto ids = tokenizer->encode(text, SpecialTokens::kIgnore);
    ASSERT_TRUE(ids.ok());
    auto back = tokenizer->decode(*ids);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, text);
  }
  // A frequent word became one token; the added tokens are recognised in scaffolding mode.
  auto the = tokenizer->encode(" the", SpecialTokens::kIgnore);
  ASSERT_TRUE(the.ok());
  EXPECT_EQ(the->size(), 1u);
  auto user = tokenizer->encode("<｜User｜>hi", SpecialTokens::kParse);
  ASSERT_TRUE(user.ok());
  EXPECT_EQ(user->front(), *tokenizer->token_id("<｜User｜>"));
  // Deterministic.
  BpeTrainer again;
  again.add_text(corpus_text());
  EXPECT_EQ(again.train(o)->tokenizer_json, r->tokenizer_json);
}

TEST(BpeTrainer, RejectsImpossibleRequests) {
  BpeTrainer empty;
  BpeTrainOptions o;
  o.vocab_size = 1000;
  EXPECT_FALSE(empty.train(o).ok());
  BpeTrainer t;
  t.add_text("some text");
  o.vocab_size = 100;
  EXPECT_FALSE(t.train(o).ok());
  // Invalid UTF-8 is repaired, not a crash.
  t.add_text(std::string("bad \xff\xfe bytes"));
  o.vocab_size = 300;
  EXPECT_TRUE(t.train(o).ok());
}

}  // namespace
}  // namespace whale::tok
