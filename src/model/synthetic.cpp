#include "model/synthetic.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "formats/safetensors.h"
#include "model/tensor_table.h"

namespace whale::model {
namespace {

namespace fs = std::filesystem;

// splitmix64: fast, seedable, good enough for weights nobody reads.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  float uniform() {
    return static_cast<float>(static_cast<double>(next() >> 40) / double(1 << 23) - 1.0);
  }
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Status write_synthetic_checkpoint(const ModelConfig& c, const std::string& config_text,
                                  const std::string& out_dir, const SynthOptions& options) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return make_error("cannot create directory: " + ec.message(), {}, out_dir);
  const fs::path config_path = fs::path(out_dir) / "config.json";
  const fs::path model_path = fs::path(out_dir) / "model.safetensors";
  for (const fs::path& p : {config_path, model_path}) {
    if (fs::exists(p, ec)) {
      return make_error("already exists", {}, p.string(), "choose an empty output directory");
    }
  }

  ModelWeights scratch;
  const std::vector<TensorSpec> specs = tensor_table(c, &scratch);
  // Each tensor, and the scale tensor after each FP8 one.
  std::vector<SafetensorsStreamWriter::Entry> entries;
  for (const TensorSpec& s : specs) {
    if (!s.required && s.group == TensorGroup::kMain) continue;  // tied head
    const bool fp8 = c.fp8 && s.fp8_in_release;
    entries.push_back(
        {s.checkpoint,
         fp8 ? DType::kF8E4M3
             : (s.checkpoint.ends_with("e_score_correction_bias") ? DType::kF32 : DType::kBF16),
         s.shape});
    if (fp8) {
      entries.push_back(
          {s.checkpoint + "_scale_inv",
           DType::kF32,
           {ceil_div(s.shape[0], c.fp8->block_rows), ceil_div(s.shape[1], c.fp8->block_cols)}});
    }
  }
  WHALE_ASSIGN_OR_RETURN(auto writer,
                         SafetensorsStreamWriter::create(model_path.string(), entries));

  Rng rng{options.seed};
  const float amplitude = options.std * std::sqrt(3.0f);  // uniform[-a, a] has std a/√3
  std::vector<uint8_t> buf;
  for (const auto& e : entries) {
    int64_t numel = 1;
    for (int64_t d : e.shape) numel *= d;
    const bool is_norm = e.shape.size() == 1 && e.dtype == DType::kBF16;
    const bool is_scale = e.name.ends_with("_scale_inv");
    // Generated in chunks so that memory stays bounded.
    const int64_t chunk = int64_t{1} << 22;
    for (int64_t done = 0; done < numel; done += chunk) {
      const int64_t m = std::min(chunk, numel - done);
      buf.resize(static_cast<size_t>(m * dtype_size(e.dtype)));
      for (int64_t i = 0; i < m; ++i) {
        switch (e.dtype) {
          case DType::kBF16:
            reinterpret_cast<uint16_t*>(buf.data())[i] =
                f32_to_bf16(is_norm ? 1.0f : amplitude * rng.uniform());
            break;
          case DType::kF32:  // a block scale, or the router's correction bias (0)
            reinterpret_cast<float*>(buf.data())[i] =
                is_scale ? amplitude / 448.0f : 0.0f;  // codes reach ±448
            break;
          default: {  // any finite e4m3 code (0x7F / 0xFF are NaN)
            const auto code = static_cast<uint8_t>(rng.next() >> 56);
            buf[static_cast<size_t>(i)] = (code & 0x7F) == 0x7F ? code ^ 0x01 : code;
          }
        }
      }
      WHALE_TRY(writer->write(buf.data(), buf.size()));
    }
  }
  WHALE_TRY(writer->finish());
  std::ofstream out(config_path);
  out << config_text;
  out.close();
  if (!out) return make_error("cannot write", {}, config_path.string());
  return ok_status();
}

}  // namespace whale::model
