// Tensor tables for the multi-tensor CUDA merging kernels: the host packs every tensor's
// pointer, size and dtype (and the chunks they are cut into) into one int64 array, copies it
// to the device once, and a single launch walks all chunks — one block per chunk.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/check.h"
#include "ops/merge/merge.h"

namespace datadiet {
namespace mt {

constexpr int64_t kChunk = 65536;  // elements per block
constexpr int kThreads = 256;

enum DtypeCode : int64_t { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

inline int64_t dtype_code(ScalarType t) {
  return t == ScalarType::Float ? kFloat : t == ScalarType::Half ? kHalf : kBFloat16;
}

__device__ __forceinline__ float load(const void* p, int64_t dtype, int64_t i) {
  if (dtype == kFloat) return static_cast<const float*>(p)[i];
  if (dtype == kHalf) return static_cast<float>(static_cast<const c10::Half*>(p)[i]);
  return static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]);
}

__device__ __forceinline__ void store(void* p, int64_t dtype, int64_t i, float v) {
  if (dtype == kFloat) static_cast<float*>(p)[i] = v;
  else if (dtype == kHalf) static_cast<c10::Half*>(p)[i] = c10::Half(v);
  else static_cast<c10::BFloat16*>(p)[i] = c10::BFloat16(v);
}

inline int64_t address(const void* p) { return static_cast<int64_t>(reinterpret_cast<uintptr_t>(p)); }
template <typename T = void>
__device__ __forceinline__ T* pointer(int64_t a) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(a));
}

// Copies `host` into a fresh int64 tensor on `like`'s device (kept alive by the returned
// tensor; the copy is ordered on `stream` before any later launch).
inline StableTensor upload(const StableTensor& like, const std::vector<int64_t>& host, cudaStream_t stream) {
  StableTensor dev = torch::stable::new_empty(like, {static_cast<int64_t>(host.size()) + 1}, ScalarType::Long);
  if (!host.empty())
    cudaMemcpyAsync(dev.mutable_data_ptr<int64_t>(), host.data(), host.size() * sizeof(int64_t),
                    cudaMemcpyHostToDevice, stream);
  return dev;
}

// Chunks of the listed tensors: (tensor index, first element, group) triples.
inline std::vector<int64_t> chunk_table(const std::vector<StableTensor>& ts, const std::vector<int64_t>& group_of) {
  std::vector<int64_t> chunks;
  for (size_t t = 0; t < ts.size(); ++t)
    for (int64_t b = 0; b < ts[t].numel(); b += kChunk) chunks.insert(chunks.end(), {int64_t(t), b, group_of[t]});
  return chunks;
}

inline unsigned blocks(const std::vector<int64_t>& chunks) { return static_cast<unsigned>(chunks.size() / 3); }

}  // namespace mt
}  // namespace datadiet
