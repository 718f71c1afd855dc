// The CUDA selection engine (radix_select_cuda.cu) shared by topk_select and
// weighted_sample.
#pragma once

#include <cstdint>
#include <vector>

#include "common/cuda_stream.h"
#include "ops/select/select.h"

namespace datadiet {
namespace sel {

// keys: uint32 [offsets.back()] on out's device; out: int64 [sum(ks)]. Writes, per
// segment, the global indices of the ks[g] smallest (key, index) pairs in that order.
void select_smallest_cuda(const char* op, const uint32_t* keys, const std::vector<int64_t>& offsets,
                          const std::vector<int64_t>& ks, StableTensor& out, cudaStream_t stream);

}  // namespace sel
}  // namespace datadiet
