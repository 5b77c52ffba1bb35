// Training: the backward passes against finite differences (double precision), and the whole
// objective, gradients and optimizer steps against PyTorch/transformers goldens.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "model/config.h"
#include "model/deepseek.h"
#include "ops/ref/ref_backend.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/network.h"
#include "train/params.h"
#include "train/trainer.h"

namespace whale::train {
namespace {

// A very small deepseek_v3: one dense layer, one MoE layer (4 experts, 2 groups), one MTP module.
const char* kTinyConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2,
  "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 8, "kv_lora_rank": 8,
  "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4, "intermediate_size": 24,
  "moe_intermediate_size": 8, "n_routed_experts": 4, "n_shared_experts": 1,
  "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5,
  "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": true,
  "first_k_dense_replace": 1, "moe_layer_freq": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000,
  "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "max_position_embeddings": 64, "num_nextn_predict_layers": 1, "tie_word_embeddings": false
})";

ParamLayout tiny_layout() {
  auto config = model::parse_config(kTinyConfig, "tiny");
  EXPECT_TRUE(config.ok()) << config.error().to_string();
  auto layout = ParamLayout::build(*config);
  EXPECT_TRUE(layout.ok()) << layout.error().to_string();
  return std::move(layout).value();
}

// Every parameter tensor's gradient, at a few elements each, against central differences of the
// whole objective (main + MTP + balance loss) in double precision: this covers the backward of
// each block (embedding, norms, MLA with rope, attention, SwiGLU, router, experts, MTP, head).
TEST(TrainBackward, EveryParameterMatchesFiniteDifferences) {
  const ParamLayout layout = tiny_layout();
  ThreadPool pool(2);
  Network<double> net(layout, pool);
  ParamSet<double> params(layout), grads(layout);
  init_params(params, 0.3, 7);
  for (auto& b : params.biases) {
    for (size_t e = 0; e < b.size(); ++e) b[e] = 0.01 * double(e % 3);
  }
  const int64_t B = 2, S = 6;
  std::mt19937 rng(3);
  std::vector<int32_t> tokens(size_t(B * (S + 1)));
  for (auto& t : tokens) t = int32_t(rng() % 32);
  LossSettings settings;
  settings.mtp_lambda = 0.3;
  settings.balance_alpha = 0.1;
  const Losses base = net.run(params, tokens, B, S, settings, &grads, 1.0, nullptr);
  ASSERT_TRUE(std::isfinite(base.total));
  EXPECT_GT(base.mtp, 0);
  EXPECT_GT(base.balance, 0);

  const double h = 1e-5;
  int checked = 0;
  for (const ParamInfo& info : layout.params) {
    double worst = 0, scale = 0;
    for (int k = 0; k < 4; ++k) {
      const int64_t i = info.offset + int64_t(rng() % uint32_t(info.numel));
      const double keep = params.values[size_t(i)];
      params.values[size_t(i)] = keep + h;
      const double up = net.run(params, tokens, B, S, settings, nullptr, 1.0, nullptr).total;
      params.values[size_t(i)] = keep - h;
      const double down = net.run(params, tokens, B, S, settings, nullptr, 1.0, nullptr).total;
      params.values[size_t(i)] = keep;
      const double fd = (up - down) / (2 * h);
      worst = std::max(worst, std::abs(fd - grads.values[size_t(i)]));
      scale = std::max(scale, std::abs(fd));
      ++checked;
    }
    EXPECT_LE(worst, 1e-6 * std::max(1.0, scale)) << info.name;
  }
  EXPECT_EQ(checked, int(layout.params.size()) * 4);
}

// ---- against PyTorch/transformers (tests/fixtures/train_tiny, reference/make_train_golden.py) ----

struct Golden {
  ParamLayout layout;
  nlohmann::json json;
  std::unique_ptr<SafetensorsFile> tensors;
  std::vector<int32_t> batch;  // [B, T + 1]
  int64_t B = 0, T = 0;

