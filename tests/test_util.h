// Helpers shared by the tests: temporary directories, raw files, fixtures.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace whale::test {

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& bytes);
std::string read_file(const std::string& path);
// u64 little-endian length + header + data.
std::string safetensors_bytes(const std::string& header, const std::string& data);

std::string fixture_dir(const std::string& name);
std::vector<int32_t> fixture_ids(const std::string& name);
std::vector<float> fixture_logits(const std::string& name);
// Copies every file of a fixture into `dir`.
void copy_fixture(const std::string& name, const std::string& dir);

// Runs a shell command, returning its exit status and capturing stdout+stderr.
int run_command(const std::string& cmd, std::string* output);

}  // namespace whale::test
