// The `whale` command as a user runs it: outputs, exit codes, one clear message per bad input.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace whale {
namespace {

using test::run_command;

// Single-quoted for the shell.
std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string whale() { return q(WHALE_BINARY); }

TEST(Cli, InfoJsonOnRealV3Config) {
  std::string out;
  ASSERT_EQ(run_command(whale() + " info " + WHALE_TEST_DATA_DIR +
                            "/deepseek_v3_config --config-only --json",
                        &out),
            0)
      << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["model_type"], "deepseek_v3");
  EXPECT_EQ(j["params_total"].get<int64_t>(), 671026419200);
  EXPECT_NEAR(j["params_active"].get<double>(), 37.55e9, 0.01e9);
  EXPECT_EQ(j["kv_cache_bytes_per_token"], 70272);
}

TEST(Cli, InfoOnFixtureCountsStoredBytes) {
  std::string out;
  ASSERT_EQ(run_command(whale() + " info " + q(test::fixture_dir("v3_fp8")) + " --json", &out), 0)
      << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_GT(j["bytes_by_dtype"]["F8_E4M3"].get<int64_t>(), 0);
  EXPECT_GT(j["bytes_by_dtype"]["F32"].get<int64_t>(), 0);  // scales and router bias
  // The tensors tile the data section: their bytes are the file minus its header.
  const std::string file = test::read_file(test::fixture_dir("v3_fp8") + "/model.safetensors");
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i)
    header = header << 8 | static_cast<uint8_t>(file[static_cast<size_t>(i)]);
  EXPECT_EQ(j["checkpoint_bytes"].get<uint64_t>(), file.size() - 8 - header);
}

TEST(Cli, LogitsTopTenAndRawFile) {
  test::TempDir dir;
  const auto ids = test::fixture_ids("v3_yarn");
  std::string list;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) list += ',';
    list += std::to_string(ids[i]);
  }
  std::string out;
  ASSERT_EQ(run_command(whale() + " logits " + q(test::fixture_dir("v3_yarn")) + " --ids " + list +
                            " --out " + q(dir.file("l.f32")),
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("top 10 at position 63"), std::string::npos) << out;
  const std::string raw = test::read_file(dir.file("l.f32"));
  const auto golden = test::fixture_logits("v3_yarn");
  ASSERT_EQ(raw.size(), golden.size() * 4);
  std::vector<float> got(golden.size());
  std::memcpy(got.data(), raw.data(), raw.size());
  float max_diff = 0;
  for (size_t i = 0; i < got.size(); ++i)
    max_diff = std::max(max_diff, std::fabs(got[i] - golden[i]));
  EXPECT_LE(max_diff, 1e-3f);
}

// Each bad input: non-zero exit, one message naming the problem, no crash.
struct BadCase {
  std::string args;
  std::string expected;
};

TEST(Cli, BadInputsGiveClearErrors) {
  const std::string v2 = q(test::fixture_dir("v2_lite"));
  std::string long_ids = "1";
  for (int i = 0; i < 300; ++i) long_ids += ",1";  // v2_lite's context is 256
  const std::vector<BadCase> cases = {
      {"logits " + v2 + " --ids 1,2,256", "token id 256 at index 2 is outside the vocabulary"},
      {"logits " + v2 + " --ids ''", "no token ids given"},
      {"logits " + v2 + " --ids 1,,2", "is not an integer token id"},
      {"logits " + v2 + " --ids 1,x", "\"x\" is not an integer token id"},
      {"logits " + v2 + " --ids 99999999999", "is not a valid token id"},
      {"logits " + v2 + " --ids -3", "token id -3 at index 0 is outside the vocabulary"},
      {"logits /nonexistent --ids 1", "config.json not found"},
      {"info /nonexistent", "config.json not found"},
      {"info " + v2 + " --bogus", "--bogus"},
      {"logits " + v2 + " --ids 1 --threads 100000", "--threads"},
      {"logits " + v2 + " --ids " + long_ids, "301 tokens exceed the model's context of 256"},
      {"run " + v2 + " -p x --kv-cache f16", "--kv-cache: f16 not in {bf16,f32}"},
      {"bench " + v2 + " --kv-cache BF16", "--kv-cache: BF16 not in {bf16,f32}"},
  };
  for (const auto& c : cases) {
    std::string out;
    const int rc = run_command(whale() + " " + c.args, &out);
    EXPECT_EQ(rc, 2) << c.args;
    EXPECT_NE(out.find(c.expected), std::string::npos) << c.args << "\n" << out;
  }
}

