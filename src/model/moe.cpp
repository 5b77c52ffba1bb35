#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace whale::model {
namespace {

// Indices of the k largest values of v, largest first, into idx[0, k); ties go to the lower
// index. idx must hold v.size() entries.
void top_k(std::span<const float> v, int64_t k, std::span<int32_t> idx) {
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return v[static_cast<size_t>(a)] > v[static_cast<size_t>(b)] ||
           (v[static_cast<size_t>(a)] == v[static_cast<size_t>(b)] && a < b);
  });
}

// Per-thread buffers of route_token, grown once to the model's sizes.
struct RouteScratch {
  std::vector<float> score, choice, group_score;
  std::vector<int32_t> order, group_order;
};

// Masks (to -inf) every expert outside the topk_group best groups, ranking each group by
// `group_score` of its members.
template <class GroupScore>
void keep_best_groups(const ModelConfig& c, RouteScratch& s, GroupScore group_score) {
  const int64_t per_group = c.n_routed_experts / c.n_group;
  s.group_score.resize(static_cast<size_t>(c.n_group));
  s.group_order.resize(static_cast<size_t>(c.n_group));
  for (int64_t g = 0; g < c.n_group; ++g) {
    s.group_score[static_cast<size_t>(g)] = group_score(s.choice.data() + g * per_group, per_group);
  }
  top_k(s.group_score, c.topk_group, s.group_order);
  const auto kept = std::span(s.group_order).first(static_cast<size_t>(c.topk_group));
  for (int64_t g = 0; g < c.n_group; ++g) {
    if (std::find(kept.begin(), kept.end(), g) != kept.end()) continue;
    std::fill_n(s.choice.data() + g * per_group, per_group,
                -std::numeric_limits<float>::infinity());
  }
}

}  // namespace

void ffn_forward(const ops::Backend& ops, const FfnWeights& w, const float* x, int64_t n,
                 float* out, Workspace& scratch) {
  const int64_t d = w.gate.cols, width = w.gate.rows;
  const Workspace::Scope scope(scratch);
  const std::span<float> gate = scratch.take<float>(n * width);  // [n, width]
  const std::span<float> up = scratch.take<float>(n * width);
  ops.matmul(gate.data(), width, x, d, n, w.gate);
  ops.matmul(up.data(), width, x, d, n, w.up);
  ops.swiglu(gate.data(), width, gate.data(), up.data(), width, n, width);
  ops.matmul(out, d, gate.data(), width, n, w.down);
}

void route_token(const ModelConfig& c, const float* logits, const float* bias, int32_t* experts,
                 float* weights) {
  const auto e = static_cast<size_t>(c.n_routed_experts);
  thread_local RouteScratch s;
  s.score.resize(e);
  s.choice.resize(e);
  s.order.resize(e);
  std::vector<float>& score = s.score;
  std::vector<float>& choice = s.choice;
  if (c.scoring_func == ScoringFunc::kSigmoid) {
    for (size_t i = 0; i < e; ++i) {
      score[i] = 1.0f / (1.0f + std::exp(-logits[i]));
      choice[i] = score[i] + (bias ? bias[i] : 0.0f);
    }
  } else {
    const float max_logit = *std::max_element(logits, logits + e);
    double sum = 0;
    for (size_t i = 0; i < e; ++i) sum += std::exp(double(logits[i]) - max_logit);
    for (size_t i = 0; i < e; ++i) {
      score[i] = static_cast<float>(std::exp(double(logits[i]) - max_logit) / sum);
      choice[i] = score[i];
    }
  }
  if (c.topk_method == TopkMethod::kNoauxTc) {
    keep_best_groups(c, s, [](const float* v, int64_t m) {
      float a = -INFINITY, b = -INFINITY;  // the two largest
      for (int64_t i = 0; i < m; ++i) {
        if (v[i] > a) {
          b = a;
          a = v[i];
        } else if (v[i] > b) {
          b = v[i];
        }
      }
      return a + b;
    });
  } else if (c.topk_method == TopkMethod::kGroupLimitedGreedy) {
    keep_best_groups(c, s, [](const float* v, int64_t m) { return *std::max_element(v, v + m); });
  }
  const int64_t k = c.num_experts_per_tok;
  top_k(choice, k, s.order);
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) {
    experts[j] = s.order[static_cast<size_t>(j)];
    weights[j] = score[static_cast<size_t>(experts[j])];
    sum += weights[j];
  }
  // V3 normalises (if asked) and then scales. DeepSeek's V2 code either normalises (top-k > 1
  // and norm_topk_prob) or scales, never both; released V2 configs say norm_topk_prob false.
  const bool normalise = c.norm_topk_prob && (c.family == Family::kDeepseekV3 || k > 1);
  const bool scale = c.family == Family::kDeepseekV3 || !normalise;
  for (int64_t j = 0; j < k; ++j) {
    if (normalise) weights[j] = static_cast<float>(weights[j] / (sum + 1e-20));
    if (scale) weights[j] *= static_cast<float>(c.routed_scaling_factor);
  }
}

