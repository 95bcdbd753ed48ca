// 3D Winograd convolution F(2x2x2, 3x3x3) on channels-last (NDHWC) float32 tensors: 3x3x3 kernel,
// stride 1, one cell of zero padding on every side (TF "SAME" for k = 3, s = 1); and its lower-
// dimensional forms for the factorised convolutions of R(2+1)D, S3D and SlowFast: F(1x2x2, 1x3x3)
// for (1, 3, 3) kernels padded (0, 1, 1) and F(2x1x1, 3x1x1) for (3, 1, 1) kernels padded (1, 0, 0).
// Every function is a template on the kernel kind K (Tile<K>): a dimension with kernel size 1 is not
// transformed (one input cell and one output per tile along it). The forward also has "wide" kinds
// with F(4, 3) along H and W (3x3x3, 1x3x3) or T (3x1x1): fewer multiplies, a larger rounding error,
// for callers that allow reduced precision (see Tile).
//
// Along one dimension (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"), two
// outputs of a 3-tap correlation are y = A^T [(G g) * (B^T d)] with
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1],
// applied separably along T, H and W. A "tile" is a 2x2x2 block of outputs; it reads a 4x4x4 block
// of input. In the transformed domain the convolution becomes 64 independent matrix products, one
// per transform position xi: M[xi] (tiles x Cout) = V[xi] (tiles x Cin) . U[xi] (Cin x Cout), i.e.
// 64 multiplies per 8 outputs and input channel instead of 216. F(4, 3) (the wide kinds) reads 6
// cells for 4 outputs along a dimension: F(2x4x4, 3x3x3) has 144 positions per 32 outputs.
//
// Schedule: tiles are cut into chunks. A thread transforms one chunk's input (V: [positions][P][Cin],
// channels contiguous, vectorised across channels), then for each panel of up to 64 output
// channels runs one product per position with a register-blocked micro-kernel (M: [positions][P][panel]) and
// inverse-transforms M straight into the destination rows, adding the bias and applying ReLU.
// The chunk size keeps V and M in the thread's L2 cache; only the transformed weights U stream
// in from L3 (U is transformed once, see prepare_weight). The input may be a channel slice of a
// wider tensor (row stride ldx) and the output channels may be split over several destinations,
// each a channel slice of its own tensor; outputs too large for the caches are written with
// non-temporal stores.
#include <omp.h>
#include <unistd.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/channel_stats.h"
#include "cpu/cpu_utils.h"
#include "cpu/gemm_panel.h"

namespace py = pybind11;

