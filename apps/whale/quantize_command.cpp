// whale quantize: a checkpoint rewritten in bf16 or whale's block formats; and whale compare:
// how far a model's next-token distributions are from a reference's over the same tokens.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "apps/whale/commands.h"
#include "apps/whale/loaded_model.h"
#include "model/accuracy.h"
#include "model/quantize.h"

namespace whale::app {

void add_quantize_commands(CLI::App& app, QuantizeArgs& q, CompareArgs& c) {
  auto* cmd = app.add_subcommand(
      "quantize", "Rewrite a checkpoint with its matrices in bf16, q8 or q4 (see README)");
  cmd->add_option("IN_DIR", q.in_dir, "model directory to read")->required();
  cmd->add_option("OUT_DIR", q.out_dir, "new model directory to write")->required();
  cmd->add_option("--type", q.type, "bf16, q8, q4 or q4-experts")->required();
  cmd->add_option("--threads", q.threads, "threads (default: every core)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--calibration", q.calibration,
                  "text file run through the input model first: each block's scale is chosen "
                  "for the least error weighed by how large its columns' inputs were");
  cmd->add_option("--calibration-tokens", q.calibration_tokens,
                  "tokens of the calibration text to run (default 8192)")
      ->check(CLI::Range(1, 1 << 20));

  auto* cmp = app.add_subcommand(
      "compare", "Compare a model's next-token distributions with a reference model's");
  cmp->add_option("REFERENCE_DIR", c.reference, "reference model directory")->required();
  cmp->add_option("MODEL_DIR", c.model, "model directory to compare")->required();
  cmp->add_option("--text", c.text, "score this text file's tokens (default: random ids)");
  cmp->add_option("--tokens", c.tokens,
                  "tokens to score (default: 256 random ids, or the whole text)")
      ->check(CLI::Range(1, 1 << 20));
  cmp->add_option("--window", c.window,
                  "positions per sequence: the tokens are scored as independent sequences of "
                  "this length (default 256, at most the model's context)")
      ->check(CLI::Range(1, 1 << 20));
  cmp->add_option("--seed", c.seed, "seed of the random ids");
  cmp->add_option("--threads", c.threads, "threads (default: every core)")
      ->check(CLI::Range(0, 1024));
  cmp->add_flag("--json", c.json, "print one JSON object");
  add_kv_cache_option(cmp, c.kv_cache);  // the compared model's; the reference's is f32
  cmp->add_flag("--decode", c.decode,
                "the compared model reads each sequence a token at a time, as generation does "
                "(decode's kernels and attention form); the reference reads it in one pass");
}

namespace {

// Calibration windows: as long as this, or the model's context if shorter.
constexpr int64_t kCalibrationWindow = 512;

// The input model run over the calibration text (by its own tokenizer).
Result<model::Calibration> calibrate(const QuantizeArgs& args) {
  WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(args.calibration));
  WHALE_ASSIGN_OR_RETURN(LoadedModel m, load_model(args.in_dir, args.threads, /*quiet=*/true));
  auto ids = m.tokenizer->encode(text, tok::SpecialTokens::kIgnore);
  if (!ids.ok()) return make_error(ids.error().message, "--calibration", args.calibration);
  if (ids->empty()) return make_error("the text has no tokens", "--calibration", args.calibration);
  if (static_cast<int64_t>(ids->size()) > args.calibration_tokens) {
    ids->resize(static_cast<size_t>(args.calibration_tokens));
  }
  std::fprintf(stderr, "calibrating: %zu tokens of %s\n", ids->size(), args.calibration.c_str());
  model::Calibration c;
  WHALE_ASSIGN_OR_RETURN(c.importance,
                         model::measure_importance(*m.model, *m.backend, *ids, kCalibrationWindow));
  c.text = std::filesystem::path(args.calibration).filename().string();
  c.tokens = static_cast<int64_t>(ids->size());
  return c;
}

}  // namespace

int run_quantize(const QuantizeArgs& args) {
  auto recipe = model::parse_recipe(args.type);
  if (!recipe.ok()) return report("quantize", recipe.error());
  std::optional<model::Calibration> calibration;
  if (!args.calibration.empty()) {
    auto c = calibrate(args);
    if (!c.ok()) return report("quantize", c.error());
    calibration = std::move(*c);
  }
  ThreadPool pool(args.threads);
  auto result = model::quantize_checkpoint(
      args.in_dir, args.out_dir, *recipe, pool,
      [](size_t done, size_t total) {
        std::fprintf(stderr, "\rquantizing: %zu / %zu tensors", done, total);
        if (done == total) std::fprintf(stderr, "\n");
      },
      calibration ? &*calibration : nullptr);
  if (!result.ok()) return report("quantize", result.error());
  std::printf("wrote %s (%s): %.1f MB of weights from %.1f MB;", args.out_dir.c_str(),
              args.type.c_str(), double(result->bytes_out) / 1e6, double(result->bytes_in) / 1e6);
  for (const auto& [form, n] : result->tensors_by_form) std::printf(" %s %lld", form.c_str(), (long long)n);
  std::printf(" tensors\n");
  if (result->kept_bf16 > 0) {
    std::printf("%lld matrices kept in bf16: their width is not a multiple of 32\n",
                (long long)result->kept_bf16);
  }
  return 0;
}

