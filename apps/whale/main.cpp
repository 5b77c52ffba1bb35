// The `whale` command.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "apps/whale/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"whale: run DeepSeek-family models on commodity hardware"};
  app.require_subcommand(1);
  whale::app::InfoArgs info;
  whale::app::LogitsArgs logits;
  whale::app::add_info_command(app, info);
  whale::app::add_logits_command(app, logits);
  whale::app::SynthArgs synth;
  whale::app::add_synth_command(app, synth);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (app.got_subcommand("info")) return whale::app::run_info(info);
  if (app.got_subcommand("logits")) return whale::app::run_logits(logits);
  if (app.got_subcommand("synth")) return whale::app::run_synth(synth);
  return 2;
}
