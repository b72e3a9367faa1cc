// Copyright (c) the shared_networks contributors.
// Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
// the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
// Selective scan (S6) of Mamba on CPU: forward and backward.
//
// Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023 (arXiv:2312.00752), Alg. 2,
// with the layouts and semantics of mamba-ssm's selective_scan_fn:
//   u, delta, z, out : (batch, dim, L)   in scalar_t (float, double, half or bfloat16)
//   A                : (dim, N)          B, C : (batch, G, N, L)     D, delta_bias : (dim)   all in acc_t
//   h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t,  y_t = <C_t, h_t> + D * u_t,  out = y * silu(z)
// acc_t is float (double for double inputs): the state and every sum are kept in acc_t.
//
// Work is split with at::parallel_for (OpenMP). The forward pass runs kLanes channels of a group together, one per
// SIMD lane, so the whole recurrence is lane-wise; it can store the state at every kChunk-step boundary. The backward
// pass walks each (batch, channel) row backwards chunk by chunk: it recomputes the chunk's states from the stored
// one, with exponentials and inputs in (N, kChunk) buffers whose time axis is contiguous (those loops vectorise),
// and runs the reverse recurrence. Gradients of B and C, which the channels of a group share, go to
// per-work-item partial buffers that are summed afterwards (no atomics, no races). The build adds -mavx2/-mfma
// (or AVX-512) flags matching the CPU, see cpp_scan.py.

#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kChunk = 256;
// row stride of the (N, kChunk) buffers: padded so that the N rows do not all map to the same few cache sets
constexpr int64_t kStride = kChunk + 16;
// forward pass: channels processed together (SIMD lanes) and steps per block of exponentials; kChunk % kLaneChunk == 0
constexpr int64_t kLanes = 8;
constexpr int64_t kLaneChunk = 64;

// Exponent range of exp_inplace for float: below the smallest normal / above the largest finite result.
constexpr float kExpMin = -87.3f;
constexpr float kExpMax = 88.3f;

// exp(x) for float in [kExpMin, kExpMax]: Cody-Waite range reduction and the minimax polynomial of Cephes' expf
// (about 1 ulp), without branches or library calls so that loops over it vectorise. NaN stays NaN.
inline float exp_approx(float x) {
  // round-to-nearest through the 1.5 * 2^23 shifter (valid for |value| < 2^22, no floor/nearbyint call)
  const float shifter = 12582912.0f;
  const float k = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Clamps to [kExpMin, kExpMax] (results below the smallest normal float become 2^-126 instead of denormals), in a
// loop of its own: fused with the polynomial, GCC turns the clamp into branches and stops vectorising.
void exp_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] < kExpMin ? kExpMin : x[i];
    x[i] = v > kExpMax ? kExpMax : v;
  }
  for (int64_t i = 0; i < n; ++i) x[i] = exp_approx(x[i]);
}

void exp_inplace(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// kLanes values of acc_t as one GCC/Clang vector: lane-wise arithmetic compiles to SIMD instructions on any target.
// Heap buffers of them are aligned by hand (aligned_lanes) because std::vector does not honour vector alignment.
template <typename acc_t>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float)), may_alias));
};
template <>
struct Lanes<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double)), may_alias));
};
template <typename acc_t>
using LaneVec = typename Lanes<acc_t>::type;
typedef int32_t LaneIntVec
    __attribute__((vector_size(kLanes * sizeof(int32_t)), may_alias));

// The first sizeof(LaneVec) - aligned address inside storage, which must hold one spare vector for the offset.
template <typename acc_t>
LaneVec<acc_t>* aligned_lanes(std::vector<acc_t>& storage) {
  const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(storage.data());
  const std::uintptr_t alignment = sizeof(LaneVec<acc_t>);
  return reinterpret_cast<LaneVec<acc_t>*>((address + alignment - 1) / alignment * alignment);
}

