// The CUDA selection engine (radix_select_cuda.cu) shared by topk_select and
// weighted_sample.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/csrc/stable/accelerator.h>

#include "common/cuda_stream.h"
#include "ops/select/select.h"

namespace datadiet {
namespace sel {

// keys: uint32 [offsets.back()] on out's device; out: int64 [sum(ks)]. Writes, per
// segment, the global indices of the ks[g] smallest (key, index) pairs in that order.
void select_smallest_cuda(const char* op, const uint32_t* keys, const std::vector<int64_t>& offsets,
                          const std::vector<int64_t>& ks, StableTensor& out, cudaStream_t stream);

// The host side of a selection op: checks (`what` names the input), allocates the int64
// output and a uint32 key buffer on the input's device, lets fill_keys(keys, stream)
// write every element's key, then selects on them.
template <typename FillKeys>
StableTensor select_with_keys(const char* op, const char* what, const StableTensor& values,
                              const std::vector<int64_t>& offsets, const std::vector<int64_t>& ks,
                              const FillKeys& fill_keys) {
  const int64_t total = check_segments(op, what, values, offsets, ks);
  DD_CHECK(values.is_cuda(), op, "the CUDA kernel got ", what, " on another device");
  const auto device_index = values.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);
  StableTensor out = torch::stable::new_empty(values, {total}, ScalarType::Long);
  if (total == 0) return out;
  StableTensor keys = torch::stable::new_empty(values, {values.numel()}, ScalarType::Int);
  auto* k = reinterpret_cast<uint32_t*>(keys.mutable_data_ptr<int32_t>());
  fill_keys(k, stream);
  check_launch(op);
  select_smallest_cuda(op, k, offsets, ks, out, stream);
  return out;
}

}  // namespace sel
}  // namespace datadiet
