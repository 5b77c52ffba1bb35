#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "apps/whale/commands.h"
#include "apps/whale/loaded_model.h"
#include "runtime/engine.h"
#include "serve/server.h"

namespace whale::app {

void add_serve_command(CLI::App& app, ServeArgs& args) {
  auto* cmd = app.add_subcommand("serve", "Serve the DeepSeek API (OpenAI-compatible) over HTTP");
  cmd->add_option("MODEL_DIR", args.model_dir, "model directory (default: the bundled model)");
  cmd->add_option("--host", args.host, "address to bind (default 127.0.0.1: this machine only)");
  cmd->add_option("--port", args.port, "port (0: any free port)")->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", args.api_key, "require Authorization: Bearer KEY (not on /health)");
  cmd->add_option("--parallel", args.parallel, "requests run at once")->check(CLI::Range(1, 256));
  cmd->add_option("--queue", args.queue, "requests that may wait for a slot")
      ->check(CLI::Range(0, 1000));
  cmd->add_option("--ctx", args.context, "tokens per request (prompt + answer)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 24));
  cmd->add_option("--threads", args.threads, "threads (default: every core)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--chat-format", args.chat_format, "v3, r1 or v3.1 (default: from the model)");
  cmd->add_option("--grace", args.grace_seconds, "seconds SIGTERM lets running requests finish")
      ->check(CLI::Range(0, 3600));
  add_kv_cache_option(cmd, args.kv_cache);
}

namespace {

// SIGTERM and SIGINT are turned into bytes on a pipe that a watcher thread reads. A handler works
// whichever thread the signal lands on, including threads libraries started before main (OpenBLAS
// starts its own at load time, with no signal blocked).
int signal_pipe[2] = {-1, -1};

void on_stop_signal(int sig) {
  const char byte = static_cast<char>(sig);
  [[maybe_unused]] ssize_t n = write(signal_pipe[1], &byte, 1);
}

// Waits up to `timeout_ms` (-1: forever) for a signal; true if one came.
bool wait_for_signal(int timeout_ms) {
  pollfd p{signal_pipe[0], POLLIN, 0};
  while (true) {
    const int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    char byte;
    return read(signal_pipe[0], &byte, 1) == 1;
  }
}

}  // namespace

int run_serve(const ServeArgs& args) {
  if (pipe(signal_pipe) != 0) {
    return report("serve", make_error(std::string("cannot create a pipe: ") + std::strerror(errno)));
  }
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);

  auto dir = resolve_model_dir(args.model_dir);
  if (!dir.ok()) return report("serve", dir.error());
  auto m = load_model(*dir, args.threads, false);
  if (!m.ok()) return report("serve", m.error());
  auto format = chat_format_for(*m, args.chat_format);
  if (!format.ok()) return report("serve", format.error());

  runtime::EngineOptions eo;
  eo.parallel = args.parallel;
  eo.context = args.context;
  eo.max_queue = args.queue;
  eo.kv_type = kv_type_of(args.kv_cache);
  runtime::Engine engine(*m->model, *m->tokenizer, *m->backend, eo);

  serve::ServerOptions so;
  so.host = args.host;
  so.port = args.port;
  so.api_key = args.api_key;
  so.http_threads = args.parallel + args.queue + 8;
  so.model_name = std::filesystem::path(*dir).filename().string();
  so.stop_ids = m->stop_ids;
  so.chat_format = *format;
  if (m->tokenizer->config().bos_token) so.bos_token = *m->tokenizer->config().bos_token;
  serve::Server server(engine, *m->tokenizer, so);

  std::thread watcher([&] {
    wait_for_signal(-1);
    std::fprintf(stderr, "whale serve: stopping (running requests get up to %d s to finish)\n",
                 args.grace_seconds);
    std::atomic<bool> stopped{false};
    std::thread stopper([&] {
      engine.shutdown(std::chrono::seconds(args.grace_seconds));
      server.stop();
      stopped = true;
    });
    // A second signal while requests drain stops at once.
    while (!stopped) {
      if (wait_for_signal(100)) {
        std::fprintf(stderr, "whale serve: stopping now\n");
        std::_Exit(1);
      }
    }
    stopper.join();
  });
  std::fprintf(
      stderr, "whale serve: listening on http://%s:%d (%d slots of %lld tokens, chat format %s)\n",
      args.host.c_str(), args.port, args.parallel, static_cast<long long>(engine.context()),
      std::string(tok::chat_format_name(*format)).c_str());
  auto status = server.listen();
  if (!status.ok()) {
    on_stop_signal(SIGTERM);  // wakes the watcher
    watcher.join();
    return report("serve", status.error());
  }
  watcher.join();
  return 0;
}

}  // namespace whale::app
