// dispatch_float(t, f) calls f(T{}) with T the element type of a float32, float16 or
// bfloat16 tensor (callers check the dtype first):
//   dispatch_float(x.scalar_type(), [&](auto tag) { run<decltype(tag)>(x); });
#pragma once

#include <utility>

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

// dispatch_float_or_double(t, f): the same with float64 too (callers check the dtype first).
template <typename F>
decltype(auto) dispatch_float_or_double(torch::headeronly::ScalarType t, F&& f) {
  if (t == torch::headeronly::ScalarType::Double) return f(double{});
  return dispatch_float(t, std::forward<F>(f));
}

}  // namespace datadiet
