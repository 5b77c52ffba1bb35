#include "apps/whale/loaded_model.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "model/model_info.h"

namespace whale::app {

namespace fs = std::filesystem;

Result<std::string> resolve_model_dir(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("WHALE_MODEL"); env && *env) return std::string(env);
  std::error_code ec;
  const std::string bundled = std::string(WHALE_SOURCE_DIR) + "/models/whale-mini";
  if (fs::exists(fs::path(bundled) / "config.json", ec)) return bundled;
  return make_error("no model given, and whale's bundled default model is not built yet",
                    "MODEL_DIR", {},
                    "pass a model directory (config.json, *.safetensors and tokenizer.json as "
                    "published on Hugging Face) or set WHALE_MODEL");
}

Result<tok::ChatFormat> chat_format_for(const LoadedModel& m, const std::string& flag) {
  if (!flag.empty()) return tok::parse_chat_format(flag);
  if (m.chat_format) return *m.chat_format;
  return make_error("the model's chat template is not one whale knows", "chat_template", m.dir,
                    "pass --chat-format v3, r1 or v3.1");
}

Result<std::vector<int32_t>> chat_prompt(const LoadedModel& m, tok::ChatFormat format,
                                         std::span<const tok::ChatMessage> messages, bool thinking,
                                         tok::RenderedChat* rendered) {
  tok::ChatOptions options;
  options.thinking = thinking;
  if (m.tokenizer->config().bos_token) options.bos_token = *m.tokenizer->config().bos_token;
  WHALE_ASSIGN_OR_RETURN(*rendered, tok::render_chat(format, messages, options));
  return tok::encode_chat(*m.tokenizer, *rendered);
}

Result<LoadedModel> load_model(const std::string& dir, int threads, bool quiet,
                               bool with_tokenizer) {
  LoadedModel m;
  m.dir = dir;
  const bool bar = !quiet && isatty(STDERR_FILENO);
  auto progress = [&](size_t done, size_t total) {
    if (!bar || total < 2) return;
    const int width = 30, filled = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\rloading [%.*s%*s] %zu/%zu files", filled,
                 "##############################", width - filled, "", done, total);
    if (done == total) std::fprintf(stderr, "\r\033[K");
  };
  WHALE_ASSIGN_OR_RETURN(model::Model model, model::Model::load(dir, progress));
  m.model = std::make_unique<model::Model>(std::move(model));
  std::error_code ec;
  if (with_tokenizer && !fs::exists(fs::path(dir) / "tokenizer.json", ec)) {
    return make_error("tokenizer.json not found", {}, dir,
                      "text (prompts, --text, --calibration) is read with the model's tokenizer "
                      "files, beside its weights");
  }
  if (with_tokenizer) {
    WHALE_ASSIGN_OR_RETURN(tok::Tokenizer tokenizer, tok::Tokenizer::load(dir));
    if (tokenizer.vocab_size() > m.model->config().vocab_size) {
      return make_error(
          "the tokenizer has ids up to " + std::to_string(tokenizer.vocab_size() - 1) +
              " but the model's vocab_size is " + std::to_string(m.model->config().vocab_size),
          "tokenizer.json", dir);
    }
    m.tokenizer = std::make_unique<tok::Tokenizer>(std::move(tokenizer));
    m.chat_format = tok::detect_chat_format(m.tokenizer->config().chat_template);
    if (m.model->config().eos_token_id) {
      m.stop_ids.push_back(static_cast<int32_t>(*m.model->config().eos_token_id));
    }
    if (const auto& eos = m.tokenizer->config().eos_token) {
      if (auto id = m.tokenizer->token_id(*eos);
          id && std::find(m.stop_ids.begin(), m.stop_ids.end(), *id) == m.stop_ids.end()) {
        m.stop_ids.push_back(*id);
      }
    }
  }
  m.pool = std::make_unique<ThreadPool>(threads);
  m.backend = std::make_unique<cpu::CpuBackend>(*m.pool);

  if (!quiet) {
    const model::ModelSummary s = model::summarize(m.model->config(), &m.model->checkpoint());
    std::string dtypes;
    for (const auto& [dtype, bytes] : s.bytes_by_dtype)
      dtypes += (dtypes.empty() ? "" : "+") + dtype;
    std::fprintf(
        stderr,
        "whale: %s (%s), %.2fB parameters (%.2fB active), %s, %.2f GB mapped, %d threads, %s\n",
        fs::path(dir).filename().c_str(), m.model->config().model_type.c_str(),
        double(s.params_total) / 1e9, double(s.params_active) / 1e9, dtypes.c_str(),
        double(s.checkpoint_bytes) / 1e9, m.pool->size(), std::string(m.backend->name()).c_str());
  }
  return m;
}

}  // namespace whale::app
