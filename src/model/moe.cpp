#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/uninit_vector.h"

namespace whale::model {
namespace {

// Indices of the k largest values, largest first; ties go to the lower index.
std::vector<int32_t> top_k(const std::vector<float>& v, int64_t k) {
  std::vector<int32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return v[static_cast<size_t>(a)] > v[static_cast<size_t>(b)] ||
           (v[static_cast<size_t>(a)] == v[static_cast<size_t>(b)] && a < b);
  });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

// Masks (to -inf) every expert outside the topk_group best groups, ranking each group by
// `group_score` of its members.
template <class GroupScore>
void keep_best_groups(const ModelConfig& c, std::vector<float>* choice, GroupScore group_score) {
  const int64_t per_group = c.n_routed_experts / c.n_group;
  std::vector<float> scores(static_cast<size_t>(c.n_group));
  for (int64_t g = 0; g < c.n_group; ++g) {
    scores[static_cast<size_t>(g)] = group_score(choice->data() + g * per_group, per_group);
  }
  const std::vector<int32_t> keep = top_k(scores, c.topk_group);
  for (int64_t g = 0; g < c.n_group; ++g) {
    if (std::find(keep.begin(), keep.end(), g) != keep.end()) continue;
    std::fill_n(choice->data() + g * per_group, per_group, -std::numeric_limits<float>::infinity());
  }
}

}  // namespace

void ffn_forward(const ops::Backend& ops, const FfnWeights& w, const float* x, int64_t n,
                 float* out) {
  const int64_t d = w.gate.cols, width = w.gate.rows;
  UninitVector<float> gate(static_cast<size_t>(n * width)), up(gate.size());  // [n, width]
  ops.matmul(gate.data(), width, x, d, n, w.gate);
  ops.matmul(up.data(), width, x, d, n, w.up);
  ops.swiglu(gate.data(), width, gate.data(), up.data(), width, n, width);
  ops.matmul(out, d, gate.data(), width, n, w.down);
}

void route_token(const ModelConfig& c, const float* logits, const float* bias, int32_t* experts,
                 float* weights) {
  const auto e = static_cast<size_t>(c.n_routed_experts);
  std::vector<float> score(e), choice(e);
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
    keep_best_groups(c, &choice, [](const float* s, int64_t m) {
      float a = -INFINITY, b = -INFINITY;  // the two largest
      for (int64_t i = 0; i < m; ++i) {
        if (s[i] > a) {
          b = a;
          a = s[i];
        } else if (s[i] > b) {
          b = s[i];
        }
      }
      return a + b;
    });
  } else if (c.topk_method == TopkMethod::kGroupLimitedGreedy) {
    keep_best_groups(c, &choice,
                     [](const float* s, int64_t m) { return *std::max_element(s, s + m); });
  }
  const std::vector<int32_t> chosen = top_k(choice, c.num_experts_per_tok);
  double sum = 0;
  for (size_t j = 0; j < chosen.size(); ++j) {
    experts[j] = chosen[j];
    weights[j] = score[static_cast<size_t>(chosen[j])];
    sum += weights[j];
  }
  // V3 normalises (if asked) and then scales. DeepSeek's V2 code either normalises (top-k > 1
  // and norm_topk_prob) or scales, never both; released V2 configs say norm_topk_prob false.
  const bool normalise = c.norm_topk_prob && (c.family == Family::kDeepseekV3 || chosen.size() > 1);
  const bool scale = c.family == Family::kDeepseekV3 || !normalise;
  for (size_t j = 0; j < chosen.size(); ++j) {
    if (normalise) weights[j] = static_cast<float>(weights[j] / (sum + 1e-20));
    if (scale) weights[j] *= static_cast<float>(c.routed_scaling_factor);
  }
}

