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
// Work is split with at::parallel_for (OpenMP). Both passes run kLanes channels of a group together, one per SIMD
// lane, so the recurrences are lane-wise. The forward can store the state at every kChunk-step boundary; the backward
// walks the chunks backwards, recomputes each chunk's states from the stored one and runs the reverse recurrence.
// Gradients of B and C, which the channels of a group share, are summed over the lanes and go to per-work-item
// partial buffers that are summed afterwards (no atomics, no races). The build adds -mavx2/-mfma (or AVX-512) flags
// matching the CPU, see cpp_scan.py.

#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "lane_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

// steps between stored states (the backward recomputes a chunk from the state before it)
constexpr int64_t kChunk = 256;
// the forward's steps per block of inputs; kChunk % kLaneChunk == 0
constexpr int64_t kLaneChunk = 64;

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
        // state index outer, steps inner: one state vector and its A stay in registers through the block while y
        // (in L1) collects C_t * h_t, summed over n in the same order as a step-by-step loop (same values)
        for (int64_t n = 0; n < N; ++n) {
          const Vec a_n = a[n];
          const acc_t* B_n = B_row + n * L + t0;
          const acc_t* C_n = C_row + n * L + t0;
          Vec h_n = h[n];
          for (int64_t t = 0; t < len; ++t) {
            h_n = exp_lanes(dt[t] * a_n) * h_n + du[t] * B_n[t];
            y[t] += C_n[t] * h_n;
          }
          h[n] = h_n;
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

template <typename acc_t>
inline acc_t lane_sum(LaneVec<acc_t> v) {
  acc_t sum = 0;
  for (int64_t j = 0; j < kLanes; ++j) sum += v[j];
  return sum;
}

static_assert(kLanes == 8, "lane_sums8 reduces 8 vectors of 8 lanes");

// {lane_sum(v[0]), lane_sum(v[stride]), ..., lane_sum(v[7 * stride])} by a shuffle tree (three rounds of pairwise
// sums) instead of eight horizontal sums.
template <typename acc_t>
inline LaneVec<acc_t> lane_sums8(const LaneVec<acc_t>* v, int64_t stride) {
  using Vec = LaneVec<acc_t>;
  Vec pairs[4], quads[2];
  for (int k = 0; k < 4; ++k) {
    const Vec x = v[2 * k * stride], y = v[(2 * k + 1) * stride];
    pairs[k] = __builtin_shufflevector(x, y, 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(x, y, 1, 9, 3, 11, 5, 13, 7, 15);
  }
  for (int k = 0; k < 2; ++k) {
    const Vec x = pairs[2 * k], y = pairs[2 * k + 1];
    quads[k] = __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
  }
  return __builtin_shufflevector(quads[0], quads[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(quads[0], quads[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// state indices per register block of the backward's reverse sweep
constexpr int64_t kStateBlock = 8;

template <typename acc_t>
struct SweepInputs {
  int64_t N, L, t0, len;
  const acc_t* B_row;
  const acc_t* C_row;
  const LaneVec<acc_t>* dy;
  const LaneVec<acc_t>* decay;   // (len, N)
  const LaneVec<acc_t>* states;  // (len, N)
  const LaneVec<acc_t>* start;   // (N): the state before the chunk
  const LaneVec<acc_t>* du;
  const LaneVec<acc_t>* dt;
};

// The reverse sweep over one chunk for the state indices [n0, n0 + count) (count == kNB when kNB > 0): carries the
// gradient of the state, adds the dA, dB, dC terms and the state indices' parts of ddt (through decay) and gB (through
// drive); the first block (n0 == 0) initialises ddt and gB.
template <typename acc_t, int kNB>
inline void reverse_sweep(const SweepInputs<acc_t>& in, int64_t n0, int64_t count, const LaneVec<acc_t>* a_state,
                          LaneVec<acc_t>* carry_state, LaneVec<acc_t>* dA_state, LaneVec<acc_t>* dB_sum,
                          LaneVec<acc_t>* dC_sum, LaneVec<acc_t>* ddt, LaneVec<acc_t>* gB) {
  using Vec = LaneVec<acc_t>;
  const int64_t NB = kNB > 0 ? kNB : count, N = in.N;
  Vec a[kStateBlock], carry[kStateBlock], dA[kStateBlock];
  for (int64_t k = 0; k < NB; ++k) {
    a[k] = a_state[n0 + k];
    carry[k] = carry_state[n0 + k];
    dA[k] = dA_state[n0 + k];
  }
  for (int64_t t = in.len - 1; t >= 0; --t) {
    const Vec* previous = t > 0 ? in.states + (t - 1) * N : in.start;
    const Vec dy_t = in.dy[t], du_t = in.du[t], dt_t = in.dt[t];
    Vec ddt_t = n0 == 0 ? Vec{} : ddt[t], gB_t = n0 == 0 ? Vec{} : gB[t];
    for (int64_t k = 0; k < NB; ++k) {
      const int64_t n = n0 + k, tn = t * N + n;
      const acc_t b_tn = in.B_row[n * in.L + in.t0 + t];
      const Vec decay_tn = in.decay[tn];
      const Vec gh = dy_t * in.C_row[n * in.L + in.t0 + t] + carry[k];
      const Vec w = gh * decay_tn * previous[n];
      dC_sum[tn] += dy_t * in.states[tn];
      dB_sum[tn] += gh * du_t;
      ddt_t += a[k] * w;
      dA[k] += w * dt_t;
      gB_t += gh * b_tn;
      carry[k] = gh * decay_tn;
    }
    ddt[t] = ddt_t;
    gB[t] = gB_t;
  }
  for (int64_t k = 0; k < NB; ++k) {
    carry_state[n0 + k] = carry[k];
    dA_state[n0 + k] = dA[k];
  }
}

// Backward pass, vectorised across channels like the forward. A work item is (batch, group, split); a split owns
// blocks of kLanes channels of the group and its own (N, L) slice: dB / dC[b, g] for split 0, dB_extra /
// dC_extra[b, g, split - 1] for the others (every element written, so none needs zeroing). It walks the
// chunks backwards; for each chunk every block recomputes its states lane-wise from the stored checkpoint and runs the
// reverse recurrence lane-wise (its carry, dA, dD and dbias sums persist across chunks). The gradients of B and C,
// shared by the group's channels, are summed over lanes and blocks in (len, N) vector buffers, and over the lanes once
// per chunk.
template <typename scalar_t, typename acc_t, int kN>
void backward_lanes(const ScanShape& s, int64_t splits, const scalar_t* dout, const scalar_t* u, const scalar_t* delta,
                    const scalar_t* z, const acc_t* A, const acc_t* B, const acc_t* C, const acc_t* D,
                    const acc_t* delta_bias, bool use_softplus, const acc_t* checkpoints, scalar_t* du,
                    scalar_t* ddelta, scalar_t* dz, acc_t* dA_partial, acc_t* dB, acc_t* dC, acc_t* dB_extra,
                    acc_t* dC_extra, acc_t* dD_partial, acc_t* dbias_partial) {
  const int64_t L = s.length, N = kN > 0 ? kN : s.n_state, dim_per_group = s.dim / s.groups;
  const int64_t blocks_per_group = (dim_per_group + kLanes - 1) / kLanes;
  const int64_t blocks_per_split = (blocks_per_group + splits - 1) / splits;
  at::parallel_for(0, s.batch * s.groups * splits, 1, [&](int64_t begin, int64_t end) {
    using Vec = LaneVec<acc_t>;
    // per block of the split: a, carry, dA (N each), dD and dbias sums (1 each); per chunk: decay, states, dB and dC
    // sums (kChunk x N each) and the step quantities (kChunk each)
    const int64_t per_block = 3 * N + 2;
    std::vector<acc_t> storage((blocks_per_split * per_block + 4 * kChunk * N + 8 * kChunk + N + 1) * kLanes,
                               acc_t(0));
    Vec* const block_state = aligned_lanes<acc_t>(storage);
    Vec* const decay = block_state + blocks_per_split * per_block;
    Vec* const states = decay + kChunk * N;
    Vec* const dB_sum = states + kChunk * N;
    Vec* const dC_sum = dB_sum + kChunk * N;
    Vec* const dt = dC_sum + kChunk * N;
    Vec* const dt_raw = dt + kChunk;
    Vec* const uu = dt_raw + kChunk;
    Vec* const du_t = uu + kChunk;
    Vec* const dy = du_t + kChunk;
    Vec* const zz = dy + kChunk;
    Vec* const ddt = zz + kChunk;
    Vec* const gB = ddt + kChunk;
    Vec* const start = gB + kChunk;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t split = item % splits, bg = item / splits, g = bg % s.groups, b = bg / s.groups;
      const int64_t block_begin = split * blocks_per_split;
      const int64_t block_end = std::min(block_begin + blocks_per_split, blocks_per_group);
      const acc_t* B_row = B + bg * N * L;
      const acc_t* C_row = C + bg * N * L;
      // split 0 writes the group's dB and dC themselves, the others their own slices of the extras
      const int64_t row_offset = (split == 0 ? bg : bg * (splits - 1) + split - 1) * N * L;
      acc_t* dB_row = (split == 0 ? dB : dB_extra) + row_offset;
      acc_t* dC_row = (split == 0 ? dC : dC_extra) + row_offset;
      if (block_begin >= block_end) {  // more splits than blocks: this one adds nothing
        std::fill(dB_row, dB_row + N * L, acc_t(0));
        std::fill(dC_row, dC_row + N * L, acc_t(0));
        continue;
      }
      std::fill(block_state, block_state + blocks_per_split * per_block, Vec{});
      for (int64_t block = block_begin; block < block_end; ++block) {
        Vec* const a = block_state + (block - block_begin) * per_block;
        const int64_t d0 = g * dim_per_group + block * kLanes;
        const int64_t lanes = std::min<int64_t>(kLanes, (g + 1) * dim_per_group - d0);
        for (int64_t j = 0; j < lanes; ++j)
          for (int64_t n = 0; n < N; ++n) a[n][j] = A[(d0 + j) * N + n];
      }
      for (int64_t c = s.n_chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * kChunk, len = std::min(kChunk, L - t0);
        std::fill(dB_sum, dB_sum + len * N, Vec{});
        std::fill(dC_sum, dC_sum + len * N, Vec{});
        for (int64_t block = block_begin; block < block_end; ++block) {
          Vec* const a = block_state + (block - block_begin) * per_block;
          Vec* const carry = a + N;
          Vec* const dA = carry + N;
          Vec& dD_lanes = dA[N];
          Vec& dbias_lanes = dA[N + 1];
          const int64_t d0 = g * dim_per_group + block * kLanes;
          const int64_t lanes = std::min<int64_t>(kLanes, (g + 1) * dim_per_group - d0);
          Vec bias{}, skip{};
          for (int64_t j = 0; j < lanes; ++j) {
            bias[j] = delta_bias ? delta_bias[d0 + j] : acc_t(0);
            skip[j] = D ? D[d0 + j] : acc_t(0);
          }
          // the block's inputs over the chunk, transposed to (t, lane); unused lanes stay zero (zero state, zero
          // gradients)
          if (lanes < kLanes) {
            for (int64_t t = 0; t < len; ++t) dt_raw[t] = uu[t] = dy[t] = zz[t] = Vec{};
            for (int64_t n = 0; n < N; ++n) start[n] = Vec{};
          }
          for (int64_t j = 0; j < lanes; ++j) {
            const int64_t row = b * s.dim + d0 + j, offset = row * L + t0;
            for (int64_t t = 0; t < len; ++t) {
              dt_raw[t][j] = static_cast<acc_t>(delta[offset + t]) + bias[j];
              uu[t][j] = static_cast<acc_t>(u[offset + t]);
              dy[t][j] = static_cast<acc_t>(dout[offset + t]);
            }
            if (z)
              for (int64_t t = 0; t < len; ++t) zz[t][j] = static_cast<acc_t>(z[offset + t]);
            const acc_t* h_start = checkpoints + (row * s.n_chunks + c) * N;
            for (int64_t n = 0; n < N; ++n) start[n][j] = h_start[n];
          }
          // recompute the chunk's states from its checkpoint (state index outer, as in the forward: the state
          // stays in a register along the steps)
          for (int64_t t = 0; t < len; ++t) {
            dt[t] = use_softplus ? softplus_lanes(dt_raw[t]) : dt_raw[t];
            du_t[t] = dt[t] * uu[t];
          }
          for (int64_t n = 0; n < N; ++n) {
            const Vec a_n = a[n];
            const acc_t* B_n = B_row + n * L + t0;
            Vec h_n = start[n];
            for (int64_t t = 0; t < len; ++t) {
              const Vec decay_tn = exp_lanes(dt[t] * a_n);
              decay[t * N + n] = decay_tn;
              h_n = decay_tn * h_n + du_t[t] * B_n[t];
              states[t * N + n] = h_n;
            }
          }
          // the gate: dz needs y before gating, and dy becomes the gradient of y
          if (z) {
            for (int64_t t = 0; t < len; ++t) {
              Vec y = skip * uu[t];
              for (int64_t n = 0; n < N; ++n) y += C_row[n * L + t0 + t] * states[t * N + n];
              const Vec sig = sigmoid_lanes(zz[t]);
              const Vec dz_t = dy[t] * y * sig * (acc_t(1) + zz[t] * (acc_t(1) - sig));
              dy[t] *= zz[t] * sig;
              for (int64_t j = 0; j < lanes; ++j)
                dz[(b * s.dim + d0 + j) * L + t0 + t] = static_cast<scalar_t>(dz_t[j]);
            }
          }
          // reverse recurrence g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}, with the gradients of every step, in blocks of
          // kStateBlock state indices whose a, carry and dA stay in registers
          {
            const SweepInputs<acc_t> in{N, L, t0, len, B_row, C_row, dy, decay, states, start, du_t, dt};
            for (int64_t n0 = 0; n0 < N; n0 += kStateBlock) {
              if (N - n0 >= kStateBlock)
                reverse_sweep<acc_t, kStateBlock>(in, n0, kStateBlock, a, carry, dA, dB_sum, dC_sum, ddt, gB);
              else
                reverse_sweep<acc_t, 0>(in, n0, N - n0, a, carry, dA, dB_sum, dC_sum, ddt, gB);
            }
          }
          for (int64_t t = 0; t < len; ++t) {
            dD_lanes += dy[t] * uu[t];
            Vec g_dt = ddt[t] + uu[t] * gB[t];
            if (use_softplus) g_dt *= sigmoid_lanes(dt_raw[t]);
            dbias_lanes += g_dt;
            const Vec du_value = dy[t] * skip + dt[t] * gB[t];
            ddt[t] = g_dt;
            gB[t] = du_value;
          }
          for (int64_t j = 0; j < lanes; ++j) {
            const int64_t offset = (b * s.dim + d0 + j) * L + t0;
            for (int64_t t = 0; t < len; ++t) {
              du[offset + t] = static_cast<scalar_t>(gB[t][j]);
              ddelta[offset + t] = static_cast<scalar_t>(ddt[t][j]);
            }
          }
        }
        for (int64_t n = 0; n < N; ++n) {
          int64_t t = 0;
          for (; t + kLanes <= len; t += kLanes) {
            const Vec db = lane_sums8<acc_t>(dB_sum + t * N + n, N), dc = lane_sums8<acc_t>(dC_sum + t * N + n, N);
            for (int64_t k = 0; k < kLanes; ++k) {
              dB_row[n * L + t0 + t + k] = db[k];
              dC_row[n * L + t0 + t + k] = dc[k];
            }
          }
          for (; t < len; ++t) {
            dB_row[n * L + t0 + t] = lane_sum<acc_t>(dB_sum[t * N + n]);
            dC_row[n * L + t0 + t] = lane_sum<acc_t>(dC_sum[t * N + n]);
          }
        }
      }
      for (int64_t block = block_begin; block < block_end; ++block) {
        const Vec* const dA = block_state + (block - block_begin) * per_block + 2 * N;
        const int64_t d0 = g * dim_per_group + block * kLanes;
        const int64_t lanes = std::min<int64_t>(kLanes, (g + 1) * dim_per_group - d0);
        for (int64_t j = 0; j < lanes; ++j) {
          const int64_t row = b * s.dim + d0 + j;
          for (int64_t n = 0; n < N; ++n) dA_partial[row * N + n] = dA[n][j];
          dD_partial[row] = dA[N][j];
          dbias_partial[row] = dA[N + 1][j];
        }
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
  const int64_t blocks_per_group = (s.dim / s.groups + kLanes - 1) / kLanes;
  const int64_t threads = at::get_num_threads();
  const int64_t splits = std::max<int64_t>(
      1, std::min<int64_t>(blocks_per_group, (threads + s.batch * s.groups - 1) / (s.batch * s.groups)));
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
  at::Tensor dz = z.has_value() ? at::empty_like(u) : at::empty({0}, u.options());
  at::Tensor dA_partial = at::empty({s.batch, s.dim, s.n_state}, acc_options);
  at::Tensor dD_partial = at::empty({s.batch, s.dim}, acc_options);
  at::Tensor dbias_partial = at::empty({s.batch, s.dim}, acc_options);
  at::Tensor dB = at::empty({s.batch, s.groups, s.n_state, s.length}, acc_options);
  at::Tensor dC = at::empty({s.batch, s.groups, s.n_state, s.length}, acc_options);
  at::Tensor dB_extra = at::empty({s.batch, s.groups, splits - 1, s.n_state, s.length}, acc_options);
  at::Tensor dC_extra = at::empty({s.batch, s.groups, splits - 1, s.n_state, s.length}, acc_options);
  SCAN_DISPATCH(u, s.n_state, "selective_scan_backward", [&] {
    backward_lanes<scalar_t, acc_t, kN>(
        s, splits, dout.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
        optional_ptr<scalar_t>(z), A.data_ptr<acc_t>(), B.data_ptr<acc_t>(), C.data_ptr<acc_t>(),
        optional_ptr<acc_t>(D), optional_ptr<acc_t>(delta_bias), delta_softplus, checkpoints.data_ptr<acc_t>(),
        du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(), z.has_value() ? dz.data_ptr<scalar_t>() : nullptr,
        dA_partial.data_ptr<acc_t>(), dB.data_ptr<acc_t>(), dC.data_ptr<acc_t>(), dB_extra.data_ptr<acc_t>(),
        dC_extra.data_ptr<acc_t>(), dD_partial.data_ptr<acc_t>(), dbias_partial.data_ptr<acc_t>());
  });
  if (splits == 2) {
    dB.add_(dB_extra.select(2, 0));
    dC.add_(dC_extra.select(2, 0));
  } else if (splits > 2) {
    dB.add_(dB_extra.sum(2));
    dC.add_(dC_extra.sum(2));
  }
  at::Tensor dA = dA_partial.sum(0);
  at::Tensor dD = D.has_value() ? dD_partial.sum(0) : at::empty({0}, acc_options);
  at::Tensor dbias = delta_bias.has_value() ? dbias_partial.sum(0) : at::empty({0}, acc_options);
  return {du, ddelta, dA, dB, dC, dD, dz, dbias};
}

// inference_cpu.cpp, built into the same extension
void register_inference_kernels(pybind11::module_& m);
void register_cpu_buffer_pool(pybind11::module_& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("checkpoint_chunk") = kChunk;
  m.def("forward", &selective_scan_forward, "selective scan forward (CPU)", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("save_checkpoints"));
  m.def("backward", &selective_scan_backward, "selective scan backward (CPU)", py::arg("dout"), py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("checkpoints"));
  register_inference_kernels(m);
  register_cpu_buffer_pool(m);
}