inline LaneVec<float> exp_lanes(LaneVec<float> x) {
  x = x < kExpMin ? LaneVec<float>{} + kExpMin : x;
  x = x > kExpMax ? LaneVec<float>{} + kExpMax : x;
  const LaneVec<float> k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const LaneVec<float> r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  LaneVec<float> p = LaneVec<float>{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const LaneIntVec bits = (__builtin_convertvector(k, LaneIntVec) + 127) << 23;
  LaneVec<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline LaneVec<double> exp_lanes(LaneVec<double> x) {
  for (int64_t j = 0; j < kLanes; ++j) x[j] = std::exp(x[j]);
  return x;
}

// log(x) for positive normal floats: exponent from the bits, Cephes' logf polynomial on the mantissa (about 1 ulp).
inline LaneVec<float> log_lanes(LaneVec<float> x) {
  using Vec = LaneVec<float>;
  LaneIntVec bits;
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
inline LaneVec<float> softplus_lanes(LaneVec<float> v) {
  using Vec = LaneVec<float>;
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

// Per-chunk quantities of one (batch, channel) row: step sizes, exp(dt * A) and dt * B * u.
template <typename scalar_t, typename acc_t>
struct ChunkInputs {
  int64_t n_state;
  std::vector<acc_t> dt, dt_raw, du, decay, drive;

  explicit ChunkInputs(int64_t n)
      : n_state(n), dt(kChunk), dt_raw(kChunk), du(kChunk), decay(n * kStride), drive(n * kStride) {}

  // fills dt, du, decay[n][t] = exp(dt_t * A_n), drive[n][t] = dt_t * u_t * B[n][t] for t < len
  void compute(const scalar_t* u, const scalar_t* delta, const acc_t* A, const acc_t* B, int64_t stride_n, int64_t len,
               acc_t bias, bool use_softplus) {
    for (int64_t t = 0; t < len; ++t) {
      const acc_t v = static_cast<acc_t>(delta[t]) + bias;
      dt_raw[t] = v;
      dt[t] = use_softplus ? softplus(v) : v;
      du[t] = dt[t] * static_cast<acc_t>(u[t]);
    }
    for (int64_t n = 0; n < n_state; ++n) {
      acc_t* decay_n = decay.data() + n * kStride;
      acc_t* drive_n = drive.data() + n * kStride;
      const acc_t a = A[n];
      const acc_t* b = B + n * stride_n;
      for (int64_t t = 0; t < len; ++t) {
        decay_n[t] = dt[t] * a;
        drive_n[t] = du[t] * b[t];
      }
      exp_inplace(decay_n, len);
    }
  }
};

// states[n][t] = h_t for t < len, starting from state (updated to h_{len-1}); drive may alias states.
template <typename acc_t, int kN>
inline void recurrence(const acc_t* decay, const acc_t* drive, acc_t* states, acc_t* state, int64_t n_state,
                       int64_t len) {
  const int64_t N = kN > 0 ? kN : n_state;
  for (int64_t t = 0; t < len; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      const acc_t h = decay[n * kStride + t] * state[n] + drive[n * kStride + t];
      state[n] = h;
      states[n * kStride + t] = h;
    }
  }
}

struct ScanShape {
  int64_t batch, dim, length, n_state, groups, n_chunks;
};

ScanShape scan_shape(const at::Tensor& u, const at::Tensor& A, const at::Tensor& B) {
  ScanShape s;
  s.batch = u.size(0);
  s.dim = u.size(1);
  s.length = u.size(2);
  s.n_state = A.size(1);
  s.groups = B.size(1);
  s.n_chunks = (s.length + kChunk - 1) / kChunk;
  return s;
}

// Forward pass, vectorised across channels: a work item is a block of kLanes channels of one (batch, group), which
// share B and C, so every step updates a (N, kLanes) state with lane-wise operations only (no horizontal sums).
template <typename scalar_t, typename acc_t, int kN>
void forward_lanes(const ScanShape& s, const scalar_t* u, const scalar_t* delta, const scalar_t* z, const acc_t* A,
                   const acc_t* B, const acc_t* C, const acc_t* D, const acc_t* delta_bias, bool use_softplus,
                   scalar_t* out, acc_t* last_state, acc_t* checkpoints) {
  const int64_t L = s.length, N = kN > 0 ? kN : s.n_state, dim_per_group = s.dim / s.groups;
  const int64_t blocks_per_group = (dim_per_group + kLanes - 1) / kLanes;
  at::parallel_for(0, s.batch * s.groups * blocks_per_group, 1, [&](int64_t begin, int64_t end) {
    using Vec = LaneVec<acc_t>;
    std::vector<acc_t> storage((2 * N + 3 * kLaneChunk + 1) * kLanes, acc_t(0));
    Vec* const a = aligned_lanes<acc_t>(storage);
    Vec* const h = a + N;
    Vec* const dt = h + N;
    Vec* const du = dt + kLaneChunk;
    Vec* const y = du + kLaneChunk;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item % blocks_per_group, bg = item / blocks_per_group;
      const int64_t g = bg % s.groups, b = bg / s.groups;
      const int64_t d0 = g * dim_per_group + block * kLanes;
      const int64_t lanes = std::min<int64_t>(kLanes, (g + 1) * dim_per_group - d0);
      const acc_t* B_row = B + bg * N * L;
      const acc_t* C_row = C + bg * N * L;
      acc_t bias[kLanes], skip[kLanes];
      for (int64_t j = 0; j < kLanes; ++j) {
        const bool valid = j < lanes;
        bias[j] = valid && delta_bias ? delta_bias[d0 + j] : acc_t(0);
        skip[j] = valid && D ? D[d0 + j] : acc_t(0);
        for (int64_t n = 0; n < N; ++n) a[n][j] = valid ? A[(d0 + j) * N + n] : acc_t(0);
      }
      Vec skip_lanes;
      for (int64_t j = 0; j < kLanes; ++j) skip_lanes[j] = skip[j];
      for (int64_t n = 0; n < N; ++n) h[n] = Vec{};
      for (int64_t t0 = 0; t0 < L; t0 += kLaneChunk) {
        const int64_t len = std::min(kLaneChunk, L - t0);
        if (checkpoints && t0 % kChunk == 0) {
          for (int64_t j = 0; j < lanes; ++j)
            for (int64_t n = 0; n < N; ++n)
              checkpoints[(((b * s.dim + d0 + j) * s.n_chunks) + t0 / kChunk) * N + n] = h[n][j];
        }
        for (int64_t j = 0; j < lanes; ++j) {
          const int64_t offset = (b * s.dim + d0 + j) * L + t0;
          for (int64_t t = 0; t < len; ++t) {
            dt[t][j] = static_cast<acc_t>(delta[offset + t]) + bias[j];
            du[t][j] = static_cast<acc_t>(u[offset + t]);
          }
        }
        for (int64_t j = lanes; j < kLanes; ++j) {  // unused lanes: zero input, so their state stays zero
          for (int64_t t = 0; t < len; ++t) dt[t][j] = du[t][j] = acc_t(0);
        }
        for (int64_t t = 0; t < len; ++t) {
          if (use_softplus) dt[t] = softplus_lanes(dt[t]);
          y[t] = skip_lanes * du[t];
          du[t] *= dt[t];
        }
        for (int64_t t = 0; t < len; ++t) {
          const Vec dt_t = dt[t], du_t = du[t];
          Vec y_t = y[t];
          for (int64_t n = 0; n < N; ++n) {
            h[n] = exp_lanes(dt_t * a[n]) * h[n] + du_t * B_row[n * L + t0 + t];
            y_t += C_row[n * L + t0 + t] * h[n];
          }
          y[t] = y_t;
        }
        for (int64_t j = 0; j < lanes; ++j) {
          const int64_t offset = (b * s.dim + d0 + j) * L + t0;
          for (int64_t t = 0; t < len; ++t) {
            acc_t value = y[t][j];
            if (z) {
              const acc_t zt = static_cast<acc_t>(z[offset + t]);
              value *= zt * sigmoid(zt);
            }
            out[offset + t] = static_cast<scalar_t>(value);
          }
        }
      }
      for (int64_t j = 0; j < lanes; ++j)
        for (int64_t n = 0; n < N; ++n) last_state[(b * s.dim + d0 + j) * N + n] = h[n][j];
    }
  });
}

template <typename scalar_t, typename acc_t, int kN>
void backward_rows(const ScanShape& s, int64_t splits, const scalar_t* dout, const scalar_t* u, const scalar_t* delta,
                   const scalar_t* z, const acc_t* A, const acc_t* B, const acc_t* C, const acc_t* D,
                   const acc_t* delta_bias, bool use_softplus, const acc_t* checkpoints, scalar_t* du,
                   scalar_t* ddelta, scalar_t* dz, acc_t* dA_partial, acc_t* dB_partial, acc_t* dC_partial,
                   acc_t* dD_partial, acc_t* dbias_partial) {
  const int64_t L = s.length, N = s.n_state, dim_per_group = s.dim / s.groups;
  const int64_t dims_per_split = (dim_per_group + splits - 1) / splits;
  // work item (b, g, split): the channels [g * dim_per_group + split * dims_per_split, ...) of batch b, which add
  // their dB/dC into the private slice dB_partial[b, g, split]
  at::parallel_for(0, s.batch * s.groups * splits, 1, [&](int64_t begin, int64_t end) {
    ChunkInputs<scalar_t, acc_t> in(N);
    std::vector<acc_t> states(N * kStride), grad_h(N * kStride), state(N), carry(N);
    std::vector<acc_t> y(kChunk), dy(kChunk), ddt(kChunk), gB(kChunk), dA_row(N);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t split = item % splits, bg = item / splits, g = bg % s.groups, b = bg / s.groups;
      const int64_t d_begin = g * dim_per_group + split * dims_per_split;
      const int64_t d_end = std::min(d_begin + dims_per_split, (g + 1) * dim_per_group);
      const acc_t* B_row = B + bg * N * L;
      const acc_t* C_row = C + bg * N * L;
      acc_t* dB_row = dB_partial + item * N * L;
      acc_t* dC_row = dC_partial + item * N * L;
      for (int64_t d = d_begin; d < d_end; ++d) {
        const int64_t row = b * s.dim + d, offset = row * L;
        const acc_t bias = delta_bias ? delta_bias[d] : acc_t(0);
        const acc_t skip = D ? D[d] : acc_t(0);
        const acc_t* A_d = A + d * N;
        acc_t dD_sum = 0, dbias_sum = 0;
        std::fill(carry.begin(), carry.end(), acc_t(0));
        std::fill(dA_row.begin(), dA_row.end(), acc_t(0));
        for (int64_t c = s.n_chunks - 1; c >= 0; --c) {
          const int64_t t0 = c * kChunk, len = std::min(kChunk, L - t0);
          const acc_t* h_start = checkpoints + (row * s.n_chunks + c) * N;
          std::copy(h_start, h_start + N, state.begin());
          in.compute(u + offset + t0, delta + offset + t0, A_d, B_row + t0, L, len, bias, use_softplus);
          recurrence<acc_t, kN>(in.decay.data(), in.drive.data(), states.data(), state.data(), N, len);
          // gradient of y_t, and of z_t (needs y_t before gating)
          for (int64_t t = 0; t < len; ++t) dy[t] = static_cast<acc_t>(dout[offset + t0 + t]);
          if (z) {
            for (int64_t t = 0; t < len; ++t) y[t] = skip * static_cast<acc_t>(u[offset + t0 + t]);
            for (int64_t n = 0; n < N; ++n) {
              const acc_t* c_n = C_row + n * L + t0;
              const acc_t* h_n = states.data() + n * kStride;
              for (int64_t t = 0; t < len; ++t) y[t] += c_n[t] * h_n[t];
            }
            for (int64_t t = 0; t < len; ++t) {
              const acc_t zt = static_cast<acc_t>(z[offset + t0 + t]);
              const acc_t sig = sigmoid(zt);
              dz[offset + t0 + t] = static_cast<scalar_t>(dy[t] * y[t] * sig * (acc_t(1) + zt * (acc_t(1) - sig)));
              dy[t] *= zt * sig;
            }
          }
          // dC and the direct part of grad_h
          for (int64_t n = 0; n < N; ++n) {
            const acc_t* c_n = C_row + n * L + t0;
            const acc_t* h_n = states.data() + n * kStride;
            acc_t* dc_n = dC_row + n * L + t0;
            acc_t* gh_n = grad_h.data() + n * kStride;
            for (int64_t t = 0; t < len; ++t) {
              dc_n[t] += dy[t] * h_n[t];
              gh_n[t] = dy[t] * c_n[t];
            }
          }
          // reverse recurrence: g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}
          {
            const int64_t NN = kN > 0 ? kN : N;
            for (int64_t t = len - 1; t >= 0; --t) {
              for (int64_t n = 0; n < NN; ++n) {
                const acc_t gh = grad_h[n * kStride + t] + carry[n];
                grad_h[n * kStride + t] = gh;
                carry[n] = gh * in.decay[n * kStride + t];
              }
            }
          }
          // h_t = decay_t h_{t-1} + dt_t u_t B_t: gradients of dt, u, A, B
          std::fill(ddt.begin(), ddt.begin() + len, acc_t(0));
          std::fill(gB.begin(), gB.begin() + len, acc_t(0));
          for (int64_t n = 0; n < N; ++n) {
            const acc_t* gh_n = grad_h.data() + n * kStride;
            const acc_t* h_n = states.data() + n * kStride;
            const acc_t* decay_n = in.decay.data() + n * kStride;
            const acc_t* b_n = B_row + n * L + t0;
            acc_t* db_n = dB_row + n * L + t0;
            const acc_t a = A_d[n];
            acc_t da = 0;
            // t = 0 uses the chunk's start state as h_{t-1}
            {
              const acc_t w = gh_n[0] * decay_n[0] * h_start[n];
              ddt[0] += a * w;
              da += w * in.dt[0];
            }
            for (int64_t t = 1; t < len; ++t) {
              const acc_t w = gh_n[t] * decay_n[t] * h_n[t - 1];
              ddt[t] += a * w;
              da += w * in.dt[t];
            }
            for (int64_t t = 0; t < len; ++t) {
              gB[t] += gh_n[t] * b_n[t];
              db_n[t] += gh_n[t] * in.du[t];
            }
            dA_row[n] += da;
          }
          for (int64_t t = 0; t < len; ++t) {
            const acc_t ut = static_cast<acc_t>(u[offset + t0 + t]);
            dD_sum += dy[t] * ut;
            du[offset + t0 + t] = static_cast<scalar_t>(dy[t] * skip + in.dt[t] * gB[t]);
            acc_t g_dt = ddt[t] + ut * gB[t];
            if (use_softplus) g_dt *= sigmoid(in.dt_raw[t]);
            dbias_sum += g_dt;
            ddelta[offset + t0 + t] = static_cast<scalar_t>(g_dt);
          }
        }
        for (int64_t n = 0; n < N; ++n) dA_partial[row * N + n] = dA_row[n];
        dD_partial[row] = dD_sum;
        dbias_partial[row] = dbias_sum;
      }
    }
  });
}

template <typename scalar_t>
const scalar_t* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                  const std::optional<at::Tensor>& delta_bias) {
  const auto acc = u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(u.dim() == 3 && u.is_contiguous() && u.device().is_cpu(), "u must be a contiguous CPU (batch, dim, L)");
  TORCH_CHECK(delta.sizes() == u.sizes() && delta.is_contiguous() && delta.scalar_type() == u.scalar_type(),
              "delta must be contiguous and match u");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1) && A.is_contiguous() && A.scalar_type() == acc,
              "A must be a contiguous (dim, N) tensor in the accumulation dtype");
  for (const at::Tensor* t : {&B, &C}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == u.size(0) && t->size(2) == A.size(1) && t->size(3) == u.size(2) &&
                    u.size(1) % t->size(1) == 0 && t->size(1) == B.size(1) && t->is_contiguous() &&
                    t->scalar_type() == acc,
                "B and C must be contiguous (batch, G, N, L) tensors in the accumulation dtype");
  }
  for (const auto* t : {&D, &delta_bias}) {
    if (t->has_value())
      TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == u.size(1) && (*t)->is_contiguous() &&
                      (*t)->scalar_type() == acc,
                  "D and delta_bias must be contiguous (dim) tensors in the accumulation dtype");
  }
  if (z.has_value())
    TORCH_CHECK(z->sizes() == u.sizes() && z->is_contiguous() && z->scalar_type() == u.scalar_type(),
                "z must be contiguous and match u");
}

