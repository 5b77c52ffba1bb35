// whale tokenizer train: a byte-level BPE tokenizer with DeepSeek's pre-tokenizer, learned from
// text files and written as tokenizer.json + tokenizer_config.json.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "apps/whale/commands.h"
#include "core/mapped_file.h"
#include "tokenizer/bpe_trainer.h"

namespace whale::app {

void add_tokenizer_train_command(CLI::App& app, TokenizerTrainArgs& args) {
  auto* tok = app.add_subcommand("tokenizer", "Tokenizer tools");
  tok->require_subcommand(1);
  auto* train = tok->add_subcommand("train", "Learn a byte-level BPE tokenizer from text files");
  train->add_option("--vocab", args.vocab, "vocabulary size, bytes and special tokens included")
      ->required()
      ->check(CLI::Range(300, 1 << 20));
  train->add_option("--input", args.inputs, "UTF-8 text files")->required();
  train->add_option("--out", args.out, "output directory")->required();
  train->add_option("--min-frequency", args.min_frequency, "never merge a pair seen fewer times")
      ->check(CLI::Range(1, 1 << 30));
  train->add_option("--template-from", args.template_from,
                    "tokenizer directory whose chat template to copy (default: the bundled "
                    "DeepSeek-V3 tokenizer's)");
}

namespace {

// Feeds a file to the trainer in pieces cut at line breaks, so memory does not grow with it.
Status feed(const std::string& path, tok::BpeTrainer& trainer, uint64_t& done, uint64_t total) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error("cannot open", {}, path);
  std::string carry, chunk(size_t(4) << 20, '\0');
  while (f) {
    f.read(chunk.data(), std::streamsize(chunk.size()));
    const size_t n = size_t(f.gcount());
    if (n == 0) break;
    carry.append(chunk.data(), n);
    const size_t cut = carry.rfind('\n');
    if (cut == std::string::npos && f) continue;  // a very long line: keep reading
    const size_t end = cut == std::string::npos ? carry.size() : cut + 1;
    trainer.add_text(std::string_view(carry).substr(0, end));
    carry.erase(0, end);
    done += n;
    std::fprintf(stderr, "\rcounting: %.1f / %.1f MB", double(done) / 1e6, double(total) / 1e6);
  }
  if (f.bad()) return make_error("read error", {}, path);
  if (!carry.empty()) trainer.add_text(carry);
  return ok_status();
}

}  // namespace

int run_tokenizer_train(const TokenizerTrainArgs& args) {
  namespace fs = std::filesystem;
  const std::string template_dir = args.template_from.empty()
                                       ? std::string(WHALE_SOURCE_DIR) + "/models/deepseek-v3-tokenizer"
                                       : args.template_from;
  auto config_text = read_text_file(template_dir + "/tokenizer_config.json");
  if (!config_text.ok()) return report("tokenizer train", config_text.error());
  std::string chat_template;
  try {
    const auto j = nlohmann::json::parse(*config_text);
    if (j.contains("chat_template") && j["chat_template"].is_string()) chat_template = j["chat_template"];
  } catch (const nlohmann::json::exception& e) {
    return report("tokenizer train", make_error(std::string("invalid JSON: ") + e.what(), {},
                                                template_dir + "/tokenizer_config.json"));
  }
  uint64_t total = 0;
  for (const std::string& in : args.inputs) {
    std::error_code ec;
    const auto size = fs::file_size(in, ec);
    if (ec) return report("tokenizer train", make_error("cannot read: " + ec.message(), {}, in));
    total += size;
  }
  tok::BpeTrainer trainer;
  uint64_t done = 0;
  for (const std::string& in : args.inputs) {
    Status s = feed(in, trainer, done, total);
    if (!s.ok()) return report("tokenizer train", s.error());
  }
  std::fprintf(stderr, "\n%lld distinct pieces\n", (long long)trainer.distinct_pieces());
  tok::BpeTrainOptions o;
  o.vocab_size = args.vocab;
  o.min_frequency = args.min_frequency;
  o.added_tokens = tok::deepseek_added_tokens();
  o.progress = [](int64_t merges, int64_t want) {
    std::fprintf(stderr, "\rmerges: %lld / %lld", (long long)merges, (long long)want);
  };
  auto result = trainer.train(o);
  if (!result.ok()) return report("tokenizer train", result.error());
  std::fprintf(stderr, "\n");
  Status written = tok::write_trained_tokenizer(args.out, *result, chat_template);
  if (!written.ok()) return report("tokenizer train", written.error());
  std::printf("wrote %s: %d tokens (%d merges, 256 bytes, %zu added)\n", args.out.c_str(),
              result->vocab_size, result->merges, o.added_tokens.size());
  return 0;
}

}  // namespace whale::app
