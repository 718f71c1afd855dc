// 16-float vectors for the CPU kernels: one AVX-512 register, two AVX2 ones. GCC/Clang
// vector extensions keep several running sums in registers (`omp simd reduction` keeps
// one, so a long reduction waits on the FMA latency).
#pragma once

#include <cstdint>
#include <cstring>

namespace datadiet {
namespace simd {

typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef double vd8 __attribute__((vector_size(64)));
typedef uint32_t vu16 __attribute__((vector_size(64)));  // float bit patterns
constexpr int kLanes = 16;

inline vf16 splat(float x) { return vf16{} + x; }

inline vf16 load16(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The bit patterns of 16 floats.
inline vu16 load_bits16(const float* p) {
  vu16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Whether any lane of a comparison result is set.
inline bool any(vu16 m) {
  uint32_t a = 0;
  for (int i = 0; i < kLanes; ++i) a |= m[i];
  return a != 0;
}

inline float hsum(vf16 v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// Σ x_t y_t with four independent vector accumulators (float32).
inline float dot(const float* x, const float* y, int64_t d) {
  vf16 a0{}, a1{}, a2{}, a3{};
  int64_t t = 0;
  for (; t + 4 * kLanes <= d; t += 4 * kLanes) {
    a0 += load16(x + t) * load16(y + t);
    a1 += load16(x + t + kLanes) * load16(y + t + kLanes);
    a2 += load16(x + t + 2 * kLanes) * load16(y + t + 2 * kLanes);
    a3 += load16(x + t + 3 * kLanes) * load16(y + t + 3 * kLanes);
  }
  for (; t + kLanes <= d; t += kLanes) a0 += load16(x + t) * load16(y + t);
  float s = hsum((a0 + a1) + (a2 + a3));
  for (; t < d; ++t) s += x[t] * y[t];
  return s;
}

// Σ x_t y_t in float64, four independent vector accumulators.
inline double dot(const double* x, const double* y, int64_t d) {
  auto load8 = [](const double* p) {
    vd8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  vd8 a0{}, a1{}, a2{}, a3{};
  int64_t t = 0;
  for (; t + 32 <= d; t += 32) {
    a0 += load8(x + t) * load8(y + t);
    a1 += load8(x + t + 8) * load8(y + t + 8);
    a2 += load8(x + t + 16) * load8(y + t + 16);
    a3 += load8(x + t + 24) * load8(y + t + 24);
  }
  for (; t + 8 <= d; t += 8) a0 += load8(x + t) * load8(y + t);
  const vd8 a = (a0 + a1) + (a2 + a3);
  double s = 0.0;
  for (int i = 0; i < 8; ++i) s += a[i];
  for (; t < d; ++t) s += x[t] * y[t];
  return s;
}

}  // namespace simd
}  // namespace datadiet
