// Copyright (c) the shared_networks contributors.
// Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
// the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
// CPU inference kernels on token-major and channels-last layouts, where channels are the innermost (contiguous)
// dimension, so that neighbouring channels are one vector load:
//
// - causal_conv1d_silu_tokens: Mamba's causal depthwise conv1d + SiLU over a sequence stored as (batch, L, dim)
//   rows, read in a scan order (row order[t] is step t of the sequence), written in that order;
// - selective_scan_tokens: the selective scan of selective_scan_cpu.cpp (same recurrence and semantics) on
//   (batch, L, dim) rows of u and delta and (batch, L, N) rows of B and C, in the scan order, with the gate z read from
//   and the result added to (or stored in) row order[t] of natural-order tensors, so the directions of a
//   multi-directional Mamba layer sum into one output without permuted copies; delta may be given as the low-rank
//   rows that Mamba's dt_proj multiplies, with dt_proj's weight;
// - instance_norm_channels_last(_): instance normalisation of a channels-last tensor without converting it to the
//   contiguous format (ATen's instance_norm does), statistics summed in double, into a new tensor or in place;
// - conv3d_winograd_channels_last: a 3x3x3 convolution (stride 1, zero padding 1) of a channels-last float32 volume by
//   Winograd's minimal filtering F(m x m x m, 3x3x3), m = 2 or 3 (Lavin & Gray, "Fast Algorithms for Convolutional
//   Neural Networks", CVPR 2016): 8 (m = 2) or 4.6 (m = 3) multiplications per output and input channel instead of
//   27. oneDNN has no 3D Winograd, and its direct 3D convolutions run at this CPU's GEMM rate, so fewer
//   multiplications are the only way to run faster.
//
// These are forward-only kernels: the networks call them when no gradient is needed and fall back to the
// differentiable ops otherwise (shared_networks.ssm.cpu_inference).

#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "lane_math.h"

namespace {

// sequence steps per block of the scan: every block of channels of a thread advances this far before the next
constexpr int64_t kStepBlock = 64;
// rows per work item of the convolution and the normalisation, and rows per partial sum of the statistics (fixed, so
// that the sums do not depend on the number of threads)
constexpr int64_t kRowBlock = 256;
constexpr int64_t kStatRows = 2048;

// Asks Linux to back the untouched output of a kernel with 2 MB pages where the system allows it on request
// (transparent_hugepage "madvise", a common default), as NumPy does for arrays of 4 MB or more: a fresh buffer of
// hundreds of MB otherwise costs one page fault per 4 KB on its first write, more than the kernel's own work. Only a
// hint; a refusal changes nothing.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t(1) << 21;
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  const std::uintptr_t end = begin + t.nbytes();
  const std::uintptr_t first = (begin + kHuge - 1) / kHuge * kHuge, last = end / kHuge * kHuge;
  if (t.nbytes() >= 2 * kHuge && last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

// count (at most width) values from p into a vector of width lanes, the rest zero
template <int64_t width = kLanes, typename T>
inline LaneVec<T, width> load_lanes(const T* p, int64_t count) {
  LaneVec<T, width> v{};
  if (count == width) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    for (int64_t j = 0; j < count; ++j) v[j] = p[j];
  }
  return v;
}

// the first count lanes of v to p
template <typename T, typename Vec>
inline void store_lanes(T* p, Vec v, int64_t count) {
  if (count * int64_t(sizeof(T)) == int64_t(sizeof(Vec))) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    for (int64_t j = 0; j < count; ++j) p[j] = v[j];
  }
}

template <typename Vec>
inline Vec silu_lanes(Vec v) {
  return v * sigmoid_lanes(v);
}

// channels per vector of the token kernels: a full register of floats (kWideLanes); doubles (the parity checks'
// dtype) keep kLanes
template <typename T>
constexpr int64_t kTokenLanes = std::is_same<T, float>::value ? kWideLanes : kLanes;

template <typename T>
const T* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// (batch, L, dim) with contiguous channels: the strides of a batch item and of a row, in elements
struct Rows {
  int64_t batch, row;
};

Rows rows_of(const at::Tensor& t, const char* name, int64_t batch, int64_t length, int64_t width) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(1) == length && t.size(2) == width,
              name, " must be (batch, L, ", width, ") = (", batch, ", ", length, ", ", width, "), got ", t.sizes());
  TORCH_CHECK(t.stride(2) == 1 || width == 1, name, " must have contiguous channels (stride 1 in its last dimension)");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  return {t.stride(0), t.stride(1)};
}

