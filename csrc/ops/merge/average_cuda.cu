// datadiet::average_ and datadiet::lerp_ on CUDA: one launch over chunks of every tensor
// in the list (multi_tensor_cuda.cuh), float32 arithmetic, sources summed in model order
// per element before dst is written (so dst may be a source). No host synchronisation.
#include <cstring>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "common/cuda_stream.h"
#include "ops/merge/multi_tensor_cuda.cuh"

namespace datadiet {
namespace {

// table row per tensor: numel, dtype, dst, then `inputs` source pointers; after the rows,
// the float32 weights packed two per int64 word.
__global__ void average_kernel(const int64_t* table, const int64_t* chunks, int64_t inputs, const float* weights,
                               float alpha, bool lerp) {
  const int64_t t = chunks[3 * blockIdx.x], begin = chunks[3 * blockIdx.x + 1];
  const int64_t* row = table + t * (3 + inputs);
  const int64_t numel = row[0], dtype = row[1];
  void* dst = mt::pointer(row[2]);
  const int64_t end = min(numel, begin + mt::kChunk);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float acc;
    if (lerp) {
      const float x = mt::load(dst, dtype, i);
      acc = x + alpha * (mt::load(mt::pointer(row[3]), dtype, i) - x);
    } else {
      acc = weights[0] * mt::load(mt::pointer(row[3]), dtype, i);
      for (int64_t m = 1; m < inputs; ++m) acc += weights[m] * mt::load(mt::pointer(row[3 + m]), dtype, i);
    }
    mt::store(dst, dtype, i, acc);
  }
}

// Packs the rows (and the weights), uploads them with the chunk table, launches.
void launch(const char* op, const std::vector<StableTensor>& dst, const std::vector<StableTensor>& inputs,
            const std::vector<double>& weights, double alpha, bool lerp) {
  if (dst.empty()) return;
  const auto device_index = dst[0].get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);
  const int64_t T = static_cast<int64_t>(dst.size()), per = static_cast<int64_t>(inputs.size()) / T;
  std::vector<int64_t> table;
  for (int64_t t = 0; t < T; ++t) {
    table.insert(table.end(), {dst[t].numel(), mt::dtype_code(dst[t].scalar_type()), mt::address(dst[t].data_ptr())});
    for (int64_t m = 0; m < per; ++m) table.push_back(mt::address(inputs[m * T + t].data_ptr()));
  }
  const int64_t weights_at = static_cast<int64_t>(table.size());
  const std::vector<float> wf(weights.begin(), weights.end());
  table.resize(table.size() + (wf.size() + 1) / 2, 0);
  if (!wf.empty()) std::memcpy(table.data() + weights_at, wf.data(), wf.size() * sizeof(float));
  const std::vector<int64_t> chunks = mt::chunk_table(dst, std::vector<int64_t>(T, 0));
  if (chunks.empty()) return;
  const StableTensor dev_table = mt::upload(dst[0], table, stream), dev_chunks = mt::upload(dst[0], chunks, stream);
  const int64_t* tab = dev_table.const_data_ptr<int64_t>();
  const float* w = reinterpret_cast<const float*>(tab + weights_at);
  average_kernel<<<mt::blocks(chunks), mt::kThreads, 0, stream>>>(tab, dev_chunks.const_data_ptr<int64_t>(), per,
                                                                 w, static_cast<float>(alpha), lerp);
  check_launch(op);
}

}  // namespace

void average_cuda(std::vector<StableTensor> dst, std::vector<StableTensor> sources, std::vector<double> weights) {
  check_average_args(dst, sources, weights);
  DD_CHECK(dst.empty() || dst[0].is_cuda(), "average_", "the CUDA kernel got tensors on another device");
  launch("average_", dst, sources, weights, 0.0, false);
}

void lerp_cuda(std::vector<StableTensor> dst, std::vector<StableTensor> other, double alpha) {
  check_same_layout("lerp_", dst, other, "other");
  DD_CHECK(other.size() == dst.size(), "lerp_", "other must hold one model of ", dst.size(), " tensors, got ",
           other.size());
  DD_CHECK(dst.empty() || dst[0].is_cuda(), "lerp_", "the CUDA kernel got tensors on another device");
  launch("lerp_", dst, other, {}, alpha, true);
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) {
  m.impl("average_", TORCH_BOX(&datadiet::average_cuda));
  m.impl("lerp_", TORCH_BOX(&datadiet::lerp_cuda));
}
