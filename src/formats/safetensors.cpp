#include "formats/safetensors.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace whale {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// A plain file name ending in .safetensors: letters, digits, '.', '_', '-', not starting with
// '.'. Symlinks are followed on purpose: the Hugging Face cache stores snapshots as symlinks
// into its blob store.
bool is_shard_name(const std::string& f) {
  if (f.size() <= 12 || f[0] == '.' || !f.ends_with(".safetensors")) return false;
  for (char ch : f) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-') {
      return false;
    }
  }
  return true;
}

uint64_t read_le_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Multiplies non-negative values, reporting overflow past int64.
bool checked_mul(int64_t a, int64_t b, int64_t* out) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

Result<StoredTensor> parse_entry(const std::string& name, const json& entry, const uint8_t* data,
                                 uint64_t data_size, const std::string& path) {
  if (!entry.is_object()) return make_error("header entry is not an object", name, path);
  const auto dt = entry.find("dtype");
  if (dt == entry.end() || !dt->is_string()) return make_error("missing dtype", name, path);
  const auto dtype = dtype_from_name(dt->get<std::string>());
  if (!dtype) return make_error("unknown dtype \"" + dt->get<std::string>() + "\"", name, path);

  const auto sh = entry.find("shape");
  if (sh == entry.end() || !sh->is_array()) return make_error("missing shape", name, path);
  std::vector<int64_t> shape;
  int64_t numel = 1, nonzero = 1;  // nonzero: product ignoring zero dims, bounds the strides
  if (sh->size() > 8) return make_error("more than 8 dimensions", name, path);
  for (const auto& d : *sh) {
    if (!d.is_number_unsigned()) {
      return make_error("shape entries must be non-negative integers", name, path);
    }
    const uint64_t v = d.get<uint64_t>();
    if (v > (uint64_t{1} << 40) || !checked_mul(numel, static_cast<int64_t>(v), &numel) ||
        !checked_mul(nonzero, std::max<int64_t>(1, static_cast<int64_t>(v)), &nonzero)) {
      return make_error("shape is too large", name, path);
    }
    shape.push_back(static_cast<int64_t>(v));
  }
  int64_t nbytes = 0;
  if (!checked_mul(numel, dtype_size(*dtype), &nbytes)) {
    return make_error("shape is too large", name, path);
  }

  const auto off = entry.find("data_offsets");
  if (off == entry.end() || !off->is_array() || off->size() != 2 ||
      !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
    return make_error("data_offsets must be [begin, end] with non-negative integers", name, path);
  }
  const uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
  if (begin > end || end > data_size) {
    return make_error("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                          "] fall outside the data section of " + std::to_string(data_size) +
                          " bytes",
                      name, path, "the file is truncated or its header is wrong");
  }
  if (end - begin != static_cast<uint64_t>(nbytes)) {
    return make_error("shape " + shape_to_string(shape) + " of " + std::string(dtype_name(*dtype)) +
                          " needs " + std::to_string(nbytes) + " bytes but data_offsets span " +
                          std::to_string(end - begin),
                      name, path);
  }
  StoredTensor t;
  t.name = name;
  t.file = path;
  t.view = TensorView::contiguous(*dtype, data + begin, std::move(shape));
  return t;
}

}  // namespace

