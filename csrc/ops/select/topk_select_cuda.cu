// datadiet::topk_select on CUDA: one elementwise pass writes the ordered keys
// (select_math.h), the radix engine (radix_select_cuda.cuh) selects and orders.
#include <torch/csrc/stable/library.h>
#include "common/dispatch.h"
#include "ops/select/radix_select_cuda.h"
#include "ops/select/select_math.h"

namespace datadiet {
namespace {

template <typename T>
__global__ void ordered_keys_kernel(const T* values, uint32_t* keys, int64_t n, bool largest) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    keys[i] = sel::ordered_key(static_cast<float>(values[i]), largest);
}

template <typename T>
void launch_keys(const StableTensor& values, uint32_t* keys, bool largest, cudaStream_t stream) {
  const int64_t n = values.numel();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
  ordered_keys_kernel<T><<<blocks, 256, 0, stream>>>(values.const_data_ptr<T>(), keys, n, largest);
}

}  // namespace

StableTensor topk_select_cuda(const StableTensor& values, std::vector<int64_t> offsets, std::vector<int64_t> ks,
                              bool largest) {
  return sel::select_with_keys("topk_select", "scores", values, offsets, ks, [&](uint32_t* k, cudaStream_t stream) {
    dispatch_float(values.scalar_type(), [&](auto tag) { launch_keys<decltype(tag)>(values, k, largest, stream); });
  });
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) { m.impl("topk_select", TORCH_BOX(&datadiet::topk_select_cuda)); }
