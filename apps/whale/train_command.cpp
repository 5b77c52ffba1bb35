// whale train: trains a DeepSeek-architecture model from token shards; and whale data prepare:
// text files tokenized into those shards.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/whale/commands.h"
#include "core/mapped_file.h"
#include "train/data.h"
#include "train/trainer.h"

namespace whale::app {

using nlohmann::json;

void add_train_commands(CLI::App& app, TrainArgs& t, DataPrepareArgs& d) {
  auto* cmd = app.add_subcommand(
      "train", "Train a DeepSeek-V3-architecture model (MLA + MoE + MTP) from token shards");
  cmd->add_option("--config", t.config, "training settings (JSON); every field is also a flag");
  // One flag per settings field; a flag overrides the file.
  for (const auto& [name, kind] : train::train_setting_fields()) {
    std::string flag = "--" + name;
    for (char& ch : flag) ch = ch == '_' ? '-' : ch;
    const std::string help = kind == "object" ? "the model's config.json (a file)" : "setting " + name;
    if (kind == "list") {
      cmd->add_option(flag, t.lists[name], help);
    } else {
      cmd->add_option(flag, t.values[name], help);
    }
  }

  auto* data = app.add_subcommand("data", "Training data tools");
  data->require_subcommand(1);
  auto* prep = data->add_subcommand("prepare", "Tokenize text files into training shards");
  prep->add_option("--tokenizer", d.tokenizer, "directory with tokenizer.json")->required();
  prep->add_option("--input", d.inputs, "UTF-8 text files")->required();
  prep->add_option("--out", d.out, "output directory")->required();
  prep->add_option("--val-fraction", d.val_fraction,
                   "fraction of each input (its end) held out for validation")
      ->check(CLI::Range(0.0, 0.99));
  auto* random = data->add_subcommand("random", "Write a shard of uniform random token ids (benchmarks)");
  random->add_option("--vocab", d.vocab, "ids are below this")->required()->check(CLI::Range(1, 1 << 30));
  random->add_option("--tokens", d.tokens, "number of tokens")->required()->check(CLI::Range(1, 1 << 30));
  random->add_option("--seed", d.seed, "seed");
  random->add_option("--out", d.out, "output directory")->required();
}

namespace {

// The settings file with the flags applied on top.
Result<json> settings_json(const TrainArgs& t) {
  json j = json::object();
  if (!t.config.empty()) {
    WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(t.config));
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      return make_error(std::string("invalid JSON: ") + e.what(), {}, t.config);
    }
    if (!j.is_object()) return make_error("training settings must be a JSON object", {}, t.config);
  }
  for (const auto& [name, kind] : train::train_setting_fields()) {
    auto list = t.lists.find(name);
    if (list != t.lists.end() && !list->second.empty()) j[name] = list->second;
    auto value = t.values.find(name);
    if (value == t.values.end() || value->second.empty()) continue;
    const std::string& v = value->second;
    if (kind == "object") {  // --model FILE: a config.json
      WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(v));
      try {
        j[name] = json::parse(text);
      } catch (const json::exception& e) {
        return make_error(std::string("invalid JSON: ") + e.what(), {}, v);
      }
    } else if (kind == "string") {
      j[name] = v;
    } else {
      json parsed = json::parse(v, nullptr, /*allow_exceptions=*/false);
      if (parsed.is_discarded() || !parsed.is_number()) {
        return make_error("must be a number, got '" + v + "'", "--" + name);
      }
      j[name] = parsed;
    }
  }
  // "model" in a settings file may also name a config.json.
  if (j.contains("model") && j["model"].is_string()) {
    const std::string path = j["model"].get<std::string>();
    WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
    try {
      j["model"] = json::parse(text);
    } catch (const json::exception& e) {
      return make_error(std::string("invalid JSON: ") + e.what(), {}, path);
    }
  }
  return j;
}

}  // namespace

int run_train(const TrainArgs& args) {
  auto j = settings_json(args);
  if (!j.ok()) return report("train", j.error());
  auto settings = train::TrainSettings::from_json(*j, args.config.empty() ? "flags" : args.config);
  if (!settings.ok()) return report("train", settings.error());
  train::TrainHooks hooks;
  hooks.progress = stderr;
  auto result = train::run_training(*settings, hooks);
  if (!result.ok()) return report("train", result.error());
  const auto& r = *result;
  if (!r.root) return 0;  // rank 0 reports for the job
  std::printf("trained %lld steps: loss %.4f -> %.4f", (long long)r.steps_done, r.first_loss,
              r.last_loss);
  if (r.val_loss >= 0) std::printf(", validation loss %.4f", r.val_loss);
  std::printf("; %.0f tokens/s, MFU %.1f%% of %.1f GFLOP/s\n", r.tokens_per_second, 100 * r.mfu,
              r.peak_flops * 1e-9);
  if (!r.last_load.empty()) {
    std::printf("expert load (max/mean) per MoE layer, first step -> last:");
    for (size_t i = 0; i < r.last_load.size(); ++i) {
      std::printf(" %.2f->%.2f", r.first_load[i], r.last_load[i]);
    }
    std::printf("\n");
  }
  if (!r.last_checkpoint.empty()) std::printf("checkpoint: %s\n", r.last_checkpoint.c_str());
  return 0;
}

int run_data(const CLI::App& app, const DataPrepareArgs& args) {
  if (app.get_subcommand("data")->got_subcommand("random")) {
    std::error_code ec;
    std::filesystem::create_directories(args.out, ec);
    std::vector<int32_t> ids(size_t(args.tokens));
    uint64_t state = args.seed;
    for (auto& id : ids) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      id = int32_t((state >> 33) % uint64_t(args.vocab));
    }
    Status written = train::write_shard(args.out + "/train_00000.bin", ids);
    if (!written.ok()) return report("data random", written.error());
    std::printf("%lld random ids below %lld in %s/train_00000.bin\n", (long long)args.tokens,
                (long long)args.vocab, args.out.c_str());
    return 0;
  }

  train::PrepareOptions o;
  o.tokenizer_dir = args.tokenizer;
  o.inputs = args.inputs;
  o.out_dir = args.out;
  o.val_fraction = args.val_fraction;
  auto r = train::prepare_data(o);
  if (!r.ok()) return report("data prepare", r.error());
  std::printf("%lld training tokens, %lld validation tokens in %zu shards under %s\n",
              (long long)r->train_tokens, (long long)r->val_tokens, r->files.size(), args.out.c_str());
  return 0;
}

}  // namespace whale::app
