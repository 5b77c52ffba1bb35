// The generation loop: greedy equals the argmax chain of full forwards, seeds, stops, limits.
#include "runtime/generator.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "backends/cpu/cpu_backend.h"
#include "model/synthetic.h"
#include "tests/test_util.h"
#include "tokenizer/utf8.h"

namespace whale::runtime {
namespace {

struct FixtureModel {
  model::Model model;
  ThreadPool pool{2};
  cpu::CpuBackend cpu{pool};
  explicit FixtureModel(const std::string& dir)
      : model(std::move(model::Model::load(dir)).value()) {}
};

TEST(Generator, GreedyEqualsArgmaxChainOfFullForwards) {
  FixtureModel f(test::fixture_dir("v3_yarn"));
  const auto ids = test::fixture_ids("v3_yarn");
  GenerationRequest req;
  req.prompt.assign(ids.begin(), ids.begin() + 8);
  req.sampling.temperature = 0;
  req.max_tokens = 12;
  Generator gen(f.model, nullptr, f.cpu, 64);
  auto r = gen.generate(req, nullptr);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->finish, FinishReason::kLength);

  std::vector<int32_t> seq = req.prompt, chain;
  const int64_t vocab = f.model.config().vocab_size;
  for (int step = 0; step < 12; ++step) {
    model::KvCache cache(f.model.config(), 64);
    auto logits = f.model.forward(f.cpu, seq, cache);
    ASSERT_TRUE(logits.ok());
    const float* last = logits->data() + logits->size() - vocab;
    const auto next = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
    chain.push_back(next);
    seq.push_back(next);
  }
  EXPECT_EQ(r->tokens, chain);
}

TEST(Generator, SeedsRepeatAndDiffer) {
  FixtureModel f(test::fixture_dir("v2_lite"));
  auto run = [&](uint64_t seed) {
    GenerationRequest req;
    req.prompt = {1, 2, 3};
    req.sampling.temperature = 1.0f;
    req.sampling.top_p = 1.0f;
    req.sampling.seed = seed;
    req.max_tokens = 24;
    Generator gen(f.model, nullptr, f.cpu, 64);
    return gen.generate(req, nullptr).value().tokens;
  };
  EXPECT_EQ(run(11), run(11));
  EXPECT_NE(run(11), run(12));
}

TEST(Generator, LimitsAndCancellation) {
  FixtureModel f(test::fixture_dir("v2_lite"));
  Generator gen(f.model, nullptr, f.cpu, 16);
  GenerationRequest req;
  req.sampling.temperature = 0;
  req.prompt.assign(16, 5);
  auto r = gen.generate(req, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("the prompt has 16 tokens; the context holds 16"),
            std::string::npos);
  req.prompt.clear();
  EXPECT_FALSE(gen.generate(req, nullptr).ok());

  req.prompt.assign(10, 5);
  req.max_tokens = 100;
  r = gen.generate(req, nullptr);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish, FinishReason::kContext);
  EXPECT_EQ(r->tokens.size(), 7u);  // 10 + 6 fill the cache; the 7th is sampled, not run

  std::atomic<bool> cancel{true};
  r = gen.generate(req, nullptr, &cancel);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish, FinishReason::kCancelled);
  EXPECT_TRUE(r->tokens.empty());

  req.sampling.temperature = -1;
  r = gen.generate(req, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field, "temperature");
}

TEST(StopMatcher, CatchesStopsAcrossPiecesAndDropsThem) {
  StopMatcher m({"o Wor", "XYZ"});
  std::string out = m.push("Hel");
  out += m.push("lo W");
  EXPECT_FALSE(m.stopped());
  out += m.push("orld!");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "Hell");
  EXPECT_EQ(m.push("more"), "");

  StopMatcher held({"</s>"});
  EXPECT_EQ(held.push("a</"), "a");  // "</" may start the stop string
  EXPECT_EQ(held.push("b"), "</b");
  EXPECT_EQ(held.push("<"), "");
  EXPECT_EQ(held.flush(), "<");
}

