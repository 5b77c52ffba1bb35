#include "tokenizer/bpe_trainer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <tuple>

#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"

namespace whale::tok {

using nlohmann::json;

namespace {

// DeepSeek's three split regexes, in tokenizer.json's own spelling, and the patterns they are.
const char* const kDigitsRegex = "\\p{N}{1,3}";
const char* const kCjkRegex = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+";
const char* const kWordsRegex =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

}  // namespace

void BpeTrainer::add_text(std::string_view input) {
  std::string repaired;
  std::string_view text = input;
  if (!is_valid_utf8(input)) {
    repaired = repair_utf8(input);
    text = repaired;
  }
  std::vector<Span> pieces{{0, text.size()}}, next;
  for (SplitPattern pattern : {SplitPattern::kDigits, SplitPattern::kCjkKana, SplitPattern::kWords}) {
    next.clear();
    for (const Span& p : pieces) split(pattern, text, p, next);
    pieces.swap(next);
  }
  for (const Span& p : pieces) {
    if (p.end > p.begin) ++counts_[std::string(text.substr(p.begin, p.end - p.begin))];
  }
}

Result<BpeTrainResult> BpeTrainer::train(const BpeTrainOptions& o) const {
  const int64_t n_added = int64_t(o.added_tokens.size());
  if (o.vocab_size < 256 + n_added) {
    return make_error("must be at least 256 + the number of added tokens (" +
                          std::to_string(256 + n_added) + ")",
                      "--vocab");
  }
  if (counts_.empty()) return make_error("no text to train on", "--input");
  const int64_t want = o.vocab_size - 256 - n_added;

  // Distinct pieces, as byte symbols, sorted so that the result does not depend on hashing.
  struct Word {
    std::vector<int32_t> syms;
    int64_t count;
  };
  std::vector<std::pair<std::string, int64_t>> sorted(counts_.begin(), counts_.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [piece, count] : sorted) {
    Word w{{}, count};
    for (unsigned char ch : piece) w.syms.push_back(ch);
    words.push_back(std::move(w));
  }
  std::vector<std::string> token(256);
  for (int b = 0; b < 256; ++b) token[size_t(b)] = std::string(1, char(b));

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;  // may repeat, never misses
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].syms;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t k = pair_key(s[i], s[i + 1]);
      pair_count[k] += words[w].count;
      auto& list = pair_words[k];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }
  // Max-heap on (count, then the smaller pair); entries go stale and are checked when popped.
  using Entry = std::tuple<int64_t, uint64_t>;
  auto worse = [](const Entry& x, const Entry& y) {
    if (std::get<0>(x) != std::get<0>(y)) return std::get<0>(x) < std::get<0>(y);
    return std::get<1>(x) > std::get<1>(y);
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(worse)> heap(worse);
  for (const auto& [k, c] : pair_count) heap.push({c, k});

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int32_t> stamp(words.size(), -1);
  auto change = [&](int32_t a, int32_t b, int64_t delta, int32_t w) {
    const uint64_t k = pair_key(a, b);
    int64_t& c = pair_count[k];
    c += delta;
    if (delta > 0) {
      auto& list = pair_words[k];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  };
  while (int64_t(merges.size()) < want && !heap.empty()) {
    const auto [count, k] = heap.top();
    heap.pop();
    const auto it = pair_count.find(k);
    const int64_t now = it == pair_count.end() ? 0 : it->second;
    if (now != count) {  // stale: requeue with the current count
      if (now > 0) heap.push({now, k});
      continue;
    }
    if (count < o.min_frequency) break;
    const int32_t a = int32_t(k >> 32), b = int32_t(k & 0xffffffffu);
    const int32_t z = int32_t(token.size());
    token.push_back(token[size_t(a)] + token[size_t(b)]);
    merges.push_back({a, b});
    const std::vector<int32_t> where = std::move(pair_words[k]);
    pair_words.erase(k);
    for (int32_t w : where) {
      if (stamp[size_t(w)] == z) continue;
      stamp[size_t(w)] = z;
      auto& s = words[size_t(w)].syms;
      const int64_t c = words[size_t(w)].count;
      std::vector<int32_t> out;
      out.reserve(s.size());
      bool prev_merged = false;  // out.back() is a z made just before
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          if (!out.empty()) {
            if (prev_merged) {
              change(z, z, c, w);  // (b, a) between the two was removed by the previous merge
            } else {
              change(out.back(), a, -c, w);
              change(out.back(), z, c, w);
            }
          }
          if (i + 2 < s.size()) {
            change(b, s[i + 2], -c, w);
            // The right neighbour joins z now unless it starts another (a, b).
            const bool next_merges = i + 3 < s.size() && s[i + 2] == a && s[i + 3] == b;
            if (!next_merges) change(z, s[i + 2], c, w);
          }
          out.push_back(z);
          prev_merged = true;
          i += 2;
        } else {
          out.push_back(s[i]);
          prev_merged = false;
          ++i;
        }
      }
      s.swap(out);
    }
    pair_count.erase(k);
    // Requeue every pair around the new token with its current count.
    for (int32_t w : where) {
      const auto& s = words[size_t(w)].syms;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        if (s[i] == z || s[i + 1] == z) heap.push({pair_count[pair_key(s[i], s[i + 1])], pair_key(s[i], s[i + 1])});
      }
    }
    if (o.progress && (merges.size() % 256 == 0 || int64_t(merges.size()) == want)) {
      o.progress(int64_t(merges.size()), want);
    }
  }

  json vocab = json::object();
  for (size_t id = 0; id < token.size(); ++id) vocab[byte_level_encode(token[id])] = id;
  json merge_list = json::array();
  for (const auto& [a, b] : merges) {
    merge_list.push_back(byte_level_encode(token[size_t(a)]) + " " + byte_level_encode(token[size_t(b)]));
  }
  json added = json::array();
  for (int64_t i = 0; i < n_added; ++i) {
    const TrainedAddedToken& t = o.added_tokens[size_t(i)];
    added.push_back({{"id", int64_t(token.size()) + i}, {"content", t.content}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                     {"special", t.special}});
  }
  auto split = [](const char* regex) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"},
                {"invert", false}};
  };
  json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", json::array()}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {split(kDigitsRegex), split(kCjkRegex), split(kWordsRegex),
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
           {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
        {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", merge_list}}},
  };
  BpeTrainResult r;
  r.tokenizer_json = j.dump(1);
  r.merges = int32_t(merges.size());
  r.vocab_size = int32_t(token.size() + size_t(n_added));
  r.distinct_pieces = int64_t(words.size());
  return r;
}

