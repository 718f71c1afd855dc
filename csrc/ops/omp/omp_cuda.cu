// datadiet::omp on CUDA with dense atoms: the step engine of omp_steps_cuda.cuh with the
// dense atom source — a new atom's inner products with the support are warp dot products
// over its row, and the correlations come from the explicit residual: one block per
// problem builds r = b − Σ w_s a_s in float64 (and ‖r‖², the exact residual), then one warp
// per row computes c_i = ⟨a_i, r⟩ for the rows of problems that changed this step. The
// residual kernel gives each step's verdict: an objective ‖r‖² + λ‖w‖² above the current one
// undoes the pick.
#include <torch/csrc/stable/library.h>

#include "ops/omp/omp_steps_cuda.cuh"

namespace datadiet {
namespace ompcuda {
namespace {

struct DenseSource {
  const float* atoms;
  int64_t d;

  // q[s] = ⟨a_{S_s}, a_j⟩ for s < m and, at q[m], ⟨a_j, a_j⟩ (returned): one warp per entry.
  __device__ double column(const Problem& p, const Buffers& b, int64_t m, int64_t j) const {
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const float* aj = atoms + (p.lo + j) * d;
    for (int64_t s = threadIdx.x >> 5; s <= m; s += kThreads / 32) {
      const float* as = atoms + (p.lo + (s < m ? p.sup[s] : j)) * d;
      float acc = 0.0f;
      for (int64_t t = lane; t < d; t += 32) acc += as[t] * aj[t];
      acc = warp_sum(acc);
      if (lane == 0) p.q[s] = acc;
    }
    __syncthreads();
    return p.q[m];
  }

  // The residual kernel that follows gives the verdict.
  __device__ void solved(const Problem& p, const Buffers& b, int64_t m, int64_t) const {
    if (threadIdx.x == 0) b.state[p.g * kStateCols + M] = m;
  }
};

// r = b − Σ w_s a_s (float64, stored float32) and ‖r‖² for problems that changed (all when
// `first`, which records ‖b‖²). After a solve it is the verdict: the pick stays if ‖r‖² + λ‖w‖²
// did not rise (and the problem is done at its budget or at ‖r‖ <= tol·‖b‖), else it is undone.
__global__ void residual_kernel(Buffers b, const float* atoms, const float* targets, float* r, int64_t d,
                                bool first) {
  const int64_t g = blockIdx.x;
  int64_t* st = b.state + g * kStateCols;
  const int64_t j = st[PENDING];
  if (!first && j < 0) return;
  const Problem p(b, g);
  const int64_t m = st[M];
  double part = 0.0;
  for (int64_t t = threadIdx.x; t < d; t += kThreads) {
    double acc = targets[g * d + t];
    for (int64_t s = 0; s < m; ++s) acc -= p.w[s] * atoms[(p.lo + p.sup[s]) * d + t];
    r[g * d + t] = static_cast<float>(acc);
    part += acc * acc;
  }
  double* real = b.real + g * kRealCols;
  const double current = real[OBJ], r2 = block_sum(part);  // read before accept writes
  if (first) {
    if (threadIdx.x == 0) real[R2] = r2, real[B2] = r2;
    return;
  }
  const double pen = penalty(p, b, m);
  if (omp::keeps(r2, pen, current)) {
    accept(p, b, r2, r2 + pen, m);
  } else {
    restore(p, b, j);
  }
}

// c_i = ⟨a_i, r_g⟩ for the rows of problems that changed (all when `first`).
__global__ void correlate_kernel(Buffers b, const float* atoms, const float* r, int64_t d, bool first) {
  for_each_changed_row(b, first, [&](int64_t i, int64_t g, int lane) {
    const float *a = atoms + i * d, *rg = r + g * d;
    float acc = 0.0f;
    for (int64_t t = lane; t < d; t += 32) acc += a[t] * rg[t];
    acc = warp_sum(acc);
    if (lane == 0) b.c[i] = acc;
  });
}

}  // namespace
}  // namespace ompcuda

OmpOutput omp_cuda(const StableTensor& atoms, const StableTensor& targets, std::vector<int64_t> offsets,
                   std::vector<int64_t> budgets, double lam, bool positive, double tol) {
  using namespace ompcuda;
  const char* op = "omp";
  const int64_t total = check_omp_args(atoms, targets, offsets, budgets, lam, tol);
  DD_CHECK(atoms.is_cuda(), op, "the CUDA kernel got atoms on another device");
  const auto device_index = atoms.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);
  const int64_t problems = static_cast<int64_t>(budgets.size()), rows = atoms.size(0), d = atoms.size(1);
  OmpOutput out = allocate_omp(atoms, total, problems);
  if (problems == 0) return out;
  Workspace ws(atoms, offsets, budgets, /*factored=*/false, lam, d, stream);
  StableTensor residual = torch::stable::new_empty(atoms, {problems * d + 1}, ScalarType::Float);
  float* r = residual.mutable_data_ptr<float>();
  const float *a = atoms.const_data_ptr<float>(), *b = targets.const_data_ptr<float>();
  const unsigned P = static_cast<unsigned>(problems), blocks = row_blocks(rows);
  const DenseSource src{a, d};
  residual_kernel<<<P, kThreads, 0, stream>>>(ws.b, a, b, r, d, true);
  correlate_kernel<<<blocks, kRowThreads, 0, stream>>>(ws.b, a, r, d, true);
  cudaMemcpyAsync(ws.c0_own, ws.b.c, rows * sizeof(float), cudaMemcpyDeviceToDevice, stream);
  start_kernel<<<P, kThreads, 0, stream>>>(ws.b, nullptr, positive, tol);
  check_launch(op);
  ws.run(op, stream, [&] {
    pick_kernel<false><<<P, kThreads, 0, stream>>>(ws.b, positive);
    solve_kernel<<<P, kThreads, 0, stream>>>(ws.b, src, positive);
    residual_kernel<<<P, kThreads, 0, stream>>>(ws.b, a, b, r, d, false);
    correlate_kernel<<<blocks, kRowThreads, 0, stream>>>(ws.b, a, r, d, false);
  });
  ws.finish(out, stream);
  check_launch(op);
  return out;
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) { m.impl("omp", TORCH_BOX(&datadiet::omp_cuda)); }
