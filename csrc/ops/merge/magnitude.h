// The order magnitude pruning keeps weights in, shared by the CPU and CUDA kernels: the
// float32 magnitude's bit pattern (|x| ≥ 0, so unsigned order = numeric order; fp16/bf16
// widen exactly). Keys above kInfKey are NaN. The k-th largest key is found digit by digit,
// Bits at a time from the top, by counting histograms (32 / Bits streaming passes): 16-bit
// digits on CPU (per-thread histograms in cache), 8-bit on CUDA (shared-memory histograms).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace datadiet {
namespace merge {

constexpr uint32_t kInfKey = 0x7f800000u;

DD_HD uint32_t magnitude_key(float x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_int(x)) & 0x7fffffffu;
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits & 0x7fffffffu;
#endif
}

template <int Bits>
struct Digits {
  static constexpr int kBins = 1 << Bits;
  static constexpr int kPasses = 32 / Bits;

  // Digit of `pass` (0 = the top bits) and whether a key's higher digits equal `prefix`.
  DD_HD static uint32_t digit(uint32_t key, int pass) { return (key >> (32 - Bits * (pass + 1))) & (kBins - 1); }
  DD_HD static bool matches(uint32_t key, uint32_t prefix, int pass) {
    return pass == 0 || (key >> (32 - Bits * pass)) == prefix;
  }
};

// From a histogram of one digit (counts of keys sharing the prefix), the digit holding the
// `want`-th largest (want >= 1) and how many of the wanted lie above it: want -= above.
template <int Bins, typename Count>
DD_HD uint32_t choose_digit(const Count* hist, int64_t& want) {
  int64_t above = 0;
  for (int b = Bins - 1; b > 0; --b) {
    if (above + static_cast<int64_t>(hist[b]) >= want) {
      want -= above;
      return static_cast<uint32_t>(b);
    }
    above += static_cast<int64_t>(hist[b]);
  }
  want -= above;
  return 0;
}

}  // namespace merge
}  // namespace datadiet