namespace {

// The ids compare scores: the text's tokens (by the reference model's tokenizer), or random ids.
Result<std::vector<int32_t>> compare_ids(const CompareArgs& args, const LoadedModel& ref) {
  if (!args.text.empty()) {
    WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(args.text));
    auto ids = ref.tokenizer->encode(text, tok::SpecialTokens::kIgnore);
    if (!ids.ok()) return make_error(ids.error().message, "--text", args.text);
    if (ids->empty()) return make_error("the text has no tokens", "--text", args.text);
    if (args.tokens > 0 && static_cast<int64_t>(ids->size()) > args.tokens)
      ids->resize(args.tokens);
    return ids;
  }
  const int64_t vocab = ref.model->config().vocab_size;
  std::mt19937 rng(args.seed);
  std::vector<int32_t> ids(static_cast<size_t>(args.tokens > 0 ? args.tokens : 256));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return ids;
}

}  // namespace

int run_compare(const CompareArgs& args) {
  const bool with_tokenizer = !args.text.empty();
  auto ref = load_model(args.reference, args.threads, /*quiet=*/true, with_tokenizer);
  if (!ref.ok()) return report("compare", ref.error());
  auto other = load_model(args.model, args.threads, /*quiet=*/true, /*with_tokenizer=*/false);
  if (!other.ok()) return report("compare", other.error());
  const model::ModelConfig& c = ref->model->config();
  if (other->model->config().vocab_size != c.vocab_size) {
    return report("compare", make_error("the two models have different vocabularies", "MODEL_DIR"));
  }
  auto ids = compare_ids(args, *ref);
  if (!ids.ok()) return report("compare", ids.error());
  const int64_t n = static_cast<int64_t>(ids->size());
  const int64_t window = std::min(
      {args.window, c.max_position_embeddings, other->model->config().max_position_embeddings});

  // Each window is its own sequence, from an empty cache, in both models.
  std::vector<float> logits[2];
  LoadedModel* models[2] = {&*ref, &*other};
  for (int k = 0; k < 2; ++k) {
    model::KvCache cache(models[k]->model->config(), window,
                         k == 0 ? model::KvType::kF32 : kv_type_of(args.kv_cache));
    model::ForwardOptions options;
    const bool one_at_a_time = k == 1 && args.decode;
    options.all_logits = !one_at_a_time;
    for (int64_t start = 0; start < n; start += window) {
      cache.clear();
      const int64_t len = std::min(window, n - start);
      for (int64_t t = 0; t < len; t += one_at_a_time ? 1 : len) {
        auto out = models[k]->model->forward(
            *models[k]->backend,
            std::span<const int32_t>(ids->data() + start + t, one_at_a_time ? 1 : len), cache,
            options);
        if (!out.ok()) return report("compare", out.error());
        logits[k].insert(logits[k].end(), out->begin(), out->end());
      }
    }
  }
  const model::LogitComparison r = model::compare_logits(logits[0], logits[1], c.vocab_size);
  if (args.json) {
    nlohmann::ordered_json j;
    j["reference"] = args.reference;
    j["model"] = args.model;
    j["positions"] = r.positions;
    j["window"] = window;
    if (args.text.empty()) {
      j["seed"] = args.seed;
    } else {
      j["text"] = args.text;
    }
    j["kv_cache"] = args.kv_cache;
    j["decode"] = args.decode;
    j["mean_kl"] = r.mean_kl;
    j["max_kl"] = r.max_kl;
    j["top1_agreement"] = r.top1_agreement;
    j["max_abs_logit_diff"] = r.max_abs_diff;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  const std::string source = args.text.empty() ? "random ids, seed " + std::to_string(args.seed)
                                               : "the tokens of " + args.text;
  std::printf(
      "%lld positions (%s; sequences of %lld%s; %s KV cache): mean KL %.3g nats (max %.3g), "
      "top-1 agreement %.2f%%, max |Δlogit| %.3g\n",
      (long long)r.positions, source.c_str(), (long long)window,
      args.decode ? ", decoded a token at a time" : "", args.kv_cache.c_str(), r.mean_kl, r.max_kl,
      100 * r.top1_agreement, r.max_abs_diff);
  return 0;
}

}  // namespace whale::app