const int64_t* order_data(const std::optional<at::Tensor>& order, int64_t length) {
  if (!order.has_value()) return nullptr;
  TORCH_CHECK(order->dim() == 1 && order->size(0) == length && order->is_contiguous() &&
                  order->scalar_type() == at::kLong && order->device().is_cpu(),
              "order must be a contiguous int64 CPU tensor of length L = ", length, ", got ", order->sizes());
  return order->data_ptr<int64_t>();
}

template <typename T>
void conv_tokens(const T* x, Rows xs, const int64_t* order, const T* weight, const T* bias, T* out, int64_t batch,
                 int64_t length, int64_t dim, int64_t width) {
  constexpr int64_t kWidth = kTokenLanes<T>;
  const int64_t blocks = (length + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / blocks, t0 = (item % blocks) * kRowBlock;
      const int64_t t1 = std::min(length, t0 + kRowBlock);
      for (int64_t t = t0; t < t1; ++t) {
        T* out_row = out + (b * length + t) * dim;
        for (int64_t d0 = 0; d0 < dim; d0 += kWidth) {
          const int64_t lanes = std::min(kWidth, dim - d0);
          LaneVec<T, kWidth> acc = bias ? load_lanes<kWidth>(bias + d0, lanes) : LaneVec<T, kWidth>{};
          for (int64_t k = 0; k < width; ++k) {
            const int64_t step = t - (width - 1) + k;  // causal: taps on this step and the width - 1 before it
            if (step < 0) continue;
            const int64_t row = order ? order[step] : step;
            acc += load_lanes<kWidth>(weight + k * dim + d0, lanes) *
                   load_lanes<kWidth>(x + b * xs.batch + row * xs.row + d0, lanes);
          }
          store_lanes(out_row + d0, silu_lanes(acc), lanes);
        }
      }
    }
  });
}

// The scan of one direction. Threads own blocks of kTokenLanes channels (of one batch item) and advance all of theirs
// kStepBlock steps at a time, so the rows of B and C a step block reads are shared by the blocks while in cache.
// With delta_proj (dim, rank), delta holds rank values per step and a block's delta is delta_proj times them (Mamba's
// dt_proj, folded in: no (batch, L, dim) product is made, stored and read back).
template <typename T, int kN>
void scan_tokens(T* out, Rows os, const T* u, Rows us, const T* delta, Rows ds, const T* delta_proj, int64_t rank,
                 const T* A, const T* B, Rows bs, const T* C, Rows cs, const T* D, const T* z, Rows zs,
                 const T* delta_bias, bool use_softplus, const int64_t* order, bool accumulate, int64_t batch,
                 int64_t length, int64_t dim, int64_t n_state) {
  constexpr int64_t kWidth = kTokenLanes<T>;
  using Vec = LaneVec<T, kWidth>;
  const int64_t N = kN > 0 ? kN : n_state;
  const int64_t blocks = (dim + kWidth - 1) / kWidth;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t count = end - begin;
    const int64_t proj_rank = delta_proj ? rank : 0;
    // per owned block: a (N), state h (N), bias, skip, delta_proj's columns (proj_rank); one spare vector for the
    // alignment
    std::vector<T> storage((count * (2 * N + 2 + proj_rank) + 1) * kWidth, T(0));
    Vec* const a = aligned_lanes<T, kWidth>(storage);
    Vec* const h = a + count * N;
    Vec* const bias = h + count * N;
    Vec* const skip = bias + count;
    Vec* const proj = skip + count;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t d0 = ((begin + i) % blocks) * kWidth, lanes = std::min(kWidth, dim - d0);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t j = 0; j < lanes; ++j) a[i * N + n][j] = A[(d0 + j) * N + n];
      }
      for (int64_t r = 0; r < proj_rank; ++r) {
        for (int64_t j = 0; j < lanes; ++j) proj[i * proj_rank + r][j] = delta_proj[(d0 + j) * rank + r];
      }
      bias[i] = delta_bias ? load_lanes<kWidth>(delta_bias + d0, lanes) : Vec{};
      skip[i] = D ? load_lanes<kWidth>(D + d0, lanes) : Vec{};
    }
    for (int64_t t0 = 0; t0 < length; t0 += kStepBlock) {
      const int64_t t1 = std::min(length, t0 + kStepBlock);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t item = begin + i, b = item / blocks, d0 = (item % blocks) * kWidth;
        const int64_t lanes = std::min(kWidth, dim - d0);
        const Vec* a_i = a + i * N;
        const Vec* proj_i = proj + i * proj_rank;
        Vec* h_i = h + i * N;
        for (int64_t t = t0; t < t1; ++t) {
          const Vec u_t = load_lanes<kWidth>(u + b * us.batch + t * us.row + d0, lanes);
          const T* delta_t = delta + b * ds.batch + t * ds.row;
          Vec dt{};
          if (proj_rank > 0) {
            for (int64_t r = 0; r < proj_rank; ++r) dt += delta_t[r] * proj_i[r];
          } else {
            dt = load_lanes<kWidth>(delta_t + d0, lanes);
          }
          dt += bias[i];
          if (use_softplus) dt = softplus_lanes(dt);
          const Vec du = dt * u_t;
          const T* B_t = B + b * bs.batch + t * bs.row;
          const T* C_t = C + b * cs.batch + t * cs.row;
          Vec y = skip[i] * u_t;
          for (int64_t n = 0; n < N; ++n) {
            h_i[n] = exp_lanes(dt * a_i[n]) * h_i[n] + du * B_t[n];
            y += C_t[n] * h_i[n];
          }
          const int64_t row = order ? order[t] : t;
          if (z) y *= silu_lanes(load_lanes<kWidth>(z + b * zs.batch + row * zs.row + d0, lanes));
          T* out_t = out + b * os.batch + row * os.row + d0;
          store_lanes(out_t, accumulate ? load_lanes<kWidth>(out_t, lanes) + y : y, lanes);
        }
      }
    }
  });
}