std::vector<TrainedAddedToken> deepseek_added_tokens() {
  return {{"<｜begin▁of▁sentence｜>", true}, {"<｜end▁of▁sentence｜>", true},
          {"<｜▁pad▁｜>", true},             {"<｜fim▁hole｜>", false},
          {"<｜fim▁begin｜>", false},         {"<｜fim▁end｜>", false},
          {"<｜User｜>", false},              {"<｜Assistant｜>", false},
          {"<|EOT|>", true},                  {"<｜tool▁calls▁begin｜>", false},
          {"<｜tool▁calls▁end｜>", false},    {"<｜tool▁call▁begin｜>", false},
          {"<｜tool▁call▁end｜>", false},     {"<｜tool▁outputs▁begin｜>", false},
          {"<｜tool▁outputs▁end｜>", false},  {"<｜tool▁output▁begin｜>", false},
          {"<｜tool▁output▁end｜>", false},   {"<｜tool▁sep｜>", false}};
}

Status write_trained_tokenizer(const std::string& dir, const BpeTrainResult& result,
                               const std::string& chat_template) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error("cannot create the directory: " + ec.message(), {}, dir);
  const json config = {{"add_bos_token", true},
                       {"add_eos_token", false},
                       {"bos_token", "<｜begin▁of▁sentence｜>"},
                       {"eos_token", "<｜end▁of▁sentence｜>"},
                       {"pad_token", "<｜▁pad▁｜>"},
                       {"clean_up_tokenization_spaces", false},
                       {"legacy", true},
                       {"model_max_length", 16384},
                       {"tokenizer_class", "LlamaTokenizerFast"},
                       {"unk_token", nullptr},
                       {"use_default_system_prompt", false},
                       {"chat_template", chat_template}};
  for (const auto& [name, text] : {std::pair<std::string, std::string>{"tokenizer.json", result.tokenizer_json},
                                   {"tokenizer_config.json", config.dump(2)}}) {
    const fs::path path = fs::path(dir) / name;
    const fs::path tmp = path.string() + ".tmp";
    std::ofstream f(tmp, std::ios::binary);
    f << text << "\n";
    f.close();
    if (!f) return make_error("cannot write", {}, tmp.string());
    fs::rename(tmp, path, ec);
    if (ec) return make_error("cannot rename into place: " + ec.message(), {}, path.string());
  }
  return ok_status();
}

}  // namespace whale::tok
