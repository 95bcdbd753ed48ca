// 3D max / average pooling on channels-last (NDHWC) tensors, forward and backward.
//
// Windows are clipped to the real input: padded cells never take part (max pooling behaves as if
// padded with -inf, average pooling divides by the number of real cells, as TensorFlow's SAME
// does). Max: a NaN in a window is its maximum; the first maximum in (t, h, w) order gets the
// gradient. fp16 / bf16 are computed in float32 and rounded once on store.
//
// Vectorisation: channels are innermost and contiguous. Each step of work holds R (8, 4 or 1)
// 64-byte vectors of channels (16 float lanes or 8 double lanes) in registers across the taps of a
// window. Channel tails that do not fill a vector take the same code with partial loads and stores.
// Max uses one max instruction per tap; NaNs, which it skips, are caught by a running sum of the
// taps and those rare blocks are redone with the exact NaN-propagating scan.
//
// Max windows that overlap along T (kT > sT, e.g. 3x3x3 stride 1 or 2) are computed by plane: each
// input plane is pooled over (h, w) once and folded, in t order, into the output planes whose window
// holds it (fewer loads per output, and every input plane is read once). Other windows are scanned
// directly per output element.
//
// Backward is a gather (no atomics, no zero fill, one store per input element): each input cell
// sums the gradients of the few output windows that cover it, in ascending window order, so the
// result is deterministic. Max pooling first records, per output element, which tap of its window
// holds the first maximum: a uint8 per output element (int32 for windows of more than 256 taps), where
// ATen keeps an int64 index tensor; either recorded by the forward (max_pool3d_forward_indexed, kept
// for backward instead of the input) or recomputed from the saved input.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
// GCC 12 flags the intentionally undefined pass-through operand inside its own AVX-512 conversion
// intrinsics (_mm512_undefined_*) as maybe-uninitialized; the warning is about the header, not us.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define I3D_POOL_AVX512 1
#endif

#include "cpu/cpu_utils.h"

namespace py = pybind11;

namespace i3d {
namespace {

using Int3 = std::array<int64_t, 3>;

// ---------------------------------------------------------------------------------------------
// 64-byte vectors (GCC vector extensions: one AVX-512 register with -march=native, split into
// narrower registers on other targets). Conversions use AVX-512 instructions where GCC's generic
// lowering is poor, with plain per-lane loops elsewhere.

template <typename E, int L>
struct VecOf {
  typedef E type __attribute__((vector_size(sizeof(E) * L)));
};

template <typename A> struct IntOf;
template <> struct IntOf<float> { using type = int32_t; };
template <> struct IntOf<double> { using type = int64_t; };

template <typename A>
struct Simd {
  static constexpr int L = 64 / sizeof(A);
  using F = typename VecOf<A, L>::type;                       // values
  using M = typename VecOf<typename IntOf<A>::type, L>::type;  // masks and tap indices
};

template <typename V, typename S>
inline V splat(S s) {
  using E = std::remove_reference_t<decltype(V{}[0])>;
  return V{} + static_cast<E>(s);
}

// Storage T -> accumulation vector, L full lanes.
template <typename A, typename T>
inline typename Simd<A>::F load_full(const T* p) {
  using F = typename Simd<A>::F;
  constexpr int L = Simd<A>::L;
  F v;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(&v, p, sizeof(F));
    return v;
  } else if constexpr (std::is_same_v<T, bf16>) {
    using U16 = typename VecOf<uint16_t, L>::type;
    using U32 = typename VecOf<uint32_t, L>::type;
    U16 bits;
    std::memcpy(&bits, p, sizeof(U16));
    const U32 wide = __builtin_convertvector(bits, U32) << 16;
    std::memcpy(&v, &wide, sizeof(F));
    return v;
  }
#ifdef I3D_POOL_AVX512
  if constexpr (std::is_same_v<T, f16>) {
    return (F)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
#endif
  for (int i = 0; i < L; ++i) v[i] = to_float(p[i]);
  return v;
}

// Accumulation vector -> storage T (round to nearest even), L full lanes.
template <typename A, typename T>
inline void store_full(T* p, typename Simd<A>::F v) {
  constexpr int L = Simd<A>::L;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(p, &v, sizeof(v));
    return;
  }
#ifdef I3D_POOL_AVX512
  if constexpr (std::is_same_v<T, f16>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return;
  } else if constexpr (std::is_same_v<T, bf16>) {
    using U32 = typename VecOf<uint32_t, L>::type;
    using M = typename Simd<A>::M;
    U32 u;
    std::memcpy(&u, &v, sizeof(u));
    const M nan = (u & 0x7fffffffu) > 0x7f800000u;
    U32 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // same rounding as cpu_utils.h from_float
    r = nan ? ((u >> 16) | 0x40u) : r;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16((__m512i)r));
    return;
  }
#endif
  for (int i = 0; i < L; ++i) p[i] = from_float<T>(v[i]);
}

// Loads / stores of n lanes; kFull (n == L) is the fast path, tails go through a buffer.
template <typename A, bool kFull, typename T>
inline typename Simd<A>::F load(const T* p, int n) {
  if constexpr (kFull) {
    return load_full<A>(p);
  } else {
    T buf[Simd<A>::L];
    std::memset(static_cast<void*>(buf), 0, sizeof(buf));
    std::memcpy(static_cast<void*>(buf), p, n * sizeof(T));
    return load_full<A>(buf);
  }
}