namespace i3d {
namespace {

using namespace gemm;

// The kernel kinds and their tiles: input cells, outputs and transform positions per dimension.
// The wide kinds (w) take F(4, 3) (4 outputs from 6 cells, Lavin & Gray's points 0, +-1, +-2, inf)
// along H and W of 3x3x3 and 1x3x3 kernels, along T of 3x1x1 ones: F(2x4x4, 3x3x3) is 144 multiplies
// per 32 outputs (4.5 per output instead of 8), F(1x4x4, 1x3x3) 36 per 16 (2.25 instead of 4),
// F(4x1x1, 3x1x1) 6 per 4 (1.5 instead of 2), at a larger rounding error (the transforms' entries
// reach 8 and 1/24). The weight gradient has the F(2, 3) kinds only.
enum Kind { k333 = 0, k133 = 1, k311 = 2, k333w = 3, k133w = 4, k311w = 5 };
template <int K>
struct Tile {
  static_assert(K >= k333 && K <= k311w, "kernel kind");
  static constexpr int kT = K == k133 || K == k133w ? 1 : 3;  // kernel size along T
  static constexpr int kS = K == k311 || K == k311w ? 1 : 3;  // kernel size along H and along W
  static constexpr int kOutT = kT == 3 ? (K == k311w ? 4 : 2) : 1;
  static constexpr int kOutS = kS == 3 ? (K == k333w || K == k133w ? 4 : 2) : 1;
  static constexpr int kInT = kT == 3 ? kOutT + 2 : 1, kInS = kS == 3 ? kOutS + 2 : 1;
  static constexpr bool kWide = K >= k333w;
  static constexpr int kPosS = kInS * kInS;      // positions of one t-slice (16, 36 or 1)
  static constexpr int kOutPerT = kOutS * kOutS;  // outputs of one t-slice (4, 16 or 1)
  static constexpr int kPositions = kInT * kPosS;
  static constexpr int kTapsS = kS * kS;
  static constexpr int kTaps = kT * kTapsS;
};
// Bytes of V + M per thread: 5/8 of the core's L2 cache (640 KiB of 1 MiB, where this rule was
// tuned; 1 MiB when the size cannot be read).
inline int64_t l2_budget() {
  static const int64_t budget = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return (l2 > 0 ? static_cast<int64_t>(l2) : int64_t(1) << 20) * 5 / 8;
  }();
  return budget;
}

// Floats between consecutive positions' blocks of a per-thread buffer (V, M) holding `floats` per
// position: whole cache lines, an odd number of them, so that one tile's 16-144 positions fall in
// different L1 sets (a stride of a multiple of 4 KiB, e.g. 48 tiles x 192 channels, puts them all in
// one 12-way set).
inline int64_t position_stride(int64_t floats) {
  const int64_t lines = ceil_div(floats, 16);
  return (lines | 1) * 16;
}

// ---------------------------------------------------------------------------------------------
// Weight transform. U is stored as PanelLayout(kPositions, cin, cout) (csrc/cpu/gemm_panel.h).
// G g along one dimension: 3 taps -> N = 4 (F(2, 3)) or 6 (F(4, 3)) transform positions.
template <int N, typename T>
inline void weight_1d(const T& g0, const T& g1, const T& g2, T u[N]) {
  static_assert(N == 4 || N == 6, "F(2, 3) or F(4, 3)");
  if constexpr (N == 4) {
    u[0] = g0;
    u[1] = 0.5 * (g0 + g1 + g2);
    u[2] = 0.5 * (g0 - g1 + g2);
    u[3] = g2;
  } else {
    u[0] = 0.25 * g0;
    u[1] = (-1.0 / 6) * (g0 + g1 + g2);
    u[2] = (-1.0 / 6) * (g0 - g1 + g2);
    u[3] = (1.0 / 24) * g0 + (1.0 / 12) * g1 + (1.0 / 6) * g2;
    u[4] = (1.0 / 24) * g0 - (1.0 / 12) * g1 + (1.0 / 6) * g2;
    u[5] = g2;
  }
}

// Where the transform reads weight element (co, ci, kt, kh, kw): w + co * s[0] + ci * s[1] + kt * s[2] +
// kh * s[3] + kw * s[4] (any strides: a channels-last or transposed view is read in place), the
// taps reversed when `flip` (the data gradient's flipped kernel).
struct WeightView {
  const float* w;
  std::array<int64_t, 5> s;
  bool flip;
  int kt_size, ks_size;  // kernel sizes along T and along H, W
  const float& at(int64_t co, int64_t ci, int tap) const {
    int kt = tap / (ks_size * ks_size), kh = (tap / ks_size) % ks_size, kw = tap % ks_size;
    if (flip) kt = kt_size - 1 - kt, kh = ks_size - 1 - kh, kw = ks_size - 1 - kw;
    return w[co * s[0] + ci * s[1] + kt * s[2] + kh * s[3] + kw * s[4]];
  }
};

// U = G g G^T per transformed dimension for 8 output channels at a time (in double, rounded once;
// fastest when the output channels are contiguous, s[0] == 1); padded output channels get zeros.
template <int K>
void transform_weight(const WeightView& wv, float* u, int64_t cout, int64_t cin, int threads) {
  using TL = Tile<K>;
  const PanelLayout L(TL::kPositions, cin, cout);
  int64_t taps[TL::kTaps];  // offset of each tap from its (co, ci) element
  for (int tap = 0; tap < TL::kTaps; ++tap) taps[tap] = &wv.at(0, 0, tap) - wv.w;
  // Each (panel, input channel) writes whole [width] rows of the position blocks.
#pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
  for (int64_t panel = 0; panel < L.panels(); ++panel) {
    for (int64_t ci = 0; ci < cin; ++ci) {
     for (int64_t co0 = panel * kPanel; co0 < panel * kPanel + L.width(panel); co0 += 8) {
      v8d g[TL::kTaps] = {};
      if (wv.s[0] == 1 && co0 + 8 <= cout) {  // output channels contiguous: vector loads
        const float* base = wv.w + co0 + ci * wv.s[1];
        for (int tap = 0; tap < TL::kTaps; ++tap) g[tap] = __builtin_convertvector(load<v8>(base + taps[tap]), v8d);
      } else {  // e.g. a contiguous weight: each output channel's taps are close together
        for (int lane = 0; lane < 8 && co0 + lane < cout; ++lane) {  // padded channels stay 0
          const float* base = wv.w + (co0 + lane) * wv.s[0] + ci * wv.s[1];
          for (int tap = 0; tap < TL::kTaps; ++tap) g[tap][lane] = base[taps[tap]];
        }
      }
      v8d a[TL::kInT][TL::kTapsS], out[TL::kPositions];
      for (int hw = 0; hw < TL::kTapsS; ++hw) {  // along t
        if constexpr (TL::kT == 3) {
          v8d t[TL::kInT];
          weight_1d<TL::kInT>(g[hw], g[TL::kTapsS + hw], g[2 * TL::kTapsS + hw], t);
          for (int i = 0; i < TL::kInT; ++i) a[i][hw] = t[i];
        } else {
          a[0][hw] = g[hw];
        }
      }
      for (int i = 0; i < TL::kInT; ++i) {  // along h, then w
        if constexpr (TL::kS == 3) {
          constexpr int kI = TL::kInS;
          v8d b[kI][3];
          for (int kw = 0; kw < 3; ++kw) {
            v8d t[kI];
            weight_1d<kI>(a[i][kw], a[i][3 + kw], a[i][6 + kw], t);
            for (int k = 0; k < kI; ++k) b[k][kw] = t[k];
          }
          for (int k = 0; k < kI; ++k) weight_1d<kI>(b[k][0], b[k][1], b[k][2], out + (i * kI + k) * kI);
        } else {
          out[i] = a[i][0];
        }
      }
      const int64_t j = co0 % kPanel, width = L.width(panel);
      for (int xi = 0; xi < TL::kPositions; ++xi)
        store(u + L.offset(panel, xi) + ci * width + j, __builtin_convertvector(out[xi], v8));
     }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Input transform B^T d B of one tile for one group of channels.
// B^T along one dimension, in place on d[0], d[stride], ..., d[(N - 1) * stride]: N = 4 (F(2, 3),
// adds only) or 6 (F(4, 3)).
template <int N, typename Vec>
inline void input_1d(Vec* d, int stride) {
  static_assert(N == 4 || N == 6, "F(2, 3) or F(4, 3)");
  Vec x[N];
  for (int i = 0; i < N; ++i) x[i] = d[i * stride];
  if constexpr (N == 4) {
    d[0] = x[0] - x[2];
    d[stride] = x[1] + x[2];
    d[2 * stride] = x[2] - x[1];
    d[3 * stride] = x[1] - x[3];
  } else {
    const Vec s12 = x[1] + x[2], d12 = x[1] - x[2], s34 = x[3] + x[4], d34 = x[4] - x[3];
    const Vec a = x[4] - x[2], b = 2.0f * (x[3] - x[1]);
    d[0] = 4.0f * x[0] - 5.0f * x[2] + x[4];
    d[stride] = s34 - 4.0f * s12;
    d[2 * stride] = d34 + 4.0f * d12;
    d[3 * stride] = a + b;
    d[4 * stride] = a - b;
    d[5 * stride] = 4.0f * x[1] - 5.0f * x[3] + x[5];
  }
}

// rows[kPositions]: the tile's input cells in (t, h, w) order; position xi goes to v + xi * v_stride.
template <typename Vec, int K>
inline void input_tile(const float* const* rows, int64_t c, float* v, int64_t v_stride) {
  using TL = Tile<K>;
  constexpr int kP = TL::kPosS, kI = TL::kInS;
  // Along t first, through a small buffer, then one t-slice at a time along h and w.
  Vec d[TL::kPositions];
  for (int hw = 0; hw < kP; ++hw) {
    for (int i = 0; i < TL::kInT; ++i) d[i * kP + hw] = load<Vec>(rows[i * kP + hw] + c);
    if constexpr (TL::kT == 3) input_1d<TL::kInT>(d + hw, kP);
  }
  for (int t = 0; t < TL::kInT; ++t) {
    if constexpr (TL::kS == 3) {
      Vec s[kP];
      for (int i = 0; i < kP; ++i) s[i] = d[t * kP + i];
      for (int h = 0; h < kI; ++h) input_1d<kI>(s + h * kI, 1);
      for (int w = 0; w < kI; ++w) input_1d<kI>(s + w, kI);
      for (int i = 0; i < kP; ++i) store(v + (t * kP + i) * v_stride + c, s[i]);
    } else {
      store(v + t * v_stride + c, d[t]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Output transform A^T m A of one tile for 16 channels: m[kPositions] -> y[kOutT * kOutPerT] in
// (t, h, w) order.
// A^T along one dimension: N = 4 values -> 2 outputs (F(2, 3)) or 6 -> 4 (F(4, 3)).
template <int N>
inline void output_1d(const v16 m[N], v16 y[N - 2]) {
  static_assert(N == 4 || N == 6, "F(2, 3) or F(4, 3)");
  if constexpr (N == 4) {
    y[0] = m[0] + m[1] + m[2];
    y[1] = m[1] - m[2] - m[3];
  } else {
    const v16 s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    y[0] = m[0] + s12 + s34;
    y[1] = d12 + 2.0f * d34;
    y[2] = s12 + 4.0f * s34;
    y[3] = d12 + 8.0f * d34 + m[5];
  }
}

template <int K>
inline void output_tile(const float* m, int64_t m_stride, v16 y[Tile<K>::kOutT * Tile<K>::kOutPerT]) {
  using TL = Tile<K>;
  constexpr int kO = TL::kOutPerT, kI = TL::kInS, kOS = TL::kOutS;
  v16 b[TL::kInT][kO];  // [t][h2 * kOutS + w2]: one t-slice at a time along w, then h
  for (int t = 0; t < TL::kInT; ++t) {
    if constexpr (TL::kS == 3) {
      v16 a[kI][kOS];  // [h][w2]
      for (int h = 0; h < kI; ++h) {
        v16 row[kI];
        for (int w = 0; w < kI; ++w) row[w] = load<v16>(m + (t * TL::kPosS + h * kI + w) * m_stride);
        output_1d<kI>(row, a[h]);
      }
      for (int w = 0; w < kOS; ++w) {
        v16 column[kI], out[kOS];
        for (int h = 0; h < kI; ++h) column[h] = a[h][w];
        output_1d<kI>(column, out);
        for (int h = 0; h < kOS; ++h) b[t][h * kOS + w] = out[h];
      }
    } else {
      b[t][0] = load<v16>(m + t * m_stride);
    }
  }
  for (int i = 0; i < kO; ++i) {  // along t
    if constexpr (TL::kT == 3) {
      v16 column[TL::kInT], out[TL::kOutT];
      for (int t = 0; t < TL::kInT; ++t) column[t] = b[t][i];
      output_1d<TL::kInT>(column, out);
      for (int t = 0; t < TL::kOutT; ++t) y[t * kO + i] = out[t];
    } else {
      y[i] = b[0][i];
    }
  }
}

struct Geometry {
  int64_t N, T, H, W;     // input = output sizes
  int64_t TT, TH, TW;     // tiles per dimension
  int64_t cin, ldx, cout;

  int64_t tiles() const { return N * TT * TH * TW; }
  // (n, tile t, tile h, tile w) of tile `i`.
  std::array<int64_t, 4> tile(int64_t i) const {
    const int64_t tw = i % TW, th = (i / TW) % TH, tt = (i / (TW * TH)) % TT, n = i / (TW * TH * TT);
    return {n, tt, th, tw};
  }
};

// V[xi][p][cin] for tiles [first, first + count): B^T d B of each tile's input cells (kInT x kInS x kInS,
// e.g. 4x4x4, 1x4x4, 4x1x1 or 4x6x6), with cells outside the input read from a row of zeros; position
// xi's [count][cin] block starts at V + xi * v_stride. The next tile's new input cells are prefetched
// while one is transformed (8-15% of a 192-channel layer's time went to waiting for them).
template <int K>
void transform_chunk(const float* x, const float* zeros, const Geometry& g, int64_t first, int64_t count,
                     int64_t v_stride, float* V) {
  using TL = Tile<K>;
  const auto cells = [&](int64_t tile, const float** rows) {  // the tile's input rows, `zeros` outside
    const auto [n, tt, th, tw] = g.tile(tile);
    for (int i = 0; i < TL::kInT; ++i) {
      const int64_t t = TL::kOutT * tt - TL::kT / 2 + i;
      for (int j = 0; j < TL::kInS; ++j) {
        const int64_t h = TL::kOutS * th - TL::kS / 2 + j;
        for (int k = 0; k < TL::kInS; ++k) {
          const int64_t w = TL::kOutS * tw - TL::kS / 2 + k;
          const bool inside = t >= 0 && t < g.T && h >= 0 && h < g.H && w >= 0 && w < g.W;
          rows[(i * TL::kInS + j) * TL::kInS + k] = inside ? x + (((n * g.T + t) * g.H + h) * g.W + w) * g.ldx : zeros;
        }
      }
    }
  };
  const float* rows_of[2][TL::kPositions];  // this tile's and the next one's
  if (count > 0) cells(first, rows_of[0]);
  for (int64_t p = 0; p < count; ++p) {
    const float* const* rows = rows_of[p & 1];
    if (p + 1 < count) {  // the next tile's new cells (its last kOutS columns along w) on their way to L1
      const float** next = rows_of[(p + 1) & 1];
      cells(first + p + 1, next);
      for (int ij = 0; ij < TL::kInT * TL::kInS; ++ij)
        for (int k = TL::kInS - TL::kOutS; k < TL::kInS; ++k) {
          const char* cell = reinterpret_cast<const char*>(next[ij * TL::kInS + k]);
          if (cell == reinterpret_cast<const char*>(zeros)) continue;
          for (int64_t b = 0; b < g.cin * 4; b += 64) __builtin_prefetch(cell + b, 0, 3);
        }
    }
    float* v = V + p * g.cin;
    int64_t c = 0;
    for (; c + 16 <= g.cin; c += 16) input_tile<v16, K>(rows, c, v, v_stride);
    if (c + 8 <= g.cin) {
      input_tile<v8, K>(rows, c, v, v_stride);
      c += 8;
    }
    if (c + 4 <= g.cin) {
      input_tile<v4, K>(rows, c, v, v_stride);
      c += 4;
    }
    for (; c < g.cin; ++c) input_tile<float, K>(rows, c, v, v_stride);
  }
}

// Output transform of M[xi][p][width] for tiles [first, first + count), output channels
// [c_first, c_first + width) of which those < cout are stored.
template <int K>
void store_chunk(const float* M, const Geometry& g, int64_t first, int64_t count, int64_t m_stride, int64_t width,
                 int64_t c_first, const float* bias, bool relu, const std::vector<Dest>& dests, bool stream,
                 v16& nonfinite, ChunkStats* stats, int64_t chunk) {
  using TL = Tile<K>;
  v16 pilots[kPanel / 16];
  for (int64_t p = 0; p < count; ++p) {
    const auto [n, tt, th, tw] = g.tile(first + p);
    for (int64_t j = 0; j < width; j += 16) {
      const int64_t c0 = c_first + j;
      if (c0 >= g.cout) break;
      const int valid = static_cast<int>(std::min<int64_t>(16, g.cout - c0));
      v16 y[TL::kOutT * TL::kOutPerT];
      output_tile<K>(M + p * width + j, m_stride, y);
      const v16 b = load<v16>(bias + c0);
      v16& pilot = pilots[j / 16];
      if (stats && p == 0) {  // the chunk's first output (a tile's first cell is always inside)
        pilot = y[0] + b;
        stats->set_pilot(chunk, c0, pilot);
      }
      v16 sum{}, sumsq{};
      int64_t cells = 0;
      for (int i = 0; i < TL::kOutT; ++i) {
        const int64_t t = TL::kOutT * tt + i;
        if (t >= g.T) break;
        for (int k = 0; k < TL::kOutS; ++k) {
          const int64_t h = TL::kOutS * th + k;
          if (h >= g.H) break;
          for (int l = 0; l < TL::kOutS; ++l) {
            const int64_t w = TL::kOutS * tw + l;
            if (w >= g.W) break;
            v16 out = y[(i * TL::kOutS + k) * TL::kOutS + l] + b;
            nonfinite += out - out;  // stays 0 unless an output is inf or NaN
            if (stats) {
              const v16 d = out - pilot;
              sum += d;
              sumsq += d * d;
              ++cells;
            }
            if (relu) out = out < 0 ? v16{} : out;  // NaN stays NaN
            store_channels(dests, ((n * g.T + t) * g.H + h) * g.W + w, c0, valid, out, stream);
          }
        }
      }
      if (stats) {
        stats->add(chunk, c0, sum, sumsq);
        if (c0 == 0) stats->add_count(chunk, cells);
      }
    }
  }
}

// Tiles per chunk (unless the caller gives it): V + M within l2_budget(), a multiple of the
// micro-kernel's rows, and no more than an even share of the tiles for each thread.
template <int K>
int64_t chunk_tiles(const Geometry& g, int threads, int64_t requested) {
  if (requested > 0) return requested;
  const int64_t fit = l2_budget() / (4 * Tile<K>::kPositions * (g.cin + kPanel));
  const int64_t step = fit >= 12 ? 12 : 6;
  const int64_t share = round_up(ceil_div(g.tiles(), threads), 6);
  return std::min(share, std::max<int64_t>(6, fit / step * step));
}

// Returns whether any output (before ReLU) is inf or NaN: the transforms subtract neighbouring cells,
// so an infinite input comes out NaN where a direct convolution gives +-inf (the caller recomputes).
// mean / var (optional): the outputs' per-channel batch statistics before ReLU (channel_stats.h).
template <int K>
bool winograd_forward(const float* x, const float* u, const float* bias, bool relu, const Geometry& g,
                      const std::vector<Dest>& dests, int threads, int64_t requested_chunk, float* mean,
                      float* var) {
  constexpr int kPositions = Tile<K>::kPositions;
  const PanelLayout L(kPositions, g.cin, g.cout);
  const int64_t tiles = g.tiles();
  const int64_t P = chunk_tiles<K>(g, threads, requested_chunk);
  const int64_t chunks = ceil_div(tiles, P);
  const std::vector<float> zeros(g.cin, 0.0f);
  const std::vector<float> b = padded_bias(bias, g.cout);
  const bool stream = streams(dests, g.N * g.T * g.H * g.W);
  const int64_t v_stride = position_stride(P * g.cin), v_size = kPositions * v_stride;
  const int64_t m_size = kPositions * position_stride(P * kPanel);
  AlignedBuffer scratch(threads * (v_size + m_size));
  std::unique_ptr<ChunkStats> stats(mean ? new ChunkStats(chunks, g.cout) : nullptr);
  int found = 0;
#pragma omp parallel num_threads(threads)
  {
    float* V = scratch.data + omp_get_thread_num() * (v_size + m_size);
    float* M = V + v_size;
    v16 nonfinite{};
#pragma omp for schedule(dynamic, 1)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t first = chunk * P, count = std::min(P, tiles - first);
      transform_chunk<K>(x, zeros.data(), g, first, count, v_stride, V);
      for (int64_t panel = 0; panel < L.panels(); ++panel) {
        const int64_t width = L.width(panel), m_stride = position_stride(P * width);
        for (int xi = 0; xi < kPositions; ++xi)
          panel_gemm(V + xi * v_stride, g.cin, count, u + L.offset(panel, xi), g.cin, width, M + xi * m_stride);
        store_chunk<K>(M, g, first, count, m_stride, width, panel * kPanel, b.data(), relu, dests, stream, nonfinite,
                       stats.get(), chunk);
      }
    }
    finish_streaming();
    int mine = 0;
    for (int lane = 0; lane < 16; ++lane) mine |= nonfinite[lane] != nonfinite[lane];
#pragma omp atomic update
    found |= mine;
  }
  if (stats && !found) stats->merge(g.cout, mean, var);
  return found != 0;
}

// ---------------------------------------------------------------------------------------------
// Weight gradient. Per tile y = A^T [(G g) * (B^T d)] (separably in T, H, W), so by linearity
//   dL/dg = G^T [ sum over tiles (B^T d) * (A dy) ]:
// dU[xi] (Cin x Cout) = sum_p V[xi][p]^T . dM[xi][p] with V the input transform of the forward and
// dM = A dy the transposed output transform (2 -> 4 values per dimension: [a, a + b, a - b, -b]),
// then dW = G^T dU per dimension (4 -> 3). Threads take chunks of tiles and accumulate into their own
// dU (laid out like the packed weights); the copies are added in thread order, so the result does
// not depend on the schedule for a given thread count.

// A dy along one dimension.
inline void grad_1d(v16 a, v16 b, v16& o0, v16& o1, v16& o2, v16& o3) {
  o0 = a;
  o1 = a + b;
  o2 = a - b;
  o3 = -b;
}

inline v16 load_channels(const float* p, int valid) {
  if (valid == 16) return load<v16>(p);
  v16 v{};
  for (int c = 0; c < valid; ++c) v[c] = p[c];
  return v;
}

// dM for tiles [first, first + count) into rows [row0, row0 + count) of PanelLayout(kPositions, P, cout)
// (P: the rows per position, odd so that the positions fall in different L1 sets, see position_stride):
// for each panel and position a [P][width] block. Output cells outside the output read zeros.
template <int K>
void transform_grad_chunk(const float* dy, int64_t ldy, const float* zeros, const Geometry& g, int64_t first,
                          int64_t count, int64_t P, int64_t row0, float* dM) {
  static_assert(!Tile<K>::kWide, "the weight gradient has F(2, 3) tiles only");
  using TL = Tile<K>;
  constexpr int kO = TL::kOutPerT;
  const PanelLayout L(TL::kPositions, P, g.cout);
  const float* rows[TL::kOutT * kO];
  for (int64_t p = 0; p < count; ++p) {
    const auto [n, tt, th, tw] = g.tile(first + p);
    for (int i = 0; i < TL::kOutT; ++i)
      for (int k = 0; k < TL::kOutS; ++k)
        for (int l = 0; l < TL::kOutS; ++l) {
          const int64_t t = TL::kOutT * tt + i, h = TL::kOutS * th + k, w = TL::kOutS * tw + l;
          const bool inside = t < g.T && h < g.H && w < g.W;
          rows[(i * TL::kOutS + k) * TL::kOutS + l] = inside ? dy + (((n * g.T + t) * g.H + h) * g.W + w) * ldy : zeros;
        }
    for (int64_t c0 = 0; c0 < L.coutp; c0 += 16) {
      const int valid = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, g.cout - c0)));
      v16 d[TL::kOutT * kO];
      for (int i = 0; i < TL::kOutT * kO; ++i) d[i] = load_channels(rows[i] + c0, valid);
      v16 a[TL::kInT][kO];  // [t position][h * 2 + w]
      for (int hw = 0; hw < kO; ++hw) {
        if constexpr (TL::kT == 3) {
          grad_1d(d[hw], d[kO + hw], a[0][hw], a[1][hw], a[2][hw], a[3][hw]);
        } else {
          a[0][hw] = d[hw];
        }
      }
      const int64_t panel = c0 / kPanel, j = c0 % kPanel, width = L.width(panel);
      for (int ti = 0; ti < TL::kInT; ++ti) {
        if constexpr (TL::kS == 3) {
          v16 b[4][2];  // [h position][w]
          for (int w = 0; w < 2; ++w) grad_1d(a[ti][w], a[ti][2 + w], b[0][w], b[1][w], b[2][w], b[3][w]);
          for (int hi = 0; hi < 4; ++hi) {
            v16 o[4];
            grad_1d(b[hi][0], b[hi][1], o[0], o[1], o[2], o[3]);
            for (int wi = 0; wi < 4; ++wi)
              store(dM + L.offset(panel, (ti * 4 + hi) * 4 + wi) + (row0 + p) * width + j, o[wi]);
          }
        } else {
          store(dM + L.offset(panel, ti) + (row0 + p) * width + j, a[ti][0]);
        }
      }
    }
  }
}

// G^T along one dimension: 4 transform positions -> 3 taps.
template <typename T>
inline void weight_grad_1d(const T& u0, const T& u1, const T& u2, const T& u3, T dg[3]) {
  dg[0] = u0 + 0.5 * (u1 + u2);
  dg[1] = 0.5 * (u1 - u2);
  dg[2] = 0.5 * (u1 + u2) + u3;
}

// Element strides of the weight gradient dw[co][ci][kt][kh][kw].
using WeightStrides = std::array<int64_t, 5>;

// dU (PanelLayout(kPositions, cin, cout)) -> dw with element strides (co, ci, kt, kh, kw), in double,
// 8 output channels at a time (vector stores where the output channels are contiguous). Returns
// whether any element is inf or NaN.
template <int K>
bool inverse_weight_transform(const float* dU, float* dw, int64_t cout, int64_t cin, const WeightStrides& st,
                              int threads) {
  static_assert(!Tile<K>::kWide, "the weight gradient has F(2, 3) tiles only");
  using TL = Tile<K>;
  const PanelLayout L(TL::kPositions, cin, cout);
  int64_t tap_offset[TL::kTaps];
  for (int kt = 0; kt < TL::kT; ++kt)
    for (int kh = 0; kh < TL::kS; ++kh)
      for (int kw = 0; kw < TL::kS; ++kw)
        tap_offset[(kt * TL::kS + kh) * TL::kS + kw] = kt * st[2] + kh * st[3] + kw * st[4];
  bool nonfinite = false;
#pragma omp parallel for num_threads(threads) schedule(static) collapse(2) reduction(|| : nonfinite)
  for (int64_t panel = 0; panel < L.panels(); ++panel)
    for (int64_t ci = 0; ci < cin; ++ci) {
      const int64_t width = L.width(panel);
      for (int64_t j = 0; j < width; j += 8) {
        const int64_t co0 = panel * kPanel + j;
        if (co0 >= cout) break;
        v8d u[TL::kPositions];
        for (int xi = 0; xi < TL::kPositions; ++xi)
          u[xi] = __builtin_convertvector(load<v8>(dU + L.offset(panel, xi) + ci * width + j), v8d);
        v8d b[TL::kInT][TL::kTapsS], out[TL::kTaps];  // b: [t position][kh * kS + kw]
        for (int t = 0; t < TL::kInT; ++t) {
          if constexpr (TL::kS == 3) {
            v8d a[4][3];  // [h position][kw]
            for (int h = 0; h < 4; ++h) {
              const v8d* r = u + (t * 4 + h) * 4;
              weight_grad_1d(r[0], r[1], r[2], r[3], a[h]);
            }
            for (int kw = 0; kw < 3; ++kw) {
              v8d r[3];
              weight_grad_1d(a[0][kw], a[1][kw], a[2][kw], a[3][kw], r);
              for (int kh = 0; kh < 3; ++kh) b[t][kh * 3 + kw] = r[kh];
            }
          } else {
            b[t][0] = u[t];
          }
        }
        for (int hw = 0; hw < TL::kTapsS; ++hw) {
          if constexpr (TL::kT == 3) {
            v8d r[3];
            weight_grad_1d(b[0][hw], b[1][hw], b[2][hw], b[3][hw], r);
            for (int kt = 0; kt < 3; ++kt) out[kt * TL::kTapsS + hw] = r[kt];
          } else {
            out[hw] = b[0][hw];
          }
        }
        const int valid = static_cast<int>(std::min<int64_t>(8, cout - co0));
        for (int tap = 0; tap < TL::kTaps; ++tap) {
          float* dst = dw + co0 * st[0] + ci * st[1] + tap_offset[tap];
          const v8 v = __builtin_convertvector(out[tap], v8);
          for (int l = 0; l < valid; ++l) nonfinite = nonfinite || !std::isfinite(v[l]);
          if (valid == 8 && st[0] == 1) {
            store(dst, v);
          } else {
            for (int l = 0; l < valid; ++l) dst[l * st[0]] = v[l];
          }
        }
      }
    }
  return nonfinite;
}

// For layers with few tiles: every tile's V and dM at once (parallel over tiles), then one product
// per (panel, position) over all tiles (parallel over those): no per-thread copies of dU to zero and
// add up, which cost more than the products when each thread has only ~100 tiles.
template <int K>
bool winograd_weight_grad_whole(const float* x, const float* dy, int64_t ldy, const Geometry& g, float* dw,
                                const WeightStrides& st, int threads) {
  constexpr int kPositions = Tile<K>::kPositions;
  const PanelLayout L(kPositions, g.cin, g.cout);
  const int64_t tiles = g.tiles();
  const PanelLayout LM(kPositions, tiles | 1, g.cout);  // an odd row count: see position_stride
  const std::vector<float> zeros(std::max(g.cin, L.coutp), 0.0f);
  const int64_t v_stride = position_stride(tiles * g.cin), v_size = kPositions * v_stride;
  const int64_t m_size = round_up(LM.size(), 16);
  AlignedBuffer scratch(v_size + m_size + L.size());
  float* V = scratch.data;
  float* dM = V + v_size;
  float* dU = dM + m_size;
  constexpr int64_t kTilesPerItem = 8;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t first = 0; first < tiles; first += kTilesPerItem) {
      const int64_t count = std::min(kTilesPerItem, tiles - first);
      transform_chunk<K>(x, zeros.data(), g, first, count, v_stride, V + first * g.cin);
      transform_grad_chunk<K>(dy, ldy, zeros.data(), g, first, count, tiles | 1, first, dM);
    }
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t panel = 0; panel < L.panels(); ++panel)
      for (int xi = 0; xi < kPositions; ++xi) {
        float* u = dU + L.offset(panel, xi);
        std::fill(u, u + g.cin * L.width(panel), 0.0f);
        panel_gemm_at_acc(V + xi * v_stride, g.cin, g.cin, dM + LM.offset(panel, xi), tiles, L.width(panel), u);
      }
  }
  return inverse_weight_transform<K>(dU, dw, g.cout, g.cin, st, threads);
}

constexpr int64_t kGradChunkBytes = int64_t(4) << 20;  // V + dM per thread

template <int K>
bool winograd_weight_grad(const float* x, const float* dy, int64_t ldy, const Geometry& g, float* dw,
                          const WeightStrides& st, int threads, int64_t requested_chunk) {
  constexpr int kPositions = Tile<K>::kPositions;
  const PanelLayout L(kPositions, g.cin, g.cout);
  const int64_t tiles = g.tiles();
  const int64_t fit = kGradChunkBytes / (4 * kPositions * (g.cin + L.coutp));
  const int64_t rule = std::max<int64_t>(1, std::min(std::max<int64_t>(fit, 6), ceil_div(tiles, threads)));
  const int64_t P = requested_chunk > 0 ? std::min(requested_chunk, tiles) : rule;
  const int64_t chunks = ceil_div(tiles, P);
  const std::vector<float> zeros(std::max(g.cin, L.coutp), 0.0f);
  const int64_t v_stride = position_stride(P * g.cin), v_size = kPositions * v_stride;
  const PanelLayout LM(kPositions, P | 1, g.cout);  // an odd row count: see position_stride
  const int64_t m_size = round_up(LM.size(), 16), u_size = round_up(L.size(), 16);
  AlignedBuffer scratch(threads * (v_size + m_size + u_size));
#pragma omp parallel num_threads(threads)
  {
    float* V = scratch.data + omp_get_thread_num() * (v_size + m_size + u_size);
    float* dM = V + v_size;
    float* dU = dM + m_size;
    std::fill(dU, dU + u_size, 0.0f);
#pragma omp for schedule(dynamic, 1)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t first = chunk * P, count = std::min(P, tiles - first);
      transform_chunk<K>(x, zeros.data(), g, first, count, v_stride, V);
      transform_grad_chunk<K>(dy, ldy, zeros.data(), g, first, count, P | 1, 0, dM);
      for (int64_t panel = 0; panel < L.panels(); ++panel) {
        const int64_t width = L.width(panel);
        for (int xi = 0; xi < kPositions; ++xi)
          panel_gemm_at_acc(V + xi * v_stride, g.cin, g.cin, dM + LM.offset(panel, xi), count, width,
                            dU + L.offset(panel, xi));
      }
    }
    // Add every thread's dU into thread 0's, in thread order (each thread sums one slice).
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < u_size; i += 16) {
      v16 sum = load<v16>(scratch.data + (v_size + m_size) + i);
      for (int t = 1; t < threads; ++t) sum += load<v16>(scratch.data + t * (v_size + m_size + u_size) + v_size + m_size + i);
      store(scratch.data + (v_size + m_size) + i, sum);
    }
  }
  return inverse_weight_transform<K>(scratch.data + v_size + m_size, dw, g.cout, g.cin, st, threads);
}