TEST(Cli, BadCheckpointFilesGiveClearErrors) {
  test::TempDir dir;
  test::copy_fixture("v2_lite", dir.path());
  const std::string model = dir.file("model.safetensors");
  const std::string bytes = test::read_file(model);

  test::write_file(model, bytes.substr(0, bytes.size() / 2));  // truncated
  std::string out;
  EXPECT_EQ(run_command(whale() + " logits " + q(dir.path()) + " --ids 1", &out), 2);
  EXPECT_NE(out.find("outside the data section"), std::string::npos) << out;

  test::write_file(model, bytes);
  test::write_file(dir.file("config.json"), "{\"model_type\": \"deepseek_v2\", ");
  EXPECT_EQ(run_command(whale() + " info " + q(dir.path()), &out), 2);
  EXPECT_NE(out.find("config.json: not valid JSON"), std::string::npos) << out;

  test::copy_fixture("v2_lite", dir.path());
  auto cfg = nlohmann::json::parse(test::read_file(dir.file("config.json")));
  cfg["kv_lora_rank"] = 48;  // disagrees with the stored tensors
  test::write_file(dir.file("config.json"), cfg.dump());
  EXPECT_EQ(run_command(whale() + " logits " + q(dir.path()) + " --ids 1", &out), 2);
  EXPECT_NE(out.find("model.layers.0.self_attn.kv_a_proj_with_mqa.weight: shape [40, 64], "
                     "config.json implies [56, 64]"),
            std::string::npos)
      << out;

  cfg["kv_lora_rank"] = "32";
  test::write_file(dir.file("config.json"), cfg.dump());
  EXPECT_EQ(run_command(whale() + " info " + q(dir.path()), &out), 2);
  EXPECT_NE(out.find("kv_lora_rank: must be an integer, got string"), std::string::npos) << out;
}

TEST(Cli, BenchReportsSpeedsAgainstMeasuredLimits) {
  std::string out;
  ASSERT_EQ(run_command(whale() + " bench " + q(test::fixture_dir("v3_fp8")) +
                            " --prompt 8 --gen 2 --reps 1 --json 2>/dev/null",
                        &out),
            0)
      << out;
  const auto j = nlohmann::json::parse(out);
  for (const char* key : {"prefill_tps", "decode_tps", "decode_bytes_per_token", "bandwidth_gbs",
                          "fma_peak_gflops", "int8_dot_peak_gops", "decode_fraction_of_limit",
                          "prefill_fraction_of_limit", "peak_rss_bytes"}) {
    ASSERT_TRUE(j.contains(key)) << key;
    EXPECT_GT(j[key].get<double>(), 0) << key;
  }
  // The tile peak is measured wherever the backend uses tiles.
  ASSERT_TRUE(j.contains("amx_bf16_peak_gflops"));
  EXPECT_EQ(j["amx_bf16_peak_gflops"].get<double>() > 0, j["backend"] == "cpu-amx");
  // Bytes per token from the stored dtypes: the fp8 projections count one byte per weight.
  EXPECT_GT(j["decode_bytes_by_dtype"]["F8_E4M3"].get<double>(), 0);
  EXPECT_EQ(j["kv_cache"], "bf16");  // the default

  ASSERT_EQ(run_command(whale() + " bench " + q(test::fixture_dir("v3_fp8")) +
                            " --prompt 8 --gen 2 --reps 1 --kv-cache f32 --json 2>/dev/null",
                        &out),
            0)
      << out;
  EXPECT_EQ(nlohmann::json::parse(out)["kv_cache"], "f32");
}

TEST(Cli, FifoInsteadOfAFileDoesNotHang) {
  test::TempDir dir;
  test::copy_fixture("v2_lite", dir.path());
  std::filesystem::remove(dir.file("model.safetensors"));
  ASSERT_EQ(mkfifo(dir.file("model.safetensors").c_str(), 0600), 0);
  std::string out;
  EXPECT_EQ(run_command("timeout 20 " + whale() + " info " + q(dir.path()), &out), 2);
  EXPECT_NE(out.find("not a regular file"), std::string::npos) << out;
}

TEST(Cli, SynthWritesALoadableCheckpoint) {
  test::TempDir dir;
  std::string out;
  ASSERT_EQ(
      run_command(whale() + " synth " + q(test::fixture_dir("v3_fp8")) + " " + q(dir.file("m")),
                  &out),
      0)
      << out;
  ASSERT_EQ(run_command(whale() + " logits " + q(dir.file("m")) + " --ids 1,2", &out), 0) << out;
  EXPECT_EQ(
      run_command(whale() + " synth " + q(test::fixture_dir("v3_fp8")) + " " + q(dir.file("m")),
                  &out),
      2);
  EXPECT_NE(out.find("already exists"), std::string::npos) << out;
}

