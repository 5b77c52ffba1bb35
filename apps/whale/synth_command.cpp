#include <cstdio>
#include <filesystem>

#include "apps/whale/commands.h"
#include "core/mapped_file.h"
#include "model/config.h"
#include "model/synthetic.h"

namespace whale::app {

void add_synth_command(CLI::App& app, SynthArgs& args) {
  auto* cmd = app.add_subcommand(
      "synth", "Write a checkpoint of random weights for a config.json (real names and shapes)");
  cmd->add_option("CONFIG", args.config, "config.json, or a directory holding one")->required();
  cmd->add_option("OUT_DIR", args.out_dir, "output directory (must not hold a checkpoint)")
      ->required();
  cmd->add_option("--seed", args.seed, "random seed");
}

int run_synth(const SynthArgs& args) {
  std::string path = args.config;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    path = (std::filesystem::path(path) / "config.json").string();
  auto text = read_text_file(path);
  if (!text.ok()) {
    return report("synth", text.error());
  }
  auto config = model::parse_config(*text, path);
  if (!config.ok()) {
    return report("synth", config.error());
  }
  model::SynthOptions options;
  options.seed = args.seed;
  if (auto s = model::write_synthetic_checkpoint(*config, *text, args.out_dir, options); !s.ok()) {
    return report("synth", s.error());
  }
  std::printf("wrote %s\n", args.out_dir.c_str());
  return 0;
}

}  // namespace whale::app
