// datadiet::magnitude_prune_ on CUDA: every group (the whole list, or each tensor) is pruned
// in the same launches, with no host synchronisation. Per group, device state holds the
// digit prefix found so far, how many of the kept still lie at or below it, and a 256-bin
// histogram; four 8-bit passes (histogram: one block per chunk, shared-memory counts, one
// atomic per bin; choose: one thread per group) find the keep-th largest magnitude key T.
// When fewer keys equal T are kept than exist, each chunk counts its ties, one thread turns
// the counts into per-group running offsets, and the apply pass ranks ties inside a chunk
// with a block scan — ties are kept lower index first, as on the CPU. NaN weights are
// rejected by the wrapper before the launch (the CPU kernel checks them itself).
#include <cub/block/block_scan.cuh>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "common/cuda_stream.h"
#include "ops/merge/magnitude.h"
#include "ops/merge/multi_tensor_cuda.cuh"

namespace datadiet {
namespace {

using D = merge::Digits<8>;
constexpr int kBins = D::kBins;
// Per-group state (int64 words): prefix, want (kept at or below the prefix), ties (keys equal
// to the final threshold), keep, then the histogram.
enum : int { PREFIX, WANT, TIES, KEEP, HIST, kStateWords = HIST + kBins };

// Table row per tensor: data, numel, dtype, mask (0 for none).
struct Row {
  void* data;
  int64_t numel, dtype;
  bool* mask;
  __device__ explicit Row(const int64_t* table, int64_t t)
      : data(mt::pointer(table[4 * t])), numel(table[4 * t + 1]), dtype(table[4 * t + 2]),
        mask(mt::pointer<bool>(table[4 * t + 3])) {}
};

__global__ void histogram_kernel(const int64_t* table, const int64_t* chunks, int64_t* state, int pass) {
  __shared__ unsigned int hist[kBins];
  const int64_t t = chunks[3 * blockIdx.x], begin = chunks[3 * blockIdx.x + 1];
  int64_t* st = state + chunks[3 * blockIdx.x + 2] * kStateWords;
  if (st[KEEP] == 0) return;
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) hist[b] = 0;
  __syncthreads();
  const Row r(table, t);
  const uint32_t prefix = static_cast<uint32_t>(st[PREFIX]);
  const int64_t end = min(r.numel, begin + mt::kChunk);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const uint32_t key = merge::magnitude_key(mt::load(r.data, r.dtype, i));
    if (D::matches(key, prefix, pass)) atomicAdd(&hist[D::digit(key, pass)], 1u);
  }
  __syncthreads();
  auto* global = reinterpret_cast<unsigned long long*>(st + HIST);
  for (int b = threadIdx.x; b < kBins; b += blockDim.x)
    if (hist[b]) atomicAdd(&global[b], static_cast<unsigned long long>(hist[b]));
}

__global__ void choose_kernel(int64_t* state, int64_t groups) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  int64_t* st = state + g * kStateWords;
  if (st[KEEP] == 0) return;
  int64_t want = st[WANT];
  const uint32_t d = merge::choose_digit<kBins>(st + HIST, want);
  st[WANT] = want;
  st[TIES] = st[HIST + d];
  st[PREFIX] = (st[PREFIX] << 8) | d;
  for (int b = 0; b < kBins; ++b) st[HIST + b] = 0;
}

// Keys equal to the threshold per chunk, when some of them are dropped.
__global__ void count_ties_kernel(const int64_t* table, const int64_t* chunks, const int64_t* state,
                                  unsigned long long* ties) {
  const int64_t t = chunks[3 * blockIdx.x], begin = chunks[3 * blockIdx.x + 1];
  const int64_t* st = state + chunks[3 * blockIdx.x + 2] * kStateWords;
  if (st[KEEP] == 0 || st[WANT] == st[TIES]) return;
  const Row r(table, t);
  const uint32_t threshold = static_cast<uint32_t>(st[PREFIX]);
  const int64_t end = min(r.numel, begin + mt::kChunk);
  unsigned long long n = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
    n += merge::magnitude_key(mt::load(r.data, r.dtype, i)) == threshold;
  atomicAdd(&ties[blockIdx.x], n);
}

// ties[c] ← ties before chunk c within its group (chunks of a group are consecutive).
__global__ void offsets_kernel(unsigned long long* ties, const int64_t* chunks, int64_t count) {
  unsigned long long running = 0;
  for (int64_t c = 0; c < count; ++c) {
    if (c > 0 && chunks[3 * c + 2] != chunks[3 * c - 1]) running = 0;
    const unsigned long long here = ties[c];
    ties[c] = running;
    running += here;
  }
}

