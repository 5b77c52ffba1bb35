#include "model/calibration.h"

#include <algorithm>

#include "model/tensor_table.h"

namespace whale::model {
namespace {

// The stored matrix a view belongs to: its row 0, whatever rows the view starts at (absorbed
// attention and the naive form slice kv_b by heads).
const void* matrix_key(const ops::Matrix& w) {
  return static_cast<const uint8_t*>(w.data) - w.row_offset * w.row_bytes();
}

struct ColumnSums {
  std::vector<double> sum_square;
  int64_t rows = 0;
};

// Passes every operation to `inner`, and adds up Σ x² per column of the activations each weight
// matrix is multiplied with (x · wᵀ; the transposed products of absorbed decode are not
// recorded: calibration runs the naive form).
class RecordingBackend final : public ops::Backend {
 public:
  explicit RecordingBackend(const ops::Backend& inner) : inner_(inner) {}

  std::string_view name() const override { return inner_.name(); }
  void matmul(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
              const ops::Matrix& w) const override {
    record(x, ldx, n, w);
    inner_.matmul(y, ldy, x, ldx, n, w);
  }
  void matmul_t(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                const ops::Matrix& w) const override {
    inner_.matmul_t(y, ldy, x, ldx, n, w);
  }
  void matmul_batch(std::span<const ops::MatmulTask> tasks) const override {
    for (const ops::MatmulTask& t : tasks) {
      if (!t.transposed) record(t.x, t.ldx, t.n, t.w);
    }
    inner_.matmul_batch(tasks);
  }
  void rmsnorm(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n, int64_t dim,
               const ops::Matrix& weight, float eps) const override {
    inner_.rmsnorm(y, ldy, x, ldx, n, dim, weight, eps);
  }
  void embedding(float* y, const ops::Matrix& table, const int32_t* ids, int64_t n) const override {
    inner_.embedding(y, table, ids, n);
  }
  void rope(float* x, int64_t ld, int64_t head_stride, int64_t n, int64_t n_heads, int64_t rope_dim,
            const int32_t* pos, const float* inv_freq, float amplitude) const override {
    inner_.rope(x, ld, head_stride, n, n_heads, rope_dim, pos, inv_freq, amplitude);
  }
  void swiglu(float* y, int64_t ldy, const float* gate, const float* up, int64_t ld_in, int64_t n,
              int64_t dim) const override {
    inner_.swiglu(y, ldy, gate, up, ld_in, n, dim);
  }
  void attention(const ops::AttentionArgs& a) const override { inner_.attention(a); }

  const std::map<const void*, ColumnSums>& sums() const { return sums_; }

 private:
  void record(const float* x, int64_t ldx, int64_t n, const ops::Matrix& w) const {
    ColumnSums& s = sums_[matrix_key(w)];
    s.sum_square.resize(static_cast<size_t>(w.cols), 0.0);
    for (int64_t t = 0; t < n; ++t) {
      const float* row = x + t * ldx;
      for (int64_t c = 0; c < w.cols; ++c) s.sum_square[c] += double(row[c]) * row[c];
    }
    s.rows += n;
  }

  const ops::Backend& inner_;
  // The model calls a backend from one thread at a time.
  mutable std::map<const void*, ColumnSums> sums_;
};

}  // namespace

Result<ImportanceTable> measure_importance(const Model& model, const ops::Backend& ops,
                                           std::span<const int32_t> ids, int64_t window) {
  if (ids.empty()) return make_error("the calibration text has no tokens");
  window = std::clamp<int64_t>(window, 1, model.config().max_position_embeddings);
  const RecordingBackend recorder(ops);
  KvCache cache(model.config(), window);
  ForwardOptions options;
  options.attention = AttentionForm::kNaive;
  options.all_logits = true;  // so that the output head sees every position
  std::vector<float> logits;
  for (size_t start = 0; start < ids.size(); start += static_cast<size_t>(window)) {
    cache.clear();
    const size_t len = std::min(ids.size() - start, static_cast<size_t>(window));
    WHALE_TRY(model.forward(recorder, ids.subspan(start, len), cache, &logits, options));
  }

  // Back from matrices to their checkpoint names, through the table that bound them.
  ModelWeights views = model.weights();
  ImportanceTable table;
  for (const TensorSpec& s : tensor_table(model.config(), &views)) {
    if (s.kind != TensorKind::kLinear && s.kind != TensorKind::kTable) continue;
    const auto it = recorder.sums().find(matrix_key(*s.dest));
    if (it == recorder.sums().end() || it->second.rows == 0) continue;
    ColumnImportance& c = table[s.checkpoint];
    c.rows = it->second.rows;
    c.mean_square.reserve(it->second.sum_square.size());
    for (double v : it->second.sum_square) {
      c.mean_square.push_back(static_cast<float>(v / double(c.rows)));
    }
  }
  return table;
}

}  // namespace whale::model
