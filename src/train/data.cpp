#include "train/data.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "core/splitmix.h"
#include "tokenizer/tokenizer.h"

namespace whale::train {

namespace fs = std::filesystem;

Status write_shard(const std::string& path, std::span<const int32_t> ids) {
  int32_t max_id = 0;
  for (int32_t id : ids) {
    if (id < 0) return make_error("negative token id", {}, path);
    max_id = std::max(max_id, id);
  }
  const uint32_t width = max_id < 65536 ? 2 : 4;
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return make_error(std::string("cannot create: ") + std::strerror(errno), {}, tmp);
  uint8_t header[kShardHeaderBytes];
  std::memcpy(header, kShardMagic, 8);
  const uint64_t count = ids.size();
  std::memcpy(header + 8, &kShardVersion, 4);
  std::memcpy(header + 12, &width, 4);
  std::memcpy(header + 16, &count, 8);
  bool ok = std::fwrite(header, 1, sizeof header, f) == sizeof header;
  std::vector<uint8_t> buf;
  const size_t chunk = 1 << 20;
  for (size_t i = 0; ok && i < ids.size(); i += chunk) {
    const size_t n = std::min(chunk, ids.size() - i);
    buf.resize(n * width);
    for (size_t j = 0; j < n; ++j) {
      const uint32_t v = uint32_t(ids[i + j]);
      if (width == 2) {
        const uint16_t s = uint16_t(v);
        std::memcpy(buf.data() + j * 2, &s, 2);
      } else {
        std::memcpy(buf.data() + j * 4, &v, 4);
      }
    }
    ok = std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
  }
  ok = std::fflush(f) == 0 && ok;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return make_error("cannot write the shard: " + why, {}, path);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return make_error("cannot rename into place: " + ec.message(), {}, path);
  return ok_status();
}

Result<Shard> Shard::open(const std::string& path) {
  WHALE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::open(path));
  Shard s;
  if (file->size() < kShardHeaderBytes || std::memcmp(file->data(), kShardMagic, 8) != 0) {
    return make_error("not a whale token shard (no WHALETOK header)", {}, path,
                      "make shards with `whale data prepare`");
  }
  uint32_t version = 0, width = 0;
  uint64_t count = 0;
  std::memcpy(&version, file->data() + 8, 4);
  std::memcpy(&width, file->data() + 12, 4);
  std::memcpy(&count, file->data() + 16, 8);
  if (version != kShardVersion) {
    return make_error("unsupported shard version " + std::to_string(version), {}, path);
  }
  if (width != 2 && width != 4) {
    return make_error("bad token width " + std::to_string(width) + " (2 or 4)", {}, path);
  }
  const uint64_t payload = file->size() - kShardHeaderBytes;
  if (count > payload / width || count * width != payload) {
    return make_error("the header says " + std::to_string(count) + " tokens but the file holds " +
                          std::to_string(payload / width) + " (truncated or corrupt)",
                      {}, path);
  }
  s.count_ = int64_t(count);
  s.width_ = width;
  s.file_ = std::move(file);
  return s;
}

int32_t Shard::at(int64_t i) const {
  const uint8_t* p = file_->data() + kShardHeaderBytes + size_t(i) * width_;
  if (width_ == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return int32_t(v);
  }
  uint32_t v;
  std::memcpy(&v, p, 4);
  return int32_t(v);
}

Result<WindowStream> WindowStream::open(const std::vector<std::string>& paths,
                                        const std::string& prefix, int64_t window, uint64_t seed) {
  WindowStream w;
  w.window_ = window;
  w.seed_ = seed;
  std::vector<std::string> files;
  for (const std::string& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> found;
      for (const auto& entry : fs::directory_iterator(p, ec)) {
        const std::string name = entry.path().filename().string();
        if (name.rfind(prefix, 0) == 0 && entry.path().extension() == ".bin") {
          found.push_back(entry.path().string());
        }
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) {
        return make_error("no " + prefix + "*.bin shards in the directory", {}, p);
      }
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(p);
    }
  }
  for (const std::string& f : files) {
    WHALE_ASSIGN_OR_RETURN(Shard s, Shard::open(f));
    for (int64_t start = 0; start + window <= s.size(); start += window) {
      w.starts_.push_back({int32_t(w.shards_.size()), start});
    }
    w.shards_.push_back(std::move(s));
  }
  if (w.starts_.empty()) {
    return make_error("the shards hold no window of " + std::to_string(window) + " tokens",
                      files.empty() ? std::string() : files.front(), {},
                      "use more text or a shorter sequence length");
  }
  w.shuffle();
  return w;
}