// ---------------------------------------------------------------------------------------------
// The kernel kind of a (kt, ks, ks) kernel: 3x3x3, 1x3x3 or 3x1x1, with F(4, 3) tiles when wide.
int kind(int kt, int ks, bool wide = false) {
  const int w = wide ? k333w : k333;
  if (kt == 3 && ks == 3) return w + k333;
  if (kt == 1 && ks == 3) return w + k133;
  if (kt == 3 && ks == 1) return w + k311;
  throw std::invalid_argument("winograd3d: kernels 3x3x3, 1x3x3 and 3x1x1 only");
}

// Calls f(std::integral_constant<int, K>{}) for the kernel kind K of (kt, ks, wide).
template <typename F>
auto by_kind(int kt, int ks, bool wide, F&& f) {
  switch (kind(kt, ks, wide)) {
    case k333: return f(std::integral_constant<int, k333>{});
    case k133: return f(std::integral_constant<int, k133>{});
    case k311: return f(std::integral_constant<int, k311>{});
    case k333w: return f(std::integral_constant<int, k333w>{});
    case k133w: return f(std::integral_constant<int, k133w>{});
    default: return f(std::integral_constant<int, k311w>{});
  }
}

int64_t packed_size(int64_t cout, int64_t cin, int kt, int ks, bool wide) {
  return by_kind(kt, ks, wide, [&](auto k) { return PanelLayout(Tile<decltype(k)::value>::kPositions, cin, cout).size(); });
}

