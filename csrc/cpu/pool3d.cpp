// 3D max / average pooling on channels-last (NDHWC) tensors, forward and backward.
//
// Windows are clipped to the real input: padded cells never take part (max pooling behaves as if
// padded with -inf, average pooling divides by the number of real cells, as TensorFlow's SAME
// does). The channel loop is innermost and contiguous, so it vectorises.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/cpu_utils.h"

namespace py = pybind11;

namespace i3d {
namespace {

using Int3 = std::array<int64_t, 3>;

struct PoolGeometry {
  int64_t N, T, H, W, C;  // input
  int64_t OT, OH, OW;     // output
  Int3 kernel, stride, pad;  // pad = cells of padding before the input, per dimension

  int64_t in_offset(int64_t n, int64_t t, int64_t h, int64_t w) const {
    return (((n * T + t) * H + h) * W + w) * C;
  }
  int64_t out_offset(int64_t n, int64_t t, int64_t h, int64_t w) const {
    return (((n * OT + t) * OH + h) * OW + w) * C;
  }
};

// The real (unpadded) cells [lo, hi) of window `o` along one dimension.
struct Span {
  int64_t lo, hi;
};
inline Span window(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t size) {
  const int64_t start = o * stride - pad;
  return {std::max<int64_t>(start, 0), std::min<int64_t>(start + kernel, size)};
}

template <typename A>
inline A max_nan(A acc, A v) {
  return (v > acc || v != v) ? v : acc;  // NaN propagates, as in PyTorch
}

// Rows of work: one per (n, ot, oh); each row walks ow and the window, channels innermost.
template <typename T, bool kMax>
void pool_forward(const T* x, T* y, const PoolGeometry& g, int threads) {
  using A = typename Acc<T>::type;
  const int64_t rows = g.N * g.OT * g.OH;
  const int64_t C = g.C;
#pragma omp parallel num_threads(threads)
  {
    std::vector<A> acc(C);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t oh = r % g.OH, ot = (r / g.OH) % g.OT, n = r / (g.OH * g.OT);
      const Span st = window(ot, g.stride[0], g.pad[0], g.kernel[0], g.T);
      const Span sh = window(oh, g.stride[1], g.pad[1], g.kernel[1], g.H);
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const Span sw = window(ow, g.stride[2], g.pad[2], g.kernel[2], g.W);
        A* a = acc.data();
        const A init = kMax ? -std::numeric_limits<A>::infinity() : A(0);
        for (int64_t c = 0; c < C; ++c) a[c] = init;
        for (int64_t t = st.lo; t < st.hi; ++t)
          for (int64_t h = sh.lo; h < sh.hi; ++h)
            for (int64_t w = sw.lo; w < sw.hi; ++w) {
              const T* p = x + g.in_offset(n, t, h, w);
              if constexpr (kMax) {
                for (int64_t c = 0; c < C; ++c) a[c] = max_nan<A>(a[c], to_float(p[c]));
              } else {
                for (int64_t c = 0; c < C; ++c) a[c] += to_float(p[c]);
              }
            }
        T* out = y + g.out_offset(n, ot, oh, ow);
        if constexpr (kMax) {
          for (int64_t c = 0; c < C; ++c) out[c] = from_float<T>(a[c]);
        } else {
          const A inv = A(1) / A((st.hi - st.lo) * (sh.hi - sh.lo) * (sw.hi - sw.lo));
          for (int64_t c = 0; c < C; ++c) out[c] = from_float<T>(a[c] * inv);
        }
      }
    }
  }
}

