// Subcommands of `whale`. Each returns the process exit code and reports errors on stderr.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "core/error.h"

namespace whale::app {

// Exit status for input the user can fix: arguments, model files, token ids.
inline constexpr int kExitBadInput = 2;

// Prints "whale COMMAND: error" on stderr and returns kExitBadInput.
int report(const char* command, const Error& error);

struct InfoArgs {
  std::string model_dir;
  bool json = false;
  bool config_only = false;
};
void add_info_command(CLI::App& app, InfoArgs& args);
int run_info(const InfoArgs& args);

struct LogitsArgs {
  std::string model_dir;
  std::string ids;
  std::string out;
  bool naive = false;
  int threads = 0;
};
void add_logits_command(CLI::App& app, LogitsArgs& args);
int run_logits(const LogitsArgs& args);

struct SynthArgs {
  std::string config;
  std::string out_dir;
  uint64_t seed = 1;
};
void add_synth_command(CLI::App& app, SynthArgs& args);
int run_synth(const SynthArgs& args);

}  // namespace whale::app
