// 1x1x1 stride-1 convolution of channels-last (NDHWC) float32 rows: one GEMM
// [rows x Cin] . [Cin x Cout], with bias and ReLU fused into the store and the output channels
// written straight into one or more destination channel slices (an Inception block's merged
// b0 | b1a | b2a convolution writes b0 into the block output and b1a, b2a into a scratch tensor).
//
// Optionally the convolution reads a stride-1 SAME max pool of its input instead of the input
// (Inception branch 3: 3x3x3 max pool, then 1x1x1): each chunk of rows is pooled into a buffer
// that stays in cache, so the pooled tensor never exists in memory. As in TF, padded cells take
// no part in the maximum; NaN propagates.
//
// Rows are cut into chunks; a thread takes a chunk (pooled into its buffer when pooling), then for
// each panel of up to 64 output channels runs the register-blocked micro-kernel into a small
// buffer and stores it with the epilogue.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <limits>
#include <memory>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "cpu/channel_stats.h"
#include "cpu/cpu_utils.h"
#include "cpu/gemm_panel.h"

namespace py = pybind11;

namespace i3d {
namespace {

using namespace gemm;

constexpr int64_t kChunkRows = 96;  // rows per work item (a multiple of every micro-kernel height)

// Packs w [Cout, Cin] (contiguous) into PanelLayout(1, cin, cout).
void pack_weight(const float* w, float* packed, int64_t cout, int64_t cin, int threads) {
  const PanelLayout L(1, cin, cout);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t panel = 0; panel < L.panels(); ++panel) {
    const int64_t width = L.width(panel);
    float* base = packed + L.offset(panel, 0);
    for (int64_t ci = 0; ci < cin; ++ci)
      for (int64_t j = 0; j < width; ++j) {
        const int64_t co = panel * kPanel + j;
        base[ci * width + j] = co < cout ? w[co * cin + ci] : 0.0f;
      }
  }
}

struct Geometry {
  int64_t N, T, H, W, cin, ldx, cout;
  std::array<int64_t, 3> pool;  // max pool window per (T, H, W); {0, 0, 0}: no pool

