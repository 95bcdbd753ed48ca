// Training-mode BatchNorm (+ ReLU) over the output of a convolution, on channels-last float32 or
// bfloat16 rows (computed in float32, bf16 rounded once on store): z is [rows][C] with row stride ldz
// (rows = N*T*H*W), so a channel slice of a wider tensor is read in place. batch_norm_forward makes the
// first two passes below (batch_norm_apply the second alone), batch_norm_backward the last two, each pass one read of its inputs, with the
// per-channel arithmetic between them in double:
//
//   stats                 sum(z - k) and sum((z - k)^2) per channel (k: the channel's first value,
//                         which keeps E[z^2] - E[z]^2 free of cancellation when |mean| >> std)
//   apply                 y = relu?((z - mean) * scale + beta)  (centred first: near y = 0, where
//                         ReLU decides, the error is that of z - mean, not of a cancelling sum)
//   grad stats            with g = dy masked by ReLU (y > 0, recomputed from z by the same
//                         expression): sum(g) and sum(g * (z - mean)) per channel
//   grad apply            dz = a * g + b * (z - mean) + c  (a, b, c per channel, from the sums above)
//
// Reductions are deterministic: rows are cut into fixed blocks (independent of the thread count),
// each block is summed in float over short runs and in double across runs, and the blocks' double
// partials are added in block order.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/cpu_utils.h"

namespace py = pybind11;

namespace i3d {
namespace {

constexpr int64_t kBlockRows = 1024;  // rows per reduction block
constexpr int64_t kRunRows = 32;      // rows summed in float before adding into double

struct Rows {
  int64_t rows, channels;
  int64_t blocks() const { return (rows + kBlockRows - 1) / kBlockRows; }
};

// Sums two per-channel quantities f(row, c) -> (p, q) over rows into out_p / out_q (double).
template <typename Fn>
void reduce_rows(const Rows& r, Fn fn, double* out_p, double* out_q, int threads) {
  const int64_t C = r.channels, blocks = r.blocks();
  std::vector<double> partial(static_cast<size_t>(blocks) * 2 * C);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> run_p(C), run_q(C);
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      double* p = partial.data() + block * 2 * C;
      double* q = p + C;
      const int64_t end = std::min(r.rows, (block + 1) * kBlockRows);
      for (int64_t first = block * kBlockRows; first < end; first += kRunRows) {
        std::fill(run_p.begin(), run_p.end(), 0.0f);
        std::fill(run_q.begin(), run_q.end(), 0.0f);
        const int64_t last = std::min(end, first + kRunRows);
        for (int64_t row = first; row < last; ++row) fn(row, run_p.data(), run_q.data());
        for (int64_t c = 0; c < C; ++c) {
          p[c] += run_p[c];
          q[c] += run_q[c];
        }
      }
    }
  }
  std::fill(out_p, out_p + C, 0.0);
  std::fill(out_q, out_q + C, 0.0);
  for (int64_t block = 0; block < blocks; ++block)
    for (int64_t c = 0; c < C; ++c) {
      out_p[c] += partial[block * 2 * C + c];
      out_q[c] += partial[block * 2 * C + C + c];
    }
}

void check(const Rows& r, int64_t ld, const char* what) {
  if (r.rows < 1 || r.channels < 1 || ld < r.channels)
    throw std::invalid_argument(std::string(what) + ": bad sizes (rows and channels must be positive, "
                                "row stride >= channels)");
}

// Per channel: k = z[0][c]; sums of (z - k) and (z - k)^2.
// Calls fn(T{}) for the storage types these kernels take (float32, bfloat16).
template <typename Fn>
void dispatch_storage(const std::string& dtype, const char* what, Fn&& fn) {
  if (dtype == "float32") return fn(float{});
  if (dtype == "bfloat16") return fn(bf16{});
  throw std::invalid_argument(std::string(what) + ": float32 or bfloat16 rows only, got " + dtype);
}

template <typename T>
void stats_impl(const T* z, int64_t ldz, const Rows& r, float* pilot, double* sum, double* sumsq, int threads) {
  const int64_t channels = r.channels;
  for (int64_t c = 0; c < channels; ++c) pilot[c] = to_float(z[c]);
  reduce_rows(
      r,
      [&](int64_t row, float* p, float* q) {
        const T* zr = z + row * ldz;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float d = to_float(zr[c]) - pilot[c];
          p[c] += d;
          q[c] += d * d;
        }
      },
      sum, sumsq, threads);
}


// The normalised, affine value of z, computed the same way wherever it is needed (forward and the
// backward's ReLU mask), so the mask matches the forward exactly.
inline float affine(float z, float mean, float scale, float beta) { return __builtin_fmaf(z - mean, scale, beta); }

