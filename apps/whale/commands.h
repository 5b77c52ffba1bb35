// Subcommands of `whale`. Each returns the process exit code and reports errors on stderr.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "runtime/generator.h"
#include "sampling/sampler.h"

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

struct TokenizeArgs {
  std::string dir;
  std::string text;
  std::string file;
  std::string jsonl;
  bool special = false;
  std::string ids;
};
void add_tokenize_commands(CLI::App& app, TokenizeArgs& args);
int run_tokenize(const TokenizeArgs& args);
int run_detokenize(const TokenizeArgs& args);

// Parses "1,2,3" into ids (integers only; empty items are errors).
Result<std::vector<int32_t>> parse_id_list(const std::string& text);

struct TemplateArgs {
  std::string dir;
  std::string messages;
  std::string format;
  bool thinking = false;
  bool no_generation_prompt = false;
  bool ids = false;
};
void add_template_command(CLI::App& app, TemplateArgs& args);
int run_template(const TemplateArgs& args);

// Options shared by run and chat.
struct GenerationArgs {
  std::string model_dir;
  int64_t max_tokens = 512;
  sampling::SamplingParams sampling;
  std::vector<std::string> stop;
  std::string system;
  std::string chat_format;
  bool thinking = false;
  int threads = 0;
  int64_t context = 4096;
  std::string kv_cache = "bf16";
};
// --kv-cache bf16|f32, shared by the commands that keep a KV cache, and the type it names.
void add_kv_cache_option(CLI::App* cmd, std::string& kv);
model::KvType kv_type_of(const std::string& name);
void add_generation_options(CLI::App* cmd, GenerationArgs& args);
// A request with the sampling settings and limits of `args`.
runtime::GenerationRequest generation_request(const GenerationArgs& args,
                                              std::vector<int32_t> prompt,
                                              const std::vector<int32_t>& stop_ids);

struct RunArgs {
  GenerationArgs gen;
  std::string prompt;
  bool chat = false;
};
void add_run_command(CLI::App& app, RunArgs& args);
int run_run(const RunArgs& args);

struct ChatArgs {
  GenerationArgs gen;
  bool hide_thinking = false;
};
void add_chat_command(CLI::App& app, ChatArgs& args);
int run_chat(const ChatArgs& args);

struct ServeArgs {
  std::string model_dir;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  int parallel = 4;
  int queue = 64;
  int64_t context = 4096;
  int threads = 0;
  std::string chat_format;
  int grace_seconds = 30;
  std::string kv_cache = "bf16";
};
void add_serve_command(CLI::App& app, ServeArgs& args);
int run_serve(const ServeArgs& args);

struct BenchArgs {
  std::string model_dir;
  int prompt = 512;
  int gen = 64;
  int threads = 0;
  int reps = 3;
  bool json = false;
  std::string kv_cache = "bf16";
};
void add_bench_command(CLI::App& app, BenchArgs& args);
int run_bench(const BenchArgs& args);

struct QuantizeArgs {
  std::string in_dir;
  std::string out_dir;
  std::string type;
  int threads = 0;
  std::string calibration;  // text file whose tokens weigh the rounding errors
  int64_t calibration_tokens = 8192;
};
struct CompareArgs {
  std::string reference;
  std::string model;
  std::string text;      // score this file's tokens instead of random ids
  int64_t tokens = 0;    // 0: 256 random ids, or the whole text
  int64_t window = 256;  // positions per independent sequence
  uint32_t seed = 1;
  int threads = 0;
  bool json = false;
  std::string kv_cache = "f32";  // the compared model's (the reference's is f32)
  bool decode = false;           // the compared model a token at a time
};
void add_quantize_commands(CLI::App& app, QuantizeArgs& q, CompareArgs& c);
int run_quantize(const QuantizeArgs& args);
int run_compare(const CompareArgs& args);

struct TrainArgs {
  std::string config;
  std::map<std::string, std::string> values;             // --name VALUE per settings field
  std::map<std::string, std::vector<std::string>> lists;  // --data A B ...
};
struct DataPrepareArgs {
  std::string tokenizer;
  std::vector<std::string> inputs;
  std::string out;
  double val_fraction = 0.0;
  int64_t vocab = 0, tokens = 0;  // `whale data random`
  uint64_t seed = 1;
};
void add_train_commands(CLI::App& app, TrainArgs& t, DataPrepareArgs& d);
int run_train(const TrainArgs& args);
// `whale data prepare` and `whale data random`.
int run_data(const CLI::App& app, const DataPrepareArgs& args);

struct TokenizerTrainArgs {
  int32_t vocab = 0;
  std::vector<std::string> inputs;
  std::string out;
  int64_t min_frequency = 2;
  std::string template_from;
};
void add_tokenizer_train_command(CLI::App& app, TokenizerTrainArgs& args);
int run_tokenizer_train(const TokenizerTrainArgs& args);

struct SynthArgs {
  std::string config;
  std::string out_dir;
  uint64_t seed = 1;
};
void add_synth_command(CLI::App& app, SynthArgs& args);
int run_synth(const SynthArgs& args);

}  // namespace whale::app