// Runs body.template operator()<scalar_t, acc_t, kN>() for u's dtype, with kN = 16 specialised.
#define SCAN_DISPATCH(u, n_state, NAME, ...)                                                      \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), NAME, [&] {        \
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;        \
    if (n_state == 16) {                                                                        \
      constexpr int kN = 16;                                                                    \
      __VA_ARGS__();                                                                            \
    } else {                                                                                    \
      constexpr int kN = 0;                                                                     \
      __VA_ARGS__();                                                                            \
    }                                                                                           \
  })

}  // namespace

// Returns {out, last_state, checkpoints}; checkpoints (batch, dim, n_chunks, N) holds the state before each chunk
// of kChunk steps when save_checkpoints, else it is empty.
std::vector<at::Tensor> selective_scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                               const at::Tensor& B, const at::Tensor& C,
                                               const std::optional<at::Tensor>& D,
                                               const std::optional<at::Tensor>& z,
                                               const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                                               bool save_checkpoints) {
  check_inputs(u, delta, A, B, C, D, z, delta_bias);
  const ScanShape s = scan_shape(u, A, B);
  const auto acc_options = A.options();
  at::Tensor out = at::empty_like(u);
  at::Tensor last_state = at::empty({s.batch, s.dim, s.n_state}, acc_options);
  at::Tensor checkpoints = save_checkpoints ? at::empty({s.batch, s.dim, s.n_chunks, s.n_state}, acc_options)
                                            : at::empty({0}, acc_options);
  SCAN_DISPATCH(u, s.n_state, "selective_scan_forward", [&] {
    forward_lanes<scalar_t, acc_t, kN>(s, u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                                      optional_ptr<scalar_t>(z), A.data_ptr<acc_t>(), B.data_ptr<acc_t>(),
                                      C.data_ptr<acc_t>(), optional_ptr<acc_t>(D), optional_ptr<acc_t>(delta_bias),
                                      delta_softplus, out.data_ptr<scalar_t>(), last_state.data_ptr<acc_t>(),
                                      save_checkpoints ? checkpoints.data_ptr<acc_t>() : nullptr);
  });
  return {out, last_state, checkpoints};
}

