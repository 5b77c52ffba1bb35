// Synthetic checkpoints load like real ones, and loading maps instead of copying.
#include "model/synthetic.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backends/cpu/cpu_backend.h"
#include "model/deepseek.h"
#include "tests/test_util.h"

namespace whale::model {
namespace {

int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// A V3-shaped config of about 80 MB in bf16, most of it in routed experts and the vocabulary.
std::string medium_config(bool fp8) {
  auto j = nlohmann::json::parse(test::read_file(test::fixture_dir("v3_yarn") + "/config.json"));
  j["hidden_size"] = 256;
  j["vocab_size"] = 32000;
  j["num_hidden_layers"] = 4;
  j["n_routed_experts"] = 32;
  j["n_group"] = 4;
  j["num_experts_per_tok"] = 2;
  j["moe_intermediate_size"] = 256;
  j["num_nextn_predict_layers"] = 0;
  if (fp8) {
    j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {128, 128}}};
  }
  return j.dump();
}

Result<ModelConfig> write_model(const std::string& dir, bool fp8) {
  const std::string text = medium_config(fp8);
  WHALE_ASSIGN_OR_RETURN(ModelConfig c, parse_config(text, "config.json"));
  WHALE_TRY(write_synthetic_checkpoint(c, text, dir, {}));
  return c;
}

TEST(Synthetic, LoadMapsInsteadOfCopying) {
  test::TempDir dir;
  ASSERT_TRUE(write_model(dir.path(), false).ok());
  const auto file_bytes =
      static_cast<int64_t>(std::filesystem::file_size(dir.file("model.safetensors")));
  ASSERT_GT(file_bytes, 60 << 20);

  const int64_t before = resident_bytes();
  auto m = Model::load(dir.path());
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  const int64_t after_load = resident_bytes();
  // Binding validates headers and shapes but touches no weight data.
  EXPECT_LT(after_load - before, 8 << 20)
      << "load grew resident memory by " << (after_load - before);

  ThreadPool pool(2);
  cpu::CpuBackend cpu(pool);
  KvCache cache(m->config(), 4);
  const std::vector<int32_t> ids = {7};
  auto logits = m->forward(cpu, ids, cache);
  ASSERT_TRUE(logits.ok());
  const int64_t after_forward = resident_bytes();
  // One token reads attention, 2 of 32 experts per MoE layer, one embedding row and the head:
  // far less than the file.
  EXPECT_LT(after_forward - before, file_bytes / 2)
      << "forward grew resident memory by " << (after_forward - before) << " of a " << file_bytes
      << "-byte file";
}

TEST(Synthetic, Fp8CheckpointRunsAndRefusesOverwrite) {
  test::TempDir dir;
  auto c = write_model(dir.path(), true);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  auto m = Model::load(dir.path());
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  EXPECT_EQ(m->weights().layers[1].experts.experts[3].down.dtype, DType::kF8E4M3);
  EXPECT_EQ(m->weights().layers[1].experts.router.dtype, DType::kBF16);  // routers stay bf16
  ThreadPool pool(2);
  cpu::CpuBackend cpu(pool);
  KvCache cache(m->config(), 8);
  const std::vector<int32_t> ids = {1, 2, 3};
  auto logits = m->forward(cpu, ids, cache);
  ASSERT_TRUE(logits.ok());
  for (float v : *logits) ASSERT_TRUE(std::isfinite(v));

  const auto status = write_synthetic_checkpoint(*c, medium_config(true), dir.path(), {});
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.error().to_string().find("already exists"), std::string::npos);
}

}  // namespace
}  // namespace whale::model