void check_vector(const std::optional<at::Tensor>& t, const char* name, int64_t size, at::ScalarType dtype) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == size && t->is_contiguous() && t->scalar_type() == dtype &&
                  t->device().is_cpu(),
              name, " must be a contiguous CPU (", size, ") tensor of the input's dtype, got ", t->sizes());
}

}  // namespace

at::Tensor causal_conv1d_silu_tokens(const at::Tensor& x, const std::optional<at::Tensor>& order,
                                     const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 3, "x must be (batch, L, dim), got ", x.sizes());
  const int64_t batch = x.size(0), length = x.size(1), dim = x.size(2);
  const Rows xs = rows_of(x, "x", batch, length, dim);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == dim && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "weight must be a contiguous (width, dim) tensor of x's dtype, got ", weight.sizes());
  check_vector(bias, "bias", dim, x.scalar_type());
  const int64_t* order_ptr = order_data(order, length);
  at::Tensor out = at::empty({batch, length, dim}, x.options());
  advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_silu_tokens", [&] {
    conv_tokens<scalar_t>(x.data_ptr<scalar_t>(), xs, order_ptr, weight.data_ptr<scalar_t>(),
                          optional_data<scalar_t>(bias), out.data_ptr<scalar_t>(), batch, length, dim,
                          weight.size(0));
  });
  return out;
}

void selective_scan_tokens(at::Tensor& out, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                           const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                           const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                           bool delta_softplus, const std::optional<at::Tensor>& order, bool accumulate,
                           const std::optional<at::Tensor>& delta_proj) {
  TORCH_CHECK(u.dim() == 3, "u must be (batch, L, dim), got ", u.sizes());
  const int64_t batch = u.size(0), length = u.size(1), dim = u.size(2);
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "u must be float32 or float64");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.is_contiguous() && A.scalar_type() == dtype,
              "A must be a contiguous (dim, N) tensor of u's dtype, got ", A.sizes());
  const int64_t n_state = A.size(1);
  int64_t rank = dim;
  if (delta_proj.has_value()) {
    TORCH_CHECK(delta_proj->dim() == 2 && delta_proj->size(0) == dim && delta_proj->is_contiguous() &&
                    delta_proj->scalar_type() == dtype && delta_proj->device().is_cpu(),
                "delta_proj must be a contiguous CPU (dim, rank) tensor of u's dtype, dim = ", dim, ", got ",
                delta_proj->sizes());
    rank = delta_proj->size(1);
  }
  const Rows us = rows_of(u, "u", batch, length, dim), ds = rows_of(delta, "delta", batch, length, rank);
  const Rows bs = rows_of(B, "B", batch, length, n_state), cs = rows_of(C, "C", batch, length, n_state);
  const Rows os = rows_of(out, "out", batch, length, dim);
  const Rows zs = z.has_value() ? rows_of(*z, "z", batch, length, dim) : Rows{0, 0};
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&out, &delta, &B, &C}) {
    TORCH_CHECK(t->scalar_type() == dtype, "out, delta, B and C must have u's dtype");
  }
  TORCH_CHECK(!z.has_value() || z->scalar_type() == dtype, "z must have u's dtype");
  check_vector(D, "D", dim, dtype);
  check_vector(delta_bias, "delta_bias", dim, dtype);
  const int64_t* order_ptr = order_data(order, length);
  AT_DISPATCH_FLOATING_TYPES(dtype, "selective_scan_tokens", [&] {
    auto run = [&](auto n_tag) {
      constexpr int kN = decltype(n_tag)::value;
      scan_tokens<scalar_t, kN>(out.data_ptr<scalar_t>(), os, u.data_ptr<scalar_t>(), us,
                                delta.data_ptr<scalar_t>(), ds, optional_data<scalar_t>(delta_proj), rank,
                                A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), bs,
                                C.data_ptr<scalar_t>(), cs, optional_data<scalar_t>(D),
                                z.has_value() ? z->data_ptr<scalar_t>() : nullptr, zs,
                                optional_data<scalar_t>(delta_bias), delta_softplus, order_ptr, accumulate, batch,
                                length, dim, n_state);
    };
    if (n_state == 16) {
      run(std::integral_constant<int, 16>{});  // Mamba's default state size, unrolled
    } else {
      run(std::integral_constant<int, 0>{});
    }
  });
}