  int64_t rows() const { return N * T * H * W; }
};

template <typename Vec>
inline Vec max_nan(Vec acc, Vec v) {
  return (v > acc) | (v != v) ? v : acc;
}
inline float max_nan(float acc, float v) { return (v > acc || v != v) ? v : acc; }

// Pools channels [c, c + |Vec|) of the outputs w in [w0, w1) of one (n, t, h) line: the maximum over
// the t and h window of each input column first (col), then over the w window of those. `col` has
// room for w1 - w0 + kw - 1 vectors.
template <typename Vec>
inline void pool_line(const float* x, const Geometry& g, const int64_t window[4], int64_t n, int64_t w0, int64_t w1,
                      int64_t c, Vec* col, float* out) {
  const int64_t before = (g.pool[2] - 1) / 2;
  const int64_t lo = std::max<int64_t>(w0 - before, 0), hi = std::min(w1 - before + g.pool[2] - 1, g.W);
  for (int64_t w = lo; w < hi; ++w) {
    const float* p = x + (((n * g.T + window[0]) * g.H + window[2]) * g.W + w) * g.ldx + c;
    Vec acc = load<Vec>(p);
    for (int64_t t = window[0]; t < window[1]; ++t)
      for (int64_t h = window[2]; h < window[3]; ++h)
        acc = max_nan(acc, load<Vec>(x + (((n * g.T + t) * g.H + h) * g.W + w) * g.ldx + c));
    col[w - lo] = acc;
  }
  for (int64_t w = w0; w < w1; ++w) {
    const int64_t a = std::max<int64_t>(w - before, 0), b = std::min(w - before + g.pool[2], g.W);
    Vec acc = col[a - lo];
    for (int64_t k = a + 1; k < b; ++k) acc = max_nan(acc, col[k - lo]);
    store(out + (w - w0) * g.cin + c, acc);
  }
}

// a[count][cin] = max pool of rows [first, first + count), one (n, t, h) line segment at a time.
void pool_rows(const float* x, const Geometry& g, int64_t first, int64_t count, float* a, v16* col) {
  for (int64_t r = 0; r < count;) {
    const int64_t row = first + r;
    const int64_t w0 = row % g.W, h = (row / g.W) % g.H, t = (row / (g.W * g.H)) % g.T, n = row / (g.W * g.H * g.T);
    const int64_t w1 = std::min(g.W, w0 + count - r);
    int64_t window[4];  // [t0, t1, h0, h1): the real cells of the t and h windows
    const int64_t pos[2] = {t, h}, size[2] = {g.T, g.H};
    for (int d = 0; d < 2; ++d) {
      const int64_t start = pos[d] - (g.pool[d] - 1) / 2;
      window[2 * d] = std::max<int64_t>(start, 0);
      window[2 * d + 1] = std::min(start + g.pool[d], size[d]);
    }
    float* out = a + r * g.cin;
    int64_t c = 0;
    for (; c + 16 <= g.cin; c += 16) pool_line<v16>(x, g, window, n, w0, w1, c, col, out);
    if (c + 8 <= g.cin) {
      pool_line<v8>(x, g, window, n, w0, w1, c, reinterpret_cast<v8*>(col), out);
      c += 8;
    }
    if (c + 4 <= g.cin) {
      pool_line<v4>(x, g, window, n, w0, w1, c, reinterpret_cast<v4*>(col), out);
      c += 4;
    }
    for (; c < g.cin; ++c) pool_line<float>(x, g, window, n, w0, w1, c, reinterpret_cast<float*>(col), out);
    r += w1 - w0;
  }
}

// mean / var (optional): the outputs' per-channel batch statistics before ReLU (channel_stats.h).
void pointwise_forward(const float* x, const float* packed, const float* bias, bool relu, const Geometry& g,
                       const std::vector<Dest>& dests, int threads, float* mean, float* var) {
  const PanelLayout L(1, g.cin, g.cout);
  const int64_t rows = g.rows();
  // Chunks of at most kChunkRows, as many for every thread.
  const int64_t chunks = round_up(ceil_div(rows, kChunkRows), threads);
  const int64_t P = round_up(ceil_div(rows, chunks), 6);
  const bool pooled = g.pool[0] > 0;
  const std::vector<float> b = padded_bias(bias, g.cout);
  const bool stream = streams(dests, rows);
  // Per thread: pooled rows, column maxima (pool_line), GEMM output.
  const int64_t a_size = pooled ? round_up(P * g.cin, 16) : 0;
  const int64_t col_size = pooled ? 16 * (std::min(P, g.W) + g.pool[2]) : 0, c_size = P * kPanel;
  const int64_t per_thread = a_size + col_size + c_size;
  AlignedBuffer scratch(threads * per_thread);
  std::unique_ptr<ChunkStats> stats(mean ? new ChunkStats(ceil_div(rows, P), g.cout) : nullptr);
#pragma omp parallel num_threads(threads)
  {
    float* A = scratch.data + omp_get_thread_num() * per_thread;
    v16* col = reinterpret_cast<v16*>(A + a_size);
    float* C = A + a_size + col_size;
#pragma omp for schedule(dynamic, 1)
    for (int64_t first = 0; first < rows; first += P) {
      const int64_t count = std::min(P, rows - first);
      const float* a = x + first * g.ldx;
      int64_t lda = g.ldx;
      if (pooled) {
        pool_rows(x, g, first, count, A, col);
        a = A;
        lda = g.cin;
      }
      const int64_t chunk = first / P;
      if (stats) stats->add_count(chunk, count);
      for (int64_t panel = 0; panel < L.panels(); ++panel) {
        const int64_t width = L.width(panel);
        panel_gemm(a, lda, count, packed + L.offset(panel, 0), g.cin, width, C);
        v16 pilot[kPanel / 16], sum[kPanel / 16] = {}, sumsq[kPanel / 16] = {};
        for (int64_t r = 0; r < count; ++r)
          for (int64_t j = 0; j < width; j += 16) {
            const int64_t c0 = panel * kPanel + j;
            if (c0 >= g.cout) break;
            v16 v = load<v16>(C + r * width + j) + load<v16>(b.data() + c0);
            if (stats) {
              if (r == 0) {  // the chunk's first row
                pilot[j / 16] = v;
                stats->set_pilot(chunk, c0, v);
              }
              const v16 d = v - pilot[j / 16];
              sum[j / 16] += d;
              sumsq[j / 16] += d * d;
            }
            if (relu) v = v < 0 ? v16{} : v;  // NaN stays NaN
            store_channels(dests, first + r, c0, static_cast<int>(std::min<int64_t>(16, g.cout - c0)), v, stream);
          }
        if (stats)
          for (int64_t j = 0; j < width && panel * kPanel + j < g.cout; j += 16)
            stats->add(chunk, panel * kPanel + j, sum[j / 16], sumsq[j / 16]);
      }
    }
    finish_streaming();
  }
  if (stats) stats->merge(g.cout, mean, var);
}

// ---------------------------------------------------------------------------------------------
int64_t packed_size(int64_t cout, int64_t cin) { return PanelLayout(1, cin, cout).size(); }

void prepare_weight(uintptr_t weight, uintptr_t packed, int64_t cout, int64_t cin, int threads) {
  py::gil_scoped_release release;
  pack_weight(as_ptr<const float>(weight), as_ptr<float>(packed), cout, cin, std::max(threads, 1));
}

void forward(uintptr_t x, int64_t ldx, const std::array<int64_t, 4>& ndhw, int64_t cin, uintptr_t packed,
             int64_t cout, uintptr_t bias, bool relu, const std::array<int64_t, 3>& pool,
             const std::vector<std::tuple<uintptr_t, int64_t, int64_t>>& dests, int threads, uintptr_t mean,
             uintptr_t var) {
  const auto [N, T, H, W] = ndhw;
  if (N < 1 || T < 1 || H < 1 || W < 1 || cin < 1 || cout < 1 || ldx < cin)
    throw std::invalid_argument("pointwise_conv3d_forward: bad sizes");
  const bool pooled = pool[0] > 0 || pool[1] > 0 || pool[2] > 0;
  if (pooled && (pool[0] < 1 || pool[1] < 1 || pool[2] < 1))
    throw std::invalid_argument("pointwise_conv3d_forward: pool window must be positive in every dimension");
  std::vector<Dest> out;
  int64_t start = 0;
  for (const auto& [ptr, ld, count] : dests) {
    if (count < 1 || ld < count) throw std::invalid_argument("pointwise_conv3d_forward: bad destination");
    out.push_back(Dest{as_ptr<float>(ptr), ld, start, count});
    start += count;
  }
  if (start != cout) throw std::invalid_argument("pointwise_conv3d_forward: destinations must hold cout channels");
  const Geometry g{N, T, H, W, cin, ldx, cout, pool};
  py::gil_scoped_release release;
  pointwise_forward(as_ptr<const float>(x), as_ptr<const float>(packed), bias ? as_ptr<const float>(bias) : nullptr,
                    relu, g, out, std::max(threads, 1), mean ? as_ptr<float>(mean) : nullptr,
                    mean ? as_ptr<float>(var) : nullptr);
}

}  // namespace