void prepare_weight(uintptr_t weight, uintptr_t packed, int64_t cout, int64_t cin, int threads,
                    const std::array<int64_t, 5>& strides, bool flip, int kt, int ks, bool wide) {
  std::array<int64_t, 5> s = strides;
  if (s[0] == 0 && s[1] == 0) s = {cin * kt * ks * ks, kt * ks * ks, ks * ks, ks, 1};  // contiguous
  const WeightView wv{as_ptr<const float>(weight), s, flip, kt, ks};
  kind(kt, ks, wide);
  py::gil_scoped_release release;
  by_kind(kt, ks, wide, [&](auto k) {
    transform_weight<decltype(k)::value>(wv, as_ptr<float>(packed), cout, cin, std::max(threads, 1));
  });
}

Geometry geometry(const std::array<int64_t, 4>& ndhw, int64_t cin, int64_t ldx, int64_t cout, int kt, int ks,
                  bool wide = false) {
  const auto [N, T, H, W] = ndhw;
  return by_kind(kt, ks, wide, [&](auto k) {
    using TL = Tile<decltype(k)::value>;
    return Geometry{N, T, H, W, ceil_div(T, TL::kOutT), ceil_div(H, TL::kOutS), ceil_div(W, TL::kOutS), cin, ldx, cout};
  });
}