// The per-channel parameters of y = relu?((z - mean) * scale + beta) are restrict pointer arguments of
// the passes below, so their loops vectorise (read through a struct they did not).
template <typename T>
void apply_impl(const T* z, int64_t ldz, const Rows& r, const float* __restrict mean, const float* __restrict scale,
                const float* __restrict beta, bool relu, T* y, int64_t ldy, int threads) {
  const int64_t channels = r.channels;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < r.rows; ++row) {
    const T* __restrict zr = z + row * ldz;
    T* __restrict yr = y + row * ldy;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float v = affine(to_float(zr[c]), mean[c], scale[c], beta[c]);
      yr[c] = from_float<T>(relu && v < 0.0f ? 0.0f : v);  // NaN stays NaN
    }
  }
}


// ReLU's gradient mask, recomputed from z: y > 0 (NaN: no gradient, as torch's threshold_backward).
inline float masked(float g, float z, float mean, float scale, float beta, bool relu) {
  return !relu || affine(z, mean, scale, beta) > 0.0f ? g : 0.0f;
}

template <typename T>
void grad_stats_impl(const T* g, int64_t ldg, const T* z, int64_t ldz, const Rows& r, const float* __restrict mean,
                     const float* __restrict scale, const float* __restrict beta, bool relu, double* sum_g,
                     double* sum_gz, int threads) {
  const int64_t channels = r.channels;
  reduce_rows(
      r,
      [&](int64_t row, float* __restrict p, float* __restrict q) {
        const T* gr = g + row * ldg;
        const T* zr = z + row * ldz;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float zc = to_float(zr[c]);
          const float m = masked(to_float(gr[c]), zc, mean[c], scale[c], beta[c], relu);
          p[c] += m;
          q[c] += m * (zc - mean[c]);
        }
      },
      sum_g, sum_gz, threads);
}


template <typename T>
void grad_apply_impl(const T* g, int64_t ldg, const T* z, int64_t ldz, const Rows& r, const float* __restrict mean,
                     const float* __restrict scale, const float* __restrict beta, bool relu,
                     const float* __restrict a, const float* __restrict b, const float* __restrict c0, T* dz,
                     int64_t lddz, int threads) {
  const int64_t channels = r.channels;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < r.rows; ++row) {
    const T* __restrict gr = g + row * ldg;
    const T* __restrict zr = z + row * ldz;
    T* __restrict out = dz + row * lddz;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float zc = to_float(zr[c]);
      const float m = masked(to_float(gr[c]), zc, mean[c], scale[c], beta[c], relu);
      out[c] = from_float<T>(a[c] * m + b[c] * (zc - mean[c]) + c0[c]);
    }
  }
}


// scale = gamma / sqrt(var + eps) from the float32 variance, in double, rounded once: the forward and
// the backward compute it alike, so the backward's ReLU mask is the forward's.
inline float bn_scale(float gamma, float var, double eps) {
  return static_cast<float>(static_cast<double>(gamma) / std::sqrt(static_cast<double>(var) + eps));
}

void forward(const std::string& dtype, uintptr_t z, int64_t ldz, int64_t rows, int64_t channels, uintptr_t gamma_ptr,
             uintptr_t beta_ptr, double eps, bool relu, uintptr_t y, int64_t ldy, uintptr_t mean_ptr,
             uintptr_t var_ptr, int threads) {
  const Rows r{rows, channels};
  check(r, std::min(ldz, ldy), "batch_norm_forward");
  const float* gamma = as_ptr<const float>(gamma_ptr);
  float* mean = as_ptr<float>(mean_ptr);
  float* var = as_ptr<float>(var_ptr);
  py::gil_scoped_release release;
  threads = std::max(threads, 1);
  std::vector<float> pilot(channels), scale(channels);
  std::vector<double> sum(channels), sumsq(channels);
  dispatch_storage(dtype, "batch_norm_forward", [&](auto t) {
    using T = decltype(t);
    stats_impl(as_ptr<const T>(z), ldz, r, pilot.data(), sum.data(), sumsq.data(), threads);
    for (int64_t c = 0; c < channels; ++c) {
      const double centred = sum[c] / rows;
      mean[c] = static_cast<float>(pilot[c] + centred);
      var[c] = static_cast<float>(std::max(sumsq[c] / rows - centred * centred, 0.0));
      scale[c] = bn_scale(gamma[c], var[c], eps);
    }
    apply_impl(as_ptr<const T>(z), ldz, r, mean, scale.data(), as_ptr<const float>(beta_ptr), relu, as_ptr<T>(y),
               ldy, threads);
  });
}

// The forward's second pass alone, with given statistics: the same y, bit for bit (a unit's output
// recomputed from its saved z instead of being kept for backward).
void apply(const std::string& dtype, uintptr_t z, int64_t ldz, int64_t rows, int64_t channels, uintptr_t mean_ptr,
           uintptr_t var_ptr, uintptr_t gamma_ptr, uintptr_t beta_ptr, double eps, bool relu, uintptr_t y, int64_t ldy,
           int threads) {
  const Rows r{rows, channels};
  check(r, std::min(ldz, ldy), "batch_norm_apply");
  const float* var = as_ptr<const float>(var_ptr);
  const float* gamma = as_ptr<const float>(gamma_ptr);
  py::gil_scoped_release release;
  std::vector<float> scale(channels);
  for (int64_t c = 0; c < channels; ++c) scale[c] = bn_scale(gamma[c], var[c], eps);
  dispatch_storage(dtype, "batch_norm_apply", [&](auto t) {
    using T = decltype(t);
    apply_impl(as_ptr<const T>(z), ldz, r, as_ptr<const float>(mean_ptr), scale.data(), as_ptr<const float>(beta_ptr),
               relu, as_ptr<T>(y), ldy, std::max(threads, 1));
  });
}

