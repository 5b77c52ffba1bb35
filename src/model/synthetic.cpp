#include "model/synthetic.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/splitmix.h"
#include "formats/safetensors.h"
#include "model/tensor_table.h"

namespace whale::model {
namespace {

namespace fs = std::filesystem;

// Good enough for weights nobody reads.
struct Rng : SplitMix64 {
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
  // Each tensor, and the scale tensor after each FP8 one, with how to fill it.
  enum class Fill { kRandom, kOne, kZero, kScale };
  std::vector<SafetensorsStreamWriter::Entry> entries;
  std::vector<Fill> fills;
  for (const TensorSpec& s : specs) {
    if (!s.required && s.group == TensorGroup::kMain) continue;  // tied head
    const bool fp8 = c.fp8 && s.fp8_in_release;
    const DType dtype = fp8                           ? DType::kF8E4M3
                        : s.kind == TensorKind::kBias ? DType::kF32
                                                      : DType::kBF16;
    entries.push_back({s.checkpoint, dtype, s.shape});
    fills.push_back(s.kind == TensorKind::kNorm   ? Fill::kOne
                    : s.kind == TensorKind::kBias ? Fill::kZero
                                                  : Fill::kRandom);
    if (fp8) {
      entries.push_back(
          {s.checkpoint + "_scale_inv",
           DType::kF32,
           {ceil_div(s.shape[0], c.fp8->block_rows), ceil_div(s.shape[1], c.fp8->block_cols)}});
      fills.push_back(Fill::kScale);
    }
  }
  WHALE_ASSIGN_OR_RETURN(auto writer,
                         SafetensorsStreamWriter::create(model_path.string(), entries));

  Rng rng{options.seed};
  const float amplitude = options.std * std::sqrt(3.0f);  // uniform[-a, a] has std a/√3
  std::vector<uint8_t> buf;
  for (size_t k = 0; k < entries.size(); ++k) {
    const auto& e = entries[k];
    int64_t numel = 1;
    for (int64_t d : e.shape) numel *= d;
    // Generated in chunks so that memory stays bounded.
    const int64_t chunk = int64_t{1} << 22;
    for (int64_t done = 0; done < numel; done += chunk) {
      const int64_t m = std::min(chunk, numel - done);
      buf.resize(static_cast<size_t>(m * dtype_size(e.dtype)));
      for (int64_t i = 0; i < m; ++i) {
        switch (fills[k]) {
          case Fill::kOne:
            reinterpret_cast<uint16_t*>(buf.data())[i] = f32_to_bf16(1.0f);
            break;
          case Fill::kZero:
            reinterpret_cast<float*>(buf.data())[i] = 0.0f;
            break;
          case Fill::kScale:  // e4m3 codes reach ±448
            reinterpret_cast<float*>(buf.data())[i] = amplitude / 448.0f;
            break;
          case Fill::kRandom:
            if (e.dtype == DType::kF8E4M3) {  // any finite code (0x7F / 0xFF are NaN)
              const auto code = static_cast<uint8_t>(rng.next() >> 56);
              buf[static_cast<size_t>(i)] = (code & 0x7F) == 0x7F ? code ^ 0x01 : code;
            } else {
              reinterpret_cast<uint16_t*>(buf.data())[i] = f32_to_bf16(amplitude * rng.uniform());
            }
            break;
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
