// whale bench: prefill and decode speed, each as a fraction of this machine's limit measured in
// the same run: memory read bandwidth for decode, f32 FMA throughput for prefill (the kernels
// compute in f32; AMX/BF16 kernels will need their own peaks).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <memory>
#include <cstdlib>
#include <random>

#include "apps/whale/commands.h"
#include "apps/whale/loaded_model.h"
#include "backends/cpu/amx_kernels.h"
#include "backends/cpu/quant_kernels.h"
#include "backends/cpu/vector_kernels.h"
#include "model/tensor_table.h"

namespace whale::app {

void add_bench_command(CLI::App& app, BenchArgs& args) {
  auto* cmd =
      app.add_subcommand("bench", "Measure prefill and decode speed against the machine's limits");
  cmd->add_option("MODEL_DIR", args.model_dir, "model directory")->required();
  cmd->add_option("--prompt", args.prompt, "prompt tokens")->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--gen", args.gen, "tokens to decode")->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--threads", args.threads, "threads (default: every core)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--reps", args.reps, "repetitions (the median is reported)")
      ->check(CLI::Range(1, 100));
  cmd->add_flag("--json", args.json, "print one JSON object");
  add_kv_cache_option(cmd, args.kv_cache);
}

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The memory read bandwidth probe: every thread sums its share of a 1 GiB buffer, far larger
// than the caches, with the widest loads the machine has. The buffer is read once before the
// measured passes (that warms up the page tables).
class BandwidthProbe {
 public:
  BandwidthProbe(ThreadPool& pool, cpu::Isa isa)
      : pool_(pool),
        isa_(isa),
        buf_(static_cast<uint64_t*>(std::aligned_alloc(64, static_cast<size_t>(kBytes))),
             &std::free) {
    if (!buf_) return;
    std::fill_n(buf_.get(), kBytes / 8, 1);
    pass();
  }
  bool ok() const { return buf_ != nullptr; }
  // The buffer's resident bytes (every page was written).
  static constexpr int64_t bytes() { return kBytes; }
  // One timed pass over the buffer, in GB/s.
  double pass() {
    const int64_t slices = kBytes / 4096;  // 4 KB slices keep every share 64-byte aligned
    std::atomic<uint64_t> total{0};
    const auto t0 = clock_type::now();
    pool_.parallel_for(slices, [&](int64_t b, int64_t e) {
      total += cpu::read_bytes_loop(isa_, reinterpret_cast<const char*>(buf_.get()) + b * 4096,
                                    (e - b) * 4096);
    });
    const double t = seconds_since(t0);
    if (total.load() != uint64_t(kBytes / 8)) std::fprintf(stderr, "bandwidth check failed\n");
    return double(kBytes) / t / 1e9;
  }

 private:
  static constexpr int64_t kBytes = int64_t{1} << 30;
  ThreadPool& pool_;
  cpu::Isa isa_;
  std::unique_ptr<uint64_t, decltype(&std::free)> buf_;
};

// Throughput of every thread running `loop` (which does `ops_per_call` operations and returns
// a value that depends on them), in G operations per second: the compute ceilings.
template <class Loop>
double measure_peak(ThreadPool& pool, int reps, double ops_per_call, Loop loop) {
  std::vector<double> rates;
  for (int r = 0; r < reps + 1; ++r) {
    std::atomic<double> sink{0};
    const auto t0 = clock_type::now();
    pool.parallel_for(pool.size(), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) sink = sink + double(loop());
    });
    const double t = seconds_since(t0);
    if (r > 0) rates.push_back(ops_per_call * pool.size() / t / 1e9);
  }
  return median(rates);
}

// The stored form of a weight matrix, as bench reports it.
std::string weight_form(const ops::Matrix& w) {
  switch (w.format) {
    case ops::WeightFormat::kQ8:
      return "q8";
    case ops::WeightFormat::kQ4:
      return "q4";
    case ops::WeightFormat::kDense:
      break;
  }
  return std::string(dtype_name(w.dtype));
}

}  // namespace