void backward(const std::string& dtype, uintptr_t g, int64_t ldg, uintptr_t z, int64_t ldz, int64_t rows,
              int64_t channels, uintptr_t mean_ptr, uintptr_t var_ptr, uintptr_t gamma_ptr, uintptr_t beta_ptr,
              double eps, bool relu, uintptr_t dz, int64_t lddz, uintptr_t dgamma_ptr, uintptr_t dbeta_ptr,
              int threads) {
  const Rows r{rows, channels};
  check(r, std::min({ldg, ldz, dz ? lddz : ldz}), "batch_norm_backward");
  const float* mean = as_ptr<const float>(mean_ptr);
  const float* var = as_ptr<const float>(var_ptr);
  const float* gamma = as_ptr<const float>(gamma_ptr);
  float* dgamma = as_ptr<float>(dgamma_ptr);
  float* dbeta = as_ptr<float>(dbeta_ptr);
  py::gil_scoped_release release;
  threads = std::max(threads, 1);
  std::vector<float> scale(channels), a(channels), b(channels), c0(channels);
  std::vector<double> sum_g(channels), sum_gz(channels);
  for (int64_t c = 0; c < channels; ++c) scale[c] = bn_scale(gamma[c], var[c], eps);
  const float* beta = as_ptr<const float>(beta_ptr);
  dispatch_storage(dtype, "batch_norm_backward", [&](auto t) {
    using T = decltype(t);
    grad_stats_impl(as_ptr<const T>(g), ldg, as_ptr<const T>(z), ldz, r, mean, scale.data(), beta, relu, sum_g.data(),
                    sum_gz.data(), threads);
    // With xhat = (z - mean) * invstd: dbeta = sum(g), dgamma = sum(g * xhat) and
    // dz = gamma * invstd * (g - sum(g) / n - xhat * dgamma / n) = a * g + b * (z - mean) + c.
    for (int64_t c = 0; c < channels; ++c) {
      const double invstd = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
      const double s = static_cast<double>(gamma[c]) * invstd;
      dbeta[c] = static_cast<float>(sum_g[c]);
      dgamma[c] = static_cast<float>(sum_gz[c] * invstd);
      a[c] = static_cast<float>(s);
      b[c] = static_cast<float>(-s * invstd * invstd * sum_gz[c] / rows);
      c0[c] = static_cast<float>(-s * sum_g[c] / rows);
    }
    if (dz)
      grad_apply_impl(as_ptr<const T>(g), ldg, as_ptr<const T>(z), ldz, r, mean, scale.data(), beta, relu, a.data(),
                      b.data(), c0.data(), as_ptr<T>(dz), lddz, threads);
  });
}

}  // namespace

void register_batch_norm(py::module_& m) {
  m.def("batch_norm_forward", &forward, py::arg("dtype"), py::arg("z"), py::arg("ldz"), py::arg("rows"),
        py::arg("channels"), py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("relu"), py::arg("y"),
        py::arg("ldy"), py::arg("mean"), py::arg("var"), py::arg("threads"),
        "Training-mode BatchNorm (+ ReLU) of float32 / bfloat16 rows z (row stride ldz): batch mean and "
        "biased variance per channel into float32 mean / var (deterministic), then y = relu?((z - mean) * "
        "gamma / sqrt(var + eps) + beta) (row stride ldy). gamma, beta: float32.");
  m.def("batch_norm_apply", &apply, py::arg("dtype"), py::arg("z"), py::arg("ldz"), py::arg("rows"),
        py::arg("channels"), py::arg("mean"), py::arg("var"), py::arg("gamma"), py::arg("beta"), py::arg("eps"),
        py::arg("relu"), py::arg("y"), py::arg("ldy"), py::arg("threads"),
        "The second pass of batch_norm_forward alone, with the given float32 mean / var: y = relu?((z - mean) * "
        "gamma / sqrt(var + eps) + beta), bit for bit the forward's.");
  m.def("batch_norm_backward", &backward, py::arg("dtype"), py::arg("grad"), py::arg("ldg"), py::arg("z"),
        py::arg("ldz"), py::arg("rows"), py::arg("channels"), py::arg("mean"), py::arg("var"), py::arg("gamma"),
        py::arg("beta"), py::arg("eps"), py::arg("relu"), py::arg("dz"), py::arg("lddz"), py::arg("dgamma"),
        py::arg("dbeta"), py::arg("threads"),
        "Backward of batch_norm_forward with the saved z, mean and var: float32 dgamma, dbeta and, unless dz "
        "is 0, the input gradient dz (row stride lddz). The ReLU mask is recomputed from z.");
}

}  // namespace i3d