at::MemoryFormat check_instance_norm_input(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5, "x must be (batch, channels, *spatial) with 2 or 3 spatial dimensions");
  const auto format = x.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(x.is_contiguous(format) && x.device().is_cpu(), "x must be a channels-last contiguous CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64");
  check_vector(weight, "weight", x.size(1), x.scalar_type());
  check_vector(bias, "bias", x.size(1), x.scalar_type());
  return format;
}

// Normalises x into out (the same shape and layout; out may be x itself: each value is read before its own write).
void normalise_channels_last(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, double eps) {
  const int64_t batch = x.size(0), channels = x.size(1), positions = x.numel() / std::max<int64_t>(1, batch * channels);
  if (x.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "instance_norm_channels_last", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* result = out.data_ptr<scalar_t>();
    const scalar_t* w = optional_data<scalar_t>(weight);
    const scalar_t* b = optional_data<scalar_t>(bias);
    const int64_t parts = (positions + kStatRows - 1) / kStatRows;
    std::vector<double> sums(parts * 2 * channels);
    // out = (x - mean) * scale + beta, in double: a float32 mean or x * scale + shift in float32 would lose the
    // normalised values' digits when the mean is large against the spread
    std::vector<double> means(batch * channels), scale(batch * channels), beta(batch * channels);
    for (int64_t item = 0; item < batch; ++item) {
      const scalar_t* x_b = in + item * positions * channels;
      // sums and sums of squares of each part of the positions, then of the parts in order (deterministic), of the
      // values minus the channel's first value: the shift keeps the variance exact when it is small against the mean
      const scalar_t* shift_by = x_b;
      at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
        for (int64_t part = begin; part < end; ++part) {
          double* s1 = sums.data() + part * 2 * channels;
          double* s2 = s1 + channels;
          std::fill(s1, s1 + 2 * channels, 0.0);
          const int64_t r1 = std::min(positions, (part + 1) * kStatRows);
          for (int64_t r = part * kStatRows; r < r1; ++r) {
            const scalar_t* row = x_b + r * channels;
            for (int64_t c = 0; c < channels; ++c) {
              const double v = static_cast<double>(row[c]) - static_cast<double>(shift_by[c]);
              s1[c] += v;
              s2[c] += v * v;
            }
          }
        }
      });
      for (int64_t c = 0; c < channels; ++c) {
        double s1 = 0.0, s2 = 0.0;
        for (int64_t part = 0; part < parts; ++part) {
          s1 += sums[part * 2 * channels + c];
          s2 += sums[part * 2 * channels + channels + c];
        }
        const double shifted_mean = s1 / positions;
        const double var = std::max(0.0, s2 / positions - shifted_mean * shifted_mean);
        const double mean = shifted_mean + static_cast<double>(shift_by[c]);
        const double invstd = 1.0 / std::sqrt(var + eps);
        means[item * channels + c] = mean;
        scale[item * channels + c] = invstd * (w ? static_cast<double>(w[c]) : 1.0);
        beta[item * channels + c] = b ? static_cast<double>(b[c]) : 0.0;
      }
    }
    const int64_t blocks = (positions + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, r0 = (item % blocks) * kRowBlock, r1 = std::min(positions, r0 + kRowBlock);
        const double* mean = means.data() + n * channels;
        const double* alpha = scale.data() + n * channels;
        const double* offset_by = beta.data() + n * channels;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t offset = (n * positions + r) * channels;
          for (int64_t c = 0; c < channels; ++c) {
            const double v = (static_cast<double>(in[offset + c]) - mean[c]) * alpha[c] + offset_by[c];
            result[offset + c] = static_cast<scalar_t>(v);
          }
        }
      }
    });
  });
}

at::Tensor instance_norm_channels_last(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double eps) {
  at::Tensor out = at::empty_like(x, x.options(), check_instance_norm_input(x, weight, bias));
  advise_huge_pages(out);
  normalise_channels_last(x, out, weight, bias, eps);
  return out;
}