int run_bench(const BenchArgs& args) {
  auto m = load_model(args.model_dir, args.threads, args.json, /*with_tokenizer=*/false);
  if (!m.ok()) return report("bench", m.error());
  const model::ModelConfig& c = m->model->config();
  const Checkpoint& ckpt = m->model->checkpoint();

  // Bytes read and matmul parameters per token, from the tensor table at stored dtypes.
  model::ModelWeights bound = m->model->weights();  // views; the table points into them
  double bytes_per_token = 0, active_matmul_params = 0;
  std::map<std::string, double> bytes_by_dtype;
  const double routed_share = double(c.num_experts_per_tok) / double(c.n_routed_experts);
  for (const model::TensorSpec& s : model::tensor_table(c, &bound)) {
    if (s.group != model::TensorGroup::kMain) continue;
    const StoredTensor* t = ckpt.find(s.checkpoint);
    if (!t) continue;  // a tied head
    double bytes = double(t->view.nbytes());
    for (const char* suffix : {"_scale_inv", "_scale"}) {
      if (const StoredTensor* sc = ckpt.find(s.checkpoint + suffix)) bytes += double(sc->view.nbytes());
    }
    double params = 1;
    for (int64_t d : s.shape) params *= double(d);
    const double share = s.routed_expert ? routed_share : 1.0;
    if (s.checkpoint == "model.embed_tokens.weight") {
      bytes /= double(c.vocab_size);  // one row is looked up
      params = 0;                     // and no multiply-adds
    } else if (s.kind != model::TensorKind::kLinear && s.kind != model::TensorKind::kTable) {
      params = 0;
    }
    bytes_per_token += bytes * share;
    active_matmul_params += params * share;
    bytes_by_dtype[s.dest ? weight_form(*s.dest) : std::string(dtype_name(t->view.dtype))] +=
        bytes * share;
  }
  // The experts' form (the bulk of a MoE model's weights) names the model's form.
  const model::LayerWeights& last = m->model->weights().layers.back();
  const std::string main_form =
      weight_form(last.moe ? last.experts.experts[0].gate : last.dense.gate);

  const cpu::Isa isa = m->backend->isa();
  struct rusage before_probe {};
  getrusage(RUSAGE_SELF, &before_probe);  // loading's high-water mark
  BandwidthProbe probe(*m->pool, isa);
  if (!probe.ok()) {
    return report("bench", make_error("cannot allocate the 1 GiB buffer that measures memory bandwidth"));
  }
  // The decode limit takes the best bandwidth the probe reads in this run: `reps` passes here
  // and one after each rep's decode. On a shared machine the rate moves by tens of percent
  // within minutes, and a pass that caught a slow moment would raise the fraction past what
  // the machine allows.
  double bandwidth = 0;
  for (int r = 0; r < args.reps; ++r) bandwidth = std::max(bandwidth, probe.pass());
  const double fma_peak =
      measure_peak(*m->pool, args.reps, double(cpu::fma_flops_per_iter(isa)) * 2'000'000,
                   [&] { return cpu::fma_throughput_loop(isa, 2'000'000); });
  const double int8_peak =
      measure_peak(*m->pool, args.reps, double(cpu::int8_dot_ops_per_iter(isa)) * 2'000'000,
                   [&] { return cpu::int8_dot_throughput_loop(isa, 2'000'000); });
  const double amx_peak =
      isa == cpu::Isa::kAmx
          ? measure_peak(*m->pool, args.reps, 131072.0 * 200'000,
                         [] { return cpu::amx_bf16_throughput_loop(200'000); })
          : 0.0;
  // The ceiling of the kernels prefill uses for this form: with AMX, the bf16 tiles (the block
  // formats are expanded to bf16 for them).
  const bool quantized = main_form == "q8" || main_form == "q4";
  const bool tiles = amx_peak > 0 && (quantized || main_form == "BF16");
  const double peak = tiles ? amx_peak : quantized ? int8_peak : fma_peak;
  const char* peak_name = tiles ? "AMX-BF16" : quantized ? "int8 dot" : "f32 FMA";

  std::mt19937 rng(42);
  std::vector<int32_t> prompt(static_cast<size_t>(args.prompt));
  for (auto& id : prompt) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size));
  std::vector<double> prefill_tps, decode_tps;
  model::KvCache cache(c, args.prompt + args.gen, kv_type_of(args.kv_cache));
  std::vector<float> logits;  // reused, like the generator's
  auto step = [&](std::span<const int32_t> ids) {
    return m->model->forward(*m->backend, ids, cache, &logits);
  };
  for (int r = 0; r < args.reps; ++r) {
    cache.clear();
    auto t0 = clock_type::now();
    if (Status s = step(prompt); !s.ok()) return report("bench", s.error());
    prefill_tps.push_back(args.prompt / seconds_since(t0));
    t0 = clock_type::now();
    for (int g = 0; g < args.gen; ++g) {
      const auto next =
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (Status s = step(std::span(&next, 1)); !s.ok()) return report("bench", s.error());
    }
    decode_tps.push_back(args.gen / seconds_since(t0));
    bandwidth = std::max(bandwidth, probe.pass());
  }
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  // The probe's buffer was resident from before the first forward pass to here: since then the
  // high-water mark less the buffer is the engine's own; before it, loading's.
  const double peak_rss = std::max(double(before_probe.ru_maxrss) * 1024,
                                   double(usage.ru_maxrss) * 1024 - double(probe.bytes()));

  const double decode = median(decode_tps), prefill = median(prefill_tps);
  const double decode_limit = bandwidth * 1e9 / bytes_per_token;
  const double prefill_limit = peak * 1e9 / (2 * active_matmul_params);
  if (args.json) {
    nlohmann::ordered_json j;
    j["model"] = args.model_dir;
    j["threads"] = m->pool->size();
    j["backend"] = m->backend->name();
    j["weights_dtype"] = main_form;
    j["kv_cache"] = args.kv_cache;
    j["prompt_tokens"] = args.prompt;
    j["gen_tokens"] = args.gen;
    j["prefill_tps"] = prefill;
    j["decode_tps"] = decode;
    j["decode_bytes_per_token"] = bytes_per_token;
    j["decode_bytes_by_dtype"] = bytes_by_dtype;
    j["active_matmul_params_per_token"] = active_matmul_params;
    j["bandwidth_gbs"] = bandwidth;
    j["fma_peak_gflops"] = fma_peak;
    j["int8_dot_peak_gops"] = int8_peak;
    j["amx_bf16_peak_gflops"] = amx_peak;
    j["prefill_peak"] = peak_name;
    j["decode_limit_tps"] = decode_limit;
    j["prefill_limit_tps"] = prefill_limit;
    j["decode_fraction_of_limit"] = decode / decode_limit;
    j["prefill_fraction_of_limit"] = prefill / prefill_limit;
    j["peak_rss_bytes"] = static_cast<int64_t>(peak_rss);
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("machine   %.1f GB/s read; peaks %.0f GFLOP/s f32 FMA, %.0f GOP/s int8 dot", bandwidth,
              fma_peak, int8_peak);
  if (amx_peak > 0) {
    std::printf(", %.0f GFLOP/s AMX-BF16", amx_peak);
  }
  std::printf(" (%d threads, %s); weights %s, KV cache %s\n", m->pool->size(),
              std::string(m->backend->name()).c_str(), main_form.c_str(), args.kv_cache.c_str());
  std::printf("per token %.1f MB read, %.3fB matmul parameters\n", bytes_per_token / 1e6,
              active_matmul_params / 1e9);
  std::printf("prefill   %.1f tokens/s  (limit %.1f at the %s peak: %.1f%%)  [%d tokens, median of %d]\n",
              prefill, prefill_limit, peak_name, 100 * prefill / prefill_limit, args.prompt, args.reps);
  std::printf("decode    %.1f tokens/s  (limit %.1f: %.1f%%)  [%d tokens, median of %d]\n", decode,
              decode_limit, 100 * decode / decode_limit, args.gen, args.reps);
  std::printf("peak RSS  %.1f MB\n", peak_rss / (1024 * 1024));
  return 0;
}

}  // namespace whale::app
