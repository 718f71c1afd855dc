// datadiet::omp — host-side declarations and argument checks. Schema in schemas.cpp.
//
// Problems: atoms [N, d] cut into P problems by offsets (problem g owns rows
// offsets[g]..offsets[g+1]) with one target row targets[g] and one budget each.
// Outputs, per problem g at out offset o_g = sum(budgets[:g]): the selected global row
// indices in support order (-1 after the last), their weights (0 there), the residual
// norm ‖targets[g] − Σ w_s a_s‖, the number of iterations run (picks), why the solve stopped
// (omp_rules.h) and how many picks were rejected (dependent, or raising the objective ‖r‖² + λ‖w‖²).
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
using OmpOutput = std::tuple<StableTensor, StableTensor, StableTensor, StableTensor, StableTensor, StableTensor>;

OmpOutput omp_cpu(const StableTensor& atoms, const StableTensor& targets, std::vector<int64_t> offsets,
                  std::vector<int64_t> budgets, double lam, bool positive, double tol);
OmpOutput omp_factored_cpu(const StableTensor& errors, const StableTensor& features, bool bias,
                           const StableTensor& c0, const StableTensor& b2, std::vector<int64_t> offsets,
                           std::vector<int64_t> budgets, double lam, bool positive, double tol);
OmpOutput omp_cuda(const StableTensor& atoms, const StableTensor& targets, std::vector<int64_t> offsets,
                   std::vector<int64_t> budgets, double lam, bool positive, double tol);
OmpOutput omp_factored_cuda(const StableTensor& errors, const StableTensor& features, bool bias,
                            const StableTensor& c0, const StableTensor& b2, std::vector<int64_t> offsets,
                            std::vector<int64_t> budgets, double lam, bool positive, double tol);

// Bytes of a problem's buffers above which it is refused: n·k float32 Gram columns
// (factorised atoms) and the k·k float64 Cholesky factor with its saved copy.
constexpr int64_t kMaxGramBytes = int64_t{8} << 30;

// Checks the problem layout and options; returns the output length sum(budgets).
inline int64_t check_omp_problems(const char* op, int64_t N, const std::vector<int64_t>& offsets,
                                  const std::vector<int64_t>& budgets, double lam, double tol) {
  const int64_t problems = static_cast<int64_t>(budgets.size());
  DD_CHECK(offsets.size() == budgets.size() + 1 && offsets.front() == 0 && offsets.back() == N, op,
           "offsets must hold ", problems + 1, " values from 0 to N = ", N, ", got ", offsets.size(), " values");
  DD_CHECK(lam >= 0.0, op, "lam must be >= 0, got ", lam);
  DD_CHECK(tol >= 0.0 && tol < 1.0, op, "tol must be in [0, 1), got ", tol);
  int64_t total = 0;
  for (int64_t g = 0; g < problems; ++g) {
    const int64_t n = offsets[g + 1] - offsets[g];
    DD_CHECK(n >= 0, op, "offsets must be non-decreasing, got offsets[", g, "] = ", offsets[g], " > offsets[",
             g + 1, "] = ", offsets[g + 1]);
    DD_CHECK(budgets[g] >= 0 && budgets[g] <= n, op, "budget ", budgets[g], " for problem ", g, " of ", n,
             " atoms; need 0 <= budget <= atoms");
    DD_CHECK(n * budgets[g] * 4 <= kMaxGramBytes && budgets[g] * budgets[g] * 16 <= kMaxGramBytes, op, "problem ", g,
             " with ", n, " atoms and budget ", budgets[g], " needs ", (n * budgets[g] * 4 + budgets[g] * budgets[g] * 16) >> 20,
             " MiB of Gram columns and Cholesky factor (limit ", kMaxGramBytes >> 20,
             " MiB); split it (per class / per batch)");
    total += budgets[g];
  }
  return total;
}

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
  return check_omp_problems(op, atoms.size(0), offsets, budgets, lam, tol);
}

inline int64_t check_omp_factored_args(const StableTensor& errors, const StableTensor& features,
                                       const StableTensor& c0, const StableTensor& b2,
                                       const std::vector<int64_t>& offsets, const std::vector<int64_t>& budgets,
                                       double lam, double tol) {
  const char* op = "omp_factored";
  const int64_t total = check_omp_problems(op, errors.size(0), offsets, budgets, lam, tol);
  const int64_t problems = static_cast<int64_t>(budgets.size()), N = errors.size(0);
  DD_CHECK(errors.dim() == 2 && features.dim() == 2 && features.size(0) == N, op,
           "errors [N, C] and features [N, D1] must share N, got shapes ", errors.sizes(), " and ", features.sizes());
  for (const StableTensor* t : {&errors, &features, &c0, &b2})
    DD_CHECK(t->scalar_type() == ScalarType::Float && t->is_contiguous() && t->device() == errors.device(), op,
             "errors, features, c0 and b2 must be contiguous float32 tensors on one device");
  DD_CHECK(c0.dim() == 1 && c0.size(0) == N && b2.dim() == 1 && b2.size(0) == problems, op,
           "c0 must be [", N, "] and b2 [", problems, "], got ", c0.sizes(), " and ", b2.sizes());
  return total;
}

// indices int64 [total], weights float32 [total], residual float32 [P], iterations, stop and
// rejected int64 [P].
inline OmpOutput allocate_omp(const StableTensor& like, int64_t total, int64_t problems) {
  return {torch::stable::new_empty(like, {total}, ScalarType::Long),
          torch::stable::new_empty(like, {total}, ScalarType::Float),
          torch::stable::new_empty(like, {problems}, ScalarType::Float),
          torch::stable::new_empty(like, {problems}, ScalarType::Long),
          torch::stable::new_empty(like, {problems}, ScalarType::Long),
          torch::stable::new_empty(like, {problems}, ScalarType::Long)};
}

}  // namespace datadiet