Result<std::map<std::string, StoredTensor>> parse_safetensors_header(
    const std::string& header_json, const uint8_t* data_section, uint64_t data_size,
    const std::string& path, std::map<std::string, std::string>* metadata) {
  if (header_json.empty() || header_json[0] != '{') {
    return make_error("header does not start with '{'", {}, path, "this is not a safetensors file");
  }
  // nlohmann keeps the last of duplicate keys; a header that names a tensor twice is corrupt.
  std::string duplicate;
  std::set<std::string> top_keys;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key &&
        !top_keys.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json header = json::parse(header_json, on_event, /*allow_exceptions=*/false);
  if (header.is_discarded()) return make_error("header is not valid JSON", {}, path);
  if (!header.is_object()) return make_error("header is not a JSON object", {}, path);
  if (!duplicate.empty()) return make_error("appears twice in the header", duplicate, path);

  std::map<std::string, StoredTensor> tensors;
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return make_error("__metadata__ is not an object", name, path);
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) {
          return make_error("metadata values must be strings", name + "." + k, path);
        }
        if (metadata) (*metadata)[k] = v.get<std::string>();
      }
      continue;
    }
    WHALE_ASSIGN_OR_RETURN(StoredTensor t, parse_entry(name, entry, data_section, data_size, path));
    const auto begin = static_cast<uint64_t>(t.view.as<uint8_t>() - data_section);
    const auto it = tensors.emplace(name, std::move(t)).first;
    ranges.push_back({begin, begin + static_cast<uint64_t>(it->second.view.nbytes()), &it->first});
  }
  // Like the safetensors library: tensors tile the data section exactly, without overlaps,
  // gaps or trailing bytes.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  for (const Range& r : ranges) {
    if (r.begin < covered) {
      return make_error("data overlaps another tensor", *r.name, path, "the header is corrupt");
    }
    if (r.begin > covered) {
      return make_error("gap of " + std::to_string(r.begin - covered) + " bytes before this tensor",
                        *r.name, path, "the header is corrupt");
    }
    covered = r.end;
  }
  if (covered != data_size) {
    return make_error(std::to_string(data_size - covered) + " bytes after the last tensor", {},
                      path, "the file is longer than its header says");
  }
  return tensors;
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  WHALE_ASSIGN_OR_RETURN(auto mapped, MappedFile::open(path));
  const uint64_t size = mapped->size();
  if (size < 8) {
    return make_error(
        "file is too short for a safetensors header (" + std::to_string(size) + " bytes)", {}, path,
        "the file is truncated");
  }
  const uint64_t header_len = read_le_u64(mapped->data());
  if (header_len > kMaxSafetensorsHeader) {
    return make_error("header length " + std::to_string(header_len) + " exceeds the limit of " +
                          std::to_string(kMaxSafetensorsHeader) + " bytes",
                      {}, path, "this is not a safetensors file or it is corrupt");
  }
  if (header_len > size - 8) {
    return make_error("header length " + std::to_string(header_len) + " runs past the end of the " +
                          std::to_string(size) + "-byte file",
                      {}, path, "the file is truncated");
  }
  std::string header(reinterpret_cast<const char*>(mapped->data() + 8), header_len);
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  const uint8_t* data = mapped->data() + 8 + header_len;
  WHALE_ASSIGN_OR_RETURN(
      file->tensors_,
      parse_safetensors_header(header, data, size - 8 - header_len, path, &file->metadata_));
  file->file_ = std::move(mapped);
  return file;
}

const StoredTensor* Checkpoint::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, t] : by_name_) n += static_cast<uint64_t>(t->view.nbytes());
  return n;
}

Result<Checkpoint> Checkpoint::open_dir(const std::string& dir,
                                        const std::function<void(size_t, size_t)>& progress) {
  Checkpoint ckpt;
  ckpt.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return make_error("not a directory", {}, dir, "pass a model directory with config.json");
  }
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  json weight_map;
  const bool sharded = fs::exists(index_path, ec);
  if (sharded) {
    WHALE_ASSIGN_OR_RETURN(std::string text, read_text_file(index_path.string()));
    json index = json::parse(text, nullptr, false);
    if (index.is_discarded() || !index.is_object()) {
      return make_error("not valid JSON", {}, index_path.string());
    }
    const auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) {
      return make_error("missing object", "weight_map", index_path.string());
    }
    weight_map = *wm;
    std::set<std::string> unique;
    for (const auto& [name, file] : weight_map.items()) {
      if (!file.is_string())
        return make_error("shard name must be a string", "weight_map." + name, index_path.string());
      const std::string f = file.get<std::string>();
      // Shards must be plain file names inside the directory: never read outside it.
      if (!is_shard_name(f)) {
        return make_error("shard \"" + f + "\" is not a plain file name in the model directory",
                          "weight_map." + name, index_path.string());
      }
      if (unique.insert(f).second) shard_names.push_back(f);
    }
  } else {
    fs::directory_iterator it(dir, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (is_shard_name(name)) shard_names.push_back(name);
    }
    if (ec) return make_error("cannot list directory: " + ec.message(), {}, dir);
    std::sort(shard_names.begin(), shard_names.end());
    if (shard_names.empty()) {
      return make_error("no .safetensors files and no model.safetensors.index.json", {}, dir);
    }
  }
  for (size_t k = 0; k < shard_names.size(); ++k) {
    const std::string& shard = shard_names[k];
    if (progress) progress(k, shard_names.size());
    WHALE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open((fs::path(dir) / shard).string()));
    for (const auto& [name, t] : file->tensors()) {
      if (sharded) {
        // The index decides which shard owns a tensor; others are ignored.
        const auto it = weight_map.find(name);
        if (it == weight_map.end() || it->get<std::string>() != shard) continue;
      }
      if (!ckpt.by_name_.emplace(name, &t).second) {
        return make_error("tensor appears in more than one file", name, t.file);
      }
    }
    ckpt.files_.push_back(std::move(file));
  }
  if (progress) progress(shard_names.size(), shard_names.size());
  if (sharded) {
    for (const auto& [name, file] : weight_map.items()) {
      if (!ckpt.by_name_.count(name)) {
        return make_error("listed in the index but not found in shard " + file.get<std::string>(),
                          name, index_path.string());
      }
    }
  }
  return ckpt;
}

}  // namespace whale

