// Training-mode BatchNorm (+ ReLU) over the output of a convolution, on channels-last float32 or
// bfloat16 rows (computed in float32, bf16 rounded once on store): z is [rows][C] with row stride ldz (rows = N*T*H*W), so a channel slice of a wider tensor is
// read in place. Four passes, each one read of its inputs:
//
//   batch_norm_stats      sum(z - k) and sum((z - k)^2) per channel (k: the channel's first value,
//                         which keeps E[z^2] - E[z]^2 free of cancellation when |mean| >> std)
//   batch_norm_apply      y = relu?((z - mean) * scale + beta)  (centred first: near y = 0, where
//                         ReLU decides, the error is that of z - mean, not of a cancelling sum)
//   batch_norm_grad_stats with g = dy masked by ReLU (y > 0, recomputed from z by the same
//                         expression): sum(g) and sum(g * (z - mean)) per channel
//   batch_norm_grad_apply dz = a * g + b * (z - mean) + c  (a, b, c per channel, from the sums above)
//
// Reductions are deterministic: rows are cut into fixed blocks (independent of the thread count),
// each block is summed in float over short runs and in double across runs, and the blocks' double
// partials are added in block order.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
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

void stats(const std::string& dtype, uintptr_t z, int64_t ldz, int64_t rows, int64_t channels, uintptr_t pilot,
           uintptr_t sum, uintptr_t sumsq, int threads) {
  const Rows r{rows, channels};
  check(r, ldz, "batch_norm_stats");
  py::gil_scoped_release release;
  dispatch_storage(dtype, "batch_norm_stats", [&](auto t) {
    using T = decltype(t);
    stats_impl(as_ptr<const T>(z), ldz, r, as_ptr<float>(pilot), as_ptr<double>(sum), as_ptr<double>(sumsq),
               std::max(threads, 1));
  });
}

// The normalised, affine value of z, computed the same way wherever it is needed (forward and the
// backward's ReLU mask), so the mask matches the forward exactly.
inline float affine(float z, float mean, float scale, float beta) { return __builtin_fmaf(z - mean, scale, beta); }

// Per-channel parameters: y = relu?((z - mean) * scale + beta).
struct Affine {
  const float *mean, *scale, *beta;
  bool relu;
};