template <typename A, bool kFull, typename T>
inline void store(T* p, typename Simd<A>::F v, int n) {
  if constexpr (kFull) {
    store_full<A>(p, v);
  } else {
    T buf[Simd<A>::L];
    store_full<A>(buf, v);
    std::memcpy(static_cast<void*>(p), buf, n * sizeof(T));
  }
}

// Tap indices (uint8 or int32 storage) <-> mask-width integer lanes.
template <typename A, typename I>
inline typename Simd<A>::M load_index_full(const I* p) {
  using M = typename Simd<A>::M;
#ifdef I3D_POOL_AVX512
  if constexpr (sizeof(A) == 4 && sizeof(I) == 1) {
    return (M)_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (sizeof(A) == 8 && sizeof(I) == 1) {
    return (M)_mm512_cvtepu8_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (sizeof(A) == 8 && sizeof(I) == 4) {
    return (M)_mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
#endif
  M m;
  for (int i = 0; i < Simd<A>::L; ++i) m[i] = p[i];
  return m;
}

template <typename A, typename I>
inline void store_index_full(I* p, typename Simd<A>::M m) {
#ifdef I3D_POOL_AVX512
  if constexpr (sizeof(A) == 4 && sizeof(I) == 1) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8((__m512i)m));
    return;
  } else if constexpr (sizeof(A) == 8 && sizeof(I) == 1) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm512_cvtepi64_epi8((__m512i)m));
    return;
  } else if constexpr (sizeof(A) == 8 && sizeof(I) == 4) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi64_epi32((__m512i)m));
    return;
  }
#endif
  for (int i = 0; i < Simd<A>::L; ++i) p[i] = static_cast<I>(m[i]);
}

template <typename A, bool kFull, typename I>
inline typename Simd<A>::M load_index(const I* p, int n) {
  if constexpr (kFull) {
    return load_index_full<A>(p);
  } else {
    I buf[Simd<A>::L] = {};
    std::memcpy(buf, p, n * sizeof(I));
    return load_index_full<A>(buf);
  }
}

template <typename A, bool kFull, typename I>
inline void store_index(I* p, typename Simd<A>::M m, int n) {
  if constexpr (kFull) {
    store_index_full<A>(p, m);
  } else {
    I buf[Simd<A>::L];
    store_index_full<A>(buf, m);
    std::memcpy(p, buf, n * sizeof(I));
  }
}

// Calls fn(R, full, c, lanes) over channels [c0, c1): blocks of 8 full vectors, then 4, then single
// vectors, then one partial vector. R and full are std::integral_constant.
constexpr int kBlock = 8;

template <int L, typename Fn>
inline void channel_vectors(int64_t c0, int64_t c1, Fn&& fn) {
  int64_t c = c0;
  for (; c + kBlock * L <= c1; c += kBlock * L) fn(std::integral_constant<int, kBlock>{}, std::true_type{}, c, L);
  if (c + 4 * L <= c1) {
    fn(std::integral_constant<int, 4>{}, std::true_type{}, c, L);
    c += 4 * L;
  }
  for (; c + L <= c1; c += L) fn(std::integral_constant<int, 1>{}, std::true_type{}, c, L);
  if (c < c1) fn(std::integral_constant<int, 1>{}, std::false_type{}, c, static_cast<int>(c1 - c));
}

// ---------------------------------------------------------------------------------------------
// Geometry.

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct PoolGeometry {
  int64_t N, T, H, W, C;     // input
  int64_t OT, OH, OW;        // output
  Int3 kernel, stride, pad;  // pad = cells of padding before the input, per dimension

  int64_t in_offset(int64_t n, int64_t t, int64_t h, int64_t w) const {
    return (((n * T + t) * H + h) * W + w) * C;
  }
  int64_t out_offset(int64_t n, int64_t t, int64_t h, int64_t w) const {
    return (((n * OT + t) * OH + h) * OW + w) * C;
  }
};

// Window `o` along one dimension: its unclipped start and its real (unpadded) cells [lo, hi).
struct Span {
  int64_t start, lo, hi;
};
inline Span window(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t size) {
  const int64_t start = o * stride - pad;
  return {start, std::max<int64_t>(start, 0), std::min<int64_t>(start + kernel, size)};
}

// The windows [lo, hi) that cover input cell i along one dimension (empty for uncovered cells).
struct Cover {
  int64_t lo, hi;
};
inline Cover covering(int64_t i, int64_t stride, int64_t pad, int64_t kernel, int64_t out) {
  const int64_t first = i + pad - kernel + 1;  // window o covers i iff first <= o * stride <= i + pad
  return {first <= 0 ? 0 : ceil_div(first, stride), std::min<int64_t>(out, (i + pad) / stride + 1)};
}

