#include <cstdio>

#include "apps/whale/commands.h"
#include "apps/whale/loaded_model.h"
#include "runtime/generator.h"

namespace whale::app {

void add_kv_cache_option(CLI::App* cmd, std::string& kv) {
  cmd->add_option("--kv-cache", kv,
                  "how the KV cache stores its values: bf16 (half the memory, and faster decode "
                  "attention) or f32 (as computed)")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
}

model::KvType kv_type_of(const std::string& name) {
  return model::kv_type_from_name(name).value_or(model::KvType::kBf16);
}

void add_generation_options(CLI::App* cmd, GenerationArgs& args) {
  cmd->add_option("MODEL_DIR", args.model_dir, "model directory (default: the bundled model)");
  cmd->add_option("-n,--max-tokens", args.max_tokens, "tokens to generate at most")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  cmd->add_option("--temp", args.sampling.temperature, "temperature (0 = greedy)");
  cmd->add_option("--top-k", args.sampling.top_k, "keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", args.sampling.top_p, "nucleus: keep tokens up to this mass (1 = off)");
  cmd->add_option("--min-p", args.sampling.min_p,
                  "drop tokens below min-p × the most likely (0 = off)");
  cmd->add_option("--repeat-penalty", args.sampling.repetition_penalty,
                  "repetition penalty (1 = off)");
  cmd->add_option("--frequency-penalty", args.sampling.frequency_penalty, "in [-2, 2]");
  cmd->add_option("--presence-penalty", args.sampling.presence_penalty, "in [-2, 2]");
  cmd->add_option("--seed", args.sampling.seed, "random seed (same seed, same tokens)");
  cmd->add_option("--stop", args.stop, "stop at this text (repeatable)");
  cmd->add_option("--system", args.system, "system prompt (chat format only)");
  cmd->add_option("--chat-format", args.chat_format, "v3, r1 or v3.1 (default: from the model)");
  cmd->add_flag("--thinking", args.thinking, "V3.1: answer in thinking mode");
  cmd->add_option("--threads", args.threads, "threads (default: every core)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--ctx", args.context, "context length in tokens")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  add_kv_cache_option(cmd, args.kv_cache);
}

runtime::GenerationRequest generation_request(const GenerationArgs& args,
                                              std::vector<int32_t> prompt,
                                              const std::vector<int32_t>& stop_ids) {
  runtime::GenerationRequest req;
  req.prompt = std::move(prompt);
  req.sampling = args.sampling;
  req.max_tokens = args.max_tokens;
  req.stop = args.stop;
  req.stop_ids = stop_ids;
  return req;
}

void add_run_command(CLI::App& app, RunArgs& args) {
  auto* cmd = app.add_subcommand("run", "Complete a prompt, streaming the answer to stdout");
  add_generation_options(cmd, args.gen);
  cmd->add_option("-p,--prompt", args.prompt, "the prompt")->required();
  cmd->add_flag("--chat", args.chat, "wrap the prompt in the model's chat format");
}

void print_timing(const runtime::GenerationResult& r) {
  const auto& s = r.stats;
  std::fprintf(stderr,
               "\nprompt: %lld tokens, %.2f s, %.1f tokens/s | generated: %lld tokens, %.2f s, "
               "%.1f tokens/s | finish: %s\n",
               static_cast<long long>(s.prompt_tokens), s.prefill_seconds,
               s.prefill_seconds > 0 ? double(s.prompt_tokens) / s.prefill_seconds : 0.0,
               static_cast<long long>(s.generated_tokens), s.decode_seconds,
               s.decode_seconds > 0 ? double(s.generated_tokens) / s.decode_seconds : 0.0,
               std::string(runtime::finish_reason_name(r.finish)).c_str());
}

int run_run(const RunArgs& args) {
  if (auto s = sampling::validate(args.gen.sampling, int64_t{1} << 30); !s.ok())
    return report("run", s.error());
  auto dir = resolve_model_dir(args.gen.model_dir);
  if (!dir.ok()) return report("run", dir.error());
  auto m = load_model(*dir, args.gen.threads, false);
  if (!m.ok()) return report("run", m.error());

  Result<std::vector<int32_t>> prompt = std::vector<int32_t>{};
  if (args.chat || !args.gen.system.empty()) {
    auto format = chat_format_for(*m, args.gen.chat_format);
    if (!format.ok()) return report("run", format.error());
    std::vector<tok::ChatMessage> messages;
    if (!args.gen.system.empty()) messages.push_back({"system", args.gen.system, {}, false});
    messages.push_back({"user", args.prompt, {}, false});
    tok::RenderedChat rendered;
    prompt = chat_prompt(*m, *format, messages, args.gen.thinking, &rendered);
  } else {
    // A raw completion: BOS, then the prompt as plain text.
    prompt = m->tokenizer->encode(args.prompt, tok::SpecialTokens::kIgnore);
    if (prompt.ok() && m->model->config().bos_token_id) {
      prompt->insert(prompt->begin(), static_cast<int32_t>(*m->model->config().bos_token_id));
    }
  }
  if (!prompt.ok()) return report("run", prompt.error());

  const runtime::GenerationRequest req =
      generation_request(args.gen, std::move(*prompt), m->stop_ids);
  runtime::Generator gen(*m->model, m->tokenizer.get(), *m->backend, args.gen.context,
                         kv_type_of(args.gen.kv_cache));
  auto result = gen.generate(req, [](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  if (!result.ok()) return report("run", result.error());
  std::printf("\n");
  print_timing(*result);
  return 0;
}

}  // namespace whale::app
