#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/whale/commands.h"
#include "tokenizer/tokenizer.h"

namespace whale::app {

void add_tokenize_commands(CLI::App& app, TokenizeArgs& args) {
  auto* t = app.add_subcommand("tokenize", "Text to token ids (a JSON array)");
  t->add_option("DIR", args.dir, "model or tokenizer directory")->required();
  auto* text = t->add_option("--text", args.text, "text to encode");
  auto* file = t->add_option("--file", args.file, "encode the whole content of a file");
  auto* jsonl = t->add_option("--jsonl", args.jsonl,
                              "lines of {\"text\": ...}; writes one {\"ids\": [...]} line each");
  text->excludes(file)->excludes(jsonl);
  file->excludes(jsonl);
  t->add_flag("--special", args.special,
              "recognise special and added tokens written in the text (default: plain text)");

  auto* d = app.add_subcommand("detokenize", "Token ids to text");
  d->add_option("DIR", args.dir, "model or tokenizer directory")->required();
  d->add_option("--ids", args.ids, "comma-separated token ids")->required();
}

namespace {

std::string ids_json(const std::vector<int32_t>& ids) { return nlohmann::json(ids).dump(); }

}  // namespace

int run_tokenize(const TokenizeArgs& args) {
  auto tokenizer = tok::Tokenizer::load(args.dir);
  if (!tokenizer.ok()) return report("tokenize", tokenizer.error());
  const auto mode = args.special ? tok::SpecialTokens::kParse : tok::SpecialTokens::kIgnore;

  if (!args.jsonl.empty()) {
    std::ifstream in(args.jsonl, std::ios::binary);
    if (!in) return report("tokenize", make_error("cannot open", "--jsonl", args.jsonl));
    std::string line;
    for (size_t n = 1; std::getline(in, line); ++n) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("text") || !j["text"].is_string()) {
        return report("tokenize", make_error("line " + std::to_string(n) +
                                                 " is not a JSON object with a string \"text\"",
                                             "--jsonl", args.jsonl));
      }
      auto ids = tokenizer->encode(j["text"].get<std::string>(), mode);
      if (!ids.ok()) return report("tokenize", ids.error());
      std::printf("{\"ids\":%s}\n", ids_json(*ids).c_str());
    }
    return 0;
  }
  std::string text = args.text;
  if (!args.file.empty()) {
    std::ifstream in(args.file, std::ios::binary);
    if (!in) return report("tokenize", make_error("cannot open", "--file", args.file));
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  auto ids = tokenizer->encode(text, mode);
  if (!ids.ok()) return report("tokenize", ids.error());
  std::printf("%s\n", ids_json(*ids).c_str());
  return 0;
}

int run_detokenize(const TokenizeArgs& args) {
  auto ids = parse_id_list(args.ids);
  if (!ids.ok()) return report("detokenize", ids.error());
  auto tokenizer = tok::Tokenizer::load(args.dir);
  if (!tokenizer.ok()) return report("detokenize", tokenizer.error());
  auto text = tokenizer->decode(*ids);
  if (!text.ok()) return report("detokenize", text.error());
  std::fwrite(text->data(), 1, text->size(), stdout);
  std::printf("\n");
  return 0;
}

}  // namespace whale::app
