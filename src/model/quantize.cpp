#include "model/quantize.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "model/tensor_table.h"
#include "ops/quant.h"

namespace whale::model {
namespace {

namespace fs = std::filesystem;
using ops::WeightFormat;

enum class Target { kKeep, kBf16, kQ8, kQ4 };

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

Target target_for(const TensorSpec& s, QuantRecipe recipe) {
  if (s.kind == TensorKind::kNorm || s.kind == TensorKind::kBias) return Target::kKeep;
  const bool router = ends_with(s.checkpoint, "mlp.gate.weight");
  const bool kv_b = ends_with(s.checkpoint, "kv_b_proj.weight");
  // The embedding is read one row per token, so its size costs no decode time: it stays bf16.
  const bool embedding = ends_with(s.checkpoint, "embed_tokens.weight");
  const bool head = ends_with(s.checkpoint, "lm_head.weight") ||
                    ends_with(s.checkpoint, "shared_head.head.weight");
  // For q8, the head stays bf16: on whale-mini its 8-bit rounding alone moved about 0.5% of the
  // top-1 predictions (near-ties), for 2% of the weights read per token by V3's shapes (14% on
  // synth-v3-1b, whose vocabulary is large for its size). GPTQ, AWQ and bitsandbytes leave the
  // head unquantised for the same reason.
  // For q4, kept at 8 bits: the FFNs of the first (dense) layers and attention's two
  // down-projections (into the q and kv latents). They are a few percent of the weights read per
  // token, and on whale-mini the tensors whose 4-bit error moves the logits most for their size
  // (bench/README.md).
  const bool dense_ffn = s.logical.find(".ffn.") != std::string::npos;
  const bool attn_down = ends_with(s.checkpoint, "q_a_proj.weight") ||
                         ends_with(s.checkpoint, "kv_a_proj_with_mqa.weight");
  if (router || embedding || recipe == QuantRecipe::kBf16) return Target::kBf16;
  // kv_b (the latent's up-projections, W_UK and W_UV) goes to 8 bits in every recipe: in
  // decode, the absorbed form reads all of it (in bf16, 8.6% of q4's bytes per token on
  // synth-v3-1b, about 9% by V3's shapes), and on whale-mini its 8-bit rounding moved q4's and
  // q4-experts' mean KL by 1-2% and q8's by 17% of what the recipes cost already.
  if (kv_b) return Target::kQ8;
  switch (recipe) {
    case QuantRecipe::kQ8:
      return head ? Target::kBf16 : Target::kQ8;
    case QuantRecipe::kQ4:
      return head || dense_ffn || attn_down ? Target::kQ8 : Target::kQ4;
    case QuantRecipe::kQ4Experts:
      return s.routed_expert ? Target::kQ4 : Target::kQ8;
    case QuantRecipe::kBf16:
      break;
  }
  return Target::kBf16;
}

// The tensor files beside the weights that a model directory needs.
constexpr const char* kSideFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                      "generation_config.json", "special_tokens_map.json"};

// A matrix multiplied with fewer calibration rows than this (a rarely chosen expert) is
// quantized without importance data: a few tokens' squares are too noisy to weigh by.
constexpr int64_t kMinCalibrationRows = 16;

// The per-column weights the quantizers get for one matrix, or empty for none: its importance,
// each raised by a thousandth of the mean so that a column that never saw input still counts.
std::vector<float> importance_for(const Calibration* calibration, const std::string& name,
                                  int64_t cols) {
  if (!calibration) return {};
  const auto it = calibration->importance.find(name);
  if (it == calibration->importance.end() || it->second.rows < kMinCalibrationRows ||
      static_cast<int64_t>(it->second.mean_square.size()) != cols) {
    return {};
  }
  std::vector<float> w = it->second.mean_square;
  double mean = 0;
  for (float v : w) mean += v;
  mean /= double(cols);
  if (!(mean > 0) || !std::isfinite(mean)) return {};
  for (float& v : w) v += static_cast<float>(1e-3 * mean);
  return w;
}

struct Job {
  const TensorSpec* spec;  // null for a tensor copied as stored
  const StoredTensor* stored;
  std::string name;
  Target target;
};

}  // namespace