// A random model with the real tokenizer, made once for the generation commands.
class CliGeneration : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    auto j = nlohmann::json::parse(test::read_file(test::fixture_dir("v3_yarn") + "/config.json"));
    j["vocab_size"] = 129280;
    test::write_file(dir_->file("config.json"), j.dump());
    std::string out;
    ASSERT_EQ(
        run_command(whale() + " synth " + q(dir_->file("config.json")) + " " + q(dir_->file("m")),
                    &out),
        0)
        << out;
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      std::filesystem::copy_file(
          std::string(WHALE_SOURCE_DIR) + "/models/deepseek-v3-tokenizer/" + f,
          dir_->file("m/") + f);
    }
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string model() { return q(dir_->file("m")); }
  static test::TempDir* dir_;
};
test::TempDir* CliGeneration::dir_ = nullptr;

TEST_F(CliGeneration, RunStreamsAndReportsTiming) {
  std::string out;
  ASSERT_EQ(run_command(whale() + " run " + model() + " -p 'Hello' -n 5 --temp 0", &out), 0) << out;
  EXPECT_NE(out.find("prompt: 2 tokens"), std::string::npos) << out;  // BOS + "Hello"
  EXPECT_NE(out.find("generated: 5 tokens"), std::string::npos) << out;
  ASSERT_EQ(
      run_command(whale() + " run " + model() + " --chat --system 'Be brief.' -p 'Hi' -n 3", &out),
      0)
      << out;
  EXPECT_NE(out.find("generated: 3 tokens"), std::string::npos) << out;
  // An empty prompt is just BOS.
  ASSERT_EQ(run_command(whale() + " run " + model() + " -p '' -n 2", &out), 0) << out;
  EXPECT_NE(out.find("prompt: 1 tokens"), std::string::npos) << out;
  // Same seed, same text.
  std::string a, b;
  ASSERT_EQ(
      run_command("(" + whale() + " run " + model() + " -p x -n 8 --temp 1 --seed 5 2>/dev/null)",
                  &a),
      0);
  ASSERT_EQ(
      run_command("(" + whale() + " run " + model() + " -p x -n 8 --temp 1 --seed 5 2>/dev/null)",
                  &b),
      0);
  EXPECT_GT(a.size(), 3u);
  EXPECT_EQ(a, b);
}

TEST_F(CliGeneration, BadInputGivesOneClearMessage) {
  const std::vector<BadCase> cases = {
      {"run /nonexistent -p hi", "config.json not found"},
      {"run " + q(test::fixture_dir("v2_lite")) + " -p hi", "tokenizer.json not found"},
      {"run " + model() + " -p hi --temp -1", "temperature: must be in [0, 100]"},
      {"run " + model() + " -p hi --top-p 1.5", "top_p: must be in (0, 1]"},
      {"run " + model() + " -p hi --top-k -5", "top_k"},
      {"run " + model() + " -p hi -n -1", "--max-tokens"},
      {"run " + model() + " -p 'one two three four five six seven eight nine ten' --ctx 8",
       "the context holds 8"},
      {"run " + model() + " -p hi --chat-format v9 --chat", "unknown chat format \"v9\""},
      {"chat /nonexistent", "config.json not found"},
  };
  for (const auto& c : cases) {
    std::string out;
    EXPECT_EQ(run_command(whale() + " " + c.args + " < /dev/null", &out), 2) << c.args << "\n"
                                                                             << out;
    EXPECT_NE(out.find(c.expected), std::string::npos) << c.args << "\n" << out;
  }
  // $WHALE_MODEL, when set, is used instead of the bundled model.
  std::string out;
  EXPECT_EQ(run_command("WHALE_MODEL=/nonexistent " + whale() + " run -p hi", &out), 2);
  EXPECT_NE(out.find("config.json not found"), std::string::npos) << out;
}

TEST_F(CliGeneration, ChatReadsPipedInput) {
  std::string out;
  ASSERT_EQ(run_command("printf 'Hello\\n/reset\\nAgain\\n' | " + whale() + " chat " + model() +
                            " -n 4 --temp 0",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("(conversation cleared)"), std::string::npos) << out;
}

// With no model given, run and chat use the bundled whale-mini (models/whale-mini).
TEST(Cli, BundledModelAnswersWithoutAModelDirectory) {
  const std::string bundled = std::string(WHALE_SOURCE_DIR) + "/models/whale-mini";
  ASSERT_TRUE(std::filesystem::exists(bundled + "/config.json"));
  std::string out;
  ASSERT_EQ(run_command("env -u WHALE_MODEL " + whale() + " run -p 'In the beginning' -n 12 --temp 0",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("generated: 12 tokens"), std::string::npos) << out;
  EXPECT_NE(out.find("whale-mini"), std::string::npos) << out;  // the model is named
  ASSERT_EQ(run_command("printf 'Tell me about the sea\n' | env -u WHALE_MODEL " + whale() +
                            " chat -n 8 --temp 0",
                        &out),
            0)
      << out;
}

}  // namespace
}  // namespace whale