int64_t WindowStream::tokens() const {
  int64_t n = 0;
  for (const Shard& s : shards_) n += s.size();
  return n;
}

void WindowStream::shuffle() {
  order_.resize(starts_.size());
  std::iota(order_.begin(), order_.end(), int64_t{0});
  // Fisher-Yates with splitmix64 seeded by (seed, epoch): the same order on every platform.
  SplitMix64 rng{seed_ * 0x9E3779B97F4A7C15ull + uint64_t(epoch_) * 0xD1B54A32D192ED03ull + 1};
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.next() % i]);
}

void WindowStream::seek(int64_t epoch, int64_t index) {
  epoch_ = epoch;
  index_ = index;
  shuffle();
}

Status WindowStream::window(int64_t w, int32_t* out, int64_t vocab_size) const {
  const auto [shard, start] = starts_[size_t(w)];
  const Shard& s = shards_[size_t(shard)];
  for (int64_t i = 0; i < window_; ++i) {
    out[i] = s.at(start + i);
    if (out[i] >= vocab_size) {
      return make_error("token id " + std::to_string(out[i]) + " at " + std::to_string(start + i) +
                            " is outside the model's vocabulary (" + std::to_string(vocab_size) + ")",
                        {}, s.path(), "prepare the data with the model's tokenizer");
    }
  }
  return ok_status();
}

Status WindowStream::next(int32_t* out, int64_t vocab_size) {
  if (index_ >= int64_t(order_.size())) {
    ++epoch_;
    index_ = 0;
    shuffle();
  }
  return window(order_[size_t(index_++)], out, vocab_size);
}

namespace {

// Writes `ids` as PREFIX_00000.bin, PREFIX_00001.bin, ... of at most shard_tokens each (one
// empty shard when there are no ids).
Status write_split(const std::string& dir, const std::string& prefix, std::span<const int32_t> ids,
                   int64_t shard_tokens, std::vector<std::string>& files) {
  size_t i = 0, k = 0;
  do {
    char name[64];
    std::snprintf(name, sizeof name, "%s_%05zu.bin", prefix.c_str(), k++);
    const std::string path = (fs::path(dir) / name).string();
    const size_t n = std::min(size_t(shard_tokens), ids.size() - i);
    WHALE_TRY(write_shard(path, ids.subspan(i, n)));
    files.push_back(path);
    i += n;
  } while (i < ids.size());
  return ok_status();
}

}  // namespace

Result<PrepareReport> prepare_data(const PrepareOptions& o) {
  if (o.inputs.empty()) return make_error("no input files", "--input");
  if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0)) {
    return make_error("must be in [0, 1)", "--val-fraction");
  }
  if (o.shard_tokens <= 0) return make_error("must be positive", "--shard-tokens");
  WHALE_ASSIGN_OR_RETURN(tok::Tokenizer tokenizer, tok::Tokenizer::load(o.tokenizer_dir));
  std::optional<int32_t> bos;
  if (tokenizer.config().bos_token) bos = tokenizer.token_id(*tokenizer.config().bos_token);
  std::vector<int32_t> train, val;
  for (const std::string& path : o.inputs) {
    WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(path, size_t(1) << 32));
    // The held-out tail starts at the line break nearest to (1 − F) of the text.
    size_t cut = text.size();
    if (o.val_fraction > 0) {
      cut = size_t(double(text.size()) * (1.0 - o.val_fraction));
      const size_t nl = text.find('\n', cut);
      cut = nl == std::string::npos ? text.size() : nl + 1;
    }
    const std::string_view all(text);
    for (int part = 0; part < 2; ++part) {
      const std::string_view piece = part == 0 ? all.substr(0, cut) : all.substr(cut);
      if (piece.empty()) continue;
      auto ids = tokenizer.encode(piece, tok::SpecialTokens::kIgnore);
      if (!ids.ok()) {
        Error e = ids.error();
        e.file = path;
        return e;
      }
      std::vector<int32_t>& dst = part == 0 ? train : val;
      if (bos) dst.push_back(*bos);
      dst.insert(dst.end(), ids->begin(), ids->end());
    }
  }
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return make_error("cannot create the directory: " + ec.message(), {}, o.out_dir);
  PrepareReport report;
  report.train_tokens = int64_t(train.size());
  report.val_tokens = int64_t(val.size());
  WHALE_TRY(write_split(o.out_dir, "train", train, o.shard_tokens, report.files));
  if (!val.empty()) WHALE_TRY(write_split(o.out_dir, "val", val, o.shard_tokens, report.files));
  return report;
}

}  // namespace whale::train