// Work split: `rows` rows of C channels; when rows are few, rows x channel chunks (multiples of
// `granule` lanes) so that every thread gets several tasks. Tasks are handed out dynamically
// (schedule(dynamic, 1)): on a shared machine a preempted thread delays only its current task, not a
// static share of the work.
struct Task {
  int64_t row, c0, c1;  // a row of positions and its channels [c0, c1)
};
struct Tasks {
  int64_t chunks, chunk, count;
  Task at(int64_t task, int64_t C) const {
    const int64_t c0 = task % chunks * chunk;
    return {task / chunks, c0, std::min(C, c0 + chunk)};
  }
};
inline Tasks split_tasks(int64_t rows, int64_t C, int threads, int64_t granule) {
  const int64_t want = 4 * static_cast<int64_t>(threads);
  int64_t chunks = 1;
  if (rows < want) chunks = std::max<int64_t>(1, std::min(ceil_div(want, rows), ceil_div(C, granule)));
  const int64_t chunk = ceil_div(ceil_div(C, chunks), granule) * granule;
  chunks = ceil_div(C, chunk);
  return {chunks, chunk, rows * chunks};
}

// The real cells of one window: counts per dimension and element strides of T and H.
struct Taps {
  int64_t nt, nh, nw, st, sh;
};

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename F, typename M>
inline F max_nan(F acc, F v) {
  const M take = (v > acc) | (v != v);  // NaN propagates, as in PyTorch
  return take ? v : acc;
}

// True when any lane of v is NaN.
template <typename F>
inline bool any_nan(F v) {
#ifdef I3D_POOL_AVX512
  if constexpr (sizeof(v[0]) == 4)
    return _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q) != 0;
  else
    return _mm512_cmp_pd_mask((__m512d)v, (__m512d)v, _CMP_UNORD_Q) != 0;
#else
  bool nan = false;
  for (int i = 0; i < static_cast<int>(sizeof(F) / sizeof(v[0])); ++i) nan |= v[i] != v[i];
  return nan;
#endif
}

// Reduces the window of real cells `k` starting at x (R vectors of channels) into y, whose storage
// O is the output type or the accumulation type. Max scans taps in (t, h, w) order, the
// first maximum winning ties; average divides the sum by `count`.
template <typename T, typename O, bool kMax, int R, bool kFull>
inline void window_exact(const T* x, O* y, const Taps& k, int64_t C, int n, typename Acc<T>::type count) {
  using A = typename Acc<T>::type;
  using F = typename Simd<A>::F;
  using M = typename Simd<A>::M;
  constexpr int L = Simd<A>::L;
  F acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = splat<F>(kMax ? -std::numeric_limits<A>::infinity() : A(0));
  for (int64_t t = 0; t < k.nt; ++t)
    for (int64_t h = 0; h < k.nh; ++h) {
      const T* p = x + t * k.st + h * k.sh;
      for (int64_t w = 0; w < k.nw; ++w, p += C) {
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const F v = load<A, kFull>(p + r * L, n);
          if constexpr (kMax)
            acc[r] = max_nan<F, M>(acc[r], v);
          else
            acc[r] += v;
        }
      }
    }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) store<A, kFull>(y + r * L, kMax ? acc[r] : acc[r] / count, n);
}

// Same result as window_exact. Max fast path: `v > acc ? v : acc` is one max instruction that
// keeps acc on ties (first maximum wins) but skips NaNs; a running sum of the taps turns NaN when a
// tap is NaN, and those rare blocks (or ones holding both +inf and -inf) are redone exactly.
template <typename T, typename O, bool kMax, int R, bool kFull>
inline void window_vectors(const T* x, O* y, const Taps& k, int64_t C, int n, typename Acc<T>::type count) {
  using A = typename Acc<T>::type;
  using F = typename Simd<A>::F;
  constexpr int L = Simd<A>::L;
  if constexpr (!kMax) {
    window_exact<T, O, kMax, R, kFull>(x, y, k, C, n, count);
  } else {
    F acc[R], sum[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      acc[r] = splat<F>(-std::numeric_limits<A>::infinity());
      sum[r] = F{};
    }
    for (int64_t t = 0; t < k.nt; ++t)
      for (int64_t h = 0; h < k.nh; ++h) {
        const T* p = x + t * k.st + h * k.sh;
        for (int64_t w = 0; w < k.nw; ++w, p += C) {
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const F v = load<A, kFull>(p + r * L, n);
            acc[r] = v > acc[r] ? v : acc[r];
            sum[r] += v;
          }
        }
      }
    F nan = F{};
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) nan += sum[r];
    if (__builtin_expect(any_nan(nan), 0)) {
      window_exact<T, O, kMax, R, kFull>(x, y, k, C, n, count);
      return;
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) store<A, kFull>(y + r * L, acc[r], n);
  }
}

