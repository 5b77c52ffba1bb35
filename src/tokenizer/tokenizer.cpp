#include "tokenizer/tokenizer.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

namespace whale::tok {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Largest tokenizer.json accepted (DeepSeek's is 7.8 MB).
constexpr size_t kMaxTokenizerJson = 256u << 20;
constexpr int64_t kMaxVocab = int64_t{1} << 24;

Error field_error(const std::string& field, const std::string& message, const std::string& source,
                  std::string hint = {}) {
  return make_error(message, field, source, std::move(hint));
}

bool is_empty_normalizer(const json& n) {
  if (n.is_null()) return true;
  if (!n.is_object()) return false;
  const auto type = n.find("type");
  if (type == n.end() || *type != "Sequence") return false;
  const auto list = n.find("normalizers");
  return list != n.end() && list->is_array() && list->empty();
}

bool flag(const json& obj, const char* key, bool fallback) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// A token string from tokenizer_config.json: "text" or {"content": "text", ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  const auto it = cfg.find(key);
  if (it == cfg.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

Result<Tokenizer> Tokenizer::load(const std::string& path) {
  std::error_code ec;
  const bool is_dir = fs::is_directory(path, ec);
  const fs::path json_path = is_dir ? fs::path(path) / "tokenizer.json" : fs::path(path);
  if (!fs::exists(json_path, ec)) {
    return make_error("tokenizer.json not found", {}, path,
                      "pass a model or tokenizer directory holding tokenizer.json");
  }
  WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(json_path.string(), kMaxTokenizerJson));
  WHALE_ASSIGN_OR_RETURN(Tokenizer t, from_json(text, json_path.string()));

  const fs::path cfg_path = json_path.parent_path() / "tokenizer_config.json";
  if (fs::exists(cfg_path, ec)) {
    WHALE_ASSIGN_OR_RETURN(std::string cfg_text, read_text_file(cfg_path.string()));
    const json cfg = json::parse(cfg_text, nullptr, false);
    if (cfg.is_discarded() || !cfg.is_object()) {
      return make_error("not valid JSON", {}, cfg_path.string());
    }
    t.config_.bos_token = config_token(cfg, "bos_token");
    t.config_.eos_token = config_token(cfg, "eos_token");
    t.config_.add_bos_token = flag(cfg, "add_bos_token", false);
    if (const auto ct = cfg.find("chat_template"); ct != cfg.end()) {
      if (ct->is_string()) {
        t.config_.chat_template = ct->get<std::string>();
      } else if (ct->is_array()) {  // [{"name": "default", "template": ...}, ...]
        for (const auto& entry : *ct) {
          if (entry.is_object() && entry.value("name", "") == "default" &&
              entry.contains("template") && entry["template"].is_string()) {
            t.config_.chat_template = entry["template"].get<std::string>();
          }
        }
      }
    }
  }
  return t;
}

Result<Tokenizer> Tokenizer::from_json(const std::string& json_text, const std::string& source) {
  // The vocabulary (128k entries) and merges are taken straight from the parser instead of
  // being built into the JSON tree: an std::map of 128k keys costs most of the load time.
  std::vector<std::pair<std::string, json>> raw_vocab;
  std::vector<std::string> raw_merges;
  std::string path[3];  // the key at depths 1 and 2
  std::string pending_key;
  bool vocab_is_object = false, merges_are_strings = true;
  const json::parser_callback_t capture = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth <= 2) {
      path[depth] = parsed.get<std::string>();
      return true;
    }
    const bool in_model = path[1] == "model";
    if (in_model && depth == 2 && event == json::parse_event_t::object_start &&
        path[2] == "vocab") {
      vocab_is_object = true;
    }
    if (in_model && depth == 3 && path[2] == "vocab") {
      if (event == json::parse_event_t::key) {
        pending_key = parsed.get<std::string>();
        return false;  // not stored in the tree
      }
      if (event == json::parse_event_t::value) {
        raw_vocab.emplace_back(std::move(pending_key), std::move(parsed));
        return false;
      }
    }
    if (in_model && depth == 3 && path[2] == "merges" && merges_are_strings) {
      if (event == json::parse_event_t::value && parsed.is_string()) {
        raw_merges.push_back(parsed.get<std::string>());
        return false;
      }
      if (event != json::parse_event_t::value) merges_are_strings = false;  // [left, right] form
    }
    return true;
  };
  const json root = json::parse(json_text, capture, /*allow_exceptions=*/false);
  if (root.is_discarded()) return make_error("not valid JSON", {}, source);
  if (!root.is_object()) return make_error("must be a JSON object", {}, source);
  Tokenizer t;

