// Reads HF safetensors checkpoints, single-file or sharded, by mapping them: tensors are views
// into the mapping and are never copied here.
//
// File layout: u64 little-endian header length N, N bytes of JSON header, then the data section.
// Header: {"__metadata__": {str: str}, "name": {"dtype": "BF16", "shape": [..],
//          "data_offsets": [begin, end]}, ...} with offsets relative to the data section.
#pragma once

#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/tensor.h"

namespace whale {

// Largest header accepted. A V3 shard's header is about 60 KB, and all 92k tensors of V3 in one
// file would need about 11 MB; the safetensors library allows 100 MB, which would cost
// gigabytes of parsed JSON here.
inline constexpr uint64_t kMaxSafetensorsHeader = 32u << 20;

struct StoredTensor {
  std::string name;
  std::string file;  // path of the shard that holds it
  TensorView view;   // contiguous, points into the mapping
};

// One mapped safetensors file with its validated header.
class SafetensorsFile {
 public:
  static Result<std::unique_ptr<SafetensorsFile>> open(const std::string& path);

  const std::map<std::string, StoredTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_->path(); }

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, StoredTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Parses and validates a header against the size of the data section that follows it.
// Exposed for tests; `path` is used in error messages only.
Result<std::map<std::string, StoredTensor>> parse_safetensors_header(
    const std::string& header_json, const uint8_t* data_section, uint64_t data_size,
    const std::string& path, std::map<std::string, std::string>* metadata);

// All tensors of a checkpoint directory: model.safetensors.index.json + its shards, or the
// single *.safetensors files in the directory when there is no index.
class Checkpoint {
 public:
  // `progress(done, total)`, if given, is called as each file is opened and checked.
  static Result<Checkpoint> open_dir(const std::string& dir,
                                     const std::function<void(size_t, size_t)>& progress = {});

  // nullptr when absent.
  const StoredTensor* find(const std::string& name) const;
  const std::map<std::string, const StoredTensor*>& tensors() const { return by_name_; }
  const std::string& dir() const { return dir_; }
  uint64_t total_bytes() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const StoredTensor*> by_name_;
};

}  // namespace whale

namespace whale {

// A tensor to write: name, dtype, shape and its bytes (numel × dtype size).
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes a single-file safetensors checkpoint atomically (a temporary file renamed into place).
Status write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace whale

namespace whale {

// Writes a safetensors file tensor by tensor without holding them all in memory: the header is
// written first from the declared tensors, then each tensor's bytes in order. The file appears
// under `path` only after finish() succeeds (it is written as `path.tmp` and renamed).
class SafetensorsStreamWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  static Result<std::unique_ptr<SafetensorsStreamWriter>> create(const std::string& path,
                                                                 std::vector<Entry> entries);
  ~SafetensorsStreamWriter();
  // Appends the bytes of the next tensor(s); calls may split or join tensors freely.
  Status write(const void* data, size_t bytes);
  // Checks that exactly the declared bytes were written, closes and renames into place.
  Status finish();

 private:
  SafetensorsStreamWriter() = default;
  std::string path_;
  FILE* file_ = nullptr;
  uint64_t expected_ = 0;
  uint64_t written_ = 0;
};

}  // namespace whale