// Direct: every output element scans its window. Tasks are output rows (n, ot, oh), split into
// channel chunks when rows are few.
template <typename T, bool kMax>
void forward_direct(const T* x, T* y, const PoolGeometry& g, int threads) {
  using A = typename Acc<T>::type;
  constexpr int L = Simd<A>::L;
  const int64_t C = g.C;
  const Tasks tasks = split_tasks(g.N * g.OT * g.OH, C, threads, kBlock * L);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks.count; ++task) {
    const auto [row, c0, c1] = tasks.at(task, C);
    const int64_t oh = row % g.OH, ot = row / g.OH % g.OT, n = row / (g.OH * g.OT);
    const Span st = window(ot, g.stride[0], g.pad[0], g.kernel[0], g.T);
    const Span sh = window(oh, g.stride[1], g.pad[1], g.kernel[1], g.H);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const Span sw = window(ow, g.stride[2], g.pad[2], g.kernel[2], g.W);
      const Taps k{st.hi - st.lo, sh.hi - sh.lo, sw.hi - sw.lo, g.H * g.W * C, g.W * C};
      const A count = A(k.nt * k.nh * k.nw);
      const T* p = x + g.in_offset(n, st.lo, sh.lo, sw.lo);
      T* q = y + g.out_offset(n, ot, oh, ow);
      channel_vectors<L>(c0, c1, [&](auto R, auto full, int64_t c, int lanes) {
        window_vectors<T, T, kMax, decltype(R)::value, decltype(full)::value>(p + c, q + c, k, C, lanes, count);
      });
    }
  }
}

// Max pooling whose windows overlap along T (kT > sT): each input plane t is max-pooled over (h, w)
// once and folded into the (up to ceil(kT / sT)) output planes whose window holds it, in t order.
// Scanning (h, w) first and t last picks the same first maximum as the direct (t, h, w) scan, with
// about kH*kW*sT + 2*kT memory operations per output instead of kT*kH*kW. The output is the
// accumulator: the maximum of storage values is a storage value, so fp16 / bf16 lose nothing.
// Tasks are output rows (n, oh) across all planes (split into channel chunks when few), so no
// plane is pooled twice.

// Max of the (h, w) window of one input plane (R vectors of channels), folded into the outputs whose
// T window holds this plane: the first plane of a window stores, later ones merge.
template <typename T, int R, bool kFull>
inline void fold_vectors(const T* x, T* const* outs, const bool* first, int nouts, const Taps& k, int64_t C,
                         int n) {
  using A = typename Acc<T>::type;
  using F = typename Simd<A>::F;
  using M = typename Simd<A>::M;
  constexpr int L = Simd<A>::L;
  A buf[R * L];
  window_vectors<T, A, true, R, kFull>(x, buf, k, C, kFull ? L : n, A(1));
  for (int j = 0; j < nouts; ++j) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      F v = load<A, true>(buf + r * L, L);
      if (!first[j]) v = max_nan<F, M>(load<A, kFull>(outs[j] + r * L, n), v);
      store<A, kFull>(outs[j] + r * L, v, n);
    }
  }
}

constexpr int64_t kMaxFolds = 8;  // output planes one input plane may feed (ceil(kT / sT))

inline bool use_fold(const PoolGeometry& g) {
  return g.kernel[0] > g.stride[0] && ceil_div(g.kernel[0], g.stride[0]) <= kMaxFolds;
}

// The output planes [lo, lo + count) whose T window holds input plane t.
struct Fed {
  int64_t lo, count;
};
inline Fed fed_planes(int64_t t, const PoolGeometry& g) {
  const Cover ct = covering(t, g.stride[0], g.pad[0], g.kernel[0], g.OT);
  return {ct.lo, std::max<int64_t>(ct.hi - ct.lo, 0)};
}

template <typename T>
void max_forward_fold(const T* x, T* y, const PoolGeometry& g, int threads) {
  using A = typename Acc<T>::type;
  constexpr int L = Simd<A>::L;
  const int64_t C = g.C, kT = g.kernel[0], sT = g.stride[0];
  const int64_t plane = g.OH * g.OW * C;
  const Tasks tasks = split_tasks(g.N * g.OH, C, threads, L);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks.count; ++task) {
    const auto [row, c0, c1] = tasks.at(task, C);
    const int64_t n = row / g.OH, oh = row % g.OH;
    const Span sh = window(oh, g.stride[1], g.pad[1], g.kernel[1], g.H);
    bool first[kMaxFolds];
    for (int64_t t = 0; t < g.T; ++t) {
      const Fed fed = fed_planes(t, g);
      const int nouts = static_cast<int>(fed.count);
      for (int j = 0; j < nouts; ++j) first[j] = t == window(fed.lo + j, sT, g.pad[0], kT, g.T).lo;
      for (int64_t ow = 0; ow < g.OW && nouts > 0; ++ow) {
        const Span sw = window(ow, g.stride[2], g.pad[2], g.kernel[2], g.W);
        const Taps k{1, sh.hi - sh.lo, sw.hi - sw.lo, 0, g.W * C};
        const T* p = x + g.in_offset(n, t, sh.lo, sw.lo);
        T* q = y + g.out_offset(n, fed.lo, oh, ow);
        channel_vectors<L>(c0, c1, [&](auto R, auto full, int64_t c, int lanes) {
          T* outs[kMaxFolds];
          for (int j = 0; j < nouts; ++j) outs[j] = q + j * plane + c;
          fold_vectors<T, decltype(R)::value, decltype(full)::value>(p + c, outs, first, nouts, k, C, lanes);
        });
      }
    }
  }
}

template <typename T, bool kMax>
void pool_forward(const T* x, T* y, const PoolGeometry& g, int threads) {
  if constexpr (kMax) {
    if (use_fold(g)) return max_forward_fold<T>(x, y, g, threads);
  }
  forward_direct<T, kMax>(x, y, g, threads);
}

// ---------------------------------------------------------------------------------------------
// Backward.

