// The `whale` command.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "apps/whale/commands.h"

namespace whale::app {

int report(const char* command, const Error& error) {
  std::fprintf(stderr, "whale %s: %s\n", command, error.to_string().c_str());
  return kExitBadInput;
}

}  // namespace whale::app

int main(int argc, char** argv) {
  CLI::App app{"whale: run DeepSeek-family models on commodity hardware"};
  app.require_subcommand(1);
  whale::app::InfoArgs info;
  whale::app::LogitsArgs logits;
  whale::app::add_info_command(app, info);
  whale::app::add_logits_command(app, logits);
  whale::app::SynthArgs synth;
  whale::app::TokenizeArgs tokenize;
  whale::app::add_tokenize_commands(app, tokenize);
  whale::app::RunArgs run;
  whale::app::add_run_command(app, run);
  whale::app::ServeArgs serve;
  whale::app::add_serve_command(app, serve);
  whale::app::BenchArgs bench;
  whale::app::add_bench_command(app, bench);
  whale::app::ChatArgs chat;
  whale::app::add_chat_command(app, chat);
  whale::app::TemplateArgs chat_template;
  whale::app::add_template_command(app, chat_template);
  whale::app::add_synth_command(app, synth);
  whale::app::QuantizeArgs quantize;
  whale::app::CompareArgs compare;
  whale::app::add_quantize_commands(app, quantize, compare);
  whale::app::TrainArgs train;
  whale::app::DataPrepareArgs data_prepare;
  whale::app::add_train_commands(app, train, data_prepare);
  whale::app::TokenizerTrainArgs tokenizer_train;
  whale::app::add_tokenizer_train_command(app, tokenizer_train);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help or the parse error
    return code == 0 ? 0 : whale::app::kExitBadInput;
  }
  if (app.got_subcommand("run")) return whale::app::run_run(run);
  if (app.got_subcommand("chat")) return whale::app::run_chat(chat);
  if (app.got_subcommand("bench")) return whale::app::run_bench(bench);
  if (app.got_subcommand("serve")) return whale::app::run_serve(serve);
  if (app.got_subcommand("info")) return whale::app::run_info(info);
  if (app.got_subcommand("logits")) return whale::app::run_logits(logits);
  if (app.got_subcommand("synth")) return whale::app::run_synth(synth);
  if (app.got_subcommand("quantize")) return whale::app::run_quantize(quantize);
  if (app.got_subcommand("compare")) return whale::app::run_compare(compare);
  if (app.got_subcommand("tokenizer")) return whale::app::run_tokenizer_train(tokenizer_train);
  if (app.got_subcommand("train")) return whale::app::run_train(train);
  if (app.got_subcommand("data")) return whale::app::run_data(app, data_prepare);
  if (app.got_subcommand("tokenize")) return whale::app::run_tokenize(tokenize);
  if (app.got_subcommand("template")) return whale::app::run_template(chat_template);
  if (app.got_subcommand("detokenize")) return whale::app::run_detokenize(tokenize);
  return 2;
}
