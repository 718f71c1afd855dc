// Argument checks that name the offending argument and value.
// DD_CHECK(cond, "ce_scores", "logits must be 2-D, got shape ", shape) throws
// std::invalid_argument("datadiet.ce_scores: logits must be 2-D, got shape [3]").
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

namespace datadiet {
namespace detail {

inline void append(std::ostringstream& os, const torch::headeronly::IntHeaderOnlyArrayRef& v) {
  os << '[';
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << ']';
}
template <typename T>
void append(std::ostringstream& os, const T& v) {
  os << v;
}

template <typename... Args>
std::string message(const char* op, const Args&... args) {
  std::ostringstream os;
  os << "datadiet." << op << ": ";
  (append(os, args), ...);
  return os.str();
}

}  // namespace detail
}  // namespace datadiet

#define DD_CHECK(cond, op, ...)                                                 \
  do {                                                                          \
    if (!(cond)) throw std::invalid_argument(::datadiet::detail::message(op, __VA_ARGS__)); \
  } while (0)