// First maximum of one window (R vectors of channels) and its tap: the flat (t, h, w) position in
// the unclipped window, first_tap being that of the window's first real cell. A NaN is the maximum
// (the first NaN wins); a window of -inf keeps its first real cell.
template <typename T, int R, bool kFull>
inline void argmax_exact(const T* x, const Taps& k, int64_t C, int n, int64_t first_tap, int64_t kH, int64_t kW,
                         typename Simd<typename Acc<T>::type>::F (&best)[R],
                         typename Simd<typename Acc<T>::type>::M (&where)[R]) {
  using A = typename Acc<T>::type;
  using F = typename Simd<A>::F;
  using M = typename Simd<A>::M;
  constexpr int L = Simd<A>::L;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    best[r] = splat<F>(-std::numeric_limits<A>::infinity());
    where[r] = splat<M>(first_tap);
  }
  for (int64_t t = 0; t < k.nt; ++t)
    for (int64_t h = 0; h < k.nh; ++h) {
      const T* p = x + t * k.st + h * k.sh;
      int64_t tap = first_tap + (t * kH + h) * kW;
      for (int64_t w = 0; w < k.nw; ++w, p += C, ++tap) {
        const M tapv = splat<M>(tap);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const F v = load<A, kFull>(p + r * L, n);
          const M take = (v > best[r]) | ((v != v) & (best[r] == best[r]));  // a NaN wins at once
          best[r] = take ? v : best[r];
          where[r] = take ? tapv : where[r];
        }
      }
    }
}

// Same result as argmax_exact with half the instructions per tap: NaNs are skipped by `v > best`
// and detected by a running sum of the taps; blocks with a NaN sum are redone exactly.
template <typename T, int R, bool kFull>
inline void argmax_regs(const T* x, const Taps& k, int64_t C, int n, int64_t first_tap, int64_t kH, int64_t kW,
                        typename Simd<typename Acc<T>::type>::F (&best)[R],
                        typename Simd<typename Acc<T>::type>::M (&where)[R]) {
  using A = typename Acc<T>::type;
  using F = typename Simd<A>::F;
  using M = typename Simd<A>::M;
  constexpr int L = Simd<A>::L;
  F sum[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    best[r] = splat<F>(-std::numeric_limits<A>::infinity());
    sum[r] = F{};
    where[r] = splat<M>(first_tap);
  }
  for (int64_t t = 0; t < k.nt; ++t)
    for (int64_t h = 0; h < k.nh; ++h) {
      const T* p = x + t * k.st + h * k.sh;
      int64_t tap = first_tap + (t * kH + h) * kW;
      for (int64_t w = 0; w < k.nw; ++w, p += C, ++tap) {
        const M tapv = splat<M>(tap);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const F v = load<A, kFull>(p + r * L, n);
          const M take = v > best[r];
          best[r] = take ? v : best[r];
          where[r] = take ? tapv : where[r];
          sum[r] += v;
        }
      }
    }
  F nan = F{};
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) nan += sum[r];
  if (__builtin_expect(any_nan(nan), 0)) argmax_exact<T, R, kFull>(x, k, C, n, first_tap, kH, kW, best, where);
}

// The window's first maximum into idx, and its value into vals unless that is null.
template <typename T, typename I, int R, bool kFull>
inline void argmax_vectors(const T* x, T* vals, I* idx, const Taps& k, int64_t C, int n, int64_t first_tap,
                           int64_t kH, int64_t kW) {
  using A = typename Acc<T>::type;
  constexpr int L = Simd<A>::L;
  typename Simd<A>::F best[R];
  typename Simd<A>::M where[R];
  argmax_regs<T, R, kFull>(x, k, C, n, first_tap, kH, kW, best, where);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    store_index<A, kFull>(idx + r * L, where[r], n);
    if (vals != nullptr) store<A, kFull>(vals + r * L, best[r], n);
  }
}

// Argmax of the (h, w) window of one input plane, folded into the outputs whose T window holds the
// plane (in t order, like max_forward_fold): the first plane of a window stores its value and tap,
// later planes replace them when strictly greater (or the first NaN). `vals` is scratch storage for
// the running maxima (storage type: exact).
template <typename T, typename I, int R, bool kFull>
inline void fold_argmax_vectors(const T* x, T* const* vals, I* const* idx, const bool* first, const int64_t* tap_t,
                                int nouts, const Taps& k, int64_t C, int n, int64_t first_tap, int64_t kH,
                                int64_t kW) {
  using A = typename Acc<T>::type;
  using F = typename Simd<A>::F;
  using M = typename Simd<A>::M;
  constexpr int L = Simd<A>::L;
  F best[R];
  M where[R];
  argmax_regs<T, R, kFull>(x, k, C, n, first_tap, kH, kW, best, where);
  for (int j = 0; j < nouts; ++j) {
    const M shift = splat<M>(tap_t[j]);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      F v = best[r];
      M i = where[r] + shift;
      if (!first[j]) {
        const F old = load<A, kFull>(vals[j] + r * L, n);
        const M old_i = load_index<A, kFull>(idx[j] + r * L, n);
        const M take = (v > old) | ((v != v) & (old == old));
        v = take ? v : old;
        i = take ? i : old_i;
      }
      store<A, kFull>(vals[j] + r * L, v, n);
      store_index<A, kFull>(idx[j] + r * L, i, n);
    }
  }
}