  // --- model: byte-level BPE ---
  const auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) {
    return field_error("model", "missing object", source);
  }
  const json& model = *model_it;
  if (model.value("type", "") != "BPE") {
    return field_error("model.type", "only BPE models are supported", source);
  }
  if (flag(model, "byte_fallback", false)) {
    return field_error("model.byte_fallback", "byte fallback is not supported", source);
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix", "dropout"}) {
    const auto it = model.find(key);
    if (it != model.end() && !it->is_null()) {
      return field_error(std::string("model.") + key, "must be null for a byte-level BPE", source);
    }
  }
  if (!vocab_is_object) return field_error("model.vocab", "missing object", source);
  int64_t max_id = -1;
  std::vector<std::pair<std::string, int64_t>> vocab;
  vocab.reserve(raw_vocab.size());
  for (auto& [text, id] : raw_vocab) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxVocab) {
      return field_error("model.vocab." + text, "id must be an integer in [0, 2^24)", source);
    }
    max_id = std::max(max_id, id.get<int64_t>());
    vocab.emplace_back(std::move(text), id.get<int64_t>());
  }
  const auto added_it = root.find("added_tokens");
  if (added_it != root.end() && !added_it->is_null()) {
    if (!added_it->is_array()) return field_error("added_tokens", "must be a list", source);
    for (const auto& a : *added_it) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string() ||
          a["content"].get<std::string>().empty() || a["id"].get<int64_t>() < 0 ||
          a["id"].get<int64_t>() >= kMaxVocab) {
        return field_error("added_tokens",
                           "each entry needs an integer id in [0, 2^24) and non-empty content",
                           source);
      }
      AddedToken tok;
      tok.id = static_cast<int32_t>(a["id"].get<int64_t>());
      tok.content = a["content"].get<std::string>();
      tok.special = flag(a, "special", false);
      tok.lstrip = flag(a, "lstrip", false);
      tok.rstrip = flag(a, "rstrip", false);
      tok.single_word = flag(a, "single_word", false);
      if (!is_valid_utf8(tok.content)) {
        return field_error("added_tokens", "content is not valid UTF-8", source);
      }
      t.added_.push_back(std::move(tok));
      max_id = std::max<int64_t>(max_id, t.added_.back().id);
    }
  }
  if (max_id < 0) return field_error("model.vocab", "is empty", source);

  // Token bytes: byte-level decoded where every character is in the alphabet, else the text's
  // own UTF-8 (as HF's ByteLevel decoder does).
  t.token_bytes_.assign(static_cast<size_t>(max_id + 1), std::string());
  t.defined_.assign(static_cast<size_t>(max_id + 1), false);
  std::vector<std::string> bpe_tokens(static_cast<size_t>(max_id + 1));
  for (auto& [text, id] : vocab) {
    const auto bytes = byte_level_decode(text);
    if (bytes) bpe_tokens[static_cast<size_t>(id)] = *bytes;
    t.token_bytes_[static_cast<size_t>(id)] = bytes ? *bytes : text;
    t.defined_[static_cast<size_t>(id)] = true;
  }
  for (const AddedToken& a : t.added_) {
    const auto bytes = byte_level_decode(a.content);
    t.token_bytes_[static_cast<size_t>(a.id)] = bytes ? *bytes : a.content;
    t.defined_[static_cast<size_t>(a.id)] = true;
  }

  const auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) {
    return field_error("model.merges", "missing list", source);
  }
  std::vector<json> merge_entries(raw_merges.begin(), raw_merges.end());
  merge_entries.insert(merge_entries.end(), merges_it->begin(), merges_it->end());
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merge_entries.size());
  for (const auto& m : merge_entries) {
    std::string left, right;
    if (m.is_string()) {  // "left right"
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return field_error("model.merges", "entry \"" + s + "\" is not \"left right\"", source);
      }
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return field_error("model.merges", "entries must be \"left right\" or [left, right]", source);
    }
    const auto lb = byte_level_decode(left), rb = byte_level_decode(right);
    if (!lb || !rb) {
      return field_error("model.merges", "entry uses characters outside the byte-level alphabet",
                         source);
    }
    merges.emplace_back(*lb, *rb);
  }
  auto bpe = Bpe::build(std::move(bpe_tokens), merges, flag(model, "ignore_merges", false));
  if (!bpe.ok()) {
    Error e = bpe.error();
    e.file = source;
    return e;
  }
  t.bpe_ = std::make_unique<Bpe>(std::move(*bpe));

  // --- normalizer, pre-tokenizer, decoder ---
  if (const auto n = root.find("normalizer"); n != root.end() && !is_empty_normalizer(*n)) {
    return field_error("normalizer", "normalizers are not supported", source,
                       "DeepSeek's byte-level tokenizers have none");
  }
  const auto pre_it = root.find("pre_tokenizer");
  if (pre_it == root.end() || !pre_it->is_object()) {
    return field_error("pre_tokenizer", "missing object", source);
  }
  std::vector<json> steps;
  if (pre_it->value("type", "") == "Sequence") {
    const auto list = pre_it->find("pretokenizers");
    if (list == pre_it->end() || !list->is_array()) {
      return field_error("pre_tokenizer.pretokenizers", "missing list", source);
    }
    steps.assign(list->begin(), list->end());
  } else {
    steps.push_back(*pre_it);
  }
  bool byte_level_seen = false;
  for (size_t i = 0; i < steps.size(); ++i) {
    const json& step = steps[i];
    const std::string field = "pre_tokenizer[" + std::to_string(i) + "]";
    const std::string type = step.is_object() ? step.value("type", "") : "";
    if (byte_level_seen) return field_error(field, "ByteLevel must be the last step", source);
    if (type == "Split") {
      if (step.value("behavior", "") != "Isolated" || flag(step, "invert", false)) {
        return field_error(field, "only behavior \"Isolated\" without invert is supported", source);
      }
      const auto pattern = step.find("pattern");
      if (pattern == step.end() || !pattern->is_object() || !pattern->contains("Regex") ||
          !(*pattern)["Regex"].is_string()) {
        return field_error(field + ".pattern", "expected {\"Regex\": ...}", source);
      }
      auto split = parse_split_pattern((*pattern)["Regex"].get<std::string>());
      if (!split.ok()) {
        return field_error(field + ".pattern", split.error().message, source, split.error().hint);
      }
      t.splits_.push_back(*split);
    } else if (type == "ByteLevel") {
      byte_level_seen = true;
      if (flag(step, "add_prefix_space", false)) {
        return field_error(field + ".add_prefix_space", "must be false", source);
      }
      if (flag(step, "use_regex", true)) {
        return field_error(field + ".use_regex", "must be false (GPT-2's split is not supported)",
                           source);
      }
    } else {
      return field_error(field + ".type", "unsupported pre-tokenizer \"" + type + "\"", source);
    }
  }
  if (!byte_level_seen) return field_error("pre_tokenizer", "has no ByteLevel step", source);
  const auto dec = root.find("decoder");
  if (dec == root.end() || !dec->is_object() || dec->value("type", "") != "ByteLevel") {
    return field_error("decoder", "must be ByteLevel", source);
  }
  t.matcher_ = std::make_unique<AddedTokenMatcher>(t.added_);
  return t;
}

