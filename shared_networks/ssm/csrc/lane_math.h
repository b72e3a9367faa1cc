// Copyright (c) the shared_networks contributors.
// Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
// the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
// Lane-wise (SIMD) arithmetic shared by the CPU kernels: kLanes values of a type as one GCC/Clang vector, and the
// exp / log / softplus / sigmoid of such vectors. Each kernel file includes it into its own anonymous namespace.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// channels processed together (SIMD lanes) by the training kernels and in the Winograd convolution's channel layout
constexpr int64_t kLanes = 8;
// float lanes of one full vector register of the build's target: the forward-only token kernels of inference_cpu.cpp
// run this many channels together (AVX-512: 16, at the width oneDNN's own kernels use there)
#if defined(__AVX512F__)
constexpr int64_t kWideLanes = 16;
#else
constexpr int64_t kWideLanes = kLanes;
#endif

// Exponent range of exp_lanes for float: below the smallest normal / above the largest finite result.
constexpr float kExpMin = -87.3f;
constexpr float kExpMax = 88.3f;

// width values of acc_t as one GCC/Clang vector: lane-wise arithmetic compiles to SIMD instructions on any target.
// Heap buffers of them are aligned by hand (aligned_lanes) because std::vector does not honour vector alignment.
template <typename acc_t, int64_t width>
struct Lanes {
  typedef acc_t type __attribute__((vector_size(width * sizeof(acc_t)), may_alias));
};
template <typename acc_t, int64_t width = kLanes>
using LaneVec = typename Lanes<acc_t, width>::type;

// The first sizeof(LaneVec) - aligned address inside storage, which must hold one spare vector for the offset.
template <typename acc_t, int64_t width = kLanes>
LaneVec<acc_t, width>* aligned_lanes(std::vector<acc_t>& storage) {
  const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(storage.data());
  const std::uintptr_t alignment = sizeof(LaneVec<acc_t, width>);
  return reinterpret_cast<LaneVec<acc_t, width>*>((address + alignment - 1) / alignment * alignment);
}

// exp of a float vector of any width (a double vector takes the overload below)
template <typename Vec>
inline Vec exp_lanes(Vec x) {
  using IntVec = decltype(x < x);  // int32 lanes, as many as x has
  x = x < kExpMin ? Vec{} + kExpMin : x;
  x = x > kExpMax ? Vec{} + kExpMax : x;
  const Vec k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const Vec r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  Vec p = Vec{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const IntVec bits = (__builtin_convertvector(k, IntVec) + 127) << 23;
  Vec scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline LaneVec<double> exp_lanes(LaneVec<double> x) {
  for (int64_t j = 0; j < kLanes; ++j) x[j] = std::exp(x[j]);
  return x;
}

// log(x) for positive normal floats: exponent from the bits, Cephes' logf polynomial on the mantissa (about 1 ulp).
template <typename Vec>
inline Vec log_lanes(Vec x) {
  using IntVec = decltype(x < x);
  IntVec bits;
  std::memcpy(&bits, &x, sizeof(bits));
  Vec exponent = __builtin_convertvector(((bits >> 23) & 0xff) - 126, Vec);
  bits = (bits & 0x807fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  Vec m;
  std::memcpy(&m, &bits, sizeof(m));
  const auto below = m < 0.707106781186547524f;
  exponent = below ? exponent - 1.0f : exponent;
  m = below ? m + m - 1.0f : m - 1.0f;
  const Vec z = m * m;
  Vec p = Vec{} + 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  Vec y = p * m * z - 2.12194440e-4f * exponent - 0.5f * z;
  return m + y + 0.693359375f * exponent;
}

// softplus with torch's threshold 20, lane-wise: max(v, 0) + log1p(exp(-|v|)), log1p by Goldberg's
// log(s) * w / (s - 1) with s = 1 + w, which stays accurate for tiny w.
template <typename Vec>
inline Vec softplus_lanes(Vec v) {
  const Vec magnitude = v < 0.0f ? -v : v;
  const Vec w = exp_lanes(-magnitude);
  const Vec s = 1.0f + w;
  const Vec log1p_w = s == 1.0f ? w : log_lanes(s) * w / (s - 1.0f);
  const Vec result = (v > 0.0f ? v : Vec{}) + log1p_w;
  return v > 20.0f ? v : result;
}

template <typename acc_t>
inline acc_t softplus(acc_t v) {
  // torch.nn.functional.softplus with its default threshold 20, as mamba-ssm's kernels
  return v > acc_t(20) ? v : std::log1p(std::exp(v));
}

template <typename acc_t>
inline acc_t sigmoid(acc_t v) {
  return acc_t(1) / (acc_t(1) + std::exp(-v));
}

inline LaneVec<double> softplus_lanes(LaneVec<double> v) {
  for (int64_t j = 0; j < kLanes; ++j) v[j] = softplus(v[j]);
  return v;
}

template <typename Vec>
inline Vec sigmoid_lanes(Vec v) {
  return 1.0f / (1.0f + exp_lanes(-v));
}

inline LaneVec<double> sigmoid_lanes(LaneVec<double> v) {
  for (int64_t j = 0; j < kLanes; ++j) v[j] = sigmoid(v[j]);
  return v;
}

}  // namespace