// The windows covering one input cell: counts per dimension, output element strides of T and H,
// and the tap this cell is in the first window; the tap falls by tap_t / tap_h / tap_w per step.
struct Covers {
  int64_t nt, nh, nw, st, sh, tap0, tap_t, tap_h, tap_w;
};

template <typename T, typename I, int R, bool kFull>
inline void max_grad_vectors(const T* go, const I* idx, T* gin, const Covers& v, int64_t C, int n) {
  using A = typename Acc<T>::type;
  using F = typename Simd<A>::F;
  using M = typename Simd<A>::M;
  constexpr int L = Simd<A>::L;
  F acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = F{};
  for (int64_t t = 0; t < v.nt; ++t)
    for (int64_t h = 0; h < v.nh; ++h) {
      const int64_t off = t * v.st + h * v.sh;
      int64_t tap = v.tap0 - t * v.tap_t - h * v.tap_h;
      for (int64_t w = 0; w < v.nw; ++w, tap -= v.tap_w) {
        const M tapv = splat<M>(tap);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const int64_t o = off + w * C + r * L;
          const M hit = load_index<A, kFull>(idx + o, n) == tapv;
          acc[r] += hit ? load<A, kFull>(go + o, n) : F{};
        }
      }
    }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) store<A, kFull>(gin + r * L, acc[r], n);
}

template <typename T, int R, bool kFull>
inline void avg_grad_vectors(const T* go, T* gin, const Covers& v, int64_t C, int n,
                             const typename Acc<T>::type* inv_t, const typename Acc<T>::type* inv_h,
                             const typename Acc<T>::type* inv_w) {
  using A = typename Acc<T>::type;
  using F = typename Simd<A>::F;
  constexpr int L = Simd<A>::L;
  F acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = F{};
  for (int64_t t = 0; t < v.nt; ++t)
    for (int64_t h = 0; h < v.nh; ++h) {
      const A share_th = inv_t[t] * inv_h[h];
      for (int64_t w = 0; w < v.nw; ++w) {
        const F share = splat<F>(share_th * inv_w[w]);
        const int64_t o = t * v.st + h * v.sh + w * C;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r] += load<A, kFull>(go + o + r * L, n) * share;
      }
    }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) store<A, kFull>(gin + r * L, acc[r], n);
}

// 1 / (real cells of window o) along one dimension, for every o.
template <typename A>
std::vector<A> inverse_counts(int64_t out, int64_t stride, int64_t pad, int64_t kernel, int64_t size) {
  std::vector<A> inv(out);
  for (int64_t o = 0; o < out; ++o) {
    const Span s = window(o, stride, pad, kernel, size);
    inv[o] = A(1) / A(s.hi - s.lo);
  }
  return inv;
}

// Max pooling's first maximum per output element: vals (the window maxima, storage type T) and idx
// (the tap of the window holding the first one, in (t, h, w) order).
template <typename T, typename I>
void max_index_pass(const T* x, T* vals, I* idx, const PoolGeometry& g, int threads) {
  using A = typename Acc<T>::type;
  constexpr int L = Simd<A>::L;
  const int64_t C = g.C, kT = g.kernel[0], kH = g.kernel[1], kW = g.kernel[2];
  const Tasks out_tasks = split_tasks(g.N * g.OT * g.OH, C, threads, kBlock * L);
  const Tasks fold_tasks = split_tasks(g.N * g.OH, C, threads, L);
  const bool fold = use_fold(g);
#pragma omp parallel num_threads(threads)
  {
    if (fold) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < fold_tasks.count; ++task) {
        const auto [row, c0, c1] = fold_tasks.at(task, C);
        const int64_t n = row / g.OH, oh = row % g.OH;
        const Span sh = window(oh, g.stride[1], g.pad[1], kH, g.H);
        const int64_t plane = g.OH * g.OW * C;
        bool first[kMaxFolds];
        int64_t tap_t[kMaxFolds];
        for (int64_t t = 0; t < g.T; ++t) {
          const Fed fed = fed_planes(t, g);
          const int nouts = static_cast<int>(fed.count);
          for (int j = 0; j < nouts; ++j) {
            const Span sj = window(fed.lo + j, g.stride[0], g.pad[0], kT, g.T);
            first[j] = t == sj.lo;
            tap_t[j] = (t - sj.start) * kH * kW;
          }
          for (int64_t ow = 0; ow < g.OW && nouts > 0; ++ow) {
            const Span sw = window(ow, g.stride[2], g.pad[2], kW, g.W);
            const Taps k{1, sh.hi - sh.lo, sw.hi - sw.lo, 0, g.W * C};
            const int64_t first_tap = (sh.lo - sh.start) * kW + (sw.lo - sw.start);
            const T* p = x + g.in_offset(n, t, sh.lo, sw.lo);
            const int64_t o = g.out_offset(n, fed.lo, oh, ow);
            channel_vectors<L>(c0, c1, [&](auto R, auto full, int64_t c, int lanes) {
              T* v[kMaxFolds];
              I* q[kMaxFolds];
              for (int j = 0; j < nouts; ++j) {
                v[j] = vals + o + j * plane + c;
                q[j] = idx + o + j * plane + c;
              }
              fold_argmax_vectors<T, I, decltype(R)::value, decltype(full)::value>(
                  p + c, v, q, first, tap_t, nouts, k, C, lanes, first_tap, kH, kW);
            });
          }
        }
      }
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < out_tasks.count; ++task) {
        const auto [row, c0, c1] = out_tasks.at(task, C);
        const int64_t oh = row % g.OH, ot = row / g.OH % g.OT, n = row / (g.OH * g.OT);
        const Span st = window(ot, g.stride[0], g.pad[0], kT, g.T);
        const Span sh = window(oh, g.stride[1], g.pad[1], kH, g.H);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const Span sw = window(ow, g.stride[2], g.pad[2], kW, g.W);
          const Taps k{st.hi - st.lo, sh.hi - sh.lo, sw.hi - sw.lo, g.H * g.W * C, g.W * C};
          const int64_t first_tap = ((st.lo - st.start) * kH + (sh.lo - sh.start)) * kW + (sw.lo - sw.start);
          const T* p = x + g.in_offset(n, st.lo, sh.lo, sw.lo);
          const int64_t o = g.out_offset(n, ot, oh, ow);
          channel_vectors<L>(c0, c1, [&](auto R, auto full, int64_t c, int lanes) {
            argmax_vectors<T, I, decltype(R)::value, decltype(full)::value>(
                p + c, vals == nullptr ? nullptr : vals + o + c, idx + o + c, k, C, lanes, first_tap, kH, kW);
          });
        }
      }
    }
  }
}