  const float* tensor(const std::string& name, int64_t numel) const {
    auto it = tensors->tensors().find(name);
    EXPECT_NE(it, tensors->tensors().end()) << name;
    if (it == tensors->tensors().end()) return nullptr;
    EXPECT_EQ(it->second.view.numel(), numel) << name;
    return it->second.view.as<float>();
  }
};

Golden load_golden() {
  const std::string dir = test::fixture_dir("train_tiny");
  auto config = model::load_config(dir);
  EXPECT_TRUE(config.ok()) << config.error().to_string();
  auto layout = ParamLayout::build(*config);
  EXPECT_TRUE(layout.ok()) << layout.error().to_string();
  Golden g{std::move(layout).value(), nlohmann::json::parse(test::read_file(dir + "/train_golden.json")),
           nullptr, {}, 0, 0};
  auto file = SafetensorsFile::open(dir + "/train_golden.safetensors");
  EXPECT_TRUE(file.ok()) << file.error().to_string();
  g.tensors = std::move(file).value();
  const StoredTensor& batch = g.tensors->tensors().at("batch");
  g.B = batch.view.dim(0);
  g.T = batch.view.dim(1) - 1;
  const int32_t* ids = batch.view.as<int32_t>();
  g.batch.assign(ids, ids + batch.view.numel());
  return g;
}

// The step-0 losses and every parameter's gradient (before clipping) from the initial weights.
// Prints the largest relative error of each parameter group (max |Δ| over max |g|).
template <class T>
void check_step0(double loss_tol, double grad_tol) {
  const Golden g = load_golden();
  ThreadPool pool(2);
  ParamSet<float> loaded(g.layout);
  Status read = load_params(test::fixture_dir("train_tiny"), loaded);
  ASSERT_TRUE(read.ok()) << read.error().to_string();
  ParamSet<T> params(g.layout), grads(g.layout);
  std::copy(loaded.values.begin(), loaded.values.end(), params.values.begin());
  Network<T> net(g.layout, pool);
  const auto& st = g.json["settings"];
  LossSettings settings{st["lambda"].get<double>(), st["alpha"].get<double>()};
  const Losses l = net.run(params, g.batch, g.B, g.T, settings, &grads, T(1), nullptr);
  const auto& s0 = g.json["step0"];
  EXPECT_NEAR(l.main, s0["loss_main"].get<double>(), loss_tol);
  EXPECT_NEAR(l.mtp, s0["loss_mtp"].get<double>(), loss_tol);
  EXPECT_NEAR(l.balance, s0["loss_bal"].get<double>(), loss_tol);
  EXPECT_NEAR(l.total, s0["loss_total"].get<double>(), loss_tol);
  std::map<std::string, double> by_group;
  for (const ParamInfo& info : g.layout.params) {
    const float* want = g.tensor("grad." + info.name, info.numel);
    if (want == nullptr) continue;
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < info.numel; ++i) {
      diff = std::max(diff, std::abs(double(grads.values[size_t(info.offset + i)]) - double(want[i])));
      scale = std::max(scale, std::abs(double(want[i])));
    }
    const double rel = diff / std::max(scale, 1e-30);
    EXPECT_LE(rel, grad_tol) << info.name;
    // Group: the name with layer and expert numbers dropped.
    std::string group;
    for (char ch : info.name) {
      if (!std::isdigit(static_cast<unsigned char>(ch))) group += ch;
    }
    by_group[group] = std::max(by_group[group], rel);
  }
  for (const auto& [group, rel] : by_group) std::printf("  %-50s %.2e\n", group.c_str(), rel);
}

TEST(TrainGolden, Step0LossAndGradientsMatchPyTorchInFloat32) { check_step0<float>(2e-5, 5e-6); }
TEST(TrainGolden, Step0LossAndGradientsMatchPyTorchInFloat64) { check_step0<double>(1e-9, 2e-7); }