std::optional<int32_t> Tokenizer::token_id(std::string_view text) const {
  for (const AddedToken& a : added_) {
    if (a.content == text) return a.id;
  }
  const int32_t id = bpe_->find(text);
  if (id >= 0) return id;
  return std::nullopt;
}

Status Tokenizer::pre_tokenize(std::string_view text, Span segment,
                               std::vector<Span>& pieces) const {
  pieces.assign(1, segment);
  std::vector<Span> next;
  for (SplitPattern pattern : splits_) {
    next.clear();
    for (const Span& p : pieces) split(pattern, text, p, next);
    pieces.swap(next);
  }
  return ok_status();
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view input, SpecialTokens mode) const {
  std::string repaired;
  std::string_view text = input;
  if (!is_valid_utf8(input)) {
    repaired = repair_utf8(input);
    text = repaired;
  }
  std::vector<Segment> segments;
  if (mode == SpecialTokens::kParse) {
    segments = matcher_->split(text);
  } else if (!text.empty()) {
    segments.push_back({0, text.size(), -1});
  }
  std::vector<int32_t> ids;
  WHALE_TRY(encode_segments(text, segments, ids));
  return ids;
}

Status Tokenizer::encode_segments(std::string_view text, const std::vector<Segment>& segments,
                                  std::vector<int32_t>& ids) const {
  ids.reserve(ids.size() + text.size() / 3 + 1);
  std::vector<Span> pieces;
  for (const Segment& s : segments) {
    if (s.token >= 0) {
      ids.push_back(s.token);
      continue;
    }
    WHALE_TRY(pre_tokenize(text, {s.begin, s.end}, pieces));
    for (const Span& p : pieces) bpe_->encode(text.substr(p.begin, p.end - p.begin), ids);
  }
  return ok_status();
}