// The gradient as a gather: each input cell sums, in ascending window order, the output gradients
// of the windows covering it (max: only those whose recorded tap is this cell).
template <typename T, typename I, bool kMax>
void gather_pass(const T* grad_out, const I* idx, T* grad_in, const PoolGeometry& g, int threads) {
  using A = typename Acc<T>::type;
  constexpr int L = Simd<A>::L;
  const int64_t C = g.C, kT = g.kernel[0], kH = g.kernel[1], kW = g.kernel[2];
  std::vector<A> inv_t, inv_h, inv_w;
  if (!kMax) {
    inv_t = inverse_counts<A>(g.OT, g.stride[0], g.pad[0], kT, g.T);
    inv_h = inverse_counts<A>(g.OH, g.stride[1], g.pad[1], kH, g.H);
    inv_w = inverse_counts<A>(g.OW, g.stride[2], g.pad[2], kW, g.W);
  }
  const Tasks in_tasks = split_tasks(g.N * g.T * g.H, C, threads, kBlock * L);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t task = 0; task < in_tasks.count; ++task) {
    const auto [row, c0, c1] = in_tasks.at(task, C);
    const int64_t h = row % g.H, t = row / g.H % g.T, n = row / (g.H * g.T);
    const Cover ct = covering(t, g.stride[0], g.pad[0], kT, g.OT);
    const Cover ch = covering(h, g.stride[1], g.pad[1], kH, g.OH);
    for (int64_t w = 0; w < g.W; ++w) {
      const Cover cw = covering(w, g.stride[2], g.pad[2], kW, g.OW);
      const int64_t nt = std::max<int64_t>(ct.hi - ct.lo, 0), nh = std::max<int64_t>(ch.hi - ch.lo, 0),
                    nw = std::max<int64_t>(cw.hi - cw.lo, 0);
      const int64_t tap0 = ((t + g.pad[0] - ct.lo * g.stride[0]) * kH + (h + g.pad[1] - ch.lo * g.stride[1])) * kW +
                           (w + g.pad[2] - cw.lo * g.stride[2]);
      const Covers v{nt, nh, nw, g.OH * g.OW * C, g.OW * C, tap0, g.stride[0] * kH * kW, g.stride[1] * kW,
                     g.stride[2]};
      const int64_t o = g.out_offset(n, std::min(ct.lo, g.OT - 1), std::min(ch.lo, g.OH - 1),
                                     std::min(cw.lo, g.OW - 1));
      T* gin = grad_in + g.in_offset(n, t, h, w);
      channel_vectors<L>(c0, c1, [&](auto R, auto full, int64_t c, int lanes) {
        if constexpr (kMax)
          max_grad_vectors<T, I, decltype(R)::value, decltype(full)::value>(grad_out + o + c, idx + o + c, gin + c,
                                                                             v, C, lanes);
        else
          avg_grad_vectors<T, decltype(R)::value, decltype(full)::value>(
              grad_out + o + c, gin + c, v, C, lanes, inv_t.data() + ct.lo, inv_h.data() + ch.lo,
              inv_w.data() + cw.lo);
      });
    }
  }
}

