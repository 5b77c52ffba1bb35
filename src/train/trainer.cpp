#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/thread_pool.h"
#include "model/config.h"
#include "train/blas.h"
#include "train/data.h"
#include "train/distributed.h"
#include "train/network.h"
#include "train/optimizer.h"

namespace whale::train {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::pair<std::string, std::string>>& train_setting_fields() {
  static const std::vector<std::pair<std::string, std::string>> fields = {
      {"model", "object"},        {"init_from", "string"},   {"data", "list"},
      {"val_data", "list"},       {"tokenizer", "string"},   {"out", "string"},
      {"resume", "string"},       {"seq_len", "int"},        {"batch_size", "int"},
      {"grad_accum", "int"},      {"steps", "int"},          {"stop_at", "int"},          {"lr", "number"},
      {"min_lr", "number"},       {"warmup", "int"},         {"beta1", "number"},
      {"beta2", "number"},        {"eps", "number"},         {"weight_decay", "number"},
      {"grad_clip", "number"},    {"mtp_lambda", "number"},  {"bias_gamma", "number"},
      {"balance_alpha", "number"}, {"seed", "int"},          {"init_std", "number"},
      {"eval_interval", "int"},   {"eval_batches", "int"},   {"checkpoint_interval", "int"},
      {"log_interval", "int"},    {"threads", "int"},
  };
  return fields;
}

Result<TrainSettings> TrainSettings::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) return make_error("training settings must be a JSON object", {}, source);
  TrainSettings s;
  std::map<std::string, std::string> kinds(train_setting_fields().begin(), train_setting_fields().end());
  for (const auto& [key, value] : j.items()) {
    auto it = kinds.find(key);
    if (it == kinds.end()) return make_error("unknown setting", key, source);
    const std::string& kind = it->second;
    const bool ok = (kind == "object" && value.is_object()) ||
                    (kind == "string" && value.is_string()) ||
                    (kind == "int" && value.is_number_integer()) ||
                    (kind == "number" && value.is_number()) ||
                    (kind == "list" && (value.is_array() || value.is_string()));
    if (!ok) return make_error("must be " + std::string(kind == "int" ? "an integer" : "a " + kind), key, source);
  }
  auto num = [&](const char* k, double& v) { if (j.contains(k)) v = j[k].get<double>(); };
  auto integer = [&](const char* k, int64_t& v) { if (j.contains(k)) v = j[k].get<int64_t>(); };
  auto str = [&](const char* k, std::string& v) { if (j.contains(k)) v = j[k].get<std::string>(); };
  auto list = [&](const char* k, std::vector<std::string>& v) {
    if (!j.contains(k)) return;
    if (j[k].is_string()) {
      v = {j[k].get<std::string>()};
      return;
    }
    v.clear();
    for (const json& e : j[k]) v.push_back(e.is_string() ? e.get<std::string>() : e.dump());
  };
  if (j.contains("model")) s.model = j["model"];
  str("init_from", s.init_from);
  list("data", s.data);
  list("val_data", s.val_data);
  str("tokenizer", s.tokenizer);
  str("out", s.out);
  str("resume", s.resume);
  integer("seq_len", s.seq_len);
  integer("batch_size", s.batch_size);
  integer("grad_accum", s.grad_accum);
  integer("steps", s.steps);
  integer("stop_at", s.stop_at);
  num("lr", s.lr);
  num("min_lr", s.min_lr);
  integer("warmup", s.warmup);
  num("beta1", s.beta1);
  num("beta2", s.beta2);
  num("eps", s.eps);
  num("weight_decay", s.weight_decay);
  num("grad_clip", s.grad_clip);
  num("mtp_lambda", s.mtp_lambda);
  num("bias_gamma", s.bias_gamma);
  num("balance_alpha", s.balance_alpha);
  int64_t seed = int64_t(s.seed), threads = s.threads;
  integer("seed", seed);
  s.seed = uint64_t(seed);
  num("init_std", s.init_std);
  integer("eval_interval", s.eval_interval);
  integer("eval_batches", s.eval_batches);
  integer("checkpoint_interval", s.checkpoint_interval);
  integer("log_interval", s.log_interval);
  integer("threads", threads);
  s.threads = int(threads);

  auto bad = [&](const char* field, const std::string& why) { return make_error(why, field, source); };
  if (s.model.is_null()) return bad("model", "the model's config.json fields are required");
  if (s.out.empty()) return bad("out", "an output directory is required");
  if (s.data.empty()) return bad("data", "training data (token shards) are required");
  if (s.seq_len < 2) return bad("seq_len", "must be at least 2");
  if (s.batch_size < 1) return bad("batch_size", "must be at least 1");
  if (s.grad_accum < 1) return bad("grad_accum", "must be at least 1");
  if (s.steps < 0) return bad("steps", "must not be negative");
  if (s.stop_at < 0 || s.stop_at > s.steps) return bad("stop_at", "must be in [0, steps]");
  if (!(s.lr > 0)) return bad("lr", "must be positive");
  if (!(s.min_lr >= 0 && s.min_lr <= s.lr)) return bad("min_lr", "must be in [0, lr]");
  if (s.warmup < 0) return bad("warmup", "must not be negative");
  if (!(s.beta1 >= 0 && s.beta1 < 1)) return bad("beta1", "must be in [0, 1)");
  if (!(s.beta2 >= 0 && s.beta2 < 1)) return bad("beta2", "must be in [0, 1)");
  if (!(s.eps > 0)) return bad("eps", "must be positive");
  if (!(s.weight_decay >= 0)) return bad("weight_decay", "must not be negative");
  if (!(s.grad_clip >= 0)) return bad("grad_clip", "must not be negative (0: no clipping)");
  if (!(s.mtp_lambda >= 0)) return bad("mtp_lambda", "must not be negative");
  if (!(s.bias_gamma >= 0)) return bad("bias_gamma", "must not be negative");
  if (!(s.balance_alpha >= 0)) return bad("balance_alpha", "must not be negative");
  if (!(s.init_std > 0)) return bad("init_std", "must be positive");
  if (s.eval_interval < 0) return bad("eval_interval", "must not be negative (0: no evaluation)");
  if (s.eval_batches < 1) return bad("eval_batches", "must be at least 1");
  if (s.checkpoint_interval < 0) return bad("checkpoint_interval", "must not be negative");
  if (s.log_interval < 1) return bad("log_interval", "must be at least 1");
  if (s.threads < 0) return bad("threads", "must not be negative (0: every core)");
  return s;
}