void instance_norm_channels_last_(at::Tensor& x, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps) {
  check_instance_norm_input(x, weight, bias);
  normalise_channels_last(x, x, weight, bias, eps);
}

// ---- Winograd F(m x m x m, 3x3x3), m = 2 or 3 ----
// One tile = m^3 outputs, computed from the n^3 inputs around them (n = m + 2). Per tile and channel, the input is
// transformed by B^T along each axis (n^3 values), multiplied position by position with the transformed weights
// U = G g G^T (n^3 matrices of (in_channels, out_channels), made once per weight by the caller), and the n^3 products
// are reduced by A^T along each axis to the m^3 outputs (Lavin & Gray's construction on the points 0, 1, -1 (m = 2)
// and 0, 1, -1, 1/2 (m = 3), each with infinity):
//   m = 2: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
//          A^T = [1 1 1 0; 0 1 -1 -1];
//   m = 3: B^T = [1/2 -1 -1/2 1 0; 0 -1/2 1/2 1 0; 0 1/2 -3/2 1 0; 0 -1 0 1 0; 0 1/2 -1 -1/2 1],
//          G = [2 0 0; 1 1 1; -1/3 1/3 -1/3; -8/3 -4/3 -2/3; 0 0 1],  A^T = [1 1 1 1 0; 0 1 -1 1/2 0; 0 1 1 1/4 1].
// m = 3 needs 125 products per 27 outputs instead of 64 per 8 (1.73x fewer); its float32 error is about 15x F(2)'s
// (about 7e-6 of the largest output against 5e-7), still far below what a network's output tolerates.
// Work items are blocks of tiles: transform their inputs into V (tile, position, in_channels), multiply into M (tile,
// position, out_channels), transform M into the output. A block's V and M stay in the caches of the core that made
// them; the multiplication keeps a block of 6 tiles x kProductVectors vectors of results in vector registers, in
// full-register vectors (kWideLanes floats: 16 on AVX-512, where 8-float vectors would run it at half the width
// oneDNN's own convolutions use).
constexpr int64_t kProductRows = 6;

using FloatLanes = LaneVec<float>;
using WideLanes = LaneVec<float, kWideLanes>;

