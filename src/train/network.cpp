#include "train/network.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "model/rope_yarn.h"
#include "train/blas.h"

namespace whale::train {
namespace {

template <class T>
using Vec = std::vector<T>;

// Sizes a scratch buffer to n zeros (capacity is kept across steps, so steady state allocates
// nothing).
template <class T>
T* zeros(Vec<T>& v, int64_t n) {
  v.assign(static_cast<size_t>(n), T(0));
  return v.data();
}
template <class T>
T* sized(Vec<T>& v, int64_t n) {
  v.resize(static_cast<size_t>(n));
  return v.data();
}

// ---- RMSNorm: y = x·r·w, r = 1/sqrt(mean(x²) + eps) ----

template <class T>
void rms_forward(T* y, int64_t ldy, const T* x, int64_t ldx, T* rstd, const T* w, int64_t n,
                 int64_t dim, double eps) {
  for (int64_t t = 0; t < n; ++t) {
    const T* xr = x + t * ldx;
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(xr[i]) * double(xr[i]);
    const T r = T(1.0 / std::sqrt(ss / double(dim) + eps));
    rstd[t] = r;
    for (int64_t i = 0; i < dim; ++i) y[t * ldy + i] = xr[i] * r * w[i];
  }
}

// dx += r·w⊙dy − x·r³/dim·Σ(dy⊙w⊙x); dw += Σ_rows dy⊙x·r.
template <class T>
void rms_backward(T* dx, int64_t lddx, T* dw, const T* dy, int64_t lddy, const T* x, int64_t ldx,
                  const T* rstd, const T* w, int64_t n, int64_t dim) {
  for (int64_t t = 0; t < n; ++t) {
    const T* xr = x + t * ldx;
    const T* g = dy + t * lddy;
    const T r = rstd[t];
    double dot = 0;
    for (int64_t i = 0; i < dim; ++i) dot += double(g[i]) * double(w[i]) * double(xr[i]);
    const T c = T(dot * double(r) * double(r) * double(r) / double(dim));
    T* o = dx + t * lddx;
    for (int64_t i = 0; i < dim; ++i) {
      o[i] += r * w[i] * g[i] - xr[i] * c;
      dw[i] += g[i] * xr[i] * r;
    }
  }
}

// ---- RoPE on adjacent pairs (x[2i], x[2i+1]), as DeepSeek stores them ----

template <class T>
struct Rope {
  int64_t half = 0;
  Vec<T> cos, sin;  // [seq, half], amplitude folded in

  int64_t positions = 0;  // the tables cover positions [0, positions)

  // Tables for positions [0, seq); kept when they already cover them (every training step
  // asks for the same length).
  void build(const model::RopeTables& tables, int64_t seq) {
    if (seq <= positions) return;
    positions = seq;
    half = int64_t(tables.inv_freq.size());
    cos.resize(static_cast<size_t>(seq * half));
    sin.resize(static_cast<size_t>(seq * half));
    for (int64_t p = 0; p < seq; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(p) * double(tables.inv_freq[size_t(i)]);
        cos[size_t(p * half + i)] = T(std::cos(a) * tables.amplitude);
        sin[size_t(p * half + i)] = T(std::sin(a) * tables.amplitude);
      }
    }
  }
  // x[row] at position pos; `inverse` applies the transpose (the backward pass).
  void apply(T* x, int64_t pos, bool inverse) const {
    const T* c = cos.data() + pos * half;
    const T* s = sin.data() + pos * half;
    for (int64_t i = 0; i < half; ++i) {
      const T a = x[2 * i], b = x[2 * i + 1];
      const T si = inverse ? -s[i] : s[i];
      x[2 * i] = a * c[i] - b * si;
      x[2 * i + 1] = b * c[i] + a * si;
    }
  }
};

// ---- SwiGLU FFN: y = down(silu(gate·x) ⊙ up·x) ----

template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <class T>
struct FfnCache {
  Vec<T> g, u, a;  // [n, width]
};

template <class T>
void ffn_forward(ThreadPool& pool, const ParamSet<T>& p, const FfnParams& f, const T* x, int64_t n, int64_t d, T* y,
                 FfnCache<T>& c) {
  const int64_t w = f.width;
  T* g = sized(c.g, n * w);
  T* u = sized(c.u, n * w);
  T* a = sized(c.a, n * w);
  linear_forward(pool, g, x, p.data(f.gate), n, w, d);
  linear_forward(pool, u, x, p.data(f.up), n, w, d);
  for (int64_t i = 0; i < n * w; ++i) a[i] = g[i] * sigmoid(g[i]) * u[i];
  linear_forward(pool, y, a, p.data(f.down), n, d, w);
}

// dx += ...; `da` is scratch.
template <class T>
void ffn_backward(ThreadPool& pool, const ParamSet<T>& p, ParamSet<T>& grads, const FfnParams& f, const T* x,
                  int64_t n, int64_t d, const T* dy, T* dx, FfnCache<T>& c, Vec<T>& scratch) {
  const int64_t w = f.width;
  T* da = zeros(scratch, 2 * n * w);
  T* du = da + n * w;
  linear_backward(pool, da, grads.data(f.down), dy, c.a.data(), p.data(f.down), n, d, w);
  for (int64_t i = 0; i < n * w; ++i) {
    const T g = c.g[size_t(i)], sg = sigmoid(g);
    du[i] = da[i] * g * sg;
    da[i] = da[i] * c.u[size_t(i)] * sg * (T(1) + g * (T(1) - sg));  // now d(gate)
  }
  linear_backward(pool, dx, grads.data(f.gate), da, x, p.data(f.gate), n, w, d);
  linear_backward(pool, dx, grads.data(f.up), du, x, p.data(f.up), n, w, d);
}

// ---- MLA, training form: K and V expanded per head from the latent ----

template <class T>
struct AttnCache {
  Vec<T> cq, cq_rstd, cqn, q, kva, c_rstd, cn, kv, kr, probs, o;
};

struct Dims {
  int64_t d, H, ql, lat, nope, rope, dq, dv, kvw;  // kvw = nope + dv per head in kv
  explicit Dims(const model::ModelConfig& c)
      : d(c.hidden_size), H(c.num_attention_heads), ql(*c.q_lora_rank), lat(c.kv_lora_rank),
        nope(c.qk_nope_head_dim), rope(c.qk_rope_head_dim), dq(c.qk_head_dim()), dv(c.v_head_dim),
        kvw(c.qk_nope_head_dim + c.v_head_dim) {}
};

constexpr double kLatentEps = 1e-6;  // q_a and kv_a norms, whatever rms_norm_eps says

}  // namespace