// Backward scatters each output gradient into the input cells of its window. Threads own
// disjoint (n, channel block) pairs, so overlapping windows never race. Gradients accumulate in
// the accumulation type (a float32 scratch buffer for fp16/bf16), then are stored.
template <typename T, bool kMax>
void pool_backward(const T* grad_out, const T* x, T* grad_in, const PoolGeometry& g, int threads) {
  using A = typename Acc<T>::type;
  constexpr bool kScratch = !std::is_same_v<T, A>;
  const int64_t C = g.C;
  const int64_t in_numel = g.N * g.T * g.H * g.W * C;
  std::vector<A> scratch(kScratch ? in_numel : 0);
  A* gin = kScratch ? scratch.data() : reinterpret_cast<A*>(grad_in);

  const int64_t blocks_wanted = std::max<int64_t>(1, (4 * threads + g.N - 1) / g.N);
  const int64_t nblocks = std::max<int64_t>(1, std::min<int64_t>(blocks_wanted, C / 16));
  const int64_t cb = (C + nblocks - 1) / nblocks;
  const int64_t tasks = g.N * nblocks;

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < in_numel; ++i) gin[i] = A(0);

    std::vector<A> best(cb);
    std::vector<int64_t> where(cb);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t n = task / nblocks;
      const int64_t c0 = (task % nblocks) * cb;
      const int64_t c1 = std::min(C, c0 + cb);
      const int64_t len = c1 - c0;
      for (int64_t ot = 0; ot < g.OT; ++ot) {
        const Span st = window(ot, g.stride[0], g.pad[0], g.kernel[0], g.T);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const Span sh = window(oh, g.stride[1], g.pad[1], g.kernel[1], g.H);
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const Span sw = window(ow, g.stride[2], g.pad[2], g.kernel[2], g.W);
            const T* go = grad_out + g.out_offset(n, ot, oh, ow) + c0;
            if constexpr (kMax) {
              // Recompute the argmax: the first maximum in (t, h, w) order wins; a NaN wins at once.
              const int64_t first = g.in_offset(n, st.lo, sh.lo, sw.lo) + c0;
              for (int64_t c = 0; c < len; ++c) {
                best[c] = -std::numeric_limits<A>::infinity();
                where[c] = first + c;
              }
              for (int64_t t = st.lo; t < st.hi; ++t)
                for (int64_t h = sh.lo; h < sh.hi; ++h)
                  for (int64_t w = sw.lo; w < sw.hi; ++w) {
                    const int64_t off = g.in_offset(n, t, h, w) + c0;
                    const T* p = x + off;
                    for (int64_t c = 0; c < len; ++c) {
                      const A v = to_float(p[c]);
                      const bool take = v > best[c] || (v != v && best[c] == best[c]);
                      best[c] = take ? v : best[c];
                      where[c] = take ? off + c : where[c];
                    }
                  }
              for (int64_t c = 0; c < len; ++c) gin[where[c]] += to_float(go[c]);
            } else {
              const A inv = A(1) / A((st.hi - st.lo) * (sh.hi - sh.lo) * (sw.hi - sw.lo));
              for (int64_t t = st.lo; t < st.hi; ++t)
                for (int64_t h = sh.lo; h < sh.hi; ++h)
                  for (int64_t w = sw.lo; w < sw.hi; ++w) {
                    A* p = gin + g.in_offset(n, t, h, w) + c0;
                    for (int64_t c = 0; c < len; ++c) p[c] += to_float(go[c]) * inv;
                  }
            }
          }
        }
      }
    }
    if constexpr (kScratch) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < in_numel; ++i) grad_in[i] = from_float<T>(gin[i]);
    }
  }
}

PoolGeometry make_geometry(const std::array<int64_t, 5>& in_ndhwc, const Int3& out_dhw,
                           const Int3& kernel, const Int3& stride, const Int3& pad) {
  return PoolGeometry{in_ndhwc[0], in_ndhwc[1], in_ndhwc[2], in_ndhwc[3], in_ndhwc[4],
                      out_dhw[0],  out_dhw[1],  out_dhw[2],  kernel,      stride,
                      pad};
}

void pool3d_forward(const std::string& mode, uintptr_t x, uintptr_t y, const std::string& dtype,
                    const std::array<int64_t, 5>& in_ndhwc, const Int3& out_dhw, const Int3& kernel,
                    const Int3& stride, const Int3& pad, int threads) {
  const PoolGeometry g = make_geometry(in_ndhwc, out_dhw, kernel, stride, pad);
  const bool is_max = mode == "max";
  if (!is_max && mode != "avg") throw std::invalid_argument("pool3d: mode must be 'max' or 'avg'");
  py::gil_scoped_release release;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (is_max)
      pool_forward<T, true>(as_ptr<const T>(x), as_ptr<T>(y), g, threads);
    else
      pool_forward<T, false>(as_ptr<const T>(x), as_ptr<T>(y), g, threads);
  });
}

void pool3d_backward(const std::string& mode, uintptr_t grad_out, uintptr_t x, uintptr_t grad_in,
                     const std::string& dtype, const std::array<int64_t, 5>& in_ndhwc,
                     const Int3& out_dhw, const Int3& kernel, const Int3& stride, const Int3& pad,
                     int threads) {
  const PoolGeometry g = make_geometry(in_ndhwc, out_dhw, kernel, stride, pad);
  const bool is_max = mode == "max";
  if (!is_max && mode != "avg") throw std::invalid_argument("pool3d: mode must be 'max' or 'avg'");
  py::gil_scoped_release release;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (is_max)
      pool_backward<T, true>(as_ptr<const T>(grad_out), as_ptr<const T>(x), as_ptr<T>(grad_in), g,
                             threads);
    else
      pool_backward<T, false>(as_ptr<const T>(grad_out), nullptr, as_ptr<T>(grad_in), g, threads);
  });
}

}  // namespace

void register_pool3d(py::module_& m) {
  m.def("pool3d_forward", &pool3d_forward, py::arg("mode"), py::arg("x"), py::arg("y"),
        py::arg("dtype"), py::arg("in_ndhwc"), py::arg("out_dhw"), py::arg("kernel"),
        py::arg("stride"), py::arg("pad"), py::arg("threads"),
        "Max ('max') or average ('avg') pooling of a contiguous NDHWC buffer x into y. "
        "pad = padding cells before the input per (T, H, W); windows are clipped to real cells.");
  m.def("pool3d_backward", &pool3d_backward, py::arg("mode"), py::arg("grad_out"), py::arg("x"),
        py::arg("grad_in"), py::arg("dtype"), py::arg("in_ndhwc"), py::arg("out_dhw"),
        py::arg("kernel"), py::arg("stride"), py::arg("pad"), py::arg("threads"),
        "Gradient of pool3d_forward; max recomputes the argmax from x (first maximum wins).");
}

}  // namespace i3d
