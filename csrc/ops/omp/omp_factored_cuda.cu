// datadiet::omp_factored on CUDA: the step engine of omp_steps_cuda.cuh with factorised
// last-layer gradients g_i = e_i ⊗ h̃_i (h̃ = [h, 1] with `bias`, the 1 never stored). A
// pick's Gram column (e_i·e_j)(h_i·h_j + bias) is computed
// once, one warp per row, into the slot the pick kernel gave it (slots of atoms that left
// the support are handed out again, so no columns move); the support's inner products are
// read from the stored columns, the residual is ‖b‖² − 2wᵀp + wᵀG_SS w from them, and the
// correlations are c = c0 − G[:, slots] w. No iteration touches C·D1-sized data.
#include <torch/csrc/stable/library.h>

#include "ops/omp/omp_steps_cuda.cuh"

namespace datadiet {
namespace ompcuda {
namespace {

struct FactoredSource {
  __device__ static float* column_of(const Problem& p, const Buffers& b, int64_t row) {
    return b.G + p.G_at + row * p.cap;
  }

  // q[s] = G[S_s, slot(j)] for s < m; returns G[j, slot(j)] = ⟨g_j, g_j⟩.
  __device__ double column(const Problem& p, const Buffers& b, int64_t m, int64_t j) const {
    __syncthreads();
    const int64_t slot = b.slot_of[p.lo + j];
    for (int64_t s = threadIdx.x; s < m; s += kThreads) p.q[s] = column_of(p, b, p.sup[s])[slot];
    __syncthreads();
    return column_of(p, b, j)[slot];
  }

  // The verdict. No C × D residual is formed: ‖r‖² = ‖b‖² − 2wᵀp + wᵀG_SS w from the stored
  // columns (float64 sums; the residual of these weights whether or not they solve the system
  // exactly), one support row per thread. A kept solve scatters its weights by slot for the
  // correlation pass; one whose objective ‖r‖² + λ‖w‖² rose is undone.
  __device__ void solved(const Problem& p, const Buffers& b, int64_t m, int64_t j) const {
    double part = 0.0;
    for (int64_t s = threadIdx.x; s < m; s += kThreads) {
      const float* gs = column_of(p, b, p.sup[s]);
      double gw = 0.0;
      for (int64_t t = 0; t < m; ++t) gw += static_cast<double>(gs[b.slot_of[p.lo + p.sup[t]]]) * p.w[t];
      part += p.w[s] * (gw - 2.0 * b.c0[p.lo + p.sup[s]]);
    }
    const double* real = b.real + p.g * kRealCols;
    const double current = real[OBJ], r2 = real[B2] + block_sum(part);  // read before accept writes
    const double pen = penalty(p, b, m);
    if (!omp::keeps(r2, pen, current)) {
      restore(p, b, j);
      return;
    }
    for (int64_t s = threadIdx.x; s < p.cap; s += kThreads) p.wslot[s] = 0.0f;
    __syncthreads();
    for (int64_t s = threadIdx.x; s < m; s += kThreads)
      p.wslot[b.slot_of[p.lo + p.sup[s]]] = static_cast<float>(p.w[s]);
    accept(p, b, r2, r2 + pen, m);
  }
};

// G[i, slot] = (e_i·e_j)(h_i·h_j + bias) for the rows of problems whose pick got a new slot.
__global__ void gram_kernel(Buffers b, const float* e, const float* h, int64_t C, int64_t D1, float bias) {
  for_each_changed_row(b, false, [&](int64_t i, int64_t g, int lane) {
    const int64_t* st = b.state + g * kStateCols;
    const int64_t slot = st[NEW_SLOT];
    if (slot < 0) return;
    const int64_t* t = b.layout + g * kLayoutCols;
    const int64_t j = t[LO] + st[PENDING];
    float ee = 0.0f, hh = 0.0f;
    for (int64_t c = lane; c < C; c += 32) ee += e[i * C + c] * e[j * C + c];
    for (int64_t c = lane; c < D1; c += 32) hh += h[i * D1 + c] * h[j * D1 + c];
    ee = warp_sum(ee), hh = warp_sum(hh);
    if (lane == 0) b.G[t[G_AT] + (i - t[LO]) * t[CAP] + slot] = ee * (hh + bias);
  });
}

// c_i = c0_i − Σ_slot G[i, slot] wslot[slot] for the rows of problems that changed.
__global__ void correlate_kernel(Buffers b) {
  for_each_changed_row(b, false, [&](int64_t i, int64_t g, int lane) {
    const int64_t* t = b.layout + g * kLayoutCols;
    const float* gi = b.G + t[G_AT] + (i - t[LO]) * t[CAP];
    const float* w = b.wslot + t[CAP_AT];
    float acc = 0.0f;
    for (int64_t s = lane; s < t[CAP]; s += 32) acc += gi[s] * w[s];
    acc = warp_sum(acc);
    if (lane == 0) b.c[i] = b.c0[i] - acc;
  });
}

}  // namespace
}  // namespace ompcuda

OmpOutput omp_factored_cuda(const StableTensor& errors, const StableTensor& features, bool bias,
                            const StableTensor& c0, const StableTensor& b2, std::vector<int64_t> offsets,
                            std::vector<int64_t> budgets,
                            double lam, bool positive, double tol) {
  using namespace ompcuda;
  const char* op = "omp_factored";
  const int64_t total = check_omp_factored_args(errors, features, c0, b2, offsets, budgets, lam, tol);
  DD_CHECK(errors.is_cuda(), op, "the CUDA kernel got errors on another device");
  const auto device_index = errors.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);
  const int64_t problems = static_cast<int64_t>(budgets.size()), rows = errors.size(0);
  OmpOutput out = allocate_omp(errors, total, problems);
  if (problems == 0) return out;
  const int64_t C = errors.size(1), D1 = features.size(1);
  Workspace ws(errors, offsets, budgets, /*factored=*/true, lam, C * (D1 + (bias ? 1 : 0)), stream);
  ws.b.c0 = c0.const_data_ptr<float>();
  const float *e = errors.const_data_ptr<float>(), *h = features.const_data_ptr<float>();
  const unsigned P = static_cast<unsigned>(problems), blocks = row_blocks(rows);
  start_kernel<<<P, kThreads, 0, stream>>>(ws.b, b2.const_data_ptr<float>(), positive, tol);
  check_launch(op);
  ws.run(op, stream, [&] {
    pick_kernel<true><<<P, kThreads, 0, stream>>>(ws.b, positive);
    gram_kernel<<<blocks, kRowThreads, 0, stream>>>(ws.b, e, h, C, D1, bias ? 1.0f : 0.0f);
    solve_kernel<<<P, kThreads, 0, stream>>>(ws.b, FactoredSource{}, positive);
    correlate_kernel<<<blocks, kRowThreads, 0, stream>>>(ws.b);
  });
  ws.finish(out, stream);
  check_launch(op);
  return out;
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) {
  m.impl("omp_factored", TORCH_BOX(&datadiet::omp_factored_cuda));
}