// s in every lane of a vector, written out lane by lane so that the compiler loads it straight into all lanes (one
// vbroadcastss from memory; "Vec{} + s" costs a scalar add first, which slowed the product by a third)
template <typename Vec>
inline Vec broadcast(float s);
template <>
inline FloatLanes broadcast<FloatLanes>(float s) {
  static_assert(kLanes == 8, "8 lanes");
  return FloatLanes{s, s, s, s, s, s, s, s};
}
#if defined(__AVX512F__)
template <>
inline WideLanes broadcast<WideLanes>(float s) {
  static_assert(kWideLanes == 16, "16 lanes");
  return WideLanes{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
}
#endif

// B^T of F(m, 3) on the n = m + 2 values v[0], v[s], ..., in place
template <int64_t m, typename Vec>
inline void winograd_input_1d(Vec* v, int64_t s) {
  if constexpr (m == 2) {
    const Vec r0 = v[0], r1 = v[s], r2 = v[2 * s], r3 = v[3 * s];
    v[0] = r0 - r2;
    v[s] = r1 + r2;
    v[2 * s] = r2 - r1;
    v[3 * s] = r1 - r3;
  } else {
    static_assert(m == 3, "F(2, 3) or F(3, 3)");
    const Vec r0 = v[0], r1 = v[s], r2 = v[2 * s], r3 = v[3 * s], r4 = v[4 * s];
    const Vec half = broadcast<Vec>(0.5f);
    const Vec h12 = half * (r1 - r2);
    v[0] = half * (r0 - r2) - r1 + r3;
    v[s] = r3 - h12;
    v[2 * s] = h12 - r2 + r3;
    v[3 * s] = r3 - r1;
    v[4 * s] = half * (r1 - r3) - r2 + r4;
  }
}

// A^T of F(m, 3): the n = m + 2 values p[0], p[s], ... reduced to the m values o[0], o[t], ...
template <int64_t m, typename Vec>
inline void winograd_output_1d(const Vec* p, int64_t s, Vec* o, int64_t t) {
  if constexpr (m == 2) {
    const Vec m0 = p[0], m1 = p[s], m2 = p[2 * s], m3 = p[3 * s];
    o[0] = m0 + m1 + m2;
    o[t] = m1 - m2 - m3;
  } else {
    static_assert(m == 3, "F(2, 3) or F(3, 3)");
    const Vec m0 = p[0], m1 = p[s], m2 = p[2 * s], m3 = p[3 * s], m4 = p[4 * s];
    o[0] = m0 + m1 + m2 + m3;
    o[t] = m1 - m2 + broadcast<Vec>(0.5f) * m3;
    o[2 * t] = m1 + m2 + broadcast<Vec>(0.25f) * m3 + m4;
  }
}

// The tile's n^3 inputs from (z0, y0, x0) on (zero outside the volume), channels c0 .. c0 + count (count at most
// Vec's lanes), transformed by B^T along x, y and z, stored at v[p * ldv] for each position p = (a * n + b) * n + e.
template <int64_t m, typename Vec>
inline void winograd_input_tile(const float* x, int64_t D, int64_t H, int64_t W, int64_t C, int64_t z0, int64_t y0,
                                int64_t x0, int64_t c0, int64_t count, float* v, int64_t ldv) {
  constexpr int64_t n = m + 2, width = sizeof(Vec) / sizeof(float);
  Vec d[n * n * n];
  for (int64_t a = 0; a < n; ++a) {
    for (int64_t b = 0; b < n; ++b) {
      const int64_t z = z0 + a, y = y0 + b;
      Vec* r = d + (a * n + b) * n;
      if (z >= 0 && z < D && y >= 0 && y < H) {
        const float* row = x + (z * H + y) * W * C + c0;
        for (int64_t e = 0; e < n; ++e) {
          const int64_t xe = x0 + e;
          r[e] = xe >= 0 && xe < W ? load_lanes<width>(row + xe * C, count) : Vec{};
        }
      } else {
        for (int64_t e = 0; e < n; ++e) r[e] = Vec{};
      }
      winograd_input_1d<m>(r, 1);
    }
  }
  for (int64_t a = 0; a < n; ++a) {
    for (int64_t e = 0; e < n; ++e) winograd_input_1d<m>(d + a * n * n + e, n);
  }
  for (int64_t i = 0; i < n * n; ++i) winograd_input_1d<m>(d + i, n * n);
  for (int64_t p = 0; p < n * n * n; ++p) store_lanes(v + p * ldv, d[p], width);
}

// out[r][:] = sum_c a[r * lda + c] * b[c * ldb + :] for kProductRows rows and kVectors vectors of columns
template <typename Vec, int64_t kVectors>
inline void winograd_product_block(const float* a, int64_t lda, const float* b, int64_t ldb, float* out, int64_t ldo,
                                   int64_t depth) {
  constexpr int64_t width = sizeof(Vec) / sizeof(float);
  Vec acc[kProductRows][kVectors];
#pragma GCC unroll 8
  for (int64_t r = 0; r < kProductRows; ++r) {
#pragma GCC unroll 4
    for (int64_t j = 0; j < kVectors; ++j) acc[r][j] = Vec{};
  }
  for (int64_t c = 0; c < depth; ++c) {
    Vec column[kVectors];
#pragma GCC unroll 4
    for (int64_t j = 0; j < kVectors; ++j) std::memcpy(&column[j], b + c * ldb + j * width, sizeof(Vec));
#pragma GCC unroll 8
    for (int64_t r = 0; r < kProductRows; ++r) {
      const Vec s = broadcast<Vec>(a[r * lda + c]);
#pragma GCC unroll 4
      for (int64_t j = 0; j < kVectors; ++j) acc[r][j] += s * column[j];
    }
  }
#pragma GCC unroll 8
  for (int64_t r = 0; r < kProductRows; ++r) {
#pragma GCC unroll 4
    for (int64_t j = 0; j < kVectors; ++j) std::memcpy(out + r * ldo + j * width, &acc[r][j], sizeof(Vec));
  }
}

// Vectors of results per product block: as many as the vector registers hold beside the column and the broadcast
// operand (AVX-512's 32 registers hold 6 x 3, AVX2's 16 hold 6 x 2).
constexpr int64_t kProductVectors = kWideLanes > kLanes ? 3 : 2;

// the products of kProductRows rows of a by all K columns of b: blocks of kProductVectors wide vectors, then narrower
// blocks for what is left (K is a multiple of kLanes)
inline void winograd_product_rows(const float* a, int64_t lda, const float* b, int64_t ldb, float* out, int64_t ldo,
                                  int64_t depth, int64_t K) {
  int64_t k0 = 0;
  for (; k0 + kProductVectors * kWideLanes <= K; k0 += kProductVectors * kWideLanes) {
    winograd_product_block<WideLanes, kProductVectors>(a, lda, b + k0, ldb, out + k0, ldo, depth);
  }
  if (kProductVectors > 2 && k0 + 2 * kWideLanes <= K) {
    winograd_product_block<WideLanes, 2>(a, lda, b + k0, ldb, out + k0, ldo, depth);
    k0 += 2 * kWideLanes;
  }
  for (; k0 + kWideLanes <= K; k0 += kWideLanes) {
    winograd_product_block<WideLanes, 1>(a, lda, b + k0, ldb, out + k0, ldo, depth);
  }
  for (; k0 < K; k0 += kLanes) winograd_product_block<FloatLanes, 1>(a, lda, b + k0, ldb, out + k0, ldo, depth);
}

// A tile's n^3 products of output channels k0 .. k0 + Vec's lanes (position p at mp + p * K) reduced by A^T along x,
// y and z, plus the bias, stored into its m^3 outputs of the (D, H, W, K) volume out that lie inside it.
template <int64_t m, typename Vec>
inline void winograd_output_tile(const float* mp, int64_t K, const float* bias, float* out, int64_t D, int64_t H,
                                 int64_t W, int64_t z0, int64_t y0, int64_t x0) {
  constexpr int64_t n = m + 2, width = sizeof(Vec) / sizeof(float);
  Vec row[n], s[n * n * m], u[n * m * m], y[m * m * m];
  for (int64_t i = 0; i < n * n; ++i) {  // (z, y, x) -> (z, y, x')
    for (int64_t e = 0; e < n; ++e) row[e] = load_lanes<width>(mp + (i * n + e) * K, width);
    winograd_output_1d<m>(row, 1, s + i * m, 1);
  }
  for (int64_t a = 0; a < n; ++a) {  // -> (z, y', x')
    for (int64_t e = 0; e < m; ++e) winograd_output_1d<m>(s + a * n * m + e, m, u + a * m * m + e, m);
  }
  for (int64_t i = 0; i < m * m; ++i) winograd_output_1d<m>(u + i, m * m, y + i, m * m);  // -> (z', y', x')
  const Vec b = bias ? load_lanes<width>(bias, width) : Vec{};
  for (int64_t a = 0; a < m && z0 + a < D; ++a) {
    for (int64_t c = 0; c < m && y0 + c < H; ++c) {
      for (int64_t e = 0; e < m && x0 + e < W; ++e) {
        store_lanes(out + (((z0 + a) * H + y0 + c) * W + x0 + e) * K, y[(a * m + c) * m + e] + b, width);
      }
    }
  }
}

// Tiles per work item. Each block reads all the transformed weights U once, and writes and reads its V and M: few
// channels want small blocks whose V and M stay in L2 (48 x 48 channels by F(3): 0.82 s in blocks of 12 tiles, 0.90 s
// in blocks of 48, at 128^3 on 2 cores), many channels want U read by fewer blocks (384 x 192: 0.74 s against 0.43 s).
inline int64_t winograd_block_tiles(int64_t in_channels, int64_t out_channels) {
  return in_channels * out_channels <= 96 * 96 ? 12 : 48;
}

// tile number -> (batch item, tile position along z, y, x), tiles numbered x fastest
struct WinogradTile {
  int64_t n, z, y, x;
};

inline WinogradTile winograd_tile(int64_t index, int64_t tD, int64_t tH, int64_t tW) {
  return {index / (tW * tH * tD), (index / (tW * tH)) % tD, (index / tW) % tH, index % tW};
}

template <int64_t m>
void winograd_conv3d(const float* xp, const float* up, const float* bp, float* op, int64_t N, int64_t C, int64_t Cp,
                     int64_t K, int64_t D, int64_t H, int64_t W) {
  constexpr int64_t n = m + 2, positions = n * n * n;
  const int64_t tD = (D + m - 1) / m, tH = (H + m - 1) / m, tW = (W + m - 1) / m, tiles = N * tD * tH * tW;
  const int64_t block_tiles = winograd_block_tiles(Cp, K);
  const int64_t blocks = (tiles + block_tiles - 1) / block_tiles;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // zero-filled once, so the padding rows of a last, partial block hold finite values
    std::vector<float> v_store(block_tiles * positions * Cp, 0.f), m_store(block_tiles * positions * K, 0.f);
    float* V = v_store.data();
    float* M = m_store.data();
    for (int64_t block = begin; block < end; ++block) {
      const int64_t t0 = block * block_tiles, count = std::min(block_tiles, tiles - t0);
      for (int64_t t = 0; t < count; ++t) {
        const WinogradTile tile = winograd_tile(t0 + t, tD, tH, tW);
        const float* xn = xp + tile.n * D * H * W * C;
        const int64_t z0 = m * tile.z - 1, y0 = m * tile.y - 1, x0 = m * tile.x - 1;
        float* v = V + t * positions * Cp;
        int64_t c0 = 0;
        for (; c0 + kWideLanes <= Cp; c0 += kWideLanes) {
          winograd_input_tile<m, WideLanes>(xn, D, H, W, C, z0, y0, x0, c0, std::min(kWideLanes, C - c0), v + c0, Cp);
        }
        for (; c0 < Cp; c0 += kLanes) {
          winograd_input_tile<m, FloatLanes>(xn, D, H, W, C, z0, y0, x0, c0, std::min(kLanes, C - c0), v + c0, Cp);
        }
      }
      const int64_t rows = (count + kProductRows - 1) / kProductRows * kProductRows;
      for (int64_t p = 0; p < positions; ++p) {
        const float* u = up + p * Cp * K;
        for (int64_t r0 = 0; r0 < rows; r0 += kProductRows) {
          const float* a = V + (r0 * positions + p) * Cp;
          float* mr = M + (r0 * positions + p) * K;
          winograd_product_rows(a, positions * Cp, u, K, mr, positions * K, Cp, K);
        }
      }
      for (int64_t t = 0; t < count; ++t) {
        const WinogradTile tile = winograd_tile(t0 + t, tD, tH, tW);
        const int64_t z0 = m * tile.z, y0 = m * tile.y, x0 = m * tile.x;
        float* on = op + tile.n * D * H * W * K;
        const float* mt = M + t * positions * K;
        int64_t k0 = 0;
        for (; k0 + kWideLanes <= K; k0 += kWideLanes) {
          winograd_output_tile<m, WideLanes>(mt + k0, K, bp ? bp + k0 : nullptr, on + k0, D, H, W, z0, y0, x0);
        }
        for (; k0 < K; k0 += kLanes) {
          winograd_output_tile<m, FloatLanes>(mt + k0, K, bp ? bp + k0 : nullptr, on + k0, D, H, W, z0, y0, x0);
        }
      }
    }
  });
}