// Ten steps of `whale train` itself (data stream, AdamW, clipping, schedule, bias updates,
// checkpoint) against the same ten steps in PyTorch.
TEST(TrainGolden, TenTrainerStepsMatchPyTorch) {
  const Golden g = load_golden();
  test::TempDir tmp;
  // The batch's two sequences as one shard: every step (one epoch) sees both.
  ASSERT_TRUE(write_shard(tmp.file("train_00000.bin"), g.batch).ok());
  const auto& st = g.json["settings"];
  const std::string dir = test::fixture_dir("train_tiny");
  nlohmann::json j = {
      {"model", nlohmann::json::parse(test::read_file(dir + "/config.json"))},
      {"init_from", dir}, {"data", {tmp.path()}}, {"out", tmp.file("out")},
      {"seq_len", g.T}, {"batch_size", g.B}, {"steps", st["total_steps"]},
      {"lr", st["lr_peak"]}, {"min_lr", st["lr_min"]}, {"warmup", st["warmup_steps"]},
      {"beta1", st["beta1"]}, {"beta2", st["beta2"]}, {"eps", st["eps"]},
      {"weight_decay", st["weight_decay"]}, {"grad_clip", st["clip"]},
      {"mtp_lambda", st["lambda"]}, {"balance_alpha", st["alpha"]}, {"bias_gamma", st["gamma"]},
      {"eval_interval", 0}, {"checkpoint_interval", 0}, {"log_interval", 1}, {"threads", 2}};
  auto settings = TrainSettings::from_json(j, "test");
  ASSERT_TRUE(settings.ok()) << settings.error().to_string();
  auto report = run_training(*settings);
  ASSERT_TRUE(report.ok()) << report.error().to_string();
  EXPECT_EQ(report->steps_done, 10);

  std::ifstream log(tmp.file("out/train_log.jsonl"));
  std::string line;
  size_t step = 0;
  while (std::getline(log, line)) {
    const auto e = nlohmann::json::parse(line);
    const auto& want = g.json["steps"][step];
    EXPECT_NEAR(e["total_loss"].get<double>(), want["loss_total"].get<double>(), 5e-4) << step;
    EXPECT_NEAR(e["loss"].get<double>(), want["loss_main"].get<double>(), 5e-4) << step;
    EXPECT_NEAR(e["lr"].get<double>(), want["lr"].get<double>(), 1e-12) << step;
    EXPECT_NEAR(e["grad_norm"].get<double>(), want["grad_norm"].get<double>(), 2e-3) << step;
    ++step;
  }
  EXPECT_EQ(step, 10u);

  ParamSet<float> after(g.layout);
  Status read = load_params(report->last_checkpoint, after);
  ASSERT_TRUE(read.ok()) << read.error().to_string();
  for (int k = 0; k < g.layout.n_moe_layers; ++k) {
    const float* want = g.tensor("bias_after." + g.layout.bias_name(k), 8);
    for (size_t e = 0; e < 8 && want; ++e) EXPECT_NEAR(after.biases[size_t(k)][e], want[e], 1e-6);
  }
  for (const auto& name : g.json["golden_tensors"]["weights_after"]) {
    const ParamInfo& info = g.layout.info(g.layout.index.at(name.get<std::string>()));
    const float* want = g.tensor("weights_after." + info.name, info.numel);
    double diff = 0;
    for (int64_t i = 0; want && i < info.numel; ++i) {
      diff = std::max(diff, std::abs(double(after.values[size_t(info.offset + i)]) - want[i]));
    }
    EXPECT_LE(diff, 5e-4) << info.name;
  }
}

ParamLayout tiny_layout_of_fixture() {
  auto config = model::load_config(test::fixture_dir("train_tiny"));
  EXPECT_TRUE(config.ok());
  auto layout = ParamLayout::build(*config);
  EXPECT_TRUE(layout.ok());
  return std::move(layout).value();
}

// ---- the trainer: resume, learning, balancing, bad input ----

// Settings for the train_tiny model on `data`, writing to `out`.
nlohmann::json tiny_settings(const std::string& data, const std::string& out) {
  const std::string dir = test::fixture_dir("train_tiny");
  return {{"model", nlohmann::json::parse(test::read_file(dir + "/config.json"))},
          {"data", {data}}, {"out", out}, {"seq_len", 16}, {"batch_size", 2}, {"grad_accum", 2},
          {"steps", 20}, {"lr", 1e-2}, {"min_lr", 1e-3}, {"warmup", 3}, {"bias_gamma", 0.01},
          {"balance_alpha", 1e-3}, {"eval_interval", 0}, {"checkpoint_interval", 0},
          {"log_interval", 5}, {"threads", 2}, {"seed", 5}};
}

