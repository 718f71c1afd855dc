// Per-element math of the selection ops (topk_select, weighted_sample,
// selective_backprop_keep_), shared by the CPU and CUDA kernels and mirrored
// line for line by kernels/select_common.py (Triton) and
// python/datadiet/reference/select.py (numpy) so every backend draws the same
// sample from the same seed.
//
// Ordering. Every selection is "the k smallest (key, index) pairs" on 32-bit
// unsigned keys: a float maps to a key whose unsigned order is the float order
// (flip all bits of negatives, set the sign bit of non-negatives), -0 is taken as
// +0, and NaN maps to 0xffffffff in either direction, i.e. NaN ranks after every
// number. Equal keys go to the lower index, so results are deterministic.
//
// Randomness. Philox4x32-10 (Salmon et al., SC'11), counter-based: the draw for
// element i under seed s is word i % 4 of philox(counter = (j_lo, j_hi, stream_lo,
// stream_hi), key = (s_lo, s_hi)) with j = i / 4, so no state is carried and any backend, any thread order,
// gets the same bits. A uniform u in (0, 1] takes the top 24 bits: u = (x>>8 + 1)/2^24,
// exactly representable.
//
// Exponential keys. Sampling k items without replacement with probabilities
// proportional to w_i, one after another, has the same law as taking the k smallest
// E_i / w_i with E_i ~ Exp(1) independent (Efraimidis & Spirakis 2006; the order of
// the keys is the order of the draws). E = -log(u). log is musl's logf written out
// with one rounding per + - * / (no fused multiply-add: CPU builds this file with
// -ffp-contract=off, CUDA with --fmad=false, Triton with enable_fp_fusion=False), and
// divisions are IEEE round-to-nearest everywhere, so the key bits agree across
// backends.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace datadiet {
namespace sel {

constexpr uint32_t kNanKey = 0xffffffffu;
constexpr uint32_t kInfKey = 0xff800000u;  // ordered_key(+inf, largest=false)

DD_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

DD_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Key whose unsigned order is ascending x (descending when largest), NaN last.
// Branch-free so CPU loops vectorise: negatives flip every bit, non-negatives set the
// sign bit; +inf -> 0xff800000, so only NaN gets 0xffffffff.
DD_HD uint32_t ordered_key(float x, bool largest) {
  uint32_t b = float_bits(x);
  b = b == 0x80000000u ? 0u : b;
  const uint32_t up = b ^ (static_cast<uint32_t>(static_cast<int32_t>(b) >> 31) | 0x80000000u);
  const uint32_t key = largest ? ~up : up;
  return (b & 0x7fffffffu) > 0x7f800000u ? kNanKey : key;
}

DD_HD uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32-10: the four output words for one counter.
struct Words4 {
  uint32_t w[4];
};

struct Philox {
  uint32_t c0, c1, c2, c3, k0, k1;
  DD_HD void round() {
    const uint32_t p0 = c0, p2 = c2;
    c0 = mulhi(0xCD9E8D57u, p2) ^ c1 ^ k0;
    c2 = mulhi(0xD2511F53u, p0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * p2;
    c3 = 0xD2511F53u * p0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
};

DD_HD Words4 philox4(uint64_t counter, uint64_t stream, uint64_t seed) {
  Philox p{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), static_cast<uint32_t>(stream),
           static_cast<uint32_t>(stream >> 32), static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  // Ten rounds written out: GCC vectorises the CPU key loop only without an inner loop.
  p.round(); p.round(); p.round(); p.round(); p.round();
  p.round(); p.round(); p.round(); p.round(); p.round();
  return Words4{{p.c0, p.c1, p.c2, p.c3}};
}

// Element i's random word: word i % 4 of the block for counter i / 4 (one Philox call
// serves four consecutive elements).
DD_HD uint32_t random_word(uint64_t i, uint64_t stream, uint64_t seed) {
  return philox4(i >> 2, stream, seed).w[i & 3];
}

// u in (0, 1]: the top 24 bits plus one, over 2^24 (exact in float).
DD_HD float uniform_open0(uint32_t bits) { return static_cast<float>((bits >> 8) + 1u) * 5.9604644775390625e-08f; }

DD_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// -log(u) for u in [2^-24, 1]: musl logf (max error < 1 ulp), evaluated in exactly
// this order by every backend. Argument reduction to x in [sqrt(2)/2, sqrt(2)),
// log(x) = f - f²/2 + s(f²/2 + R(s²)), s = f / (2 + f), f = x - 1.
DD_HD float neg_log(float u) {
  const float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;
  const float lg1 = 0.66666662693f, lg2 = 0.40000972152f, lg3 = 0.28498786688f, lg4 = 0.24279078841f;
  uint32_t ix = float_bits(u) + (0x3f800000u - 0x3f3504f3u);
  const int k = static_cast<int>(ix >> 23) - 0x7f;
  ix = (ix & 0x007fffffu) + 0x3f3504f3u;
  const float f = bits_float(ix) - 1.0f;
  const float s = div_rn(f, 2.0f + f);
  const float z = s * s;
  const float w = z * z;
  const float t1 = w * (lg2 + w * lg4);
  const float t2 = z * (lg1 + w * lg3);
  const float r = t2 + t1;
  const float hfsq = 0.5f * f * f;
  const float dk = static_cast<float>(k);
  const float log_u = s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
  return 0.0f - log_u;
}

// Ordered key of E / w for an element with random word `bits` (random_word(i, 0, seed)):
// the k smallest keys are a weighted sample without replacement, in draw order. Zero
// weight: +inf (never drawn while k does not exceed the positive-weight count, which
// the ops check).
DD_HD uint32_t exponential_key(float weight, uint32_t bits) {
  const float e = neg_log(uniform_open0(bits));
  const float safe = weight > 0.0f ? weight : 1.0f;  // divide unconditionally: no branch, vectorises
  const uint32_t key = ordered_key(div_rn(e, safe), false);
  return weight > 0.0f ? key : kInfKey;
}

// A ring-buffer state [next write position, filled count] for a history of `size`: the position
// inside it, and equal to the count until the ring is full. Anything else is a corrupt state.
DD_HD bool valid_ring_state(int64_t position, int64_t filled, int64_t size) {
  return position >= 0 && position < size && filled >= 0 && filled <= size && (filled == size || position == filled);
}

// Selective-Backprop (Jiang et al. 2019) coin flip: keep with probability
// percentile^beta, percentile = below / filled. Decided without pow, by
// u < p^β  <=>  -log u > β·(-log p); p = 0 never keeps unless β = 0.
DD_HD bool percentile_coin(uint32_t below, uint32_t filled, float beta, uint64_t i, uint64_t step, uint64_t seed) {
  if (beta == 0.0f) return true;
  if (below == 0u) return false;
  const float p = div_rn(static_cast<float>(below), static_cast<float>(filled));
  const float threshold = beta * neg_log(p);
  return neg_log(uniform_open0(random_word(i, step, seed))) > threshold;
}

}  // namespace sel
}  // namespace datadiet
