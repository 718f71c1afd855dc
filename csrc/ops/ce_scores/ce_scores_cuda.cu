// datadiet::ce_scores on CUDA: one warp per row. Each lane folds the columns
// lane, lane+32, ... into its own RowState with the shared push() (coalesced loads
// when the class dimension is contiguous), a butterfly of shared merge()s leaves
// the row state in every lane, lane 0 writes the scores and, if asked, all lanes
// write the embedding row (a second, L2-resident read of the row).
//
// Targets outside [0, C) that are not ignore_index give NaN rows here (a device
// kernel cannot raise without a host sync); the Python wrapper checks them first.
#include <cuda_runtime.h>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/cuda_stream.h"
#include "common/dispatch.h"
#include "ops/ce_scores/ce_scores.h"
#include "ops/ce_scores/ce_scores_math.h"

namespace datadiet {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ ce::RowState shfl_xor_state(const ce::RowState& s, int lane_mask) {
  ce::RowState o;
  o.m = __shfl_xor_sync(0xffffffffu, s.m, lane_mask);
  o.s1 = __shfl_xor_sync(0xffffffffu, s.s1, lane_mask);
  o.s2 = __shfl_xor_sync(0xffffffffu, s.s2, lane_mask);
  o.t = __shfl_xor_sync(0xffffffffu, s.t, lane_mask);
  o.sum_z = __shfl_xor_sync(0xffffffffu, s.sum_z, lane_mask);
  o.second = __shfl_xor_sync(0xffffffffu, s.second, lane_mask);
  o.argmax = __shfl_xor_sync(0xffffffffu, static_cast<long long>(s.argmax), lane_mask);
  return o;
}

template <typename T, typename E>
__global__ void ce_scores_kernel(const T* __restrict__ logits, int64_t rs, int64_t cs,
                                 const int64_t* __restrict__ targets, int64_t ts,
                                 const float* __restrict__ hsq, int64_t hs, int64_t N, int64_t C,
                                 int64_t ignore_index, float eps, CeScoresPointers out, E* __restrict__ emb) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= N) return;  // whole warps exit together
  const T* row = logits + r * rs;
  const int64_t y = targets[r * ts];
  const bool labelled = y != ignore_index;
  const bool invalid = labelled && (y < 0 || y >= C);
  const int64_t y_excl = labelled && !invalid ? y : -1;
  const float pivot = ce::pivot_of(static_cast<float>(row[0]));

  ce::RowState st = ce::empty_state();
  for (int64_t j = lane; j < C; j += 32) ce::push(st, static_cast<float>(row[j * cs]), j, y_excl, pivot);
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) st = ce::merge(st, shfl_xor_state(st, mask));

  ce::RowInfo info;
  info.labelled = labelled && !invalid;
  info.z_y = info.labelled ? static_cast<float>(row[y * cs]) : 0.f;
  info.has_features = hsq != nullptr;
  info.feature_sqnorm = hsq ? hsq[r * hs] : 0.f;
  info.pivot = pivot;
  ce::Finished f = ce::finalize(st, info, C, eps, y);
  if (invalid) {
    const float nan = NAN;
    f.scores = ce::Scores{nan, nan, nan, nan, nan, nan, false};
    f.bad = true;
  }
  if (lane == 0) {
    out.loss[r] = f.scores.loss;
    out.el2n[r] = f.scores.el2n;
    out.grad_norm[r] = f.scores.grad_norm;
    out.confidence[r] = f.scores.confidence;
    out.margin[r] = f.scores.margin;
    out.entropy[r] = f.scores.entropy;
    out.correct[r] = f.scores.correct;
  }
  if (emb) {
    E* e = emb + r * C;
    for (int64_t j = lane; j < C; j += 32) {
      const float v = invalid ? NAN
                              : ce::embedding_value(f, static_cast<float>(row[j * cs]), j, y, info.labelled,
                                                    eps, C);
      e[j] = static_cast<E>(v);
    }
  }
}

template <typename T, typename E>
void launch(const StableTensor& logits, const StableTensor& targets, const float* hsq, int64_t hs,
            int64_t ignore_index, float eps, CeScoresPointers out, E* emb, cudaStream_t stream) {
  const int64_t N = logits.size(0);
  const int64_t blocks = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  ce_scores_kernel<T, E><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      logits.const_data_ptr<T>(), logits.stride(0), logits.stride(1), targets.const_data_ptr<int64_t>(),
      targets.stride(0), hsq, hs, N, logits.size(1), ignore_index, eps, out, emb);
  check_launch("ce_scores");
}

template <typename T>
void dispatch_embedding(const StableTensor& logits, const StableTensor& targets, const float* hsq, int64_t hs,
                        int64_t ignore_index, float eps, CeScoresPointers out, StableTensor* emb, cudaStream_t stream) {
  if (!emb) return launch<T, float>(logits, targets, hsq, hs, ignore_index, eps, out, nullptr, stream);
  dispatch_float(emb->scalar_type(), [&](auto tag) {
    launch<T>(logits, targets, hsq, hs, ignore_index, eps, out, emb->mutable_data_ptr<decltype(tag)>(), stream);
  });
}

}  // namespace

CeScoresOutput ce_scores_cuda(const StableTensor& logits, const StableTensor& targets,
                              const std::optional<StableTensor>& feature_sqnorm, int64_t ignore_index,
                              double label_smoothing, std::optional<ScalarType> embedding_dtype) {
  check_ce_scores_args(logits, targets, feature_sqnorm, label_smoothing, embedding_dtype);
  DD_CHECK(logits.is_cuda(), "ce_scores", "the CUDA kernel got logits on another device");
  const int64_t N = logits.size(0);
  DD_CHECK((N + kWarpsPerBlock - 1) / kWarpsPerBlock <= 0x7fffffff, "ce_scores", "too many rows: ", N);
  const auto device_index = logits.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);

  CeScoresOutput result = allocate_ce_scores(logits, embedding_dtype);
  if (N == 0) return result;
  const CeScoresPointers out = score_pointers(result);
  const float* hsq = feature_sqnorm ? feature_sqnorm->const_data_ptr<float>() : nullptr;
  const int64_t hs = feature_sqnorm ? feature_sqnorm->stride(0) : 0;
  StableTensor* emb = embedding_dtype ? &std::get<7>(result) : nullptr;
  const float eps = static_cast<float>(label_smoothing);
  dispatch_float(logits.scalar_type(), [&](auto tag) {
    dispatch_embedding<decltype(tag)>(logits, targets, hsq, hs, ignore_index, eps, out, emb, stream);
  });
  return result;
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) { m.impl("ce_scores", TORCH_BOX(&datadiet::ce_scores_cuda)); }
