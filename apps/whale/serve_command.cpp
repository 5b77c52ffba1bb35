#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
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
}

int run_serve(const ServeArgs& args) {
  // SIGTERM and SIGINT are taken by a thread of their own: block them before any thread starts
  // (threads inherit the mask), so none of them is killed by one.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

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
    int sig = 0;
    sigwait(&signals, &sig);
    std::fprintf(stderr, "whale serve: stopping (running requests get up to %d s to finish)\n",
                 args.grace_seconds);
    std::atomic<bool> stopped{false};
    std::thread stopper([&] {
      engine.shutdown(std::chrono::seconds(args.grace_seconds));
      server.stop();
      stopped = true;
    });
    // A second signal while requests drain stops at once.
    const timespec poll{0, 100'000'000};
    while (!stopped) {
      if (sigtimedwait(&signals, nullptr, &poll) > 0) {
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
    pthread_kill(watcher.native_handle(), SIGTERM);
    watcher.join();
    return report("serve", status.error());
  }
  watcher.join();
  return 0;
}

}  // namespace whale::app