Result<TrainReport> train_with(const nlohmann::json& j, const TrainHooks& hooks = {}) {
  WHALE_ASSIGN_OR_RETURN(TrainSettings s, TrainSettings::from_json(j, "test"));
  return run_training(s, hooks);
}

// `n` random ids below 256 as a shard in dir (train_00000.bin).
void random_shard(const std::string& dir, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = int32_t(rng() % 256);
  ASSERT_TRUE(write_shard(dir + "/train_00000.bin", ids).ok());
}

std::vector<nlohmann::json> read_log(const std::string& path) {
  std::vector<nlohmann::json> entries;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) entries.push_back(nlohmann::json::parse(line));
  return entries;
}

TEST(Trainer, ResumeContinuesBitForBit) {
  test::TempDir tmp;
  random_shard(tmp.path(), 3000, 1);
  // Twenty steps straight.
  auto straight = train_with(tiny_settings(tmp.path(), tmp.file("a")));
  ASSERT_TRUE(straight.ok()) << straight.error().to_string();
  // Ten steps, then a new process-equivalent run resuming from the checkpoint for ten more.
  nlohmann::json half = tiny_settings(tmp.path(), tmp.file("b"));
  half["stop_at"] = 10;
  auto first = train_with(half);
  ASSERT_TRUE(first.ok()) << first.error().to_string();
  EXPECT_EQ(first->steps_done, 10);
  nlohmann::json rest = tiny_settings(tmp.path(), tmp.file("b"));
  rest["resume"] = "auto";
  auto second = train_with(rest);
  ASSERT_TRUE(second.ok()) << second.error().to_string();
  EXPECT_EQ(second->steps_done, 10);
  // The weights and correction biases, byte for byte, and the optimizer state.
  EXPECT_TRUE(test::read_file(tmp.file("a/checkpoint-000020/model.safetensors")) ==
              test::read_file(tmp.file("b/checkpoint-000020/model.safetensors")));
  const ParamLayout layout = tiny_layout_of_fixture();
  auto sa = load_trainer_state(tmp.file("a/checkpoint-000020"), layout.total);
  auto sb = load_trainer_state(tmp.file("b/checkpoint-000020"), layout.total);
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_TRUE(sa->m == sb->m);
  EXPECT_TRUE(sa->v == sb->v);
  EXPECT_EQ(sa->adam_step, sb->adam_step);
  EXPECT_EQ(sa->data_index, sb->data_index);
  const auto a = read_log(tmp.file("a/train_log.jsonl"));
  const auto b = read_log(tmp.file("b/train_log.jsonl"));
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]["total_loss"], b[i]["total_loss"]) << i;
}

// Memorising a short repeated text: the loss falls far below its start, and loss-free balancing
// evens the experts' load out compared with the same run without it.
TEST(Trainer, LearnsARepeatedTextAndBalancesExperts) {
  test::TempDir tmp;
  std::vector<int32_t> ids;
  std::mt19937 rng(9);
  std::vector<int32_t> phrase(40);
  for (auto& id : phrase) id = int32_t(rng() % 256);
  while (ids.size() < 4000) ids.insert(ids.end(), phrase.begin(), phrase.end());
  ASSERT_TRUE(write_shard(tmp.file("train_00000.bin"), ids).ok());
  auto run = [&](double gamma, const std::string& out) {
    nlohmann::json j = tiny_settings(tmp.path(), tmp.file(out));
    j["steps"] = 60;
    j["bias_gamma"] = gamma;
    j["balance_alpha"] = 0.0;
    j["log_interval"] = 1;
    auto r = train_with(j);
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    return read_log(tmp.file(out + "/train_log.jsonl"));
  };
  // Mean over the last 20 steps of the worst layer's max/mean expert load.
  auto late_load = [](const std::vector<nlohmann::json>& log) {
    double sum = 0;
    for (size_t i = log.size() - 20; i < log.size(); ++i) {
      double worst = 0;
      for (const auto& x : log[i]["expert_load"]) worst = std::max(worst, x.get<double>());
      sum += worst;
    }
    return sum / 20;
  };
  const auto balanced = run(0.01, "balanced");
  const auto free = run(0.0, "free");
  ASSERT_EQ(balanced.size(), 60u);
  const double first = balanced.front()["loss"].get<double>();
  const double last = balanced.back()["loss"].get<double>();
  std::printf("  loss %.3f -> %.3f; late max/mean load %.2f with balancing, %.2f without\n", first,
              last, late_load(balanced), late_load(free));
  EXPECT_LT(last, 0.2 * first);
  EXPECT_LT(late_load(balanced), late_load(free));
  EXPECT_LT(late_load(balanced), 1.5);
}

