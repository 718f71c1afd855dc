// datadiet::weighted_sample on CUDA: each thread writes the exponential keys of four
// consecutive elements from one Philox call (select_math.h), the radix engine
// (radix_select_cuda.cuh) takes the k smallest per segment in draw order. Compiled
// with --fmad=false (CMakeLists.txt) so the keys equal CPU, Triton and the reference.
// Weight values are checked by the Python wrapper (check_values), not here.
#include <torch/csrc/stable/library.h>
#include "common/dispatch.h"
#include "ops/select/radix_select_cuda.h"
#include "ops/select/select_math.h"

namespace datadiet {
namespace {

template <typename T>
__global__ void exponential_keys_kernel(const T* weights, uint32_t* keys, int64_t n, uint64_t seed) {
  const int64_t quads = (n + 3) / 4;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < quads;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const sel::Words4 r = sel::philox4(static_cast<uint64_t>(j), 0, seed);
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t i = 4 * j + l;
      if (i < n) keys[i] = sel::exponential_key(static_cast<float>(weights[i]), r.w[l]);
    }
  }
}

template <typename T>
void launch_keys(const StableTensor& weights, uint32_t* keys, uint64_t seed, cudaStream_t stream) {
  const int64_t quads = (weights.numel() + 3) / 4;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((quads + 255) / 256, 65536));
  exponential_keys_kernel<T><<<blocks, 256, 0, stream>>>(weights.const_data_ptr<T>(), keys, weights.numel(), seed);
}

}  // namespace

StableTensor weighted_sample_cuda(const StableTensor& weights, std::vector<int64_t> offsets,
                                  std::vector<int64_t> ks, int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return sel::select_with_keys("weighted_sample", "weights", weights, offsets, ks,
                               [&](uint32_t* k, cudaStream_t stream) {
                                 dispatch_float(weights.scalar_type(), [&](auto tag) {
                                   launch_keys<decltype(tag)>(weights, k, s, stream);
                                 });
                               });
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) {
  m.impl("weighted_sample", TORCH_BOX(&datadiet::weighted_sample_cuda));
}