bool forward(uintptr_t x, int64_t ldx, const std::array<int64_t, 4>& ndhw, int64_t cin, uintptr_t packed,
             int64_t cout, uintptr_t bias, bool relu, const std::vector<std::tuple<uintptr_t, int64_t, int64_t>>& dests,
             int threads, int64_t chunk, int kt, int ks, uintptr_t mean_ptr, uintptr_t var_ptr, bool wide) {
  const auto [N, T, H, W] = ndhw;
  if (N < 1 || T < 1 || H < 1 || W < 1 || cin < 1 || cout < 1 || ldx < cin)
    throw std::invalid_argument("winograd3d_forward: bad sizes");
  std::vector<Dest> out;
  int64_t start = 0;
  for (const auto& [ptr, ld, count] : dests) {
    if (count < 1 || ld < count) throw std::invalid_argument("winograd3d_forward: bad destination");
    out.push_back(Dest{as_ptr<float>(ptr), ld, start, count});
    start += count;
  }
  if (start != cout) throw std::invalid_argument("winograd3d_forward: destinations must hold cout channels");
  const Geometry g = geometry(ndhw, cin, ldx, cout, kt, ks, wide);
  py::gil_scoped_release release;
  const float* b = bias ? as_ptr<const float>(bias) : nullptr;
  const int nthreads = std::max(threads, 1);
  float* mean = mean_ptr ? as_ptr<float>(mean_ptr) : nullptr;
  float* var = mean ? as_ptr<float>(var_ptr) : nullptr;
  return by_kind(kt, ks, wide, [&](auto k) {
    return winograd_forward<decltype(k)::value>(as_ptr<const float>(x), as_ptr<const float>(packed), b, relu, g, out,
                                                nthreads, chunk, mean, var);
  });
}

