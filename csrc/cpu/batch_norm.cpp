// Training-mode BatchNorm (+ ReLU) over the output of a convolution, on channels-last float32
// rows: z is [rows][C] with row stride ldz (rows = N*T*H*W), so a channel slice of a wider tensor is
// read in place. Four passes, each one read of its inputs:
//
//   batch_norm_stats      sum(z - k) and sum((z - k)^2) per channel (k: the channel's first value,
//                         which keeps E[z^2] - E[z]^2 free of cancellation when |mean| >> std)
//   batch_norm_apply      y = relu?(z * scale + shift)
//   batch_norm_grad_stats with g = dy masked by ReLU (y > 0, recomputed from z): sum(g) and
//                         sum(g * (z - mean)) per channel
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
void stats(uintptr_t z_ptr, int64_t ldz, int64_t rows, int64_t channels, uintptr_t pilot_ptr, uintptr_t sum_ptr,
           uintptr_t sumsq_ptr, int threads) {
  const Rows r{rows, channels};
  check(r, ldz, "batch_norm_stats");
  const float* z = as_ptr<const float>(z_ptr);
  float* pilot = as_ptr<float>(pilot_ptr);
  py::gil_scoped_release release;
  std::copy(z, z + channels, pilot);
  reduce_rows(
      r,
      [&](int64_t row, float* p, float* q) {
        const float* zr = z + row * ldz;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float d = zr[c] - pilot[c];
          p[c] += d;
          q[c] += d * d;
        }
      },
      as_ptr<double>(sum_ptr), as_ptr<double>(sumsq_ptr), std::max(threads, 1));
}

void apply(uintptr_t z_ptr, int64_t ldz, int64_t rows, int64_t channels, uintptr_t scale_ptr, uintptr_t shift_ptr,
           bool relu, uintptr_t y_ptr, int64_t ldy, int threads) {
  const Rows r{rows, channels};
  check(r, std::min(ldz, ldy), "batch_norm_apply");
  const float* z = as_ptr<const float>(z_ptr);
  const float* scale = as_ptr<const float>(scale_ptr);
  const float* shift = as_ptr<const float>(shift_ptr);
  float* y = as_ptr<float>(y_ptr);
  py::gil_scoped_release release;
#pragma omp parallel for num_threads(std::max(threads, 1)) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const float* zr = z + row * ldz;
    float* yr = y + row * ldy;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float v = zr[c] * scale[c] + shift[c];
      yr[c] = relu && v < 0.0f ? 0.0f : v;  // NaN stays NaN
    }
  }
}

// ReLU's gradient mask, recomputed from z: y = z * scale + shift > 0 (NaN: no gradient, as
// torch's threshold_backward).
inline float masked(float g, float z, float scale, float shift, bool relu) {
  return !relu || z * scale + shift > 0.0f ? g : 0.0f;
}

void grad_stats(uintptr_t g_ptr, int64_t ldg, uintptr_t z_ptr, int64_t ldz, int64_t rows, int64_t channels,
                uintptr_t scale_ptr, uintptr_t shift_ptr, uintptr_t mean_ptr, bool relu, uintptr_t sum_g_ptr,
                uintptr_t sum_gz_ptr, int threads) {
  const Rows r{rows, channels};
  check(r, std::min(ldg, ldz), "batch_norm_grad_stats");
  const float* g = as_ptr<const float>(g_ptr);
  const float* z = as_ptr<const float>(z_ptr);
  const float* scale = as_ptr<const float>(scale_ptr);
  const float* shift = as_ptr<const float>(shift_ptr);
  const float* mean = as_ptr<const float>(mean_ptr);
  py::gil_scoped_release release;
  reduce_rows(
      r,
      [&](int64_t row, float* p, float* q) {
        const float* gr = g + row * ldg;
        const float* zr = z + row * ldz;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float m = masked(gr[c], zr[c], scale[c], shift[c], relu);
          p[c] += m;
          q[c] += m * (zr[c] - mean[c]);
        }
      },
      as_ptr<double>(sum_g_ptr), as_ptr<double>(sum_gz_ptr), std::max(threads, 1));
}

void grad_apply(uintptr_t g_ptr, int64_t ldg, uintptr_t z_ptr, int64_t ldz, int64_t rows, int64_t channels,
                uintptr_t scale_ptr, uintptr_t shift_ptr, uintptr_t mean_ptr, bool relu, uintptr_t a_ptr,
                uintptr_t b_ptr, uintptr_t c_ptr, uintptr_t dz_ptr, int64_t lddz, int threads) {
  const Rows r{rows, channels};
  check(r, std::min({ldg, ldz, lddz}), "batch_norm_grad_apply");
  const float* g = as_ptr<const float>(g_ptr);
  const float* z = as_ptr<const float>(z_ptr);
  const float* scale = as_ptr<const float>(scale_ptr);
  const float* shift = as_ptr<const float>(shift_ptr);
  const float* mean = as_ptr<const float>(mean_ptr);
  const float* a = as_ptr<const float>(a_ptr);
  const float* b = as_ptr<const float>(b_ptr);
  const float* k = as_ptr<const float>(c_ptr);
  float* dz = as_ptr<float>(dz_ptr);
  py::gil_scoped_release release;
#pragma omp parallel for num_threads(std::max(threads, 1)) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const float* gr = g + row * ldg;
    const float* zr = z + row * ldz;
    float* out = dz + row * lddz;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c)
      out[c] = a[c] * masked(gr[c], zr[c], scale[c], shift[c], relu) + b[c] * (zr[c] - mean[c]) + k[c];
  }
}

}  // namespace

void register_batch_norm(py::module_& m) {
  m.def("batch_norm_stats", &stats, py::arg("z"), py::arg("ldz"), py::arg("rows"), py::arg("channels"),
        py::arg("pilot"), py::arg("sum"), py::arg("sumsq"), py::arg("threads"),
        "Per-channel sums of (z - pilot) and (z - pilot)^2 over float32 rows z (row stride ldz) into "
        "float64 sum / sumsq; pilot (float32, written) = the first row. Deterministic.");
  m.def("batch_norm_apply", &apply, py::arg("z"), py::arg("ldz"), py::arg("rows"), py::arg("channels"),
        py::arg("scale"), py::arg("shift"), py::arg("relu"), py::arg("y"), py::arg("ldy"), py::arg("threads"),
        "y = relu?(z * scale + shift) per channel, float32 rows (row strides ldz, ldy).");
  m.def("batch_norm_grad_stats", &grad_stats, py::arg("grad"), py::arg("ldg"), py::arg("z"), py::arg("ldz"),
        py::arg("rows"), py::arg("channels"), py::arg("scale"), py::arg("shift"), py::arg("mean"), py::arg("relu"),
        py::arg("sum_g"), py::arg("sum_gz"), py::arg("threads"),
        "With g = grad masked where relu?(z * scale + shift) <= 0: float64 per-channel sum(g) and "
        "sum(g * (z - mean)). Deterministic.");
  m.def("batch_norm_grad_apply", &grad_apply, py::arg("grad"), py::arg("ldg"), py::arg("z"), py::arg("ldz"),
        py::arg("rows"), py::arg("channels"), py::arg("scale"), py::arg("shift"), py::arg("mean"), py::arg("relu"),
        py::arg("a"), py::arg("b"), py::arg("c"), py::arg("dz"), py::arg("lddz"), py::arg("threads"),
        "dz = a * g + b * (z - mean) + c per channel, g the ReLU-masked grad (as batch_norm_grad_stats).");
}

}  // namespace i3d
