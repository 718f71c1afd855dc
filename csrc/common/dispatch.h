// dispatch_float(t, f) calls f(T{}) with T the element type of a float32, float16 or
// bfloat16 tensor (callers check the dtype first):
//   dispatch_float(x.scalar_type(), [&](auto tag) { run<decltype(tag)>(x); });
#pragma once

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

namespace datadiet {

template <typename F>
decltype(auto) dispatch_float(torch::headeronly::ScalarType t, F&& f) {
  switch (t) {
    case torch::headeronly::ScalarType::Float:
      return f(float{});
    case torch::headeronly::ScalarType::Half:
      return f(c10::Half{});
    default:
      return f(c10::BFloat16{});
  }
}

}  // namespace datadiet