void moe_forward(const ops::Backend& ops, const ModelConfig& c, const MoeWeights& w, const float* x,
                 int64_t n, float* out) {
  const int64_t d = c.hidden_size, e = c.n_routed_experts, k = c.num_experts_per_tok;
  std::vector<float> logits(static_cast<size_t>(n * e));  // [n, E], in f32 like transformers
  ops.matmul(logits.data(), e, x, d, n, w.router);
  std::vector<float> bias;
  if (w.correction_bias.data) {
    bias.resize(static_cast<size_t>(e));
    w.correction_bias.dequantize_row(0, 0, e, bias.data());
  }
  // Route every token, then group the tokens by expert so each expert runs once on its rows.
  std::vector<int32_t> chosen(static_cast<size_t>(n * k));
  std::vector<float> weight(static_cast<size_t>(n * k));
  for (int64_t t = 0; t < n; ++t) {
    route_token(c, logits.data() + t * e, bias.empty() ? nullptr : bias.data(),
                chosen.data() + t * k, weight.data() + t * k);
  }
  std::vector<std::vector<int64_t>> rows_of(static_cast<size_t>(e));  // (t·k + j) per expert
  for (int64_t i = 0; i < n * k; ++i)
    rows_of[static_cast<size_t>(chosen[static_cast<size_t>(i)])].push_back(i);

  // Every expert in use (the shared one first) runs on its gathered rows; all their gate and up
  // products form one job, all their down products another.
  struct Run {
    const FfnWeights* w;
    int64_t first, m;  // rows [first, first + m) of the gathered inputs
  };
  std::vector<Run> runs;
  int64_t total = 0;
  if (c.n_shared_experts > 0) {
    runs.push_back({&w.shared, 0, n});
    total = n;
  }
  for (int64_t ex = 0; ex < e; ++ex) {
    const auto m = static_cast<int64_t>(rows_of[static_cast<size_t>(ex)].size());
    if (m == 0) continue;
    runs.push_back({&w.experts[static_cast<size_t>(ex)], total, m});
    total += m;
  }
  // Written whole before they are read (gate/up only in each run's own width).
  UninitVector<float> xs(static_cast<size_t>(total * d)), ys(xs.size());  // [total, d]
  int64_t width = 0;
  for (const Run& r : runs) width = std::max(width, r.w->gate.rows);
  UninitVector<float> gate(static_cast<size_t>(total * width)), up(gate.size());
  if (c.n_shared_experts > 0) std::copy_n(x, n * d, xs.data());
  for (int64_t ex = 0, row = c.n_shared_experts > 0 ? n : 0; ex < e; ++ex) {
    for (const int64_t slot : rows_of[static_cast<size_t>(ex)])
      std::copy_n(x + slot / k * d, d, xs.data() + row++ * d);
  }
  std::vector<ops::MatmulTask> tasks;
  for (const Run& r : runs) {
    const float* xr = xs.data() + r.first * d;
    tasks.push_back({gate.data() + r.first * width, width, xr, d, r.m, r.w->gate});
    tasks.push_back({up.data() + r.first * width, width, xr, d, r.m, r.w->up});
  }
  ops.matmul_batch(tasks);
  tasks.clear();
  for (const Run& r : runs) {
    float* g = gate.data() + r.first * width;
    ops.swiglu(g, width, g, up.data() + r.first * width, width, r.m, r.w->gate.rows);
    tasks.push_back({ys.data() + r.first * d, d, g, width, r.m, r.w->down});
  }
  ops.matmul_batch(tasks);

  if (c.n_shared_experts > 0) {
    std::copy_n(ys.data(), n * d, out);
  } else {
    std::fill_n(out, n * d, 0.0f);
  }
  for (int64_t ex = 0, row = c.n_shared_experts > 0 ? n : 0; ex < e; ++ex) {
    for (const int64_t slot : rows_of[static_cast<size_t>(ex)]) {
      const float wt = weight[static_cast<size_t>(slot)];
      const float* y = ys.data() + row++ * d;
      float* o = out + slot / k * d;
      for (int64_t j = 0; j < d; ++j) o[j] += wt * y[j];
    }
  }
}

}  // namespace whale::model