bool weight_grad(uintptr_t x, int64_t ldx, const std::array<int64_t, 4>& ndhw, int64_t cin, uintptr_t dy,
                 int64_t ldy, int64_t cout, uintptr_t dw, const WeightStrides& strides, int threads, bool whole,
                 int kt, int ks, int64_t chunk) {
  const auto [N, T, H, W] = ndhw;
  if (N < 1 || T < 1 || H < 1 || W < 1 || cin < 1 || cout < 1 || ldx < cin || ldy < cout)
    throw std::invalid_argument("winograd3d_weight_grad: bad sizes");
  for (int64_t stride : strides)
    if (stride < 0) throw std::invalid_argument("winograd3d_weight_grad: negative stride");
  const Geometry g = geometry(ndhw, cin, ldx, cout, kt, ks);
  py::gil_scoped_release release;
  const int n = std::max(threads, 1);
  const auto run = [&](auto kernel_kind) {
    constexpr int K = decltype(kernel_kind)::value;
    return whole ? winograd_weight_grad_whole<K>(as_ptr<const float>(x), as_ptr<const float>(dy), ldy, g,
                                                 as_ptr<float>(dw), strides, n)
                 : winograd_weight_grad<K>(as_ptr<const float>(x), as_ptr<const float>(dy), ldy, g, as_ptr<float>(dw),
                                           strides, n, chunk);
  };
  switch (kind(kt, ks)) {  // F(2, 3) tiles only
    case k333: return run(std::integral_constant<int, k333>{});
    case k133: return run(std::integral_constant<int, k133>{});
    default: return run(std::integral_constant<int, k311>{});
  }
}

}  // namespace

