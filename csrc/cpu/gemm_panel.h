// Float32 GEMM building blocks shared by the channels-last convolution kernels (winograd3d.cpp,
// pointwise_conv3d.cpp): packed weight panels, a register-blocked micro-kernel, and stores of
// output channels into one or more destination channel slices with bias and ReLU.
//
// Vectors are GCC vector extensions: AVX-512 with -march=native, narrower instructions elsewhere.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

// The vector types only pass between inline functions of one translation unit, so GCC's note that
// 32/64-byte vector arguments change the ABI without AVX/AVX-512 (portable builds) does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace i3d {
namespace gemm {

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef double v8d __attribute__((vector_size(64)));

constexpr int kPanel = 64;  // output channels per weight panel (4 vectors of 16)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

template <typename Vec>
inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
template <typename Vec>
inline void store(float* p, Vec v) {
  std::memcpy(p, &v, sizeof(Vec));
}

// Packed weights for `positions` independent [Cin x Cout] matrices (64 Winograd positions, or 1
// for a 1x1x1 convolution). Output channels are padded with zeros to Coutp, a multiple of 16, and
// cut into panels of kPanel (the last may be narrower). Panel j holds, for each position, a
// [Cin][width_j] row-major block, so the micro-kernel reads one contiguous stream.
struct PanelLayout {
  int64_t positions, cin, cout, coutp;
  PanelLayout(int64_t positions_, int64_t cin_, int64_t cout_)
      : positions(positions_), cin(cin_), cout(cout_), coutp(round_up(cout_, 16)) {}
  int64_t panels() const { return ceil_div(coutp, kPanel); }
  int64_t width(int64_t panel) const { return std::min<int64_t>(kPanel, coutp - panel * kPanel); }
  // Start of (panel, position): every earlier panel is full.
  int64_t offset(int64_t panel, int64_t position) const {
    return panel * positions * cin * kPanel + position * cin * width(panel);
  }
  int64_t size() const { return positions * cin * coutp; }
};

// What a micro-kernel computes: kAB c[R][16 CV] = a[R][k] . b[k][16 CV] (a stored [R][lda]); kAtBAcc
// c[R][16 CV] += a^T . b with a stored [k][lda] (each step broadcasts R consecutive floats), for
// reductions over the rows of two matrices, e.g. a Winograd weight gradient U += V^T . M.
enum class Gemm { kAB, kAtBAcc };

// Micro-kernel: the R x CV accumulators live in registers for the whole k loop; each step loads CV
// vectors of b (packed with rows of 16 CV floats) and broadcasts R scalars of a. k >= 1 (a do-while:
// a loop that may run zero times makes GCC keep the accumulators in memory).
template <Gemm M, int R, int CV>
void micro_kernel(const float* a, int64_t lda, const float* b, int64_t k, float* c, int64_t ldc) {
  v16 acc[R][CV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < CV; ++j) acc[r][j] = M == Gemm::kAB ? v16{} : load<v16>(c + r * ldc + j * 16);
  int64_t kk = 0;
  do {
    v16 bv[CV];
    for (int j = 0; j < CV; ++j) bv[j] = load<v16>(b + (kk * CV + j) * 16);
    for (int r = 0; r < R; ++r) {
      const float s = M == Gemm::kAB ? a[r * lda + kk] : a[kk * lda + r];
      for (int j = 0; j < CV; ++j) acc[r][j] += s * bv[j];
    }
  } while (++kk < k);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < CV; ++j) store(c + r * ldc + j * 16, acc[r][j]);
}

// Rows per micro-kernel call for a panel of CV vectors: about 24 accumulators (of 32 registers).
template <int CV>
constexpr int kRows = CV == 4 ? 6 : CV == 3 ? 8 : 12;

using MicroKernel = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t);

template <Gemm M, int CV, int... R>
constexpr std::array<MicroKernel, sizeof...(R)> kernel_table(std::integer_sequence<int, R...>) {
  return {&micro_kernel<M, R + 1, CV>...};
}

