// The current CUDA stream of a tensor's device, through the stable ABI shim. Hold a
// torch::stable::accelerator::DeviceGuard for that device while using it.
#pragma once

#include <cuda_runtime.h>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/tensor.h>

#include "common/check.h"

namespace datadiet {

inline cudaStream_t current_stream(int32_t device_index) {
  void* stream_ptr = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream_ptr));
  return static_cast<cudaStream_t>(stream_ptr);
}

inline void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  DD_CHECK(err == cudaSuccess, op, "CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace datadiet