// Returns {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias}; du, ddelta, dz in u's dtype, the rest in the
// accumulation dtype; dD, dz, ddelta_bias are empty when D, z, delta_bias are absent.
std::vector<at::Tensor> selective_scan_backward(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                                const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                                const std::optional<at::Tensor>& D,
                                                const std::optional<at::Tensor>& z,
                                                const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                                                const at::Tensor& checkpoints) {
  check_inputs(u, delta, A, B, C, D, z, delta_bias);
  const ScanShape s = scan_shape(u, A, B);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "dout must be contiguous and match u");
  TORCH_CHECK(checkpoints.dim() == 4 && checkpoints.size(2) == s.n_chunks && checkpoints.is_contiguous(),
              "checkpoints must come from selective_scan_forward(save_checkpoints=True)");
  const auto acc_options = A.options();
  // enough work items for every thread, but no more partial dB/dC copies than needed
  const int64_t dim_per_group = s.dim / s.groups;
  const int64_t threads = at::get_num_threads();
  const int64_t splits = std::max<int64_t>(
      1, std::min<int64_t>(dim_per_group, (threads + s.batch * s.groups - 1) / (s.batch * s.groups)));
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
  at::Tensor dz = z.has_value() ? at::empty_like(u) : at::empty({0}, u.options());
  at::Tensor dA_partial = at::empty({s.batch, s.dim, s.n_state}, acc_options);
  at::Tensor dD_partial = at::empty({s.batch, s.dim}, acc_options);
  at::Tensor dbias_partial = at::empty({s.batch, s.dim}, acc_options);
  at::Tensor dB_partial = at::zeros({s.batch, s.groups, splits, s.n_state, s.length}, acc_options);
  at::Tensor dC_partial = at::zeros({s.batch, s.groups, splits, s.n_state, s.length}, acc_options);
  SCAN_DISPATCH(u, s.n_state, "selective_scan_backward", [&] {
    backward_rows<scalar_t, acc_t, kN>(
        s, splits, dout.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
        optional_ptr<scalar_t>(z), A.data_ptr<acc_t>(), B.data_ptr<acc_t>(), C.data_ptr<acc_t>(),
        optional_ptr<acc_t>(D), optional_ptr<acc_t>(delta_bias), delta_softplus, checkpoints.data_ptr<acc_t>(),
        du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(), z.has_value() ? dz.data_ptr<scalar_t>() : nullptr,
        dA_partial.data_ptr<acc_t>(), dB_partial.data_ptr<acc_t>(), dC_partial.data_ptr<acc_t>(),
        dD_partial.data_ptr<acc_t>(), dbias_partial.data_ptr<acc_t>());
  });
  at::Tensor dB = splits == 1 ? dB_partial.squeeze(2) : dB_partial.sum(2);
  at::Tensor dC = splits == 1 ? dC_partial.squeeze(2) : dC_partial.sum(2);
  at::Tensor dA = dA_partial.sum(0);
  at::Tensor dD = D.has_value() ? dD_partial.sum(0) : at::empty({0}, acc_options);
  at::Tensor dbias = delta_bias.has_value() ? dbias_partial.sum(0) : at::empty({0}, acc_options);
  return {du, ddelta, dA, dB, dC, dD, dz, dbias};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("checkpoint_chunk") = kChunk;
  m.def("forward", &selective_scan_forward, "selective scan forward (CPU)", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("save_checkpoints"));
  m.def("backward", &selective_scan_backward, "selective scan backward (CPU)", py::arg("dout"), py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("checkpoints"));
}