void moe_forward(const ops::Backend& ops, const ModelConfig& c, const MoeWeights& w, const float* x,
                 int64_t n, float* out, Workspace& scratch) {
  const int64_t d = c.hidden_size, e = c.n_routed_experts, k = c.num_experts_per_tok;
  const Workspace::Scope scope(scratch);
  const std::span<float> logits = scratch.take<float>(n * e);  // [n, E], in f32 like transformers
  ops.matmul(logits.data(), e, x, d, n, w.router);
  std::span<float> bias;
  if (w.correction_bias.data) {
    bias = scratch.take<float>(e);
    w.correction_bias.dequantize_row(0, 0, e, bias.data());
  }
  // Route every token, then group the tokens by expert so each expert runs once on its rows.
  const std::span<int32_t> chosen = scratch.take<int32_t>(n * k);
  const std::span<float> weight = scratch.take<float>(n * k);
  for (int64_t t = 0; t < n; ++t) {
    route_token(c, logits.data() + t * e, bias.empty() ? nullptr : bias.data(),
                chosen.data() + t * k, weight.data() + t * k);
  }
  // The slots (t·k + j) sorted by expert, stably: expert ex's are slots[first[ex], first[ex + 1]).
  const std::span<int64_t> first = scratch.take<int64_t>(e + 1);
  std::fill(first.begin(), first.end(), 0);
  for (int64_t i = 0; i < n * k; ++i)
    ++first[static_cast<size_t>(chosen[static_cast<size_t>(i)]) + 1];
  std::partial_sum(first.begin(), first.end(), first.begin());
  const std::span<int64_t> slots = scratch.take<int64_t>(n * k);
  {
    const std::span<int64_t> next = scratch.take<int64_t>(e);
    std::copy_n(first.begin(), e, next.begin());
    for (int64_t i = 0; i < n * k; ++i)
      slots[static_cast<size_t>(next[static_cast<size_t>(chosen[static_cast<size_t>(i)])]++)] = i;
  }
  auto slots_of = [&](int64_t ex) {
    return slots.subspan(
        static_cast<size_t>(first[static_cast<size_t>(ex)]),
        static_cast<size_t>(first[static_cast<size_t>(ex) + 1] - first[static_cast<size_t>(ex)]));
  };

  // Every expert in use (the shared one first) runs on its gathered rows; all their gate and up
  // products form one job, all their down products another.
  struct Run {
    const FfnWeights* w;
    int64_t first, m;  // rows [first, first + m) of the gathered inputs
  };
  const std::span<Run> all_runs = scratch.take<Run>(e + 1);
  int64_t n_runs = 0, total = 0;
  if (c.n_shared_experts > 0) {
    all_runs[static_cast<size_t>(n_runs++)] = {&w.shared, 0, n};
    total = n;
  }
  for (int64_t ex = 0; ex < e; ++ex) {
    const auto m = static_cast<int64_t>(slots_of(ex).size());
    if (m == 0) continue;
    all_runs[static_cast<size_t>(n_runs++)] = {&w.experts[static_cast<size_t>(ex)], total, m};
    total += m;
  }
  const std::span<const Run> runs = all_runs.first(static_cast<size_t>(n_runs));
  // Written whole before they are read (gate/up only in each run's own width).
  const std::span<float> xs = scratch.take<float>(total * d);  // [total, d]
  const std::span<float> ys = scratch.take<float>(total * d);
  int64_t width = 0;
  for (const Run& r : runs) width = std::max(width, r.w->gate.rows);
  const std::span<float> gate = scratch.take<float>(total * width);
  const std::span<float> up = scratch.take<float>(total * width);
  if (c.n_shared_experts > 0) std::copy_n(x, n * d, xs.data());
  for (int64_t ex = 0, row = c.n_shared_experts > 0 ? n : 0; ex < e; ++ex) {
    for (const int64_t slot : slots_of(ex)) std::copy_n(x + slot / k * d, d, xs.data() + row++ * d);
  }
  const std::span<ops::MatmulTask> tasks = scratch.take<ops::MatmulTask>(2 * n_runs);
  for (size_t i = 0; i < runs.size(); ++i) {
    const Run& r = runs[i];
    const float* xr = xs.data() + r.first * d;
    tasks[2 * i] = {gate.data() + r.first * width, width, xr, d, r.m, r.w->gate};
    tasks[2 * i + 1] = {up.data() + r.first * width, width, xr, d, r.m, r.w->up};
  }
  ops.matmul_batch(tasks);
  for (size_t i = 0; i < runs.size(); ++i) {
    const Run& r = runs[i];
    float* g = gate.data() + r.first * width;
    ops.swiglu(g, width, g, up.data() + r.first * width, width, r.m, r.w->gate.rows);
    tasks[i] = {ys.data() + r.first * d, d, g, width, r.m, r.w->down};
  }
  ops.matmul_batch(tasks.first(runs.size()));

  if (c.n_shared_experts > 0) {
    std::copy_n(ys.data(), n * d, out);
  } else {
    std::fill_n(out, n * d, 0.0f);
  }
  for (int64_t ex = 0, row = c.n_shared_experts > 0 ? n : 0; ex < e; ++ex) {
    for (const int64_t slot : slots_of(ex)) {
      const float wt = weight[static_cast<size_t>(slot)];
      const float* y = ys.data() + row++ * d;
      float* o = out + slot / k * d;
      for (int64_t j = 0; j < d; ++j) o[j] += wt * y[j];
    }
  }
}

}  // namespace whale::model
