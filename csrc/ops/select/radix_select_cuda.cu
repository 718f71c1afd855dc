// CUDA engine behind topk_select and weighted_sample: in each segment, the k smallest
// (key, index) pairs, written as global indices in ascending (key, index) order — the
// same result as the CPU engine.
//
// Every element is identified by the unique 64-bit word c = key << 32 | local index, so
// "k smallest (key, index)" is "every c <= T", T the k-th smallest c of the segment.
// T is found digit by digit, 8 bits per pass, most significant first (8 passes): a
// pass histograms the digit of the elements whose higher digits equal T's so far
// (block histograms in shared memory, added into one [G, 256] global histogram), and
// one thread per segment then picks the digit where the running count reaches the
// remaining rank. Every pass reads the keys once; there is no host synchronisation.
// One pass then writes the c <= T (exactly k per segment, atomic slots), and CUB's
// segmented sort orders those k by c — only the selected elements are sorted.
//
// Work is split into tiles of kTile elements (a tile never straddles two segments),
// so one huge segment and many small ones both fill the GPU.
#include <cub/device/device_segmented_sort.cuh>

#include "ops/select/radix_select_cuda.h"

namespace datadiet {
namespace sel {
namespace {

constexpr int64_t kTile = 4096;
constexpr int kThreads = 256;
constexpr int kBins = 256;
constexpr int kPasses = 8;

struct SegmentTable {
  const int64_t* start;         // [G] first element of each segment
  const int64_t* length;        // [G]
  const int64_t* out_start;     // [G + 1] output offsets
  const int64_t* tile_segment;  // [tiles]
  const int64_t* tile_begin;    // [tiles] first local index of the tile
  int64_t* remaining;           // [G] 0-based rank still sought under the prefix
  unsigned long long* prefix;   // [G] T, digit by digit
  unsigned int* hist;           // [G, 256]
  unsigned long long* fill;     // [G] compaction slots taken
};

__device__ __forceinline__ unsigned long long packed(const uint32_t* keys, int64_t start, int64_t local) {
  return (static_cast<unsigned long long>(keys[start + local]) << 32) | static_cast<uint32_t>(local);
}

__global__ void histogram_kernel(const uint32_t* keys, SegmentTable t, int pass) {
  __shared__ unsigned int h[kBins];
  for (int i = threadIdx.x; i < kBins; i += blockDim.x) h[i] = 0;
  __syncthreads();
  const int64_t g = t.tile_segment[blockIdx.x], lo = t.tile_begin[blockIdx.x];
  const int64_t hi = min(lo + kTile, t.length[g]), start = t.start[g];
  const int shift = 56 - 8 * pass;
  const unsigned long long prefix = t.prefix[g];
  for (int64_t local = lo + threadIdx.x; local < hi; local += blockDim.x) {
    const unsigned long long c = packed(keys, start, local);
    if (pass == 0 || (c >> (shift + 8)) == (prefix >> (shift + 8))) atomicAdd(&h[(c >> shift) & (kBins - 1)], 1u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kBins; i += blockDim.x)
    if (h[i]) atomicAdd(&t.hist[g * kBins + i], h[i]);
}

__global__ void choose_digit_kernel(SegmentTable t, int64_t groups, int pass) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups || t.out_start[g + 1] == t.out_start[g]) return;
  unsigned int* h = t.hist + g * kBins;
  int64_t rank = t.remaining[g];
  int d = 0;
  for (; d < kBins - 1 && rank >= h[d]; ++d) rank -= h[d];
  t.remaining[g] = rank;
  t.prefix[g] |= static_cast<unsigned long long>(d) << (56 - 8 * pass);
  for (int i = 0; i < kBins; ++i) h[i] = 0;
}

__global__ void compact_kernel(const uint32_t* keys, SegmentTable t, unsigned long long* out_keys,
                               int64_t* out_index) {
  const int64_t g = t.tile_segment[blockIdx.x], lo = t.tile_begin[blockIdx.x];
  const int64_t hi = min(lo + kTile, t.length[g]), start = t.start[g];
  const unsigned long long threshold = t.prefix[g];
  for (int64_t local = lo + threadIdx.x; local < hi; local += blockDim.x) {
    const unsigned long long c = packed(keys, start, local);
    if (c <= threshold) {
      const int64_t j = t.out_start[g] + static_cast<int64_t>(atomicAdd(&t.fill[g], 1ull));
      out_keys[j] = c;
      out_index[j] = start + local;
    }
  }
}

}  // namespace

void select_smallest_cuda(const char* op, const uint32_t* keys, const std::vector<int64_t>& offsets,
                                 const std::vector<int64_t>& ks, StableTensor& out, cudaStream_t stream) {
  const int64_t groups = static_cast<int64_t>(ks.size());
  const int64_t total = out.numel();
  if (total == 0) return;
  // Host table: start | length | out_start (G + 1) | remaining | tile_segment | tile_begin.
  std::vector<int64_t> table(4 * groups + 1);
  int64_t* start = table.data();
  int64_t* length = start + groups;
  int64_t* out_start = length + groups;
  int64_t* remaining = out_start + groups + 1;
  std::vector<int64_t> tile_segment, tile_begin;
  out_start[0] = 0;
  for (int64_t g = 0; g < groups; ++g) {
    start[g] = offsets[g];
    length[g] = offsets[g + 1] - offsets[g];
    out_start[g + 1] = out_start[g] + ks[g];
    remaining[g] = ks[g] - 1;
    if (ks[g] == 0) continue;
    for (int64_t b = 0; b < length[g]; b += kTile) {
      tile_segment.push_back(g);
      tile_begin.push_back(b);
    }
  }
  const int64_t tiles = static_cast<int64_t>(tile_segment.size());
  DD_CHECK(tiles < (int64_t{1} << 31), op, "too many elements: ", offsets.back());
  table.insert(table.end(), tile_segment.begin(), tile_segment.end());
  table.insert(table.end(), tile_begin.begin(), tile_begin.end());

  const int64_t counters = groups * (2 + kBins / 2);  // prefix, fill (8 bytes) and hist (4 bytes each)
  StableTensor dev_table = torch::stable::new_empty(out, {static_cast<int64_t>(table.size()) + counters},
                                                    ScalarType::Long);
  int64_t* d = dev_table.mutable_data_ptr<int64_t>();
  cudaMemcpyAsync(d, table.data(), table.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream);
  int64_t* d_counters = d + table.size();
  cudaMemsetAsync(d_counters, 0, counters * sizeof(int64_t), stream);
  SegmentTable t;
  t.start = d;
  t.length = d + groups;
  t.out_start = d + 2 * groups;
  t.remaining = d + 3 * groups + 1;
  t.tile_segment = d + 4 * groups + 1;
  t.tile_begin = t.tile_segment + tiles;
  t.prefix = reinterpret_cast<unsigned long long*>(d_counters);
  t.fill = t.prefix + groups;
  t.hist = reinterpret_cast<unsigned int*>(t.fill + groups);

  const unsigned choose_blocks = static_cast<unsigned>((groups + kThreads - 1) / kThreads);
  for (int pass = 0; pass < kPasses; ++pass) {
    histogram_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(keys, t, pass);
    choose_digit_kernel<<<choose_blocks, kThreads, 0, stream>>>(t, groups, pass);
  }
  StableTensor picked = torch::stable::new_empty(out, {3 * total}, ScalarType::Long);
  auto* picked_keys = reinterpret_cast<unsigned long long*>(picked.mutable_data_ptr<int64_t>());
  auto* sorted_keys = picked_keys + total;
  int64_t* picked_index = picked.mutable_data_ptr<int64_t>() + 2 * total;
  compact_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(keys, t, picked_keys, picked_index);
  check_launch(op);

  size_t temp_bytes = 0;
  cub::DeviceSegmentedSort::SortPairs(nullptr, temp_bytes, picked_keys, sorted_keys, picked_index,
                                      out.mutable_data_ptr<int64_t>(), total, groups, t.out_start, t.out_start + 1,
                                      stream);
  StableTensor temp = torch::stable::new_empty(out, {static_cast<int64_t>(temp_bytes) + 1}, ScalarType::Byte);
  const cudaError_t err = cub::DeviceSegmentedSort::SortPairs(
      temp.mutable_data_ptr(), temp_bytes, picked_keys, sorted_keys, picked_index, out.mutable_data_ptr<int64_t>(),
      total, groups, t.out_start, t.out_start + 1, stream);
  DD_CHECK(err == cudaSuccess, op, "CUB segmented sort failed: ", cudaGetErrorString(err));
}

}  // namespace sel
}  // namespace datadiet