json TrainSettings::to_json() const {
  return json{{"model", model},
              {"init_from", init_from},
              {"data", data},
              {"val_data", val_data},
              {"tokenizer", tokenizer},
              {"out", out},
              {"seq_len", seq_len},
              {"batch_size", batch_size},
              {"grad_accum", grad_accum},
              {"steps", steps},
              {"stop_at", stop_at},
              {"lr", lr},
              {"min_lr", min_lr},
              {"warmup", warmup},
              {"beta1", beta1},
              {"beta2", beta2},
              {"eps", eps},
              {"weight_decay", weight_decay},
              {"grad_clip", grad_clip},
              {"mtp_lambda", mtp_lambda},
              {"bias_gamma", bias_gamma},
              {"balance_alpha", balance_alpha},
              {"seed", int64_t(seed)},
              {"init_std", init_std},
              {"eval_interval", eval_interval},
              {"eval_batches", eval_batches},
              {"checkpoint_interval", checkpoint_interval},
              {"log_interval", log_interval},
              {"threads", threads}};
}

namespace {

// Weights of the matrix products one token goes through: attention, the dense FFN or the shared
// and top-k routed experts with the router, the head, and the MTP modules' block, projection
// and head.
double active_matmul_params(const ParamLayout& l) {
  const model::ModelConfig& c = l.config;
  double active = 0;
  auto block = [&](const LayerParams& lp) {
    for (size_t i : {lp.attn.q_a, lp.attn.q_b, lp.attn.kv_a, lp.attn.kv_b, lp.attn.o}) {
      active += double(l.info(i).numel);
    }
    if (!lp.moe) {
      active += 3.0 * double(lp.dense.width * c.hidden_size);
      return;
    }
    active += double(l.info(lp.router).numel);
    active += 3.0 * double((lp.shared.width + c.num_experts_per_tok * c.moe_intermediate_size) *
                           c.hidden_size);
  };
  for (const LayerParams& lp : l.layers) block(lp);
  active += double(l.info(l.lm_head).numel);
  for (const MtpParams& m : l.mtp) {
    block(m.layer);
    active += double(l.info(m.eh_proj).numel + l.info(l.lm_head).numel);
  }
  return active;
}

// Multiply-adds of the matrix products per token, times 6 (forward 2, backward 4), plus causal
// attention (its score and value products, averaged over positions).
double train_flops_per_token(const ParamLayout& l, int64_t seq) {
  const model::ModelConfig& c = l.config;
  const double active = active_matmul_params(l);
  const double attn = 3.0 * double(seq) * double(c.num_attention_heads) *
                      double(c.qk_head_dim() + c.v_head_dim) *
                      double(l.layers.size() + l.mtp.size());
  return 6.0 * active + attn;
}

// The f32 matrix-product peak of this machine through the BLAS the trainer uses, on every
// thread of the pool (FLOP/s).
double measure_matmul_peak(ThreadPool& pool) {
  const int64_t n = 1024;
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  auto product = [&] {
    parallel_gemm(pool, false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  };
  product();  // warm-up
  const auto start = std::chrono::steady_clock::now();
  int reps = 0;
  double elapsed = 0;
  do {
    product();
    ++reps;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < 0.3);
  return 2.0 * double(n * n * n) * reps / elapsed;
}

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "checkpoint-%06lld", static_cast<long long>(step));
  return name;
}

