#include "model/mla.h"

#include <algorithm>

#include "core/dtype.h"

namespace whale::model {

AttentionForm choose_attention_form(const ModelConfig& c, std::span<const MlaSequence> sequences) {
  const double H = double(c.num_attention_heads), lat = double(c.kv_lora_rank);
  const double nope = double(c.qk_nope_head_dim), rope = double(c.qk_rope_head_dim);
  const double dv = double(c.v_head_dim);
  double absorbed = 0, naive = 0;
  for (const MlaSequence& s : sequences) {
    const double n = double(s.n), total = double(s.n_past + s.n);
    const double pairs = n * double(s.n_past) + n * (n + 1) / 2;  // causal query-key pairs
    absorbed += n * H * (nope + dv) * lat + H * pairs * (2 * lat + rope);
    naive += total * H * (nope + dv) * lat + H * pairs * (nope + rope + dv);
  }
  return naive < absorbed ? AttentionForm::kNaive : AttentionForm::kAbsorbed;
}

void mla_forward(const MlaContext& ctx, const AttentionWeights& w, const float* x, int64_t n,
                 const int32_t* pos, std::span<const MlaSequence> sequences, AttentionForm form,
                 float* out) {
  const ops::Backend& ops = ctx.ops;
  const ModelConfig& c = ctx.config;
  const int64_t d = c.hidden_size, H = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, dq = nope + rope;
  const int64_t lat = c.kv_lora_rank, width = c.kv_cache_width(), dv = c.v_head_dim;
  // The q_a and kv_a norms are built with eps 1e-6 in DeepSeek's code and in transformers,
  // whatever rms_norm_eps says.
  const float eps = 1e-6f;
  // Every buffer below is written whole by a product or a copy before it is read.
  const Workspace::Scope scope(ctx.scratch);
  auto uninit = [&](int64_t count) { return ctx.scratch.take<float>(count); };

  // Queries of every row: [n, H, nope + rope].
  // The two down-projections of x, as one job: c_q (or the full queries) and c_kv.
  const std::span<float> q = uninit(n * H * dq);
  const std::span<float> kv = uninit(n * width);  // [n, kv_lora + rope]
  const int64_t ql = c.q_lora_rank.value_or(0);
  const std::span<float> cq = uninit(n * ql);  // [n, q_lora]
  const ops::MatmulTask down[] = {
      c.q_lora_rank ? ops::MatmulTask{cq.data(), ql, x, d, n, w.q_a}
                    : ops::MatmulTask{q.data(), H * dq, x, d, n, w.q_proj},
      {kv.data(), width, x, d, n, w.kv_a}};
  ops.matmul_batch(down);
  if (c.q_lora_rank) {
    ops.rmsnorm(cq.data(), ql, cq.data(), ql, n, ql, w.q_a_norm, eps);
    ops.matmul(q.data(), H * dq, cq.data(), ql, n, w.q_b);
  }
  ops.rope(q.data() + nope, H * dq, dq, n, H, rope, pos, ctx.rope.inv_freq.data(),
           ctx.rope.amplitude);

  // New cache rows: c = norm(c_kv), k_rope = RoPE(k_rope_raw), into each sequence's cache
  // (a bf16 cache takes them rounded from scratch).
  for (const MlaSequence& s : sequences) {
    const Workspace::Scope per_sequence(ctx.scratch);
    float* rows = s.cache ? s.cache + s.n_past * width : uninit(s.n * width).data();
    const float* src = kv.data() + s.row * width;
    ops.rmsnorm(rows, width, src, width, s.n, lat, w.kv_a_norm, eps);
    for (int64_t t = 0; t < s.n; ++t)
      std::copy_n(src + t * width + lat, rope, rows + t * width + lat);
    ops.rope(rows + lat, width, 0, s.n, 1, rope, pos + s.row, ctx.rope.inv_freq.data(),
             ctx.rope.amplitude);
    if (!s.cache) {
      uint16_t* dst = s.cache_bf16 + s.n_past * width;
      for (int64_t i = 0; i < s.n * width; ++i) dst[i] = f32_to_bf16(rows[i]);
    }
  }

  const std::span<float> o = uninit(n * H * dv);  // [n, H, v]
  auto attention_base = [&](const MlaSequence& s) {
    ops::AttentionArgs a;
    a.n_q = s.n;
    a.n_kv = s.n_past + s.n;
    a.n_heads = H;
    a.q_pos = pos + s.row;
    a.scale = ctx.softmax_scale;
    return a;
  };

  if (form == AttentionForm::kAuto) form = choose_attention_form(c, sequences);
  if (form == AttentionForm::kAbsorbed) {
    // q_abs[t, h] = [W_UK[h]ᵀ q_nope[t, h] ; q_rope[t, h]]: [n, H, kv_lora + rope].
    const std::span<float> q_abs = uninit(n * H * width);
    const std::span<ops::MatmulTask> heads = ctx.scratch.take<ops::MatmulTask>(H);
    for (int64_t h = 0; h < H; ++h) {
      const Matrix w_uk = w.kv_b.row_slice(h * (nope + dv), nope);  // [nope, kv_lora]
      heads[static_cast<size_t>(h)] = {q_abs.data() + h * width, H * width, q.data() + h * dq,
                                       H * dq, n, w_uk, /*transposed=*/true};
    }
    ops.matmul_batch(heads);
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t t = 0; t < n; ++t) {
        std::copy_n(q.data() + t * H * dq + h * dq + nope, rope,
                    q_abs.data() + t * H * width + h * width + lat);
      }
    }
    // One shared key [c ; k_rope] and value c per cached token.
    const std::span<float> o_lat = uninit(n * H * lat);  // [n, H, kv_lora]
    for (const MlaSequence& s : sequences) {
      ops::AttentionArgs a = attention_base(s);
      a.kv_heads = 1;
      a.dk = width;
      a.dv = lat;
      a.q = q_abs.data() + s.row * H * width, a.q_row = H * width, a.q_head = width;
      a.k = s.cache, a.k_row = width, a.k_head = 0, a.k16 = s.cache_bf16;
      a.v = s.cache, a.v_row = width, a.v_head = 0, a.v16 = s.cache_bf16;
      a.out = o_lat.data() + s.row * H * lat, a.out_row = H * lat, a.out_head = lat;
      ops.attention(a);
    }
    for (int64_t h = 0; h < H; ++h) {
      const Matrix w_uv = w.kv_b.row_slice(h * (nope + dv) + nope, dv);  // [v, kv_lora]
      heads[static_cast<size_t>(h)] = {o.data() + h * dv, H * dv, o_lat.data() + h * lat, H * lat,
                                       n, w_uv};
    }
    ops.matmul_batch(heads);
  } else {
    for (const MlaSequence& s : sequences) {
      // Expand every cached latent: [n_kv, H, nope + v], then K = [k_nope ; k_rope] per head.
      const int64_t n_kv = s.n_past + s.n;
      const Workspace::Scope per_sequence(ctx.scratch);
      const float* cache = s.cache;
      if (!cache) {  // a bf16 cache, widened
        const std::span<float> widened = uninit(n_kv * width);
        ops::convert_to_f32(DType::kBF16, s.cache_bf16, n_kv * width, widened.data());
        cache = widened.data();
      }
      const std::span<float> kvx = uninit(n_kv * H * (nope + dv));
      ops.matmul(kvx.data(), H * (nope + dv), cache, width, n_kv, w.kv_b);
      const std::span<float> k = uninit(n_kv * H * dq);  // [n_kv, H, nope + rope]
      for (int64_t t = 0; t < n_kv; ++t) {
        for (int64_t h = 0; h < H; ++h) {
          float* dst = k.data() + (t * H + h) * dq;
          std::copy_n(kvx.data() + (t * H + h) * (nope + dv), nope, dst);
          std::copy_n(cache + t * width + lat, rope, dst + nope);
        }
      }
      ops::AttentionArgs a = attention_base(s);
      a.kv_heads = H;
      a.dk = dq;
      a.dv = dv;
      a.q = q.data() + s.row * H * dq, a.q_row = H * dq, a.q_head = dq;
      a.k = k.data(), a.k_row = H * dq, a.k_head = dq;
      a.v = kvx.data() + nope, a.v_row = H * (nope + dv), a.v_head = nope + dv;
      a.out = o.data() + s.row * H * dv, a.out_row = H * dv, a.out_head = dv;
      ops.attention(a);
    }
  }
  ops.matmul(out, d, o.data(), H * dv, n, w.o);
}

}  // namespace whale::model
