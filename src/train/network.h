// The training forward and backward pass of a DeepSeek-V3 model (MLA + DeepSeekMoE + MTP), written
// out block by block (llm.c-style): each block's forward keeps what its backward needs, and each
// backward adds its gradients into the gradient set. Templated on the element type: float for
// training, double for the finite-difference checks.
//
// The objective, per batch of `batch` sequences of seq+1 tokens (inputs t[0..seq), targets t[1..seq]):
//   L_main = mean over the batch·seq positions of cross-entropy(lm_head(norm(h_L)), next token)
//   MTP module k = 1..D runs on positions i < seq − k of each sequence:
//     h'_i = eh_proj([enorm(embed(t[i+k])) ; hnorm(h^{k-1}_i)]), h^k = block_k(h'), with h^0 the
//     last main layer's output before the final norm; it predicts t[i+k+1] through its own
//     shared_head.norm and the main lm_head (embedding and head are shared with the main model).
//     L_MTP = λ/D · Σ_k (mean cross-entropy of module k)
//   L_bal = Σ over MoE layers of the mean over sequences of α·Σ_i f_i·P_i (DeepSeek-V3's
//     sequence-wise balance loss: f_i = N_r/(K_r·T)·#tokens routed to i, no gradient;
//     P_i = mean over the sequence's tokens of s_i / Σ_j s_j).
//   L = L_main + L_MTP + L_bal
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "train/params.h"

namespace whale::train {

struct LossSettings {
  double mtp_lambda = 0.3;     // λ, weight of the MTP loss
  double balance_alpha = 0.0;  // α of the sequence-wise balance loss (0: off)
};

struct Losses {
  double main = 0;  // mean next-token cross-entropy
  double mtp = 0;   // λ/D · Σ_k L_k
  double balance = 0;
  double total = 0;
  std::vector<double> mtp_modules;  // L_k, unweighted
  double main_accuracy = 0;          // share of positions whose target is the top-1 prediction
  std::vector<double> mtp_accuracy;  // the same for each MTP module (token i + k + 1)
};

template <class T>
class Network {
 public:
  Network(const ParamLayout& layout, ThreadPool& pool);
  ~Network();

  // Runs the objective on tokens [batch, seq + 1]. When `grads` is given, adds scale·dL/dθ to it.
  // `expert_counts` ([n_moe_layers][E]), when given, receives the number of tokens each expert
  // was picked for. Ids must be in range (the caller checks them).
  Losses run(const ParamSet<T>& params, std::span<const int32_t> tokens, int64_t batch, int64_t seq,
             const LossSettings& settings, ParamSet<T>* grads, T scale,
             std::vector<std::vector<int64_t>>* expert_counts);

  // The main model's logits [batch·seq, vocab] for inputs [batch, seq] (no loss, no MTP).
  std::vector<T> logits(const ParamSet<T>& params, std::span<const int32_t> inputs, int64_t batch,
                        int64_t seq);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

extern template class Network<float>;
extern template class Network<double>;

}  // namespace whale::train
