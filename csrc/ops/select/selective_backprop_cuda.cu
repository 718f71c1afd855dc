// datadiet::selective_backprop_keep_ on CUDA, three launches on the current stream and
// no host synchronisation: append the batch to the ring buffer; count, per loss, the
// history entries strictly below it and flip the coin (select_math.h); advance the
// state. The state is validated on the device (sel::valid_ring_state, the CPU kernel's rule):
// an invalid one (a corrupt checkpoint) leaves history and state untouched and marks every
// loss not kept with a NaN percentile, without the host synchronisation raising would need.
// Compiled with --fmad=false so the coins equal CPU, Triton and the reference.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "common/cuda_stream.h"
#include "ops/select/select.h"
#include "ops/select/select_math.h"

namespace datadiet {
namespace {

__global__ void append_kernel(const float* losses, float* history, const int64_t* state, int64_t n, int64_t size) {
  if (!sel::valid_ring_state(state[0], state[1], size)) return;
  const int64_t first = n > size ? n - size : 0;
  for (int64_t i = first + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    history[(state[0] + i) % size] = losses[i];
}

__global__ void coin_kernel(const float* losses, const float* history, const int64_t* state, bool* keep,
                            float* percentile, int64_t n, int64_t size, float beta, uint64_t seed, uint64_t step) {
  const bool valid = sel::valid_ring_state(state[0], state[1], size);
  const int64_t filled = min(state[1] + n, size);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!valid) {
      percentile[i] = __int_as_float(0x7FC00000);  // NaN
      keep[i] = false;
      continue;
    }
    const float loss = losses[i];
    uint32_t below = 0;
    for (int64_t j = 0; j < filled; ++j) below += history[j] < loss;
    percentile[i] = sel::div_rn(static_cast<float>(below), static_cast<float>(filled));
    keep[i] = sel::percentile_coin(below, static_cast<uint32_t>(filled), beta, static_cast<uint64_t>(i), step, seed);
  }
}

__global__ void advance_kernel(int64_t* state, int64_t n, int64_t size) {
  if (!sel::valid_ring_state(state[0], state[1], size)) return;
  state[0] = (state[0] + n) % size;
  state[1] = min(state[1] + n, size);
}

}  // namespace

std::tuple<StableTensor, StableTensor> selective_backprop_keep_cuda(const StableTensor& losses,
                                                                    StableTensor history, StableTensor state,
                                                                    double beta, int64_t seed, int64_t step) {
  const char* op = "selective_backprop_keep_";
  check_history(op, losses, history, state, beta);
  DD_CHECK(losses.is_cuda(), op, "the CUDA kernel got losses on another device");
  const auto device_index = losses.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);
  const int64_t n = losses.numel(), size = history.numel();
  StableTensor keep = torch::stable::new_empty(losses, {n}, ScalarType::Bool);
  StableTensor percentile = torch::stable::new_empty(losses, {n}, ScalarType::Float);
  if (n == 0) return {keep, percentile};
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
  int64_t* st = state.mutable_data_ptr<int64_t>();
  append_kernel<<<blocks, 256, 0, stream>>>(losses.const_data_ptr<float>(), history.mutable_data_ptr<float>(), st, n,
                                           size);
  coin_kernel<<<blocks, 256, 0, stream>>>(losses.const_data_ptr<float>(), history.const_data_ptr<float>(), st,
                                         keep.mutable_data_ptr<bool>(), percentile.mutable_data_ptr<float>(), n, size,
                                         static_cast<float>(beta), static_cast<uint64_t>(seed),
                                         static_cast<uint64_t>(step));
  advance_kernel<<<1, 1, 0, stream>>>(st, n, size);
  check_launch(op);
  return {keep, percentile};
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) {
  m.impl("selective_backprop_keep_", TORCH_BOX(&datadiet::selective_backprop_keep_cuda));
}