void register_winograd3d(py::module_& m) {
#ifdef __AVX512F__
  m.attr("conv3d_avx512") = true;
#else
  m.attr("conv3d_avx512") = false;
#endif
  m.def("winograd3d_packed_size", &packed_size, py::arg("cout"), py::arg("cin"), py::arg("kt") = 3,
        py::arg("ks") = 3, py::arg("wide") = false,
        "Floats in the transformed (packed) weight of a [cout, cin, kt, ks, ks] convolution (3x3x3, 1x3x3 or "
        "3x1x1; wide: F(4, 3) tiles).");
  m.def("winograd3d_prepare_weight", &prepare_weight, py::arg("weight"), py::arg("packed"), py::arg("cout"),
        py::arg("cin"), py::arg("threads"), py::arg("strides") = std::array<int64_t, 5>{0, 0, 0, 0, 0},
        py::arg("flip") = false, py::arg("kt") = 3, py::arg("ks") = 3, py::arg("wide") = false,
        "Winograd weight transform U = G g G^T per dimension of size 3 (F(2, 3); wide: F(4, 3) along H and W "
        "of 3x3x3 / 1x3x3, along T of 3x1x1) of a float32 [cout, cin, kt, ks, "
        "ks] weight (3x3x3, 1x3x3 or 3x1x1) with element strides (co, ci, kt, kh, kw) (all 0: "
        "contiguous), taps reversed when flip, into a 64-byte aligned buffer of winograd3d_packed_size floats.");
  m.def("winograd3d_forward", &forward, py::arg("x"), py::arg("ldx"), py::arg("ndhw"), py::arg("cin"),
        py::arg("packed"), py::arg("cout"), py::arg("bias"), py::arg("relu"), py::arg("dests"),
        py::arg("threads"), py::arg("chunk") = 0, py::arg("kt") = 3, py::arg("ks") = 3, py::arg("mean") = 0,
        py::arg("var") = 0, py::arg("wide") = false,
        "kt x ks x ks (3x3x3, 1x3x3 or 3x1x1) stride-1 convolution, padding (kt / 2, ks / 2, ks / 2), of "
        "float32 NDHWC rows x (cin channels, row stride ldx) with a "
        "packed weight; bias (0 = none, else cout floats) and ReLU fused. dests: (pointer, row stride, "
        "channel count) per destination, taking the output channels in order. chunk: tiles per work "
        "item (0 = sized for the L2 cache). Returns whether any output before ReLU is inf or NaN (the "
        "transforms turn an infinite input into NaN; recompute such calls with a direct convolution). mean, var "
        "(0 = not wanted, else cout floats each): the outputs' per-channel mean and biased variance before "
        "ReLU, gathered in the store loop (left unset when an output is inf or NaN). wide: F(4, 3) tiles (the "
        "packed weight must be prepared wide too).");
  m.def("winograd3d_weight_grad", &weight_grad, py::arg("x"), py::arg("ldx"), py::arg("ndhw"), py::arg("cin"),
        py::arg("dy"), py::arg("ldy"), py::arg("cout"), py::arg("dw"), py::arg("strides"), py::arg("threads"),
        py::arg("whole") = false, py::arg("kt") = 3, py::arg("ks") = 3, py::arg("chunk") = 0,
        "Weight gradient of the kt x ks x ks stride-1 convolution, padding (kt / 2, ks / 2, ks / 2): float32 "
        "NDHWC rows x "
        "(cin channels, row stride ldx) and output gradient dy (cout channels, row stride ldy) -> float32 dw "
        "[cout][cin][kT][kH][kW] with element strides (co, ci, kt, kh, kw); returns whether any element is inf "
        "or NaN. Chunks of tiles with per-thread accumulators (threads * 64 * cin * "
        "round_up(cout, 16) floats of scratch), or whole: every tile transformed at once (64 * tiles * "
        "(cin + round_up(cout, 16)) floats), one product per (panel, position). chunk: tiles per work item "
        "when not whole (0 = V + dM within 4 MiB per thread).");
}

}  // namespace i3d
