#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <vector>

#include "apps/whale/commands.h"
#include "backends/cpu/cpu_backend.h"
#include "core/thread_pool.h"
#include "model/deepseek.h"

namespace whale::app {

void add_logits_command(CLI::App& app, LogitsArgs& args) {
  auto* cmd = app.add_subcommand("logits", "Run token ids through a model and print logits");
  cmd->add_option("MODEL_DIR", args.model_dir, "model directory")->required();
  cmd->add_option("--ids", args.ids, "comma-separated token ids, e.g. 0,4,19")->required();
  cmd->add_option("--out", args.out,
                  "write all positions' logits as little-endian f32 [n_tokens, vocab_size]");
  cmd->add_flag("--naive", args.naive, "use the naive (expanded K/V) attention form");
  cmd->add_option("--threads", args.threads, "threads (default: every core)")
      ->check(CLI::Range(0, 1024));
}

namespace {

Status write_logits(const std::string& path, const std::vector<float>& logits) {
  // Write beside the target and rename, so a failed run never leaves a partial file.
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return make_error(std::string("cannot write: ") + std::strerror(errno), "--out", tmp);
  const size_t written = std::fwrite(logits.data(), sizeof(float), logits.size(), f);
  const bool closed = std::fclose(f) == 0;
  if (written != logits.size() || !closed) {
    std::remove(tmp.c_str());
    return make_error("short write", "--out", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    return make_error("cannot rename into place: " + ec.message(), "--out", path);
  }
  return ok_status();
}

int fail(const Error& e) { return report("logits", e); }

}  // namespace

int run_logits(const LogitsArgs& args) {
  auto ids = parse_id_list(args.ids);
  if (!ids.ok()) return fail(ids.error());
  if (ids->empty()) return fail(make_error("no token ids given", "--ids"));
  auto model = model::Model::load(args.model_dir);
  if (!model.ok()) return fail(model.error());
  if (auto s = model::validate_token_ids(*ids, model->config().vocab_size); !s.ok()) {
    return fail(s.error());
  }

  ThreadPool pool(args.threads);
  cpu::CpuBackend backend(pool);
  model::KvCache cache(model->config(), static_cast<int64_t>(ids->size()));
  model::ForwardOptions options;
  options.all_logits = !args.out.empty();  // every row only when they are written out
  options.attention = args.naive ? model::AttentionForm::kNaive : model::AttentionForm::kAuto;
  auto logits = model->forward(backend, *ids, cache, options);
  if (!logits.ok()) return fail(logits.error());

  const int64_t vocab = model->config().vocab_size;
  if (!args.out.empty()) {
    if (auto s = write_logits(args.out, *logits); !s.ok()) return fail(s.error());
  }
  const float* last = logits->data() + static_cast<int64_t>(logits->size()) - vocab;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  const size_t k = std::min<size_t>(10, order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<long>(k), order.end(),
                    [&](int32_t a, int32_t b) { return last[a] > last[b]; });
  std::printf("top %zu at position %zu:\n", k, ids->size() - 1);
  for (size_t i = 0; i < k; ++i) std::printf("%8d %12.6f\n", order[i], last[order[i]]);
  return 0;
}

Result<std::vector<int32_t>> parse_id_list(const std::string& text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find(',', i);
    if (j == std::string::npos) j = text.size();
    std::string item = text.substr(i, j - i);
    // Allow spaces around items, nothing else.
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (item.empty() || item.find_first_not_of("0123456789-") != std::string::npos) {
      return make_error("\"" + item + "\" is not an integer token id", "--ids");
    }
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (errno != 0 || *end != '\0' || v < INT32_MIN || v > INT32_MAX) {
      return make_error("\"" + item + "\" is not a valid token id", "--ids");
    }
    ids.push_back(static_cast<int32_t>(v));
    i = j + 1;
    if (j + 1 == text.size()) return make_error("trailing comma", "--ids");
  }
  return ids;
}

}  // namespace whale::app