template <class T>
struct Network<T>::State {
  const ParamLayout& layout;
  ThreadPool& pool;
  Dims dims;
  model::RopeTables rope_tables;
  Rope<T> rope;
  T softmax_scale;

  struct MoeCache {
    Vec<T> scores;              // [n, E] sigmoid scores
    std::vector<int32_t> picks;  // [n, K] experts
    Vec<T> gates;               // [n, K] weights
    std::vector<std::vector<int32_t>> rows;  // per expert: (row·K + slot) of its tokens
    std::vector<Vec<T>> xe, ye;              // per expert: gathered inputs, outputs
    std::vector<FfnCache<T>> ffn;
    FfnCache<T> shared;
    Vec<T> f;  // [sequences, E] balance-loss load fractions
  };
  struct LayerCache {
    Vec<T> x, x1, rstd1, h2, x2, rstd2;
    AttnCache<T> attn;
    FfnCache<T> dense;
    MoeCache moe;
  };
  std::vector<LayerCache> layers;  // main layers then MTP blocks
  struct MtpCache {
    Vec<T> a, e_rstd, h_rstd, hin, out, hn, hn_rstd;
    std::vector<int32_t> emb_ids;
  };
  std::vector<MtpCache> mtp;
  Vec<T> h0, hL, hn, hn_rstd, logits;
  Vec<T> s1, s2, s3, s4, s5;  // backward scratch
  Vec<double> row_loss;
  std::vector<char> row_hit;

  State(const ParamLayout& l, ThreadPool& p)
      : layout(l), pool(p), dims(l.config), rope_tables(model::make_rope_tables(l.config)),
        softmax_scale(T(model::attention_softmax_scale(l.config))) {
    layers.resize(l.layers.size() + l.mtp.size());
    mtp.resize(l.mtp.size());
  }

  // ---- attention ----

