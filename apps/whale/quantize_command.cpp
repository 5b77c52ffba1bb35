// whale quantize: a checkpoint rewritten in bf16 or whale's block formats; and whale compare:
// how far a model's next-token distributions are from a reference's over the same tokens.
#include <cstdio>
#include <nlohmann/json.hpp>
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

  auto* cmp = app.add_subcommand(
      "compare", "Compare a model's next-token distributions with a reference model's");
  cmp->add_option("REFERENCE_DIR", c.reference, "reference model directory")->required();
  cmp->add_option("MODEL_DIR", c.model, "model directory to compare")->required();
  cmp->add_option("--tokens", c.tokens, "length of the token sequence")
      ->check(CLI::Range(1, 1 << 16));
  cmp->add_option("--seed", c.seed, "seed of the token sequence");
  cmp->add_option("--threads", c.threads, "threads (default: every core)")
      ->check(CLI::Range(0, 1024));
  cmp->add_flag("--json", c.json, "print one JSON object");
}

int run_quantize(const QuantizeArgs& args) {
  auto recipe = model::parse_recipe(args.type);
  if (!recipe.ok()) return report("quantize", recipe.error());
  ThreadPool pool(args.threads);
  auto result = model::quantize_checkpoint(
      args.in_dir, args.out_dir, *recipe, pool, [](size_t done, size_t total) {
        std::fprintf(stderr, "\rquantizing: %zu / %zu tensors", done, total);
        if (done == total) std::fprintf(stderr, "\n");
      });
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

int run_compare(const CompareArgs& args) {
  auto ref = load_model(args.reference, args.threads, /*quiet=*/true, /*with_tokenizer=*/false);
  if (!ref.ok()) return report("compare", ref.error());
  auto other = load_model(args.model, args.threads, /*quiet=*/true, /*with_tokenizer=*/false);
  if (!other.ok()) return report("compare", other.error());
  const model::ModelConfig& c = ref->model->config();
  if (other->model->config().vocab_size != c.vocab_size) {
    return report("compare", make_error("the two models have different vocabularies", "MODEL_DIR"));
  }
  const int64_t n = std::min<int64_t>(args.tokens, c.max_position_embeddings);
  std::mt19937 rng(args.seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size));

  std::vector<float> logits[2];
  LoadedModel* models[2] = {&*ref, &*other};
  for (int k = 0; k < 2; ++k) {
    model::KvCache cache(models[k]->model->config(), n);
    model::ForwardOptions options;
    options.all_logits = true;
    auto out = models[k]->model->forward(*models[k]->backend, ids, cache, options);
    if (!out.ok()) return report("compare", out.error());
    logits[k] = std::move(*out);
  }
  const model::LogitComparison r = model::compare_logits(logits[0], logits[1], c.vocab_size);
  if (args.json) {
    nlohmann::ordered_json j;
    j["reference"] = args.reference;
    j["model"] = args.model;
    j["positions"] = r.positions;
    j["seed"] = args.seed;
    j["mean_kl"] = r.mean_kl;
    j["max_kl"] = r.max_kl;
    j["top1_agreement"] = r.top1_agreement;
    j["max_abs_logit_diff"] = r.max_abs_diff;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("%lld positions (random ids, seed %u): mean KL %.3g nats (max %.3g), top-1 agreement "
              "%.2f%%, max |Δlogit| %.3g\n",
              (long long)r.positions, args.seed, r.mean_kl, r.max_kl, 100 * r.top1_agreement,
              r.max_abs_diff);
  return 0;
}

}  // namespace whale::app
