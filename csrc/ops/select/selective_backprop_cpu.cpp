// datadiet::selective_backprop_keep_ on CPU (Jiang et al. 2019): append the batch's
// losses to the ring buffer `history`, then keep each loss with probability
// percentile^beta, percentile = (history entries strictly below it) / (entries filled).
// state = [next write position, filled count]. Built with -ffp-contract=off (the coin
// flip's -log must match the other backends bit for bit).
#include <algorithm>

#include "ops/select/select.h"
#include "ops/select/select_math.h"

namespace datadiet {

std::tuple<StableTensor, StableTensor> selective_backprop_keep_cpu(const StableTensor& losses, StableTensor history,
                                                                   StableTensor state, double beta, int64_t seed,
                                                                   int64_t step) {
  const char* op = "selective_backprop_keep_";
  check_history(op, losses, history, state, beta);
  const int64_t n = losses.numel(), R = history.numel();
  int64_t* st = state.mutable_data_ptr<int64_t>();
  DD_CHECK(sel::valid_ring_state(st[0], st[1], R), op,
           "state = [", st[0], ", ", st[1], "] is not a valid (position, filled) pair for a history of ", R);
  const float* loss = losses.const_data_ptr<float>();
  float* h = history.mutable_data_ptr<float>();
  for (int64_t i = std::max<int64_t>(0, n - R); i < n; ++i) h[(st[0] + i) % R] = loss[i];
  st[0] = (st[0] + n) % R;
  st[1] = std::min(st[1] + n, R);
  const int64_t filled = st[1];

  StableTensor keep = torch::stable::new_empty(losses, {n}, ScalarType::Bool);
  StableTensor percentile = torch::stable::new_empty(losses, {n}, ScalarType::Float);
  bool* kp = keep.mutable_data_ptr<bool>();
  float* pc = percentile.mutable_data_ptr<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t below = 0;
    for (int64_t j = 0; j < filled; ++j) below += h[j] < loss[i];
    pc[i] = sel::div_rn(static_cast<float>(below), static_cast<float>(filled));
    kp[i] = sel::percentile_coin(below, static_cast<uint32_t>(filled), static_cast<float>(beta), i,
                                 static_cast<uint64_t>(step), static_cast<uint64_t>(seed));
  }
  return {keep, percentile};
}

}  // namespace datadiet