  // x: [B·S, d] normed input; out: [B·S, d].
  void attn_forward(const ParamSet<T>& p, const AttentionParams& w, const T* x, int64_t B, int64_t S,
                    T* out, AttnCache<T>& c) {
    const Dims& m = dims;
    const int64_t n = B * S, kaw = m.lat + m.rope;
    T* cq = sized(c.cq, n * m.ql);
    T* cqn = sized(c.cqn, n * m.ql);
    T* q = sized(c.q, n * m.H * m.dq);
    T* kva = sized(c.kva, n * kaw);
    T* cn = sized(c.cn, n * m.lat);
    T* kv = sized(c.kv, n * m.H * m.kvw);
    T* kr = sized(c.kr, n * m.rope);
    linear_forward(pool, cq, x, p.data(w.q_a), n, m.ql, m.d);
    rms_forward(cqn, m.ql, cq, m.ql, sized(c.cq_rstd, n), p.data(w.q_a_norm), n, m.ql, kLatentEps);
    linear_forward(pool, q, cqn, p.data(w.q_b), n, m.H * m.dq, m.ql);
    linear_forward(pool, kva, x, p.data(w.kv_a), n, kaw, m.d);
    rms_forward(cn, m.lat, kva, kaw, sized(c.c_rstd, n), p.data(w.kv_a_norm), n, m.lat, kLatentEps);
    linear_forward(pool, kv, cn, p.data(w.kv_b), n, m.H * m.kvw, m.lat);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t pos = r % S;
      std::copy_n(kva + r * kaw + m.lat, m.rope, kr + r * m.rope);
      rope.apply(kr + r * m.rope, pos, false);
      for (int64_t h = 0; h < m.H; ++h) rope.apply(q + (r * m.H + h) * m.dq + m.nope, pos, false);
    }
    sized(c.probs, B * m.H * S * S);
    sized(c.o, n * m.H * m.dv);
    pool.parallel_for(B * m.H, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) attn_head_forward(bh / m.H, bh % m.H, S, c);
    });
    linear_forward(pool, out, c.o.data(), p.data(w.o), n, m.d, m.H * m.dv);
  }

  // One (sequence, head): scores as two products (nope and rope parts), causal softmax, then
  // the values. The products cover the masked half too; BLAS on the square beats scalar loops
  // on the triangle.
  void attn_head_forward(int64_t b, int64_t h, int64_t S, AttnCache<T>& c) {
    const Dims& m = dims;
    T* pm = c.probs.data() + (b * m.H + h) * S * S;
    const T* q = c.q.data() + (b * S * m.H + h) * m.dq;
    const T* kv = c.kv.data() + (b * S * m.H + h) * m.kvw;
    gemm(false, true, S, S, m.nope, softmax_scale, q, m.H * m.dq, kv, m.H * m.kvw, T(0), pm, S);
    gemm(false, true, S, S, m.rope, softmax_scale, q + m.nope, m.H * m.dq, c.kr.data() + b * S * m.rope,
         m.rope, T(1), pm, S);
    for (int64_t t = 0; t < S; ++t) {
      T* pr = pm + t * S;
      T mx = pr[0];
      for (int64_t j = 1; j <= t; ++j) mx = std::max(mx, pr[j]);
      T sum = 0;
      for (int64_t j = 0; j <= t; ++j) sum += (pr[j] = std::exp(pr[j] - mx));
      const T inv = T(1) / sum;
      for (int64_t j = 0; j <= t; ++j) pr[j] *= inv;
      std::fill(pr + t + 1, pr + S, T(0));
    }
    gemm(false, false, S, m.dv, S, T(1), pm, S, kv + m.nope, m.H * m.kvw, T(0),
         c.o.data() + (b * S * m.H + h) * m.dv, m.H * m.dv);
  }

  // dx += d(attention)/dx · dout.
  void attn_backward(const ParamSet<T>& p, ParamSet<T>& g, const AttentionParams& w, const T* x,
                     int64_t B, int64_t S, const T* dout, T* dx, AttnCache<T>& c) {
    const Dims& m = dims;
    const int64_t n = B * S, kaw = m.lat + m.rope;
    T* d_o = zeros(s1, n * m.H * m.dv);
    linear_backward(pool, d_o, g.data(w.o), dout, c.o.data(), p.data(w.o), n, m.d, m.H * m.dv);
    T* dq = zeros(s2, n * m.H * m.dq);
    T* dkv = zeros(s3, n * m.H * m.kvw);
    T* dkr_heads = zeros(s4, B * m.H * S * m.rope);  // per (b, h): summed over heads below
    pool.parallel_for(B * m.H, [&](int64_t begin, int64_t end) {
      Vec<T> dp;
      for (int64_t bh = begin; bh < end; ++bh) {
        attn_head_backward(bh / m.H, bh % m.H, S, c, d_o, dq, dkv, dkr_heads + bh * S * m.rope, dp);
      }
    });
    T* dkva = zeros(s5, n * kaw);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t b = r / S, t = r % S;
      T* dst = dkva + r * kaw + m.lat;
      for (int64_t h = 0; h < m.H; ++h) {
        const T* src = dkr_heads + ((b * m.H + h) * S + t) * m.rope;
        for (int64_t i = 0; i < m.rope; ++i) dst[i] += src[i];
        rope.apply(dq + (r * m.H + h) * m.dq + m.nope, t, true);
      }
      rope.apply(dst, t, true);
    }
    // kv = kv_b·norm(c): into dkva's latent columns.
    T* dcn = zeros(s4, n * m.lat);
    linear_backward(pool, dcn, g.data(w.kv_b), dkv, c.cn.data(), p.data(w.kv_b), n, m.H * m.kvw, m.lat);
    rms_backward(dkva, kaw, g.data(w.kv_a_norm), dcn, m.lat, c.kva.data(), kaw, c.c_rstd.data(),
                 p.data(w.kv_a_norm), n, m.lat);
    linear_backward(pool, dx, g.data(w.kv_a), dkva, x, p.data(w.kv_a), n, kaw, m.d);
    // q = q_b·norm(q_a·x).
    T* dcqn = zeros(s3, n * m.ql);
    linear_backward(pool, dcqn, g.data(w.q_b), dq, c.cqn.data(), p.data(w.q_b), n, m.H * m.dq, m.ql);
    T* dcq = zeros(s1, n * m.ql);
    rms_backward(dcq, m.ql, g.data(w.q_a_norm), dcqn, m.ql, c.cq.data(), m.ql, c.cq_rstd.data(),
                 p.data(w.q_a_norm), n, m.ql);
    linear_backward(pool, dx, g.data(w.q_a), dcq, x, p.data(w.q_a), n, m.ql, m.d);
  }

  void attn_head_backward(int64_t b, int64_t h, int64_t S, const AttnCache<T>& c, const T* d_o,
                          T* dq, T* dkv, T* dkr, Vec<T>& dp) {
    const Dims& m = dims;
    const T* pm = c.probs.data() + (b * m.H + h) * S * S;
    const int64_t qo = (b * S * m.H + h) * m.dq, kvo = (b * S * m.H + h) * m.kvw;
    const T* q = c.q.data() + qo;
    const T* kv = c.kv.data() + kvo;
    const T* kr = c.kr.data() + b * S * m.rope;
    const T* dot = d_o + (b * S * m.H + h) * m.dv;
    const int64_t ldq = m.H * m.dq, ldkv = m.H * m.kvw, ldo = m.H * m.dv;
    T* ds = sized(dp, S * S);
    gemm(false, true, S, S, m.dv, T(1), dot, ldo, kv + m.nope, ldkv, T(0), ds, S);  // dP
    gemm(true, false, S, m.dv, S, T(1), pm, S, dot, ldo, T(1), dkv + kvo + m.nope, ldkv);  // dV
    for (int64_t t = 0; t < S; ++t) {  // dS = P ⊙ (dP − Σ_j P·dP), times the softmax scale
      const T* pr = pm + t * S;
      T* dr = ds + t * S;
      T sum = 0;
      for (int64_t j = 0; j <= t; ++j) sum += pr[j] * dr[j];
      for (int64_t j = 0; j <= t; ++j) dr[j] = pr[j] * (dr[j] - sum) * softmax_scale;
      std::fill(dr + t + 1, dr + S, T(0));
    }
    gemm(false, false, S, m.nope, S, T(1), ds, S, kv, ldkv, T(1), dq + qo, ldq);
    gemm(false, false, S, m.rope, S, T(1), ds, S, kr, m.rope, T(1), dq + qo + m.nope, ldq);
    gemm(true, false, S, m.nope, S, T(1), ds, S, q, ldq, T(1), dkv + kvo, ldkv);
    gemm(true, false, S, m.rope, S, T(1), ds, S, q + m.nope, ldq, T(0), dkr, m.rope);
  }

  // ---- DeepSeekMoE ----

  // Picks K experts for one token on s + bias within the best topk_group groups (groups ranked
  // by the sum of their two best biased scores). Ties go to the lower index.
  std::vector<std::pair<T, int64_t>> groups;  // select()'s scratch, kept across tokens
  std::vector<std::pair<T, int32_t>> cand;

  void select(const T* s, const T* bias, int32_t* out) {
    const model::ModelConfig& c = layout.config;
    const int64_t E = c.n_routed_experts, G = c.n_group, per = E / G, K = c.num_experts_per_tok;
    T biased[kMaxExperts];
    for (int64_t e = 0; e < E; ++e) biased[e] = s[e] + bias[e];
    groups.clear();
    for (int64_t gi = 0; gi < G; ++gi) {
      T best = -std::numeric_limits<T>::infinity(), second = best;
      for (int64_t e = gi * per; e < (gi + 1) * per; ++e) {
        if (biased[e] > best) {
          second = best;
          best = biased[e];
        } else if (biased[e] > second) {
          second = biased[e];
        }
      }
      groups.push_back({per >= 2 ? best + second : best, gi});
    }
    std::stable_sort(groups.begin(), groups.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    cand.clear();
    for (int64_t k = 0; k < c.topk_group; ++k) {
      const int64_t gi = groups[size_t(k)].second;
      for (int64_t e = gi * per; e < (gi + 1) * per; ++e) cand.push_back({biased[e], int32_t(e)});
    }
    std::stable_sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (int64_t k = 0; k < K; ++k) out[k] = cand[size_t(k)].second;
  }

  // Returns this layer's balance loss (already mean over sequences, times α).
  double moe_forward(const ParamSet<T>& p, const LayerParams& lp, const T* x, int64_t B, int64_t S,
                     T* y, MoeCache& c, double alpha,
                     std::vector<std::vector<int64_t>>* counts) {
    const model::ModelConfig& cfg = layout.config;
    const int64_t n = B * S, d = dims.d, E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
    T* scores = sized(c.scores, n * E);
    linear_forward(pool, scores, x, p.data(lp.router), n, E, d);
    for (int64_t i = 0; i < n * E; ++i) scores[i] = sigmoid(scores[i]);
    c.picks.resize(static_cast<size_t>(n * K));
    T* gates = sized(c.gates, n * K);
    const T* bias = p.biases[size_t(lp.moe_index)].data();
    c.rows.assign(static_cast<size_t>(E), {});
    for (int64_t r = 0; r < n; ++r) {
      int32_t* pk = c.picks.data() + r * K;
      select(scores + r * E, bias, pk);
      T sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += scores[r * E + pk[k]];
      const T denom = cfg.norm_topk_prob ? sum + T(1e-20) : T(1);
      for (int64_t k = 0; k < K; ++k) {
        gates[r * K + k] = scores[r * E + pk[k]] / denom * T(cfg.routed_scaling_factor);
        c.rows[size_t(pk[k])].push_back(int32_t(r * K + k));
      }
    }
    if (counts != nullptr) {
      auto& cnt = (*counts)[size_t(lp.moe_index)];
      for (int64_t e = 0; e < E; ++e) cnt[size_t(e)] += int64_t(c.rows[size_t(e)].size());
    }
    // Shared expert over every row, then each routed expert over its rows.
    if (lp.shared.width > 0) {
      ffn_forward(pool, p, lp.shared, x, n, d, y, c.shared);
    } else {
      std::fill_n(y, n * d, T(0));
    }
    c.xe.resize(static_cast<size_t>(E));
    c.ye.resize(static_cast<size_t>(E));
    c.ffn.resize(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      const auto& rows = c.rows[size_t(e)];
      const int64_t ne = int64_t(rows.size());
      T* xe = sized(c.xe[size_t(e)], ne * d);
      T* ye = sized(c.ye[size_t(e)], ne * d);
      if (ne == 0) continue;
      for (int64_t i = 0; i < ne; ++i) std::copy_n(x + (rows[size_t(i)] / K) * d, d, xe + i * d);
      ffn_forward(pool, p, lp.experts[size_t(e)], xe, ne, d, ye, c.ffn[size_t(e)]);
      for (int64_t i = 0; i < ne; ++i) {
        const int32_t rk = rows[size_t(i)];
        const T gk = gates[rk];
        T* yr = y + (rk / K) * d;
        for (int64_t j = 0; j < d; ++j) yr[j] += gk * ye[i * d + j];
      }
    }
    if (alpha == 0) return 0;
    // Sequence-wise balance loss: f_i from the picks (constant), P_i from normalised scores.
    T* f = zeros(c.f, B * E);
    double loss = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < S; ++t) {
        for (int64_t k = 0; k < K; ++k) f[b * E + c.picks[size_t((b * S + t) * K + k)]] += T(1);
      }
      for (int64_t e = 0; e < E; ++e) f[b * E + e] *= T(double(E) / double(K * S));
      for (int64_t t = 0; t < S; ++t) {
        const T* s = scores + (b * S + t) * E;
        double z = 0, fs = 0;
        for (int64_t e = 0; e < E; ++e) {
          z += double(s[e]);
          fs += double(f[b * E + e]) * double(s[e]);
        }
        loss += fs / z / double(S);
      }
    }
    return alpha * loss / double(B);
  }

  void moe_backward(const ParamSet<T>& p, ParamSet<T>& g, const LayerParams& lp, const T* x,
                    int64_t B, int64_t S, const T* dy, T* dx, MoeCache& c, double alpha) {
    const model::ModelConfig& cfg = layout.config;
    const int64_t n = B * S, d = dims.d, E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
    if (lp.shared.width > 0) ffn_backward(pool, p, g, lp.shared, x, n, d, dy, dx, c.shared, s1);
    Vec<T> dgates(static_cast<size_t>(n * K), T(0));
    Vec<T> dye, dxe;
    for (int64_t e = 0; e < E; ++e) {
      const auto& rows = c.rows[size_t(e)];
      const int64_t ne = int64_t(rows.size());
      if (ne == 0) continue;
      T* dyp = sized(dye, ne * d);
      const T* ye = c.ye[size_t(e)].data();
      for (int64_t i = 0; i < ne; ++i) {
        const int32_t rk = rows[size_t(i)];
        const T* dyr = dy + (rk / K) * d;
        T acc = 0;
        for (int64_t j = 0; j < d; ++j) {
          dyp[i * d + j] = c.gates[size_t(rk)] * dyr[j];
          acc += dyr[j] * ye[i * d + j];
        }
        dgates[size_t(rk)] = acc;
      }
      T* dxp = zeros(dxe, ne * d);
      ffn_backward(pool, p, g, lp.experts[size_t(e)], c.xe[size_t(e)].data(), ne, d, dyp, dxp,
                   c.ffn[size_t(e)], s1);
      for (int64_t i = 0; i < ne; ++i) {
        T* dxr = dx + (rows[size_t(i)] / K) * d;
        for (int64_t j = 0; j < d; ++j) dxr[j] += dxp[i * d + j];
      }
    }
    // Gates → scores (only the picked ones), plus the balance loss on every score.
    T* ds = zeros(s2, n * E);
    const T rsf = T(cfg.routed_scaling_factor);
    for (int64_t r = 0; r < n; ++r) {
      const int32_t* pk = c.picks.data() + r * K;
      const T* s = c.scores.data() + r * E;
      if (cfg.norm_topk_prob) {
        T sum = 0, mix = 0;
        for (int64_t k = 0; k < K; ++k) sum += s[pk[k]];
        sum += T(1e-20);
        for (int64_t k = 0; k < K; ++k) mix += dgates[size_t(r * K + k)] * s[pk[k]];
        for (int64_t k = 0; k < K; ++k) {
          ds[r * E + pk[k]] += rsf / sum * (dgates[size_t(r * K + k)] - mix / sum);
        }
      } else {
        for (int64_t k = 0; k < K; ++k) ds[r * E + pk[k]] += rsf * dgates[size_t(r * K + k)];
      }
    }
    if (alpha != 0) {
      for (int64_t b = 0; b < B; ++b) {
        const T* f = c.f.data() + b * E;
        const T w = T(alpha / double(B) / double(S));
        for (int64_t t = 0; t < S; ++t) {
          const T* s = c.scores.data() + (b * S + t) * E;
          T z = 0, fs = 0;
          for (int64_t e = 0; e < E; ++e) {
            z += s[e];
            fs += f[e] * s[e];
          }
          for (int64_t e = 0; e < E; ++e) ds[(b * S + t) * E + e] += w * (f[e] / z - fs / (z * z));
        }
      }
    }
    for (int64_t i = 0; i < n * E; ++i) ds[i] *= c.scores[size_t(i)] * (T(1) - c.scores[size_t(i)]);
    linear_backward(pool, dx, g.data(lp.router), ds, x, p.data(lp.router), n, E, d);
  }

  // ---- decoder block: h += MLA(norm(h)); h += FFN(norm(h)) ----

  double layer_forward(const ParamSet<T>& p, const LayerParams& lp, const T* x, int64_t B, int64_t S,
                       T* out, LayerCache& c, double alpha,
                       std::vector<std::vector<int64_t>>* counts) {
    const int64_t n = B * S, d = dims.d;
    const double eps = layout.config.rms_norm_eps;
    c.x.assign(x, x + n * d);
    T* x1 = sized(c.x1, n * d);
    rms_forward(x1, d, x, d, sized(c.rstd1, n), p.data(lp.attn_norm), n, d, eps);
    T* h2 = sized(c.h2, n * d);
    attn_forward(p, lp.attn, x1, B, S, h2, c.attn);
    for (int64_t i = 0; i < n * d; ++i) h2[i] += x[i];
    T* x2 = sized(c.x2, n * d);
    rms_forward(x2, d, h2, d, sized(c.rstd2, n), p.data(lp.ffn_norm), n, d, eps);
    double bal = 0;
    if (lp.moe) {
      bal = moe_forward(p, lp, x2, B, S, out, c.moe, alpha, counts);
    } else {
      ffn_forward(pool, p, lp.dense, x2, n, d, out, c.dense);
    }
    for (int64_t i = 0; i < n * d; ++i) out[i] += h2[i];
    return bal;
  }

  // dx = d(layer)/dx · dout (dx is overwritten; it may not alias dout).
  void layer_backward(const ParamSet<T>& p, ParamSet<T>& g, const LayerParams& lp, int64_t B,
                      int64_t S, const T* dout, T* dx, LayerCache& c, double alpha) {
    const int64_t n = B * S, d = dims.d;
    Vec<T> dx2(static_cast<size_t>(n * d), T(0));
    if (lp.moe) {
      moe_backward(p, g, lp, c.x2.data(), B, S, dout, dx2.data(), c.moe, alpha);
    } else {
      ffn_backward(pool, p, g, lp.dense, c.x2.data(), n, d, dout, dx2.data(), c.dense, s1);
    }
    Vec<T> dh2(dout, dout + n * d);
    rms_backward(dh2.data(), d, g.data(lp.ffn_norm), dx2.data(), d, c.h2.data(), d, c.rstd2.data(),
                 p.data(lp.ffn_norm), n, d);
    Vec<T> dx1(static_cast<size_t>(n * d), T(0));
    attn_backward(p, g, lp.attn, c.x1.data(), B, S, dh2.data(), dx1.data(), c.attn);
    std::copy(dh2.begin(), dh2.end(), dx);
    rms_backward(dx, d, g.data(lp.attn_norm), dx1.data(), d, c.x.data(), d, c.rstd1.data(),
                 p.data(lp.attn_norm), n, d);
  }

  // ---- output head + cross-entropy ----

  // logits = head(norm(h)) for n rows; returns mean CE against targets and, when dh is given,
  // writes dh = weight·dCE/dh (overwrites) and adds head/norm gradients.
  double head_loss(const ParamSet<T>& p, ParamSet<T>* g, size_t norm, const T* h, int64_t n,
                   const int32_t* targets, double weight, T* dh, double* accuracy) {
    const int64_t d = dims.d, V = layout.config.vocab_size;
    T* hn = sized(this->hn, n * d);
    T* rstd = sized(hn_rstd, n);
    rms_forward(hn, d, h, d, rstd, p.data(norm), n, d, layout.config.rms_norm_eps);
    T* lg = sized(logits, n * V);
    linear_forward(pool, lg, hn, p.data(layout.lm_head), n, V, d);
    // Per row: loss, then softmax minus one-hot, scaled (the gradient of weight·mean CE).
    Vec<double>& row_loss = this->row_loss;
    row_loss.resize(static_cast<size_t>(n));
    row_hit.resize(static_cast<size_t>(n));
    const T k = T(weight / double(n));
    pool.parallel_for(n, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        T* row = lg + r * V;
        const T mx = *std::max_element(row, row + V);
        const T target = row[targets[r]];
        T sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += (row[v] = std::exp(row[v] - mx));
        row_loss[size_t(r)] = double(mx) + std::log(double(sum)) - double(target);
        row_hit[size_t(r)] = target == mx ? 1 : 0;  // the target is the top-1 prediction
        const T scale = k / sum;
        for (int64_t v = 0; v < V; ++v) row[v] *= scale;
        row[targets[r]] -= k;
      }
    }, 16);
    double loss = 0;
    for (double x : row_loss) loss += x;
    if (accuracy != nullptr) {
      int64_t hits = 0;
      for (char x : row_hit) hits += x;
      *accuracy = double(hits) / double(n);
    }
    if (g != nullptr) {
      Vec<T>& dhn = s5;
      zeros(dhn, n * d);
      linear_backward(pool, dhn.data(), g->data(layout.lm_head), lg, hn, p.data(layout.lm_head), n, V, d);
      std::fill_n(dh, n * d, T(0));
      rms_backward(dh, d, g->data(norm), dhn.data(), d, h, d, rstd, p.data(norm), n, d);
    }
    return loss / double(n);
  }
};