void register_pointwise_conv3d(py::module_& m) {
  m.def("pointwise_conv3d_packed_size", &packed_size, py::arg("cout"), py::arg("cin"),
        "Floats in the packed weight of a [cout, cin, 1, 1, 1] convolution.");
  m.def("pointwise_conv3d_prepare_weight", &prepare_weight, py::arg("weight"), py::arg("packed"), py::arg("cout"),
        py::arg("cin"), py::arg("threads"),
        "Packs a contiguous float32 [cout, cin] weight into panels (pointwise_conv3d_packed_size floats).");
  m.def("pointwise_conv3d_forward", &forward, py::arg("x"), py::arg("ldx"), py::arg("ndhw"), py::arg("cin"),
        py::arg("packed"), py::arg("cout"), py::arg("bias"), py::arg("relu"), py::arg("pool"), py::arg("dests"),
        py::arg("threads"), py::arg("mean") = 0, py::arg("var") = 0,
        "1x1x1 convolution of float32 NDHWC rows x (cin channels, row stride ldx) with a packed weight, "
        "bias (0 = none, else cout floats) and ReLU fused; pool = (kT, kH, kW) reads a stride-1 SAME max "
        "pool of x instead ((0, 0, 0): none). dests: (pointer, row stride, channel count) per destination, "
        "taking the output channels in order. mean, var (0 = not wanted, else cout floats each): the outputs' "
        "per-channel mean and biased variance before ReLU, gathered in the store loop.");
}

}  // namespace i3d
