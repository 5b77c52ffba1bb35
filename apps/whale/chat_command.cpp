#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/whale/commands.h"
#include "apps/whale/loaded_model.h"
#include "runtime/generator.h"

namespace whale::app {

namespace {

std::atomic<bool> g_interrupted{false};

void on_sigint(int) { g_interrupted = true; }

// SIGINT stops the current answer instead of the process. No SA_RESTART: a read waiting at the
// prompt returns, so Ctrl-C there gives a fresh prompt.
void install_sigint_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
}

constexpr std::string_view kThinkEnd = "</think>";

// Prints an answer that may open with reasoning: reasoning dimmed (or hidden) up to </think>,
// which may arrive split across pieces.
class AnswerPrinter {
 public:
  AnswerPrinter(bool thinking, bool hide, bool color)
      : thinking_(thinking), hide_(hide), color_(color) {
    if (thinking_ && !hide_ && color_) out("\033[2m");
  }
  void push(std::string_view text) {
    if (!thinking_) return out(text);
    held_ += text;
    const size_t end = held_.find(kThinkEnd);
    if (end == std::string::npos) {
      // Keep a tail that may be the start of </think>.
      size_t keep = 0;
      for (size_t n = std::min(kThinkEnd.size() - 1, held_.size()); n > 0; --n) {
        if (held_.compare(held_.size() - n, n, kThinkEnd, 0, n) == 0) {
          keep = n;
          break;
        }
      }
      if (!hide_) out(std::string_view(held_).substr(0, held_.size() - keep));
      held_.erase(0, held_.size() - keep);
      return;
    }
    if (!hide_) out(std::string_view(held_).substr(0, end));
    if (color_ && !hide_) out("\033[0m");
    if (!hide_) out("\n");
    thinking_ = false;
    std::string rest = held_.substr(end + kThinkEnd.size());
    held_.clear();
    // The answer proper usually starts after blank lines.
    rest.erase(0, rest.find_first_not_of('\n') == std::string::npos ? rest.size()
                                                                    : rest.find_first_not_of('\n'));
    out(rest);
  }
  void finish() {
    if (thinking_ && !hide_) out(held_);
    if (color_ && thinking_ && !hide_) out("\033[0m");
    out("\n");
  }

 private:
  void out(std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  }
  bool thinking_, hide_, color_;
  std::string held_;
};

Status save_conversation(const std::string& path, const std::vector<tok::ChatMessage>& messages) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& m : messages)
    list.push_back({{"role", m.role}, {"content", m.content.value_or("")}});
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f << list.dump(2) << "\n";
    if (!f) return make_error("cannot write", "/save", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return make_error("cannot write: " + ec.message(), "/save", path);
  }
  return ok_status();
}

}  // namespace

void add_chat_command(CLI::App& app, ChatArgs& args) {
  auto* cmd = app.add_subcommand("chat", "Talk with a model in the terminal");
  add_generation_options(cmd, args.gen);
  cmd->add_flag("--hide-thinking", args.hide_thinking, "do not show a reasoning model's thinking");
}

int run_chat(const ChatArgs& args) {
  if (auto s = sampling::validate(args.gen.sampling, int64_t{1} << 30); !s.ok())
    return report("chat", s.error());
  auto dir = resolve_model_dir(args.gen.model_dir);
  if (!dir.ok()) return report("chat", dir.error());
  const bool interactive = isatty(STDIN_FILENO);
  auto m = load_model(*dir, args.gen.threads, false);
  if (!m.ok()) return report("chat", m.error());
  auto format = chat_format_for(*m, args.gen.chat_format);
  if (!format.ok()) return report("chat", format.error());

  install_sigint_handler();
  runtime::Generator gen(*m->model, m->tokenizer.get(), *m->backend, args.gen.context,
                         kv_type_of(args.gen.kv_cache));
  std::vector<tok::ChatMessage> messages;
  std::string system = args.gen.system;
  const bool color = interactive && isatty(STDOUT_FILENO);
  if (interactive) {
    std::fprintf(
        stderr,
        "chat format %s. /reset, /system TEXT, /save FILE, /exit; Ctrl-C stops an answer.\n",
        std::string(tok::chat_format_name(*format)).c_str());
  }
  for (;;) {
    if (interactive) {
      std::printf("%s> %s", color ? "\033[1m" : "", color ? "\033[0m" : "");
      std::fflush(stdout);
    }
    std::string line;
    g_interrupted = false;
    if (!std::getline(std::cin, line)) {
      if (g_interrupted && interactive) {  // Ctrl-C at the prompt: a fresh prompt
        std::cin.clear();
        std::printf("\n");
        continue;
      }
      break;  // end of input
    }
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      messages.clear();
      std::printf("(conversation cleared)\n");
      continue;
    }
    if (line.rfind("/system", 0) == 0) {
      system = line.size() > 8 ? line.substr(8) : "";
      messages.clear();
      std::printf("(system prompt set; conversation cleared)\n");
      continue;
    }
    if (line.rfind("/save", 0) == 0) {
      const std::string path = line.size() > 6 ? line.substr(6) : "";
      if (path.empty()) {
        std::printf("(usage: /save FILE)\n");
      } else if (auto s = save_conversation(path, messages); !s.ok()) {
        std::printf("(%s)\n", s.error().to_string().c_str());
      } else {
        std::printf("(saved %zu messages to %s)\n", messages.size(), path.c_str());
      }
      continue;
    }

    messages.push_back({"user", line, {}, false});
    std::vector<tok::ChatMessage> convo;
    if (!system.empty()) convo.push_back({"system", system, {}, false});
    convo.insert(convo.end(), messages.begin(), messages.end());
    tok::RenderedChat rendered;
    auto prompt = chat_prompt(*m, *format, convo, args.gen.thinking, &rendered);
    if (!prompt.ok()) return report("chat", prompt.error());
    const runtime::GenerationRequest req =
        generation_request(args.gen, std::move(*prompt), m->stop_ids);
    const bool thinking = tok::opens_thinking(rendered);
    AnswerPrinter printer(thinking, args.hide_thinking, color);
    g_interrupted = false;
    auto result = gen.generate(
        req, [&](std::string_view t) { printer.push(t); }, &g_interrupted);
    printer.finish();
    if (!result.ok()) {
      // A conversation longer than the context: say so and let the user go on.
      std::printf("(%s)\n", result.error().to_string().c_str());
      messages.pop_back();
      continue;
    }
    if (result->finish == runtime::FinishReason::kCancelled) std::printf("(stopped)\n");
    if (result->finish == runtime::FinishReason::kContext)
      std::printf("(the context is full: /reset to start over)\n");
    messages.push_back({"assistant",
                        (thinking ? std::string("<think>\n") : std::string()) + result->text,
                        {},
                        false});
  }
  return 0;
}

}  // namespace whale::app