// c[rows][16 CV] (=, or += for kAtBAcc) a . b, in blocks of kRows<CV> rows; ldc = 16 CV.
template <Gemm M, int CV>
void panel_gemm_cv(const float* a, int64_t lda, int64_t rows, const float* b, int64_t k, float* c) {
  constexpr int R = kRows<CV>;
  static constexpr auto table = kernel_table<M, CV>(std::make_integer_sequence<int, R>{});
  constexpr int64_t ldc = 16 * CV;
  const int64_t row_step = M == Gemm::kAB ? lda : 1;  // where row r0 of a starts
  int64_t r0 = 0;
  for (; r0 + R <= rows; r0 += R) micro_kernel<M, R, CV>(a + r0 * row_step, lda, b, k, c + r0 * ldc, ldc);
  if (r0 < rows) table[rows - r0 - 1](a + r0 * row_step, lda, b, k, c + r0 * ldc, ldc);
}

// One panel (width = 16, 32, 48 or 64) of c[rows][width].
template <Gemm M>
inline void panel_gemm_mode(const float* a, int64_t lda, int64_t rows, const float* b, int64_t k, int64_t width,
                            float* c) {
  switch (width / 16) {
    case 4: panel_gemm_cv<M, 4>(a, lda, rows, b, k, c); break;
    case 3: panel_gemm_cv<M, 3>(a, lda, rows, b, k, c); break;
    case 2: panel_gemm_cv<M, 2>(a, lda, rows, b, k, c); break;
    default: panel_gemm_cv<M, 1>(a, lda, rows, b, k, c); break;
  }
}

// c[rows][width] = a[rows][k] . b[k][width] for one panel.
inline void panel_gemm(const float* a, int64_t lda, int64_t rows, const float* b, int64_t k, int64_t width,
                       float* c) {
  panel_gemm_mode<Gemm::kAB>(a, lda, rows, b, k, width, c);
}

// c[rows][width] += a^T . b for one panel: a [k][lda] (its first `rows` columns), b [k][width].
inline void panel_gemm_at_acc(const float* a, int64_t lda, int64_t rows, const float* b, int64_t k, int64_t width,
                              float* c) {
  panel_gemm_mode<Gemm::kAtBAcc>(a, lda, rows, b, k, width, c);
}

// One destination of output channels: output channels [start, start + count) are written at
// ptr + row * ld.
struct Dest {
  float* ptr;
  int64_t ld, start, count;
};

// Outputs at least this large go to memory with non-temporal stores: they cannot stay in the
// caches anyway, and streaming them skips reading every line before it is overwritten.
constexpr int64_t kStreamBytes = int64_t(24) << 20;

inline bool streams(const std::vector<Dest>& dests, int64_t rows) {
  int64_t bytes = 0;
  for (const Dest& d : dests) bytes += rows * d.ld * 4;
  return bytes >= kStreamBytes;
}

// Stores channels [c0, c0 + n) (n <= 16) of one output row into the destinations holding them.
inline void store_channels(const std::vector<Dest>& dests, int64_t row, int64_t c0, int n, v16 v, bool stream) {
  for (const Dest& d : dests) {
    const int64_t lo = std::max(c0, d.start), hi = std::min(c0 + n, d.start + d.count);
    if (lo >= hi) continue;
    float* p = d.ptr + row * d.ld + (lo - d.start);
    if (hi - lo == 16) {
#ifdef __AVX512F__
      if (stream && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {  // one whole cache line
        _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
        continue;
      }
#endif
      store(p, v);
    } else {
      for (int64_t c = lo; c < hi; ++c) p[c - lo] = v[c - c0];
    }
  }
}

// Makes streamed stores visible before the caller reads the output.
inline void finish_streaming() {
#ifdef __AVX512F__
  _mm_sfence();
#endif
}

// Bias padded with zeros to whole vectors (all zeros without a bias).
inline std::vector<float> padded_bias(const float* bias, int64_t cout) {
  std::vector<float> b(round_up(cout, 16), 0.0f);
  if (bias) std::copy(bias, bias + cout, b.begin());
  return b;
}

// A 64-byte aligned scratch buffer of floats.
struct AlignedBuffer {
  float* data;
  explicit AlignedBuffer(int64_t floats)
      : data(static_cast<float*>(std::aligned_alloc(64, round_up(std::max<int64_t>(floats, 1) * 4, 64)))) {
    if (!data) throw std::bad_alloc();
  }
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

}  // namespace gemm
}  // namespace i3d