template <class T>
Network<T>::Network(const ParamLayout& layout, ThreadPool& pool)
    : s_(std::make_unique<State>(layout, pool)) {
  use_single_threaded_blas();
}

template <class T>
Network<T>::~Network() = default;

template <class T>
std::vector<T> Network<T>::logits(const ParamSet<T>& p, std::span<const int32_t> inputs,
                                  int64_t batch, int64_t seq) {
  State& s = *s_;
  const ParamLayout& l = s.layout;
  const int64_t n = batch * seq, d = s.dims.d, V = l.config.vocab_size;
  s.rope.build(s.rope_tables, seq);
  Vec<T> h(static_cast<size_t>(n * d)), next(static_cast<size_t>(n * d));
  for (int64_t r = 0; r < n; ++r) std::copy_n(p.data(l.embed) + inputs[size_t(r)] * d, d, &h[size_t(r * d)]);
  for (size_t i = 0; i < l.layers.size(); ++i) {
    s.layer_forward(p, l.layers[i], h.data(), batch, seq, next.data(), s.layers[i], 0.0, nullptr);
    std::swap(h, next);
  }
  Vec<T> hn(static_cast<size_t>(n * d)), rstd(static_cast<size_t>(n)), out(static_cast<size_t>(n * V));
  rms_forward(hn.data(), d, h.data(), d, rstd.data(), p.data(l.norm), n, d, l.config.rms_norm_eps);
  linear_forward(s.pool, out.data(), hn.data(), p.data(l.lm_head), n, V, d);
  return out;
}