namespace whale {

namespace {

// The header text for `entries` laid out back to back, padded so the data starts 8-byte aligned.
std::string make_header(const std::vector<SafetensorsStreamWriter::Entry>& entries,
                        const std::map<std::string, std::string>& metadata, uint64_t* data_bytes) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& e : entries) {
    uint64_t numel = 1;
    for (int64_t d : e.shape) numel *= static_cast<uint64_t>(d);
    const uint64_t bytes = numel * static_cast<uint64_t>(dtype_size(e.dtype));
    header[e.name] = {{"dtype", dtype_name(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  *data_bytes = offset;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  return text;
}

Result<FILE*> open_with_header(const std::string& tmp, const std::string& header) {
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return make_error(std::string("cannot write: ") + std::strerror(errno), {}, tmp);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  if (std::fwrite(len, 1, 8, f) != 8 ||
      std::fwrite(header.data(), 1, header.size(), f) != header.size()) {
    std::fclose(f);
    std::remove(tmp.c_str());
    return make_error("write failed", {}, tmp);
  }
  return f;
}

}  // namespace

Result<std::unique_ptr<SafetensorsStreamWriter>> SafetensorsStreamWriter::create(
    const std::string& path, std::vector<Entry> entries) {
  auto w = std::unique_ptr<SafetensorsStreamWriter>(new SafetensorsStreamWriter());
  w->path_ = path;
  const std::string header = make_header(entries, {{"format", "pt"}}, &w->expected_);
  WHALE_ASSIGN_OR_RETURN(w->file_, open_with_header(path + ".tmp", header));
  return w;
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  if (file_) {  // not finished: leave nothing behind
    std::fclose(file_);
    std::remove((path_ + ".tmp").c_str());
  }
}

Status SafetensorsStreamWriter::write(const void* data, size_t bytes) {
  if (!file_) return make_error("writer is closed", {}, path_);
  if (written_ + bytes > expected_)
    return make_error("more bytes than the header declares", {}, path_);
  if (std::fwrite(data, 1, bytes, file_) != bytes) {
    return make_error(std::string("write failed: ") + std::strerror(errno), {}, path_);
  }
  written_ += bytes;
  return ok_status();
}

Status SafetensorsStreamWriter::finish() {
  if (!file_) return make_error("writer is closed", {}, path_);
  const std::string tmp = path_ + ".tmp";
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  std::error_code ec;
  if (closed && written_ == expected_) std::filesystem::rename(tmp, path_, ec);
  if (!closed || written_ != expected_ || ec) {
    std::remove(tmp.c_str());
    return make_error(
        written_ != expected_ ? "fewer bytes than the header declares" : "write failed", {}, path_);
  }
  return ok_status();
}

Status write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsStreamWriter::Entry> entries;
  for (const auto& t : tensors) entries.push_back({t.name, t.dtype, t.shape});
  uint64_t data_bytes = 0;
  const std::string header = make_header(entries, metadata, &data_bytes);
  const std::string tmp = path + ".tmp";
  WHALE_ASSIGN_OR_RETURN(FILE * f, open_with_header(tmp, header));
  bool ok = true;
  for (const auto& t : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const size_t bytes = static_cast<size_t>(numel) * static_cast<size_t>(dtype_size(t.dtype));
    ok = ok && std::fwrite(t.data, 1, bytes, f) == bytes;
  }
  ok = (std::fclose(f) == 0) && ok;
  std::error_code ec;
  if (ok) std::filesystem::rename(tmp, path, ec);
  if (!ok || ec) {
    std::remove(tmp.c_str());
    return make_error("write failed", {}, path);
  }
  return ok_status();
}

}  // namespace whale