// Max: the tap indices are `index` when given (recorded by the forward), else recomputed from x
// into a transient buffer (the running maxima of the fold kept in grad_in, which the gather then
// overwrites, when the output is not larger than the input).
template <typename T, typename I, bool kMax>
void pool_backward_impl(const T* grad_out, const T* x, const I* index, T* grad_in, const PoolGeometry& g,
                        int threads) {
  if (!kMax) return gather_pass<T, I, false>(grad_out, nullptr, grad_in, g, threads);
  const int64_t out_numel = g.N * g.OT * g.OH * g.OW * g.C;
  std::unique_ptr<I[]> own_idx(index == nullptr ? new I[out_numel] : nullptr);
  if (index == nullptr) {
    const bool own = use_fold(g) && out_numel > g.N * g.T * g.H * g.W * g.C;
    std::unique_ptr<T[]> own_vals(own ? new T[out_numel] : nullptr);
    max_index_pass<T, I>(x, own_vals ? own_vals.get() : use_fold(g) ? grad_in : nullptr, own_idx.get(), g, threads);
    index = own_idx.get();
  }
  gather_pass<T, I, true>(grad_out, index, grad_in, g, threads);
}

// Tap indices are uint8 for windows of up to 256 taps, int32 beyond.
bool wide_index(const PoolGeometry& g) { return g.kernel[0] * g.kernel[1] * g.kernel[2] > 256; }

template <typename T, bool kMax>
void pool_backward(const T* grad_out, const T* x, const void* index, T* grad_in, const PoolGeometry& g,
                   int threads) {
  if (!kMax || !wide_index(g))
    pool_backward_impl<T, uint8_t, kMax>(grad_out, x, static_cast<const uint8_t*>(index), grad_in, g, threads);
  else
    pool_backward_impl<T, int32_t, kMax>(grad_out, x, static_cast<const int32_t*>(index), grad_in, g, threads);
}

// ---------------------------------------------------------------------------------------------
// Python entry points.

// Threads worth waking for `work` (tap visits): small problems run on the calling thread, since
// waking a sleeping OpenMP team costs more than they take.
int worth_threads(int threads, int64_t work) {
  constexpr int64_t kGrain = 1 << 16;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, work / kGrain)));
}

int64_t tap_visits(const PoolGeometry& g) {
  return g.N * g.OT * g.OH * g.OW * g.C * g.kernel[0] * g.kernel[1] * g.kernel[2];
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
  threads = worth_threads(threads, tap_visits(g));
  py::gil_scoped_release release;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (is_max)
      pool_forward<T, true>(as_ptr<const T>(x), as_ptr<T>(y), g, threads);
    else
      pool_forward<T, false>(as_ptr<const T>(x), as_ptr<T>(y), g, threads);
  });
}

void max_pool3d_forward_indexed(uintptr_t x, uintptr_t y, uintptr_t index, const std::string& dtype,
                                const std::array<int64_t, 5>& in_ndhwc, const Int3& out_dhw, const Int3& kernel,
                                const Int3& stride, const Int3& pad, int threads) {
  const PoolGeometry g = make_geometry(in_ndhwc, out_dhw, kernel, stride, pad);
  threads = worth_threads(threads, tap_visits(g));
  py::gil_scoped_release release;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (wide_index(g))
      max_index_pass<T, int32_t>(as_ptr<const T>(x), as_ptr<T>(y), as_ptr<int32_t>(index), g, threads);
    else
      max_index_pass<T, uint8_t>(as_ptr<const T>(x), as_ptr<T>(y), as_ptr<uint8_t>(index), g, threads);
  });
}

void pool3d_backward(const std::string& mode, uintptr_t grad_out, uintptr_t x, uintptr_t grad_in,
                     const std::string& dtype, const std::array<int64_t, 5>& in_ndhwc,
                     const Int3& out_dhw, const Int3& kernel, const Int3& stride, const Int3& pad,
                     int threads, uintptr_t index) {
  const PoolGeometry g = make_geometry(in_ndhwc, out_dhw, kernel, stride, pad);
  const bool is_max = mode == "max";
  if (!is_max && mode != "avg") throw std::invalid_argument("pool3d: mode must be 'max' or 'avg'");
  if (is_max && x == 0 && index == 0) throw std::invalid_argument("pool3d_backward: max needs x or index");
  threads = worth_threads(threads, (index ? 1 : 2) * tap_visits(g));
  py::gil_scoped_release release;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (is_max)
      pool_backward<T, true>(as_ptr<const T>(grad_out), as_ptr<const T>(x), as_ptr<const void>(index),
                             as_ptr<T>(grad_in), g, threads);
    else
      pool_backward<T, false>(as_ptr<const T>(grad_out), nullptr, nullptr, as_ptr<T>(grad_in), g, threads);
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
        py::arg("kernel"), py::arg("stride"), py::arg("pad"), py::arg("threads"), py::arg("index") = 0,
        "Gradient of pool3d_forward (a gather: every input element is written once); max takes the first "
        "maximum of each window from index (max_pool3d_forward_indexed's) or, when index is 0, recomputes it "
        "from x into a transient tap index.");
  m.def("max_pool3d_forward_indexed", &max_pool3d_forward_indexed, py::arg("x"), py::arg("y"), py::arg("index"),
        py::arg("dtype"), py::arg("in_ndhwc"), py::arg("out_dhw"), py::arg("kernel"), py::arg("stride"),
        py::arg("pad"), py::arg("threads"),
        "Max pooling of a contiguous NDHWC buffer x into y that also records, per output element, the tap of its "
        "window holding the first maximum (t, h, w order) into index: uint8, or int32 for windows of more than "
        "256 taps. Same y as pool3d_forward.");
}

}  // namespace i3d