at::Tensor conv3d_winograd_channels_last(const at::Tensor& x, const at::Tensor& weight_transform,
                                         const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d) && x.device().is_cpu() &&
                  x.scalar_type() == at::kFloat,
              "x must be a channels-last contiguous float32 CPU tensor (batch, channels, D, H, W), got ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1), D = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t Cp = (C + kLanes - 1) / kLanes * kLanes;
  // the number of positions says which algorithm the weights were transformed for: 4^3 for F(2), 5^3 for F(3)
  TORCH_CHECK(weight_transform.dim() == 3 && (weight_transform.size(0) == 64 || weight_transform.size(0) == 125) &&
                  weight_transform.size(1) == Cp && weight_transform.size(2) % kLanes == 0 &&
                  weight_transform.is_contiguous() && weight_transform.scalar_type() == at::kFloat &&
                  weight_transform.device().is_cpu(),
              "weight_transform must be a contiguous float32 CPU tensor (64 or 125, ", Cp,
              ", out_channels) with out_channels a multiple of ", kLanes, ", got ", weight_transform.sizes());
  const int64_t K = weight_transform.size(2);
  check_vector(bias, "bias", K, at::kFloat);
  auto out = at::empty({N, K, D, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  advise_huge_pages(out);
  if (out.numel() == 0) return out;
  const float* xp = x.data_ptr<float>();
  const float* up = weight_transform.data_ptr<float>();
  const float* bp = optional_data<float>(bias);
  float* op = out.data_ptr<float>();
  if (weight_transform.size(0) == 64) {
    winograd_conv3d<2>(xp, up, bp, op, N, C, Cp, K, D, H, W);
  } else {
    winograd_conv3d<3>(xp, up, bp, op, N, C, Cp, K, D, H, W);
  }
  return out;
}

void register_inference_kernels(pybind11::module_& m) {
  m.def("causal_conv1d_silu_tokens", &causal_conv1d_silu_tokens,
        "causal depthwise conv1d + SiLU over (batch, L, dim) rows read in a scan order (CPU)", py::arg("x"),
        py::arg("order"), py::arg("weight"), py::arg("bias"));
  m.def("selective_scan_tokens", &selective_scan_tokens,
        "selective scan over (batch, L, dim) rows in a scan order, gated output stored or added at row order[t] (CPU)",
        py::arg("out"), py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"),
        py::arg("z"), py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("order"), py::arg("accumulate"),
        py::arg("delta_proj"));
  m.def("instance_norm_channels_last", &instance_norm_channels_last,
        "instance normalisation of a channels-last tensor, statistics in double (CPU)", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("instance_norm_channels_last_", &instance_norm_channels_last_,
        "instance normalisation of a channels-last tensor in place, statistics in double (CPU)", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("conv3d_winograd_channels_last", &conv3d_winograd_channels_last,
        "3x3x3 convolution, stride 1, zero padding 1, of a channels-last float32 volume by Winograd F(m x m x m, 3x3x3) "
        "with weights transformed for m = 2 or 3 ((m + 2)^3, in_channels rounded up to 8, out_channels) (CPU)",
        py::arg("x"), py::arg("weight_transform"), py::arg("bias"));
}