template <class T>
Losses Network<T>::run(const ParamSet<T>& p, std::span<const int32_t> tokens, int64_t B, int64_t S,
                       const LossSettings& settings, ParamSet<T>* grads, T scale,
                       std::vector<std::vector<int64_t>>* counts) {
  State& s = *s_;
  const ParamLayout& l = s.layout;
  const int64_t d = s.dims.d, n = B * S, L = int64_t(l.layers.size());
  const int64_t D = int64_t(l.mtp.size());
  const double alpha = settings.balance_alpha;
  s.rope.build(s.rope_tables, S);
  auto tok = [&](int64_t b, int64_t i) { return tokens[size_t(b * (S + 1) + i)]; };

  // Main model. hs[i] is layer i's input; hs[L] the last layer's output (MTP's h^0).
  std::vector<Vec<T>> hs(static_cast<size_t>(L + 1), Vec<T>(static_cast<size_t>(n * d)));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < S; ++t) {
      std::copy_n(p.data(l.embed) + tok(b, t) * d, d, hs[0].data() + (b * S + t) * d);
    }
  }
  Losses out;
  for (int64_t i = 0; i < L; ++i) {
    out.balance += s.layer_forward(p, l.layers[size_t(i)], hs[size_t(i)].data(), B, S,
                                   hs[size_t(i + 1)].data(), s.layers[size_t(i)], alpha, counts);
  }
  std::vector<int32_t> targets(static_cast<size_t>(n));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < S; ++t) targets[size_t(b * S + t)] = tok(b, t + 1);
  }
  Vec<T> dhL;
  if (grads != nullptr) dhL.resize(static_cast<size_t>(n * d));
  out.main = s.head_loss(p, grads, l.norm, hs[size_t(L)].data(), n, targets.data(), double(scale),
                         grads ? dhL.data() : nullptr, &out.main_accuracy);

  // MTP modules: module k runs on S − k positions per sequence.
  const double mtp_weight = D > 0 ? settings.mtp_lambda / double(D) : 0.0;
  std::vector<Vec<T>> mtp_h(static_cast<size_t>(D));  // h^k, [B·(S−k), d]
  std::vector<Vec<T>> mtp_in(static_cast<size_t>(D)); // h'^k
  for (int64_t k = 1; k <= D; ++k) {
    const MtpParams& mp = l.mtp[size_t(k - 1)];
    auto& mc = s.mtp[size_t(k - 1)];
    const int64_t Sk = S - k, Sprev = S - k + 1, nk = B * Sk;
    if (Sk <= 0) {
      out.mtp_modules.push_back(0);
      out.mtp_accuracy.push_back(0);
      continue;
    }
    const Vec<T>& prev = k == 1 ? hs[size_t(L)] : mtp_h[size_t(k - 2)];
    T* a = sized(mc.a, nk * 2 * d);
    T* hin = sized(mc.hin, nk * d);  // the previous depth's rows, gathered
    mc.emb_ids.resize(static_cast<size_t>(nk));
    Vec<T> e(static_cast<size_t>(nk * d));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < Sk; ++i) {
        const int64_t r = b * Sk + i;
        mc.emb_ids[size_t(r)] = tok(b, i + k);
        std::copy_n(p.data(l.embed) + tok(b, i + k) * d, d, e.data() + r * d);
        std::copy_n(prev.data() + (b * Sprev + i) * d, d, hin + r * d);
      }
    }
    const double eps = l.config.rms_norm_eps;
    rms_forward(a, 2 * d, e.data(), d, sized(mc.e_rstd, nk), p.data(mp.enorm), nk, d, eps);
    rms_forward(a + d, 2 * d, hin, d, sized(mc.h_rstd, nk), p.data(mp.hnorm), nk, d, eps);
    Vec<T>& hp = mtp_in[size_t(k - 1)];
    hp.resize(static_cast<size_t>(nk * d));
    linear_forward(s.pool, hp.data(), a, p.data(mp.eh_proj), nk, d, 2 * d);
    mtp_h[size_t(k - 1)].resize(static_cast<size_t>(nk * d));
    out.balance += s.layer_forward(p, mp.layer, hp.data(), B, Sk, mtp_h[size_t(k - 1)].data(),
                                   s.layers[size_t(L + k - 1)], alpha, counts);
    // e is needed by the backward pass: keep it in the cache.
    mc.out = std::move(e);
  }
  // Losses of the MTP heads and the backward pass, deepest module first.
  std::vector<Vec<T>> dmtp(static_cast<size_t>(D));
  for (int64_t k = 1; k <= D; ++k) {
    const int64_t Sk = S - k, nk = B * Sk;
    if (Sk <= 0) continue;
    std::vector<int32_t> tg(static_cast<size_t>(nk));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < Sk; ++i) tg[size_t(b * Sk + i)] = tok(b, i + k + 1);
    }
    if (grads != nullptr) dmtp[size_t(k - 1)].resize(static_cast<size_t>(nk * d));
    double acc = 0;
    const double lk = s.head_loss(p, grads, l.mtp[size_t(k - 1)].head_norm,
                                  mtp_h[size_t(k - 1)].data(), nk, tg.data(),
                                  double(scale) * mtp_weight,
                                  grads ? dmtp[size_t(k - 1)].data() : nullptr, &acc);
    out.mtp_modules.push_back(lk);
    out.mtp_accuracy.push_back(acc);
    out.mtp += mtp_weight * lk;
  }
  out.total = out.main + out.mtp + out.balance;
  if (grads == nullptr) return out;

  ParamSet<T>& g = *grads;
  const double alpha_scaled = alpha * double(scale);
  for (int64_t k = D; k >= 1; --k) {
    const int64_t Sk = S - k, Sprev = S - k + 1, nk = B * Sk;
    if (Sk <= 0) continue;
    const MtpParams& mp = l.mtp[size_t(k - 1)];
    auto& mc = s.mtp[size_t(k - 1)];
    Vec<T> dhp(static_cast<size_t>(nk * d));
    s.layer_backward(p, g, mp.layer, B, Sk, dmtp[size_t(k - 1)].data(), dhp.data(),
                     s.layers[size_t(L + k - 1)], alpha_scaled);
    Vec<T> da(static_cast<size_t>(nk * 2 * d), T(0));
    linear_backward(s.pool, da.data(), g.data(mp.eh_proj), dhp.data(), mc.a.data(), p.data(mp.eh_proj), nk,
                    d, 2 * d);
    Vec<T> de(static_cast<size_t>(nk * d), T(0)), dprev(static_cast<size_t>(nk * d), T(0));
    rms_backward(de.data(), d, g.data(mp.enorm), da.data(), 2 * d, mc.out.data(), d,
                 mc.e_rstd.data(), p.data(mp.enorm), nk, d);
    rms_backward(dprev.data(), d, g.data(mp.hnorm), da.data() + d, 2 * d, mc.hin.data(), d,
                 mc.h_rstd.data(), p.data(mp.hnorm), nk, d);
    T* demb = g.data(l.embed);
    for (int64_t r = 0; r < nk; ++r) {
      T* dst = demb + int64_t(mc.emb_ids[size_t(r)]) * d;
      for (int64_t j = 0; j < d; ++j) dst[j] += de[size_t(r * d + j)];
    }
    // Into the previous depth's gradient (rows i < Sk of each sequence).
    T* dst = k == 1 ? dhL.data() : dmtp[size_t(k - 2)].data();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < Sk; ++i) {
        T* row = dst + (b * Sprev + i) * d;
        const T* src = dprev.data() + (b * Sk + i) * d;
        for (int64_t j = 0; j < d; ++j) row[j] += src[j];
      }
    }
  }
  Vec<T> dh = std::move(dhL), dnext(static_cast<size_t>(n * d));
  for (int64_t i = L - 1; i >= 0; --i) {
    s.layer_backward(p, g, l.layers[size_t(i)], B, S, dh.data(), dnext.data(), s.layers[size_t(i)],
                     alpha_scaled);
    std::swap(dh, dnext);
  }
  T* demb = g.data(l.embed);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < S; ++t) {
      T* dst = demb + int64_t(tok(b, t)) * d;
      const T* src = dh.data() + (b * S + t) * d;
      for (int64_t j = 0; j < d; ++j) dst[j] += src[j];
    }
  }
  return out;
}

template class Network<float>;
template class Network<double>;

}  // namespace whale::train