__global__ void apply_kernel(const int64_t* table, const int64_t* chunks, const int64_t* state,
                             const unsigned long long* offsets) {
  using Scan = cub::BlockScan<int64_t, mt::kThreads>;
  __shared__ typename Scan::TempStorage scan;
  const int64_t t = chunks[3 * blockIdx.x], begin = chunks[3 * blockIdx.x + 1];
  const int64_t* st = state + chunks[3 * blockIdx.x + 2] * kStateWords;
  // keep == 0: a threshold above every key (NaN included) prunes everything.
  const bool none = st[KEEP] == 0;
  const uint32_t threshold = none ? merge::kInfKey + 1 : static_cast<uint32_t>(st[PREFIX]);
  const int64_t need = none ? 0 : st[WANT];
  const bool rank_ties = !none && st[WANT] != st[TIES];
  int64_t seen = rank_ties ? static_cast<int64_t>(offsets[blockIdx.x]) : 0;
  const Row r(table, t);
  const int64_t end = min(r.numel, begin + mt::kChunk);
  for (int64_t base = begin; base < end; base += mt::kThreads) {  // uniform trip count: the scan needs every thread
    const int64_t i = base + threadIdx.x;
    const bool live = i < end;
    const float x = live ? mt::load(r.data, r.dtype, i) : 0.0f;
    const uint32_t key = merge::magnitude_key(x);
    const int64_t tie = live && key == threshold;
    int64_t rank = 0, total = 0;
    if (rank_ties) {
      Scan(scan).ExclusiveSum(tie, rank, total);
      __syncthreads();
    }
    if (live) {
      const bool kept = key > threshold || (tie && (!rank_ties || seen + rank < need));
      if (!kept) mt::store(r.data, r.dtype, i, 0.0f);
      if (r.mask) r.mask[i] = kept;
    }
    seen += total;
  }
}

}  // namespace

void magnitude_prune_cuda(std::vector<StableTensor> tensors, std::vector<StableTensor> masks,
                          std::vector<int64_t> keep) {
  const char* op = "magnitude_prune_";
  check_prune_args(tensors, masks, keep);
  if (tensors.empty()) return;
  DD_CHECK(tensors[0].is_cuda(), op, "the CUDA kernel got tensors on another device");
  const auto device_index = tensors[0].get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);
  const int64_t T = static_cast<int64_t>(tensors.size());
  const bool global = keep.size() == 1 && T != 1;
  const int64_t groups = global ? 1 : T;
  std::vector<int64_t> table, group_of(T);
  for (int64_t t = 0; t < T; ++t) {
    table.insert(table.end(), {mt::address(tensors[t].data_ptr()), tensors[t].numel(),
                               mt::dtype_code(tensors[t].scalar_type()),
                               masks.empty() ? 0 : mt::address(masks[t].data_ptr())});
    group_of[t] = global ? 0 : t;
  }
  std::vector<int64_t> state(groups * kStateWords, 0);
  for (int64_t g = 0; g < groups; ++g) state[g * kStateWords + WANT] = state[g * kStateWords + KEEP] = keep[g];
  const std::vector<int64_t> chunks = mt::chunk_table(tensors, group_of);
  if (chunks.empty()) return;
  const int64_t count = static_cast<int64_t>(chunks.size() / 3);
  const StableTensor dev_table = mt::upload(tensors[0], table, stream);
  const StableTensor dev_chunks = mt::upload(tensors[0], chunks, stream);
  StableTensor dev_state = mt::upload(tensors[0], state, stream);
  StableTensor ties = torch::stable::new_empty(tensors[0], {count}, ScalarType::Long);
  cudaMemsetAsync(ties.mutable_data_ptr<int64_t>(), 0, count * sizeof(int64_t), stream);
  const int64_t* tab = dev_table.const_data_ptr<int64_t>();
  const int64_t* ch = dev_chunks.const_data_ptr<int64_t>();
  int64_t* st = dev_state.mutable_data_ptr<int64_t>();
  auto* tie_counts = reinterpret_cast<unsigned long long*>(ties.mutable_data_ptr<int64_t>());
  const unsigned grid = static_cast<unsigned>(count), group_blocks = static_cast<unsigned>((groups + 127) / 128);
  for (int pass = 0; pass < D::kPasses; ++pass) {
    histogram_kernel<<<grid, mt::kThreads, 0, stream>>>(tab, ch, st, pass);
    choose_kernel<<<group_blocks, 128, 0, stream>>>(st, groups);
  }
  count_ties_kernel<<<grid, mt::kThreads, 0, stream>>>(tab, ch, st, tie_counts);
  offsets_kernel<<<1, 1, 0, stream>>>(tie_counts, ch, count);
  apply_kernel<<<grid, mt::kThreads, 0, stream>>>(tab, ch, st, tie_counts);
  check_launch(op);
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) {
  m.impl("magnitude_prune_", TORCH_BOX(&datadiet::magnitude_prune_cuda));
}