Result<QuantRecipe> parse_recipe(const std::string& name) {
  if (name == "bf16") return QuantRecipe::kBf16;
  if (name == "q8") return QuantRecipe::kQ8;
  if (name == "q4") return QuantRecipe::kQ4;
  if (name == "q4-experts") return QuantRecipe::kQ4Experts;
  return make_error("unknown type '" + name + "'", "--type", {}, "use bf16, q8, q4 or q4-experts");
}

std::string recipe_name(QuantRecipe r) {
  switch (r) {
    case QuantRecipe::kBf16:
      return "bf16";
    case QuantRecipe::kQ8:
      return "q8";
    case QuantRecipe::kQ4:
      return "q4";
    case QuantRecipe::kQ4Experts:
      return "q4-experts";
  }
  return "?";
}

Result<QuantizeReport> quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                           QuantRecipe recipe, ThreadPool& pool,
                                           const std::function<void(size_t, size_t)>& progress,
                                           const Calibration* calibration) {
  WHALE_ASSIGN_OR_RETURN(ModelConfig c, load_config(in_dir));
  WHALE_ASSIGN_OR_RETURN(std::string config_text,
                         read_text_file((fs::path(in_dir) / "config.json").string()));
  WHALE_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::open_dir(in_dir));
  // Binding first proves the input is a loadable model and gives dequantizing views of it.
  WHALE_ASSIGN_OR_RETURN(ModelWeights weights, bind_weights(c, ckpt));

  std::error_code ec;
  if (fs::equivalent(in_dir, out_dir, ec)) {
    return make_error("the output directory is the input directory", {}, out_dir,
                      "write to a new directory");
  }
  fs::create_directories(out_dir, ec);
  if (ec) return make_error("cannot create directory: " + ec.message(), {}, out_dir);
  const fs::path model_path = fs::path(out_dir) / "model.safetensors";
  for (const fs::path& p : {fs::path(out_dir) / "config.json", model_path,
                            fs::path(out_dir) / "model.safetensors.index.json"}) {
    if (fs::exists(p, ec)) {
      return make_error("already exists", {}, p.string(), "choose an empty output directory");
    }
  }

  // Plan: every table tensor the checkpoint has (viewed through the bound weights, which
  // dequantize FP8 blocks), then any other tensor copied as stored, minus the scales of
  // converted tensors.
  const std::vector<TensorSpec> specs = tensor_table(c, &weights);  // views are already bound
  std::vector<Job> jobs;
  std::set<std::string> consumed;
  QuantizeReport report;
  for (const TensorSpec& s : specs) {
    const StoredTensor* t = ckpt.find(s.checkpoint);
    if (!t || consumed.count(s.checkpoint)) continue;
    Target target = target_for(s, recipe);
    if ((target == Target::kQ8 || target == Target::kQ4) &&
        (s.shape.size() != 2 || s.shape[1] % ops::kQuantBlock != 0)) {
      target = Target::kBf16;
      ++report.kept_bf16;
    }
    jobs.push_back({&s, t, s.checkpoint, target});
    consumed.insert(s.checkpoint);
    consumed.insert(s.checkpoint + "_scale_inv");
    consumed.insert(s.checkpoint + "_scale");
  }
  for (const auto& [name, t] : ckpt.tensors()) {
    if (!consumed.count(name)) jobs.push_back({nullptr, t, name, Target::kKeep});
  }

  std::vector<SafetensorsStreamWriter::Entry> entries;
  for (const Job& j : jobs) {
    const TensorView& v = j.stored->view;
    report.bytes_in += v.nbytes();
    if (const StoredTensor* sc = ckpt.find(j.name + "_scale_inv")) report.bytes_in += sc->view.nbytes();
    if (const StoredTensor* sc = ckpt.find(j.name + "_scale")) report.bytes_in += sc->view.nbytes();
    std::string form;
    switch (j.target) {
      case Target::kKeep:
        entries.push_back({j.name, v.dtype, v.shape});
        form = std::string(dtype_name(v.dtype));
        break;
      case Target::kBf16:
        entries.push_back({j.name, DType::kBF16, j.spec->shape});
        form = "BF16";
        break;
      case Target::kQ8:
      case Target::kQ4: {
        const int64_t rows = j.spec->shape[0], cols = j.spec->shape[1];
        const bool q4 = j.target == Target::kQ4;
        entries.push_back({j.name, q4 ? DType::kU8 : DType::kI8, {rows, q4 ? cols / 2 : cols}});
        entries.push_back({j.name + "_scale", DType::kF16, {rows, cols / ops::kQuantBlock}});
        form = q4 ? "q4" : "q8";
        break;
      }
    }
    ++report.tensors_by_form[form];
  }
  for (const auto& e : entries) {
    int64_t n = dtype_size(e.dtype);
    for (int64_t d : e.shape) n *= d;
    report.bytes_out += n;
  }
  WHALE_ASSIGN_OR_RETURN(auto writer,
                         SafetensorsStreamWriter::create(model_path.string(), entries));

  // Rows are converted in chunks of about 16 MB of f32, spread over the pool.
  std::vector<float> rows_f32;
  std::vector<uint8_t> out;
  std::vector<uint16_t> scales;
  for (size_t k = 0; k < jobs.size(); ++k) {
    if (progress) progress(k, jobs.size());
    const Job& j = jobs[k];
    const TensorView& v = j.stored->view;
    if (j.target == Target::kKeep || (j.target == Target::kBf16 && v.dtype == DType::kBF16)) {
      WHALE_TRY(writer->write(v.data, static_cast<size_t>(v.nbytes())));
      continue;
    }
    const Matrix& m = *j.spec->dest;
    const int64_t rows = m.rows, cols = m.cols;
    const int64_t out_row = j.target == Target::kBf16  ? cols * 2
                            : j.target == Target::kQ4 ? cols / 2
                                                      : cols;
    const int64_t blocks = cols / ops::kQuantBlock;
    if (j.target != Target::kBf16) scales.assign(static_cast<size_t>(rows * blocks), 0);
    const std::vector<float> importance = importance_for(calibration, j.name, cols);
    const float* imp = importance.empty() ? nullptr : importance.data();
    const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, cols));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      rows_f32.resize(static_cast<size_t>(n * cols));
      out.resize(static_cast<size_t>(n * out_row));
      pool.parallel_for(n, [&](int64_t a, int64_t b) {
        for (int64_t i = a; i < b; ++i) {
          float* row = rows_f32.data() + i * cols;
          m.dequantize_row(r0 + i, 0, cols, row);
          uint8_t* dst = out.data() + i * out_row;
          uint16_t* sc = scales.data() + (r0 + i) * blocks;
          if (j.target == Target::kBf16) {
            auto* h = reinterpret_cast<uint16_t*>(dst);
            for (int64_t c2 = 0; c2 < cols; ++c2) h[c2] = f32_to_bf16(row[c2]);
          } else if (j.target == Target::kQ8) {
            ops::quantize_row_q8(row, cols, reinterpret_cast<int8_t*>(dst), sc, imp);
          } else {
            ops::quantize_row_q4(row, cols, dst, sc, imp);
          }
        }
      });
      WHALE_TRY(writer->write(out.data(), out.size()));
    }
    if (j.target != Target::kBf16) {
      WHALE_TRY(writer->write(scales.data(), scales.size() * sizeof(uint16_t)));
    }
  }
  if (progress) progress(jobs.size(), jobs.size());
  WHALE_TRY(writer->finish());

  // config.json: the FP8 quantization_config no longer applies; the recipe is noted.
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(config_text, nullptr, false);
  if (config.is_discarded() || !config.is_object()) {
    return make_error("config.json is not a JSON object", {}, in_dir);
  }
  config.erase("quantization_config");
  config["whale_quantization"] = {{"recipe", recipe_name(recipe)},
                                  {"block_size", ops::kQuantBlock},
                                  {"scale_dtype", "F16"},
                                  {"q4_levels", ops::kQ4LevelsName}};
  if (calibration) {
    config["whale_quantization"]["calibration"] = {{"text", calibration->text},
                                                   {"tokens", calibration->tokens}};
  }
  {
    const fs::path path = fs::path(out_dir) / "config.json";
    std::ofstream f(path);
    f << config.dump(2) << "\n";
    f.close();
    if (!f) return make_error("cannot write", {}, path.string());
  }
  for (const char* name : kSideFiles) {
    const fs::path src = fs::path(in_dir) / name;
    if (!fs::exists(src, ec)) continue;
    fs::copy_file(src, fs::path(out_dir) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) return make_error("cannot copy: " + ec.message(), {}, src.string());
  }
  return report;
}

}  // namespace whale::model
