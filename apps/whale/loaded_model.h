// What `run`, `chat` (and later `serve`) load: model, tokenizer, backend, chat format.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>

#include "backends/cpu/cpu_backend.h"
#include "core/thread_pool.h"
#include "model/deepseek.h"
#include "tokenizer/chat_format.h"
#include "tokenizer/tokenizer.h"

namespace whale::app {

struct LoadedModel {
  std::string dir;
  std::unique_ptr<model::Model> model;
  std::unique_ptr<tok::Tokenizer> tokenizer;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<cpu::CpuBackend> backend;
  std::optional<tok::ChatFormat> chat_format;  // recognised from the tokenizer config
  std::vector<int32_t> stop_ids;               // end-of-sequence ids
};

// MODEL_DIR as given, else $WHALE_MODEL, else the bundled default model; an error that says
// how to point whale at a model when there is none.
Result<std::string> resolve_model_dir(const std::string& given);

// The chat format: --chat-format if given, else the one recognised from the model's files.
Result<tok::ChatFormat> chat_format_for(const LoadedModel& m, const std::string& flag);

// Renders a conversation in `format` with the model's BOS and encodes it.
Result<std::vector<int32_t>> chat_prompt(const LoadedModel& m, tok::ChatFormat format,
                                         std::span<const tok::ChatMessage> messages, bool thinking,
                                         tok::RenderedChat* rendered);

// Loads everything, with a progress bar on a terminal and one summary line on stderr. Without
// `with_tokenizer`, tokenizer.json is not needed (and `tokenizer` stays null).
Result<LoadedModel> load_model(const std::string& dir, int threads, bool quiet,
                               bool with_tokenizer = true);

}  // namespace whale::app
