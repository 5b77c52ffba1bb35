// Tokenizer speed: load time and single-thread encode throughput on a text file.
//   whale_tokenizer_bench TOKENIZER_DIR CORPUS_FILE [--lines]
// Prints one JSON line. Compare with reference/bench_hf_tokenizer.py on the same file.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER_DIR CORPUS_FILE\n", argv[0]);
    return 2;
  }
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto tokenizer = whale::tok::Tokenizer::load(argv[1]);
  const double load_s = std::chrono::duration<double>(clock::now() - t0).count();
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", tokenizer.error().to_string().c_str());
    return 2;
  }
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();

  // Line by line, each line with its newline and added tokens recognised, like
  // reference/bench_hf_tokenizer.py.
  size_t tokens = 0;
  const auto t1 = clock::now();
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    end = end == std::string::npos ? text.size() : end + 1;
    auto ids = tokenizer->encode(std::string_view(text).substr(start, end - start),
                                 whale::tok::SpecialTokens::kParse);  // as the HF script does
    tokens += ids->size();
    start = end;
  }
  const double encode_s = std::chrono::duration<double>(clock::now() - t1).count();
  std::printf(
      "{\"engine\": \"whale\", \"load_seconds\": %.3f, \"mb\": %.2f, \"tokens\": %zu, "
      "\"seconds\": %.3f, \"mb_per_s\": %.2f}\n",
      load_s, text.size() / 1e6, tokens, encode_s, text.size() / 1e6 / encode_s);
  return 0;
}
