#include "train/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "formats/safetensors.h"

namespace whale::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                           "generation_config.json", "LICENSE-tokenizer",
                                           "TOKENIZER.md"};

Status write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) return make_error("cannot write: " + std::string(std::strerror(errno)), {}, path);
  return ok_status();
}

Status write_files(const std::string& tmp, const ParamSet<float>& params, const TrainerState& state,
                   const SaveOptions& o) {
  const ParamLayout& l = *params.layout;
  auto done = [&](const std::string& path) { return o.after_file ? o.after_file(path) : ok_status(); };
  const std::string config = (fs::path(tmp) / "config.json").string();
  WHALE_TRY(write_text(config, o.config_json));
  WHALE_TRY(done(config));

  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < l.params.size(); ++i) {
    const ParamInfo& p = l.params[i];
    tensors.push_back({p.name, DType::kF32, p.shape, params.data(i)});
  }
  for (int k = 0; k < l.n_moe_layers; ++k) {
    tensors.push_back({l.bias_name(k), DType::kF32, {l.config.n_routed_experts},
                       params.biases[size_t(k)].data()});
  }
  // The MTP modules share the embedding and head. DeepSeek's checkpoints store copies of both
  // under the module; these do not (whale's loader shares the main ones when they are absent,
  // and transformers ignores the module), which saves two vocabulary-sized matrices.
  const std::string model = (fs::path(tmp) / "model.safetensors").string();
  WHALE_TRY(write_safetensors(model, tensors, {{"format", "pt"}}));
  WHALE_TRY(done(model));

  nlohmann::json meta = {{"step", state.step},
                         {"adam_step", state.adam_step},
                         {"data_epoch", state.data_epoch},
                         {"data_index", state.data_index}};
  // In a subdirectory: loaders that take every *.safetensors of a model directory as its
  // weights must not see the optimizer state.
  fs::create_directories(fs::path(tmp) / kStateDir);
  const std::string st = (fs::path(tmp) / kStateDir / kStateFile).string();
  WHALE_TRY(write_safetensors(st,
                              {{"adam.m", DType::kF32, {l.total}, state.m.data()},
                               {"adam.v", DType::kF32, {l.total}, state.v.data()}},
                              {{"whale_trainer_state", meta.dump()},
                               {"whale_training_settings", state.settings_json}}));
  WHALE_TRY(done(st));

  if (!o.tokenizer_dir.empty()) {
    for (const char* name : kTokenizerFiles) {
      const fs::path src = fs::path(o.tokenizer_dir) / name;
      std::error_code ec;
      if (!fs::exists(src, ec)) continue;
      const std::string dst = (fs::path(tmp) / name).string();
      fs::copy_file(src, dst, fs::copy_options::overwrite_existing, ec);
      if (ec) return make_error("cannot copy the tokenizer: " + ec.message(), {}, src.string());
      WHALE_TRY(done(dst));
    }
  }
  return ok_status();
}

}  // namespace

Status save_checkpoint(const std::string& dir, const ParamSet<float>& params,
                       const TrainerState& state, const SaveOptions& o) {
  const std::string tmp = dir + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return make_error("cannot create the checkpoint directory: " + ec.message(), {}, tmp);
  Status written = write_files(tmp, params, state, o);
  if (!written.ok()) {
    fs::remove_all(tmp, ec);
    Error e = written.error();
    e.message = "checkpoint not saved (the previous one is kept): " + e.message;
    return e;
  }
  fs::remove_all(dir, ec);
  fs::rename(tmp, dir, ec);
  if (ec) {
    fs::remove_all(tmp);
    return make_error("cannot rename the checkpoint into place: " + ec.message(), {}, dir);
  }
  return ok_status();
}

namespace {

// Copies a stored tensor of `numel` elements into out as f32.
Status read_f32(const StoredTensor& t, const std::vector<int64_t>& shape, float* out) {
  if (t.view.shape != shape) {
    return make_error("shape " + shape_to_string(t.view.shape) + ", expected " + shape_to_string(shape),
                      t.name, t.file);
  }
  const int64_t n = t.view.numel();
  switch (t.view.dtype) {
    case DType::kF32:
      std::memcpy(out, t.view.data, size_t(n) * 4);
      return ok_status();
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(t.view.as<uint16_t>()[i]);
      return ok_status();
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(t.view.as<uint16_t>()[i]);
      return ok_status();
    default:
      return make_error("training reads f32, bf16 or f16 weights, not " +
                            std::string(dtype_name(t.view.dtype)),
                        t.name, t.file, "convert the checkpoint with `whale quantize --type bf16`");
  }
}

}  // namespace

Status load_params(const std::string& dir, ParamSet<float>& params) {
  const ParamLayout& l = *params.layout;
  WHALE_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::open_dir(dir));
  for (size_t i = 0; i < l.params.size(); ++i) {
    const ParamInfo& p = l.params[i];
    const StoredTensor* t = ckpt.find(p.name);
    if (t == nullptr) return make_error("missing tensor", p.name, dir);
    WHALE_TRY(read_f32(*t, p.shape, params.data(i)));
  }
  for (int k = 0; k < l.n_moe_layers; ++k) {
    const StoredTensor* t = ckpt.find(l.bias_name(k));
    if (t == nullptr) return make_error("missing tensor", l.bias_name(k), dir);
    WHALE_TRY(read_f32(*t, {l.config.n_routed_experts}, params.biases[size_t(k)].data()));
  }
  return ok_status();
}

Result<TrainerState> load_trainer_state(const std::string& dir, int64_t total) {
  const std::string path = (fs::path(dir) / kStateDir / kStateFile).string();
  WHALE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(path));
  TrainerState s;
  s.m.resize(size_t(total));
  s.v.resize(size_t(total));
  for (auto [name, vec] : {std::pair{"adam.m", &s.m}, std::pair{"adam.v", &s.v}}) {
    auto it = file->tensors().find(name);
    if (it == file->tensors().end()) return make_error("missing tensor", name, path);
    if (it->second.view.dtype != DType::kF32) return make_error("must be F32", name, path);
    WHALE_TRY(read_f32(it->second, {total}, vec->data()));
  }
  auto meta = file->metadata().find("whale_trainer_state");
  auto settings = file->metadata().find("whale_training_settings");
  if (meta == file->metadata().end() || settings == file->metadata().end()) {
    return make_error("no trainer state in the metadata", {}, path);
  }
  try {
    const nlohmann::json j = nlohmann::json::parse(meta->second);
    s.step = j.at("step").get<int64_t>();
    s.adam_step = j.at("adam_step").get<int64_t>();
    s.data_epoch = j.at("data_epoch").get<int64_t>();
    s.data_index = j.at("data_index").get<int64_t>();
  } catch (const std::exception& e) {
    return make_error(std::string("bad trainer state: ") + e.what(), "whale_trainer_state", path);
  }
  s.settings_json = settings->second;
  return s;
}

}  // namespace whale::train
