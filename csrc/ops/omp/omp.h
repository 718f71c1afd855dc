// datadiet::omp — host-side declarations and argument checks. Schema in registration.cpp.
//
// Problems: atoms [N, d] cut into P problems by offsets (problem g owns rows
// offsets[g]..offsets[g+1]) with one target row targets[g] and one budget each.
// Outputs, per problem g at out offset o_g = sum(budgets[:g]): the selected global row
// indices in support order (-1 after the last), their weights (0 there), the residual
// norm ‖targets[g] − Σ w_s a_s‖ and the number of iterations run.
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include "common/check.h"

namespace datadiet {

using torch::headeronly::ScalarType;
using StableTensor = torch::stable::Tensor;
using OmpOutput = std::tuple<StableTensor, StableTensor, StableTensor, StableTensor>;

OmpOutput omp_cpu(const StableTensor& atoms, const StableTensor& targets, std::vector<int64_t> offsets,
                  std::vector<int64_t> budgets, double lam, bool positive, double tol);

// Bytes of the per-problem Gram columns above which a problem is refused (n·k floats).
constexpr int64_t kMaxGramBytes = int64_t{8} << 30;

inline int64_t check_omp_args(const StableTensor& atoms, const StableTensor& targets,
                              const std::vector<int64_t>& offsets, const std::vector<int64_t>& budgets, double lam,
                              double tol) {
  const char* op = "omp";
  DD_CHECK(atoms.dim() == 2 && atoms.scalar_type() == ScalarType::Float && atoms.is_contiguous(), op,
           "atoms must be a contiguous 2-D float32 tensor [N, d], got shape ", atoms.sizes(), " and ",
           atoms.scalar_type());
  const int64_t problems = static_cast<int64_t>(budgets.size());
  DD_CHECK(targets.dim() == 2 && targets.size(0) == problems && targets.size(1) == atoms.size(1) &&
               targets.scalar_type() == ScalarType::Float && targets.is_contiguous(),
           op, "targets must be a contiguous float32 tensor [", problems, ", ", atoms.size(1), "], got shape ",
           targets.sizes(), " and ", targets.scalar_type());
  DD_CHECK(targets.device() == atoms.device(), op, "targets are on another device than atoms");
  DD_CHECK(offsets.size() == budgets.size() + 1 && offsets.front() == 0 && offsets.back() == atoms.size(0), op,
           "offsets must hold ", problems + 1, " values from 0 to N = ", atoms.size(0), ", got ", offsets.size(),
           " values");
  DD_CHECK(lam >= 0.0, op, "lam must be >= 0, got ", lam);
  DD_CHECK(tol >= 0.0 && tol < 1.0, op, "tol must be in [0, 1), got ", tol);
  int64_t total = 0;
  for (int64_t g = 0; g < problems; ++g) {
    const int64_t n = offsets[g + 1] - offsets[g];
    DD_CHECK(n >= 0, op, "offsets must be non-decreasing, got offsets[", g, "] = ", offsets[g], " > offsets[",
             g + 1, "] = ", offsets[g + 1]);
    DD_CHECK(budgets[g] >= 0 && budgets[g] <= n, op, "budget ", budgets[g], " for problem ", g, " of ", n,
             " atoms; need 0 <= budget <= atoms");
    DD_CHECK(n * budgets[g] * 4 <= kMaxGramBytes, op, "problem ", g, " needs ", n, " x ", budgets[g],
             " Gram entries (", n * budgets[g] * 4 / (1 << 20), " MiB); split it (per class / per batch)");
    total += budgets[g];
  }
  return total;
}

}  // namespace datadiet