// OUT's checkpoint with the highest step, or "" when there is none.
std::string latest_checkpoint(const std::string& out) {
  std::string best;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(out, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 && name.find('.') == std::string::npos &&
        entry.is_directory() && name > fs::path(best).filename().string()) {
      best = entry.path().string();
    }
  }
  return best;
}

// Settings that must not change across a resume, for the run to be the same run.
Status check_resume(const TrainSettings& now, const std::string& saved_json, const std::string& dir) {
  json saved;
  try {
    saved = json::parse(saved_json);
  } catch (const std::exception& e) {
    return make_error(std::string("unreadable training settings: ") + e.what(), {}, dir);
  }
  const json cur = now.to_json();
  for (const char* key : {"model", "seq_len", "batch_size", "grad_accum", "seed"}) {
    if (!saved.contains(key) || saved[key] != cur[key]) {
      return make_error("differs from the checkpoint's (" + (saved.contains(key) ? saved[key].dump() : "absent") +
                            " there, " + cur[key].dump() + " now)",
                        key, dir, "resume with the settings the checkpoint was trained with");
    }
  }
  return ok_status();
}

std::string format_duration(double seconds) {
  const auto s = int64_t(seconds);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  }
  return buf;
}

}  // namespace

Result<TrainReport> run_training(const TrainSettings& s, const TrainHooks& hooks) {
  WHALE_ASSIGN_OR_RETURN(model::ModelConfig config, model::parse_config(s.model.dump(), "model"));
  WHALE_ASSIGN_OR_RETURN(ParamLayout layout, ParamLayout::build(config));
  if (s.seq_len > config.max_position_embeddings) {
    return make_error("seq_len " + std::to_string(s.seq_len) + " exceeds max_position_embeddings " +
                          std::to_string(config.max_position_embeddings),
                      "seq_len");
  }
  const Communicator& comm = Communicator::world();
  if (s.batch_size % comm.size() != 0) {
    return make_error("batch_size " + std::to_string(s.batch_size) + " is not a multiple of the " +
                          std::to_string(comm.size()) + " ranks",
                      "batch_size", {}, "each rank takes an equal share of every micro-batch");
  }
  ThreadPool pool(s.threads);
  use_single_threaded_blas();
  std::error_code ec;
  fs::create_directories(s.out, ec);
  if (ec || !fs::is_directory(s.out, ec)) {
    return make_error("cannot create the output directory: " + (ec ? ec.message() : "not a directory"),
                      "out", s.out);
  }
  {  // an output directory we cannot write to fails now, not at the first checkpoint
    const std::string probe = (fs::path(s.out) / ".write-test").string();
    std::ofstream f(probe);
    if (!f) return make_error("cannot write to the output directory", "out", s.out);
    f.close();
    fs::remove(probe, ec);
  }

  ParamSet<float> params(layout), grads(layout);
  TrainerState state;
  std::string resume = s.resume == "auto" ? latest_checkpoint(s.out) : s.resume;
  if (!resume.empty()) {
    WHALE_ASSIGN_OR_RETURN(state, load_trainer_state(resume, layout.total));
    WHALE_TRY(check_resume(s, state.settings_json, resume));
    WHALE_TRY(load_params(resume, params));
  } else if (!s.init_from.empty()) {
    WHALE_TRY(load_params(s.init_from, params));
  } else {
    init_params(params, s.init_std, s.seed);
  }
  // Every rank starts from rank 0's weights (they are equal already unless files differ).
  comm.broadcast(params.values);
  for (auto& b : params.biases) comm.broadcast(b);
  AdamW adam(layout, {s.beta1, s.beta2, s.eps, s.weight_decay});
  if (!resume.empty()) {
    adam.m() = std::move(state.m);
    adam.v() = std::move(state.v);
    adam.set_step(state.adam_step);
  }

  const int64_t window = s.seq_len + 1;
  WHALE_ASSIGN_OR_RETURN(WindowStream train, WindowStream::open(s.data, "train", window, s.seed));
  train.seek(state.data_epoch, state.data_index);
  std::vector<std::string> val_paths = s.val_data;
  if (val_paths.empty()) {
    for (const std::string& p : s.data) {
      if (fs::is_directory(p, ec)) {
        for (const auto& e : fs::directory_iterator(p, ec)) {
          if (e.path().filename().string().rfind("val", 0) == 0) {
            val_paths.push_back(p);
            break;
          }
        }
      }
    }
  }
  std::optional<WindowStream> val;
  if (!val_paths.empty() && s.eval_interval > 0) {
    WHALE_ASSIGN_OR_RETURN(WindowStream v, WindowStream::open(val_paths, "val", window, s.seed));
    val = std::move(v);
  }

  Network<float> net(layout, pool);
  const Schedule schedule{s.lr, s.min_lr, s.warmup, s.steps};
  const LossSettings loss_settings{s.mtp_lambda, s.balance_alpha};
  const int64_t B = s.batch_size, S = s.seq_len, E = config.n_routed_experts;
  // This rank's sequences of each micro-batch: [rank·local_B, (rank + 1)·local_B).
  const int64_t local_B = B / comm.size(), first_seq = comm.rank() * local_B;
  std::vector<int32_t> tokens(size_t(B * window));
  std::vector<std::vector<int64_t>> counts(size_t(layout.n_moe_layers), std::vector<int64_t>(size_t(E)));

  TrainReport report;
  {  // the job's peak: every rank's pool
    std::vector<double> peak{measure_matmul_peak(pool)};
    comm.sum(peak);
    report.peak_flops = peak[0];
  }
  const bool root = comm.is_root();
  report.root = root;
  const double flops_per_token = train_flops_per_token(layout, S);
  const std::string log_path = (fs::path(s.out) / "train_log.jsonl").string();
  std::ofstream log;
  if (root) log.open(log_path, std::ios::app);
  const json settings_json = s.to_json();
  SaveOptions save;
  save.config_json = s.model.dump(2) + "\n";
  save.tokenizer_dir = s.tokenizer;
  save.after_file = hooks.after_checkpoint_file;
  FILE* progress = root ? hooks.progress : nullptr;
  if (progress) {
    std::fprintf(progress,
                 "train: %lld parameters (%.2fM active per token), %lld tokens in %lld windows of "
                 "%lld, %s, %d threads per process, matrix peak %.1f GFLOP/s%s\n",
                 (long long)layout.total, active_matmul_params(layout) * 1e-6,
                 (long long)train.tokens(), (long long)train.windows(), (long long)window,
                 comm.describe().c_str(), pool.size(), report.peak_flops * 1e-9,
                 resume.empty() ? "" : (", resumed from " + resume).c_str());
  }

  struct Eval {
    double main = 0, mtp = 0, main_accuracy = 0, mtp_accuracy = 0;
  };
  auto evaluate = [&]() -> Result<Eval> {
    Eval e;
    int64_t w = 0;
    for (int64_t i = 0; i < s.eval_batches; ++i) {
      for (int64_t b = 0; b < B; ++b, ++w) {
        WHALE_TRY(val->window(w % val->windows(), tokens.data() + b * window, config.vocab_size));
      }
      const Losses l = net.run(params, tokens, B, S, loss_settings, nullptr, 1.0f, nullptr);
      const double k = 1.0 / double(s.eval_batches);
      e.main += l.main * k;
      e.main_accuracy += l.main_accuracy * k;
      if (!l.mtp_modules.empty()) {
        e.mtp += l.mtp_modules[0] * k;
        e.mtp_accuracy += l.mtp_accuracy[0] * k;
      }
    }
    return e;
  };
  auto save_at = [&](int64_t step) -> Status {
    TrainerState st;
    st.step = step;
    st.adam_step = adam.step();
    st.data_epoch = train.epoch();
    st.data_index = train.index();
    st.settings_json = settings_json.dump();
    st.m = adam.m();
    st.v = adam.v();
    const std::string dir = (fs::path(s.out) / checkpoint_name(step)).string();
    // Rank 0 writes; every rank learns whether it worked, so none waits for a rank that stopped.
    Status saved = root ? save_checkpoint(dir, params, st, save) : ok_status();
    std::vector<int64_t> failed{saved.ok() ? 0 : 1};
    comm.sum(failed);
    if (!saved.ok()) return saved;
    if (failed[0] > 0) return make_error("rank 0 could not save the checkpoint", {}, dir);
    report.last_checkpoint = dir;
    if (progress) std::fprintf(progress, "train: saved %s\n", dir.c_str());
    return ok_status();
  };

  const auto start = std::chrono::steady_clock::now();
  auto interval_start = start;
  int64_t interval_tokens = 0;
  const int64_t first = state.step;
  const int64_t end = s.stop_at > 0 ? std::max(first, s.stop_at) : s.steps;
  for (int64_t step = first; step < end; ++step) {
    std::fill(grads.values.begin(), grads.values.end(), 0.0f);
    for (auto& c : counts) std::fill(c.begin(), c.end(), 0);
    Losses sum;
    sum.mtp_modules.assign(layout.mtp.size(), 0.0);
    for (int64_t micro = 0; micro < s.grad_accum; ++micro) {
      // Every rank reads the whole micro-batch (the streams stay in step) and runs its share.
      for (int64_t b = 0; b < B; ++b) WHALE_TRY(train.next(tokens.data() + b * window, config.vocab_size));
      const std::span<const int32_t> mine(tokens.data() + first_seq * window, size_t(local_B * window));
      const Losses l = net.run(params, mine, local_B, S, loss_settings, &grads,
                               1.0f / float(s.grad_accum * comm.size()), &counts);
      const double k = 1.0 / double(s.grad_accum * comm.size());
      sum.main += l.main * k;
      sum.mtp += l.mtp * k;
      sum.balance += l.balance * k;
      sum.total += l.total * k;
      for (size_t i = 0; i < l.mtp_modules.size(); ++i) sum.mtp_modules[i] += l.mtp_modules[i] * k;
    }
    if (comm.size() > 1) {  // the global batch's gradient, losses and expert counts
      comm.sum(grads.values);
      std::vector<double> losses{sum.main, sum.mtp, sum.balance, sum.total};
      losses.insert(losses.end(), sum.mtp_modules.begin(), sum.mtp_modules.end());
      comm.sum(losses);
      sum.main = losses[0];
      sum.mtp = losses[1];
      sum.balance = losses[2];
      sum.total = losses[3];
      std::copy(losses.begin() + 4, losses.end(), sum.mtp_modules.begin());
      for (auto& c : counts) comm.sum(c);
    }
    const double norm = clip_gradients(grads.values, s.grad_clip);
    if (!std::isfinite(sum.total) || !std::isfinite(norm)) {
      return make_error("the loss became " + std::string(std::isfinite(sum.total) ? "finite but the gradient norm is not" : "NaN or infinite") +
                            " at step " + std::to_string(step) + "; training stopped" +
                            (report.last_checkpoint.empty() && resume.empty()
                                 ? std::string(" before any checkpoint")
                                 : "; the last good checkpoint is " +
                                       (report.last_checkpoint.empty() ? resume : report.last_checkpoint)),
                        {}, {}, "lower lr or raise warmup");
    }
    const double lr = schedule.lr(step);
    adam.update(params, grads, lr);
    update_biases(params, counts, s.bias_gamma);

    std::vector<double> load;
    for (const auto& c : counts) load.push_back(max_over_mean(c));
    if (step == first) {
      report.first_loss = sum.main;
      report.first_load = load;
    }
    report.last_loss = sum.main;
    report.last_load = load;
    report.steps_done = step + 1 - first;
    interval_tokens += s.grad_accum * B * S;

    const bool last = step + 1 == end;
    json entry = {{"step", step + 1},     {"loss", sum.main},  {"mtp_loss", sum.mtp_modules},
                  {"balance_loss", sum.balance}, {"total_loss", sum.total}, {"lr", lr},
                  {"grad_norm", norm},    {"expert_load", load}};
    if ((step + 1) % s.log_interval == 0 || last || step == first) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - interval_start).count();
      const double tps = double(interval_tokens) / std::max(dt, 1e-9);
      const double mfu = tps * flops_per_token / report.peak_flops;
      report.tokens_per_second = tps;
      report.mfu = mfu;
      entry["tokens_per_second"] = tps;
      entry["mfu"] = mfu;
      const double elapsed = std::chrono::duration<double>(now - start).count();
      const double eta = elapsed / double(step + 1 - first) * double(end - step - 1);
      if (progress) {
        double worst = 0;
        for (double x : load) worst = std::max(worst, x);
        std::fprintf(progress,
                     "step %lld/%lld | loss %.4f | mtp %.4f | lr %.2e | grad %.3f | load %.2f | "
                     "%.0f tok/s | MFU %.1f%% | ETA %s\n",
                     (long long)(step + 1), (long long)s.steps, sum.main,
                     sum.mtp_modules.empty() ? 0.0 : sum.mtp_modules[0], lr, norm, worst, tps,
                     100.0 * mfu, format_duration(eta).c_str());
        std::fflush(progress);
      }
      interval_start = now;
      interval_tokens = 0;
    }
    if (val && ((step + 1) % s.eval_interval == 0 || last)) {
      WHALE_ASSIGN_OR_RETURN(Eval v, evaluate());
      report.val_loss = v.main;
      entry["val_loss"] = v.main;
      entry["val_accuracy"] = v.main_accuracy;
      entry["val_mtp_loss"] = v.mtp;
      entry["val_mtp_accuracy"] = v.mtp_accuracy;
      if (progress) {
        std::fprintf(progress,
                     "eval step %lld | val loss %.4f | val ppl %.2f | top-1 %.1f%% | val mtp %.4f | "
                     "mtp top-1 %.1f%%\n",
                     (long long)(step + 1), v.main, std::exp(v.main), 100 * v.main_accuracy, v.mtp,
                     100 * v.mtp_accuracy);
      }
    }
    if (root) {
      log << entry.dump() << "\n";
      log.flush();
    }
    if ((s.checkpoint_interval > 0 && (step + 1) % s.checkpoint_interval == 0) || last) {
      WHALE_TRY(save_at(step + 1));
    }
  }
  if (end == first && report.last_checkpoint.empty() && resume.empty()) {
    WHALE_TRY(save_at(first));  // steps 0: write the initial weights as a checkpoint
  }
  return report;
}

}  // namespace whale::train