template <typename T>
void apply_impl(const T* z, int64_t ldz, const Rows& r, const Affine& k, T* y, int64_t ldy, int threads) {
  const int64_t channels = r.channels;
  const float* __restrict mean = k.mean;
  const float* __restrict scale = k.scale;
  const float* __restrict beta = k.beta;
  const bool relu = k.relu;
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

void apply(const std::string& dtype, uintptr_t z, int64_t ldz, int64_t rows, int64_t channels, uintptr_t mean,
           uintptr_t scale, uintptr_t beta, bool relu, uintptr_t y, int64_t ldy, int threads) {
  const Rows r{rows, channels};
  check(r, std::min(ldz, ldy), "batch_norm_apply");
  const Affine k{as_ptr<const float>(mean), as_ptr<const float>(scale), as_ptr<const float>(beta), relu};
  py::gil_scoped_release release;
  dispatch_storage(dtype, "batch_norm_apply", [&](auto t) {
    using T = decltype(t);
    apply_impl(as_ptr<const T>(z), ldz, r, k, as_ptr<T>(y), ldy, std::max(threads, 1));
  });
}

// ReLU's gradient mask, recomputed from z: y > 0 (NaN: no gradient, as torch's threshold_backward).
inline float masked(float g, float z, float mean, float scale, float beta, bool relu) {
  return !relu || affine(z, mean, scale, beta) > 0.0f ? g : 0.0f;
}

template <typename T>
void grad_stats_impl(const T* g, int64_t ldg, const T* z, int64_t ldz, const Rows& r, const Affine& k,
                     double* sum_g, double* sum_gz, int threads) {
  const int64_t channels = r.channels;
  const float* __restrict mean = k.mean;
  const float* __restrict scale = k.scale;
  const float* __restrict beta = k.beta;
  const bool relu = k.relu;
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

void grad_stats(const std::string& dtype, uintptr_t g, int64_t ldg, uintptr_t z, int64_t ldz, int64_t rows,
                int64_t channels, uintptr_t mean, uintptr_t scale, uintptr_t beta, bool relu, uintptr_t sum_g,
                uintptr_t sum_gz, int threads) {
  const Rows r{rows, channels};
  check(r, std::min(ldg, ldz), "batch_norm_grad_stats");
  const Affine k{as_ptr<const float>(mean), as_ptr<const float>(scale), as_ptr<const float>(beta), relu};
  py::gil_scoped_release release;
  dispatch_storage(dtype, "batch_norm_grad_stats", [&](auto t) {
    using T = decltype(t);
    grad_stats_impl(as_ptr<const T>(g), ldg, as_ptr<const T>(z), ldz, r, k, as_ptr<double>(sum_g),
                    as_ptr<double>(sum_gz), std::max(threads, 1));
  });
}

template <typename T>
void grad_apply_impl(const T* g, int64_t ldg, const T* z, int64_t ldz, const Rows& r, const Affine& k,
                     const float* a, const float* b, const float* c0, T* dz, int64_t lddz, int threads) {
  const int64_t channels = r.channels;
  const float* __restrict mean = k.mean;
  const float* __restrict scale = k.scale;
  const float* __restrict beta = k.beta;
  const bool relu = k.relu;
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

void grad_apply(const std::string& dtype, uintptr_t g, int64_t ldg, uintptr_t z, int64_t ldz, int64_t rows,
                int64_t channels, uintptr_t mean, uintptr_t scale, uintptr_t beta, bool relu, uintptr_t a,
                uintptr_t b, uintptr_t c, uintptr_t dz, int64_t lddz, int threads) {
  const Rows r{rows, channels};
  check(r, std::min({ldg, ldz, lddz}), "batch_norm_grad_apply");
  const Affine k{as_ptr<const float>(mean), as_ptr<const float>(scale), as_ptr<const float>(beta), relu};
  py::gil_scoped_release release;
  dispatch_storage(dtype, "batch_norm_grad_apply", [&](auto t) {
    using T = decltype(t);
    grad_apply_impl(as_ptr<const T>(g), ldg, as_ptr<const T>(z), ldz, r, k, as_ptr<const float>(a),
                    as_ptr<const float>(b), as_ptr<const float>(c), as_ptr<T>(dz), lddz, std::max(threads, 1));
  });
}

}  // namespace

void register_batch_norm(py::module_& m) {
  m.def("batch_norm_stats", &stats, py::arg("dtype"), py::arg("z"), py::arg("ldz"), py::arg("rows"), py::arg("channels"),
        py::arg("pilot"), py::arg("sum"), py::arg("sumsq"), py::arg("threads"),
        "Per-channel sums of (z - pilot) and (z - pilot)^2 over float32 / bfloat16 rows z (row stride ldz) into "
        "float64 sum / sumsq; pilot (float32, written) = the first row. Deterministic.");
  m.def("batch_norm_apply", &apply, py::arg("dtype"), py::arg("z"), py::arg("ldz"), py::arg("rows"), py::arg("channels"),
        py::arg("mean"), py::arg("scale"), py::arg("beta"), py::arg("relu"), py::arg("y"), py::arg("ldy"),
        py::arg("threads"), "y = relu?((z - mean) * scale + beta) per channel (row strides ldz, ldy).");
  m.def("batch_norm_grad_stats", &grad_stats, py::arg("dtype"), py::arg("grad"), py::arg("ldg"), py::arg("z"), py::arg("ldz"),
        py::arg("rows"), py::arg("channels"), py::arg("mean"), py::arg("scale"), py::arg("beta"), py::arg("relu"),
        py::arg("sum_g"), py::arg("sum_gz"), py::arg("threads"),
        "With g = grad masked where relu?((z - mean) * scale + beta) <= 0: float64 per-channel sum(g) and "
        "sum(g * (z - mean)). Deterministic.");
  m.def("batch_norm_grad_apply", &grad_apply, py::arg("dtype"), py::arg("grad"), py::arg("ldg"), py::arg("z"), py::arg("ldz"),
        py::arg("rows"), py::arg("channels"), py::arg("mean"), py::arg("scale"), py::arg("beta"), py::arg("relu"),
        py::arg("a"), py::arg("b"), py::arg("c"), py::arg("dz"), py::arg("lddz"), py::arg("threads"),
        "dz = a * g + b * (z - mean) + c per channel, g the ReLU-masked grad (as batch_norm_grad_stats).");
}

}  // namespace i3d