// A random model with DeepSeek's real tokenizer, for text-level behaviour.
class TextModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    auto j = nlohmann::json::parse(test::read_file(test::fixture_dir("v3_yarn") + "/config.json"));
    j["vocab_size"] = 129280;
    j["num_nextn_predict_layers"] = 0;
    const std::string text = j.dump();
    auto c = model::parse_config(text, "config.json");
    ASSERT_TRUE(c.ok());
    model::SynthOptions o;
    o.std = 0.5f;  // peaked logits, so that greedy text is not all one token
    ASSERT_TRUE(model::write_synthetic_checkpoint(*c, text, dir_->file("m"), o).ok());
    const std::string tok_dir = std::string(WHALE_SOURCE_DIR) + "/models/deepseek-v3-tokenizer/";
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      std::filesystem::copy_file(tok_dir + f, dir_->file("m/") + f);
    }
  }
  static void TearDownTestSuite() { delete dir_; }
  static test::TempDir* dir_;
};
test::TempDir* TextModel::dir_ = nullptr;

TEST_F(TextModel, StopStringsSpanningTokensAreCaughtAndNotEmitted) {
  FixtureModel f(dir_->file("m"));
  auto tokenizer = tok::Tokenizer::load(dir_->file("m"));
  ASSERT_TRUE(tokenizer.ok());
  Generator gen(f.model, &*tokenizer, f.cpu, 128);
  GenerationRequest req;
  req.prompt = *tokenizer->encode("The whale", tok::SpecialTokens::kIgnore);
  req.sampling.temperature = 0;
  req.max_tokens = 40;
  std::vector<std::string> pieces;
  auto full = gen.generate(req, [&](std::string_view t) { pieces.emplace_back(t); });
  ASSERT_TRUE(full.ok()) << full.error().to_string();
  for (const auto& p : pieces) EXPECT_TRUE(tok::is_valid_utf8(p));

  // A stop string made of the end of one token's text and the start of the next.
  std::string before, stop;
  for (size_t i = 1; i + 1 < full->tokens.size() && stop.empty(); ++i) {
    const std::string a = *tokenizer->decode(std::span(full->tokens).first(i));
    const std::string b = *tokenizer->decode(std::span(full->tokens).first(i + 1));
    if (a.size() >= 1 && b.size() > a.size() + 0 && tok::is_valid_utf8(a) &&
        b.size() - a.size() >= 1) {
      const size_t at = a.size() - 1;
      if (b.find(b.substr(at, 2)) == at) {  // first occurrence, so the cut is unambiguous
        before = b.substr(0, at);
        stop = b.substr(at, 2);
      }
    }
  }
  ASSERT_FALSE(stop.empty());
  req.stop = {stop};
  auto cut = gen.generate(req, nullptr);
  ASSERT_TRUE(cut.ok());
  EXPECT_EQ(cut->finish, FinishReason::kStop);
  EXPECT_EQ(cut->text, before);
  EXPECT_EQ(cut->text.find(stop), std::string::npos);
}

TEST_F(TextModel, SampledTextIsAlwaysWholeCharacters) {
  FixtureModel f(dir_->file("m"));
  auto tokenizer = tok::Tokenizer::load(dir_->file("m"));
  ASSERT_TRUE(tokenizer.ok());
  Generator gen(f.model, &*tokenizer, f.cpu, 256);
  GenerationRequest req;
  req.prompt = {0};
  req.sampling.temperature = 5.0f;  // near-uniform over 129k tokens: many partial UTF-8 bytes
  req.sampling.top_p = 1.0f;
  req.max_tokens = 150;
  std::string joined;
  auto r = gen.generate(req, [&](std::string_view t) {
    EXPECT_TRUE(tok::is_valid_utf8(t));
    joined += t;
  });
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(joined, r->text);
  EXPECT_EQ(joined, *tokenizer->decode(r->tokens));
}

}  // namespace
}  // namespace whale::runtime