Result<std::vector<int32_t>> Tokenizer::encode_with_scaffolding(
    std::string_view text, std::span<const Span> scaffolding) const {
  if (!is_valid_utf8(text)) {
    // Scaffolding offsets refer to the text as given; repairing would move them.
    return make_error("chat text is not valid UTF-8", "text");
  }
  // Added tokens found outside the scaffolding go back to being text, merged with their
  // neighbours so that the text around them is split exactly as if they were not tokens.
  std::vector<Segment> segments;
  size_t k = 0;
  for (const Segment& s : matcher_->split(text)) {
    bool inside = false;
    if (s.token >= 0) {
      while (k < scaffolding.size() && scaffolding[k].end <= s.begin) ++k;
      inside =
          k < scaffolding.size() && scaffolding[k].begin <= s.begin && s.end <= scaffolding[k].end;
    }
    if (s.token >= 0 && inside) {
      segments.push_back(s);
    } else if (!segments.empty() && segments.back().token < 0 && segments.back().end == s.begin) {
      segments.back().end = s.end;
    } else {
      segments.push_back({s.begin, s.end, -1});
    }
  }
  std::vector<int32_t> ids;
  WHALE_TRY(encode_segments(text, segments, ids));
  return ids;
}

Result<std::string> Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!is_valid_id(ids[i])) {
      return make_error("token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                            " is not in the vocabulary of " + std::to_string(vocab_size()),
                        "ids");
    }
    bytes += token_bytes(ids[i]);
  }
  return repair_utf8(bytes);
}

Result<std::string> StreamDecoder::push(int32_t id) {
  if (!tokenizer_->is_valid_id(id)) {
    return make_error("token id " + std::to_string(id) + " is not in the vocabulary", "ids");
  }
  pending_ += tokenizer_->token_bytes(id);
  const size_t ready = complete_utf8_prefix(pending_);
  std::string out = repair_utf8(std::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = repair_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace whale::tok