TEST(Trainer, CheckpointServesTheSameLogitsAsTheTrainer) {
  test::TempDir tmp;
  random_shard(tmp.path(), 2000, 2);
  nlohmann::json j = tiny_settings(tmp.path(), tmp.file("out"));
  j["steps"] = 3;
  j["tokenizer"] = test::fixture_dir("train_tiny");  // has no tokenizer files: nothing copied
  auto r = train_with(j);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto model = model::Model::load(r->last_checkpoint);
  ASSERT_TRUE(model.ok()) << model.error().to_string();
  EXPECT_EQ(model->weights().mtp.size(), 1u);  // the MTP module loads too
  auto config = model::load_config(r->last_checkpoint);
  ASSERT_TRUE(config.ok());
  auto layout = ParamLayout::build(*config);
  ASSERT_TRUE(layout.ok());
  ParamSet<float> params(*layout);
  ASSERT_TRUE(load_params(r->last_checkpoint, params).ok());
  ThreadPool pool(2);
  Network<float> net(*layout, pool);
  std::vector<int32_t> ids = {3, 141, 59, 26, 53, 58, 97, 93, 23, 84, 62, 64};
  const std::vector<float> trainer = net.logits(params, ids, 1, int64_t(ids.size()));
  ops::RefBackend ref;
  model::KvCache cache(*config, 64);
  auto served = model->forward(ref, ids, cache, {model::AttentionForm::kAuto, /*all_logits=*/true});
  ASSERT_TRUE(served.ok()) << served.error().to_string();
  ASSERT_EQ(served->size(), trainer.size());
  double diff = 0;
  for (size_t i = 0; i < trainer.size(); ++i) diff = std::max(diff, double(std::abs((*served)[i] - trainer[i])));
  EXPECT_LT(diff, 1e-4);
}

TEST(Trainer, StopsOnANonFiniteLossAndKeepsTheLastCheckpoint) {
  test::TempDir tmp;
  random_shard(tmp.path(), 2000, 3);
  nlohmann::json j = tiny_settings(tmp.path(), tmp.file("out"));
  j["stop_at"] = 2;
  ASSERT_TRUE(train_with(j).ok());
  j.erase("stop_at");
  j["resume"] = "auto";
  j["lr"] = 1e30;  // diverges at once
  j["min_lr"] = 1e30;
  j["grad_clip"] = 0.0;
  auto r = train_with(j);
  ASSERT_FALSE(r.ok());
  const std::string msg = r.error().to_string();
  EXPECT_NE(msg.find("NaN or infinite"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checkpoint-000002"), std::string::npos) << msg;
  const ParamLayout layout = tiny_layout_of_fixture();
  ParamSet<float> kept(layout);
  EXPECT_TRUE(load_params(tmp.file("out/checkpoint-000002"), kept).ok());
}

TEST(Trainer, AFullDiskKeepsThePreviousCheckpoint) {
  test::TempDir tmp;
  random_shard(tmp.path(), 2000, 4);
  nlohmann::json j = tiny_settings(tmp.path(), tmp.file("out"));
  j["steps"] = 4;
  j["checkpoint_interval"] = 2;
  TrainHooks hooks;
  int saves = 0;
  hooks.after_checkpoint_file = [&](const std::string& path) -> Status {
    if (path.find("checkpoint-000004") != std::string::npos && path.find("model.safetensors") != std::string::npos) {
      return make_error("No space left on device", {}, path);
    }
    ++saves;
    return ok_status();
  };
  auto r = train_with(j, hooks);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("previous one is kept"), std::string::npos) << r.error().to_string();
  EXPECT_GT(saves, 0);
  EXPECT_TRUE(std::filesystem::exists(tmp.file("out/checkpoint-000002/model.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(tmp.file("out/checkpoint-000004")));
  EXPECT_FALSE(std::filesystem::exists(tmp.file("out/checkpoint-000004.tmp")));
}

TEST(Trainer, RejectsBadSettingsAndData) {
  test::TempDir tmp;
  random_shard(tmp.path(), 2000, 5);
  auto fails_with = [&](nlohmann::json j, const std::string& needle) {
    auto r = train_with(j);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_NE(r.error().to_string().find(needle), std::string::npos) << r.error().to_string();
  };
  const nlohmann::json good = tiny_settings(tmp.path(), tmp.file("out"));
  nlohmann::json j = good;
  j["learning_rate"] = 1;
  fails_with(j, "unknown setting");
  j = good;
  j["lr"] = "fast";
  fails_with(j, "lr");
  j = good;
  j["seq_len"] = 1;
  fails_with(j, "seq_len");
  j = good;
  j["seq_len"] = 100000;
  fails_with(j, "max_position_embeddings");
  j = good;
  j["model"]["hidden_size"] = -4;
  fails_with(j, "hidden_size");
  // An output path under a regular file cannot be created.
  test::write_file(tmp.file("plain"), "x");
  j = good;
  j["out"] = tmp.file("plain/out");
  fails_with(j, "output directory");
  // Corrupt and truncated shards.
  test::TempDir bad;
  test::write_file(bad.file("train_00000.bin"), "not a shard at all, just text");
  j = good;
  j["data"] = {bad.path()};
  fails_with(j, "WHALETOK");
  std::string shard = test::read_file(tmp.file("train_00000.bin"));
  test::write_file(bad.file("train_00000.bin"), shard.substr(0, shard.size() - 7));
  fails_with(j, "truncated");
  // Ids outside the model's vocabulary.
  std::vector<int32_t> big(100, 300);
  ASSERT_TRUE(write_shard(bad.file("train_00000.bin"), big).ok());
  fails_with(j, "outside the model's vocabulary");
  // A resume whose model differs from the checkpoint's.
  j = good;
  j["stop_at"] = 1;
  ASSERT_TRUE(train_with(j).ok());
  j = good;
  j["resume"] = "auto";
  j["seq_len"] = 8;
  fails_with(j, "seq_len");
}

// ---- data shards ----

TEST(TrainData, PrepareTokenizesWithBosAndHoldsOutTheEnd) {
  test::TempDir tmp;
  const std::string tok_dir = std::string(WHALE_SOURCE_DIR) + "/models/deepseek-v3-tokenizer";
  std::string text;
  for (int i = 0; i < 40; ++i) text += "Line " + std::to_string(i) + " of a small test text.\n";
  test::write_file(tmp.file("a.txt"), text);
  PrepareOptions o;
  o.tokenizer_dir = tok_dir;
  o.inputs = {tmp.file("a.txt")};
  o.out_dir = tmp.file("shards");
  o.val_fraction = 0.25;
  auto r = prepare_data(o);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto tokenizer = tok::Tokenizer::load(tok_dir);
  ASSERT_TRUE(tokenizer.ok());
  const int32_t bos = *tokenizer->token_id(*tokenizer->config().bos_token);
  // The cut is the line break after 75% of the bytes.
  const size_t cut = text.find('\n', size_t(double(text.size()) * 0.75)) + 1;
  auto expect = [&](const std::string& shard, std::string_view part) {
    auto ids = tokenizer->encode(part, tok::SpecialTokens::kIgnore);
    ASSERT_TRUE(ids.ok());
    ids->insert(ids->begin(), bos);
    auto s = Shard::open(shard);
    ASSERT_TRUE(s.ok()) << s.error().to_string();
    ASSERT_EQ(s->size(), int64_t(ids->size()));
    for (int64_t i = 0; i < s->size(); ++i) EXPECT_EQ(s->at(i), (*ids)[size_t(i)]) << i;
  };
  expect(tmp.file("shards/train_00000.bin"), std::string_view(text).substr(0, cut));
  expect(tmp.file("shards/val_00000.bin"), std::string_view(text).substr(cut));
  EXPECT_EQ(r->train_tokens + r->val_tokens,
            Shard::open(tmp.file("shards/train_00000.bin"))->size() +
                Shard::open(tmp.file("shards/val_00000.bin"))->size());
  // Ids that need 32 bits are stored as such.
  std::vector<int32_t> wide = {1, 70000, 129279};
  ASSERT_TRUE(write_shard(tmp.file("wide.bin"), wide).ok());
  auto w = Shard::open(tmp.file("wide.bin"));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->at(2), 129279);
  // Bad requests.
  o.inputs = {tmp.file("missing.txt")};
  EXPECT_FALSE(prepare_data(o).ok());
  o.inputs = {tmp.file("a.txt")};
  o.val_fraction = 1.0;
  EXPECT_FALSE(prepare_data(o).ok());
}

TEST(TrainData, WindowsAreAShuffleWithoutRepeatsWithinAnEpoch) {
  test::TempDir tmp;
  std::vector<int32_t> ids(100);
  for (int i = 0; i < 100; ++i) ids[size_t(i)] = i;
  ASSERT_TRUE(write_shard(tmp.file("train_00000.bin"), ids).ok());
  auto stream = WindowStream::open({tmp.path()}, "train", 10, 3);
  ASSERT_TRUE(stream.ok()) << stream.error().to_string();
  EXPECT_EQ(stream->windows(), 10);
  std::vector<int> seen(10, 0);
  std::vector<int32_t> first_order;
  int32_t w[10];
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(stream->next(w, 1000).ok());
    EXPECT_EQ(w[0] % 10, 0);
    ++seen[size_t(w[0] / 10)];
    first_order.push_back(w[0]);
  }
  for (int c : seen) EXPECT_EQ(c, 1);
  std::vector<int32_t> second_order;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(stream->next(w, 1000).ok());
    second_order.push_back(w[0]);
  }
  EXPECT_EQ(stream->epoch(), 1);
  EXPECT_NE(first_order, second_order);  // a new order each epoch
  // Seeking back reproduces the stream.
  stream->seek(0, 3);
  ASSERT_TRUE(stream->next(w, 1000).ok());
  EXPECT_EQ(w[0], first_order[3]);
}

TEST(TrainCli, PreparesDataAndTrainsFromAConfigFile) {
  test::TempDir tmp;
  const std::string whale = WHALE_BINARY;
  std::string text;
  for (int i = 0; i < 200; ++i) text += "The whale swims in the sea, number " + std::to_string(i) + ".\n";
  test::write_file(tmp.file("corpus.txt"), text);
  std::string out;
  const std::string tok = std::string(WHALE_SOURCE_DIR) + "/models/deepseek-v3-tokenizer";
  ASSERT_EQ(test::run_command(whale + " data prepare --tokenizer " + tok + " --input " +
                                  tmp.file("corpus.txt") + " --out " + tmp.file("data") +
                                  " --val-fraction 0.1",
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("training tokens"), std::string::npos) << out;
  // The V3 tokenizer's ids need a model with its vocabulary.
  nlohmann::json model = nlohmann::json::parse(test::read_file(test::fixture_dir("train_tiny") + "/config.json"));
  model["vocab_size"] = 129280;
  model["hidden_size"] = 32;
  nlohmann::json settings = {{"model", model}, {"data", tmp.file("data")}, {"out", tmp.file("out")},
                             {"tokenizer", tok}, {"seq_len", 16}, {"batch_size", 2}, {"steps", 3},
                             {"eval_interval", 2}, {"eval_batches", 1}, {"threads", 2}};
  test::write_file(tmp.file("train.json"), settings.dump());
  ASSERT_EQ(test::run_command(whale + " train --config " + tmp.file("train.json") + " --lr 0.003", &out), 0)
      << out;
  EXPECT_NE(out.find("step 3/3"), std::string::npos) << out;
  EXPECT_NE(out.find("val loss"), std::string::npos) << out;
  EXPECT_NE(out.find("MFU"), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::exists(tmp.file("out/checkpoint-000003/tokenizer.json")));
  const auto log = read_log(tmp.file("out/train_log.jsonl"));
  ASSERT_EQ(log.size(), 3u);
  EXPECT_DOUBLE_EQ(log[0]["lr"].get<double>(), 0.003 / 100);  // warm-up step 1 of 100
  // The trained checkpoint runs.
  ASSERT_EQ(test::run_command(whale + " run " + tmp.file("out/checkpoint-000003") +
                                  " -p hello -n 4 --temp 0",
                              &out),
            0)
      << out;
  // Bad input: a missing file, a bad number, an unknown field.
  EXPECT_EQ(test::run_command(whale + " train --config " + tmp.file("nope.json"), &out), 2);
  EXPECT_NE(out.find("nope.json"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(whale + " train --config " + tmp.file("train.json") + " --lr fast", &out), 2);
  EXPECT_NE(out.find("--lr"), std::string::npos) << out;
  test::write_file(tmp.file("bad.json"), R"({"modle": {}})");
  EXPECT_EQ(test::run_command(whale + " train --config " + tmp.file("bad.json"), &out), 2);
  EXPECT_NE(out.find("modle"), std::string::npos) << out;
}

// `mpirun -np 2 whale train` against one process with the same global batch: each rank runs
// half of every micro-batch and the gradients are summed, so the losses agree up to the order
// of floating-point sums.
TEST(TrainMpi, TwoRanksMatchOneProcess) {
  std::string out;
  if (test::run_command("command -v mpirun", &out) != 0) GTEST_SKIP() << "mpirun is not installed";
  test::TempDir tmp;
  random_shard(tmp.path(), 20000, 7);
  const std::string whale = WHALE_BINARY;
  const std::string common = " train --model " + test::fixture_dir("train_tiny") + "/config.json --data " +
                             tmp.path() + " --seq-len 16 --grad-accum 2 --steps 6" +
                             " --lr 1e-2 --log-interval 1 --threads 1 --eval-interval 0";
  ASSERT_EQ(test::run_command(whale + common + " --batch-size 4 --out " + tmp.file("one"), &out), 0) << out;
  // Root may run mpirun here only when told so; leak checking is off for MPI's own allocations.
  const std::string env =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader "
      "ASAN_OPTIONS=detect_leaks=0 ";
  ASSERT_EQ(test::run_command(env + "mpirun -np 2 --oversubscribe " + whale + common +
                                  " --batch-size 4 --out " + tmp.file("two"),
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("2 ranks"), std::string::npos) << out;
  const auto one = read_log(tmp.file("one/train_log.jsonl"));
  const auto two = read_log(tmp.file("two/train_log.jsonl"));
  ASSERT_EQ(one.size(), 6u);
  ASSERT_EQ(two.size(), 6u);
  for (size_t i = 0; i < one.size(); ++i) {
    const double a = one[i]["total_loss"].get<double>(), b = two[i]["total_loss"].get<double>();
    EXPECT_NEAR(a, b, 1e-6 * std::abs(a)) << "step " << i + 1;
    EXPECT_EQ(one[i]["expert_load"], two[i]["expert_load"]) << "step " << i + 1;
  }
  // One checkpoint, written once.
  EXPECT_TRUE(std::filesystem::exists(tmp.file("two/checkpoint-000006/model.safetensors")));
  // A batch that does not split evenly is refused on every rank.
  EXPECT_NE(test::run_command(env + "mpirun -np 2 --oversubscribe " + whale + common +
                                  " --batch-size 3 --out " + tmp.file("three"),
                              &out),
            0);
  EXPECT_NE(out.find("not a multiple"), std::string::npos) << out;
}

}  // namespace
}  // namespace whale::train
