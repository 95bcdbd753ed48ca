// Dual TV-L1 optical flow: the per-pixel math shared by the C++ CPU solver (csrc/cpu/tvl1.cpp)
// and the CUDA kernels (csrc/cuda/tvl1.cu, compiled just in time with NVRTC).
//
// Everything here is a small inline function of a few floats; the solvers decide the memory
// layout and the loops. The CPU tests exercise every function through csrc/cpu/tvl1.cpp.
#pragma once

#if defined(__CUDACC__)
#define TVL1_HD __host__ __device__ __forceinline__
#else
#define TVL1_HD inline
#endif

#if !defined(__CUDACC_RTC__)
#include <math.h>
#endif

namespace i3d {
namespace tvl1 {

constexpr float kFltEpsilon = 1.1920928955078125e-07f;  // FLT_EPSILON: the threshold step's guard
constexpr float kCubicA = -0.75f;                        // Keys' parameter of OpenCV's INTER_CUBIC
constexpr int kMinLevelSize = 16;                        // pyramid levels below this are not built

template <typename T>
TVL1_HD T vmin(T a, T b) { return a < b ? a : b; }
template <typename T>
TVL1_HD T vmax(T a, T b) { return a < b ? b : a; }

// ---- pyramid and flow upsampling: OpenCV INTER_LINEAR, clamp-to-edge --------------------------

// Source taps along one axis for output index `dst`: src = (dst + 0.5) * scale - 0.5 (computed in
// double, rounded to float as OpenCV does), clamped to the input; value = a * (1 - f) + b * f.
struct LinearTap {
  int i0, i1;
  float frac;
};

TVL1_HD LinearTap linear_tap(int dst, double scale, int in_size) {
  const float pos = static_cast<float>((dst + 0.5) * scale - 0.5);
  int i0 = static_cast<int>(floorf(pos));
  float frac = pos - static_cast<float>(i0);
  if (i0 < 0) {
    i0 = 0;
    frac = 0.f;
  }
  if (i0 >= in_size - 1) {
    i0 = in_size - 1;
    frac = 0.f;
  }
  const int i1 = i0 + 1 < in_size ? i0 + 1 : in_size - 1;
  return LinearTap{i0, i1, frac};
}

// Bilinear sample of row-major `img` (width `w`) for one output pixel; `scale` multiplies the
// result (1 / scaleStep when upsampling flow).
TVL1_HD float resize_linear_at(const float* img, int w, LinearTap ty, LinearTap tx, float scale) {
  const float* r0 = img + static_cast<long long>(ty.i0) * w;
  const float* r1 = img + static_cast<long long>(ty.i1) * w;
  const float top = r0[tx.i0] * (1.f - tx.frac) + r0[tx.i1] * tx.frac;
  const float bottom = r1[tx.i0] * (1.f - tx.frac) + r1[tx.i1] * tx.frac;
  return (top * (1.f - ty.frac) + bottom * ty.frac) * scale;
}

// ---- gradients of I1: centred differences, one-sided halves at the border --------------------

TVL1_HD void centered_gradient_at(const float* img, int h, int w, int y, int x, float* dx, float* dy) {
  const float* row = img + static_cast<long long>(y) * w;
  const int xl = x > 0 ? x - 1 : 0, xr = x < w - 1 ? x + 1 : w - 1;
  const int yu = y > 0 ? y - 1 : 0, yd = y < h - 1 ? y + 1 : h - 1;
  *dx = 0.5f * (row[xr] - row[xl]);
  *dy = 0.5f * (img[static_cast<long long>(yd) * w + x] - img[static_cast<long long>(yu) * w + x]);
}

// ---- warping: Keys bicubic (A = -0.75) at the exact position, taps outside the image = 0 -----

// Weights of the taps at floor(pos) - 1 .. floor(pos) + 2 for the fractional offset t in [0, 1).
TVL1_HD void cubic_weights(float t, float w[4]) {
  const float a = kCubicA;
  const float t1 = t + 1.f, s = 1.f - t;
  w[0] = ((a * t1 - 5.f * a) * t1 + 8.f * a) * t1 - 4.f * a;
  w[1] = ((a + 2.f) * t - (a + 3.f)) * t * t + 1.f;
  w[2] = ((a + 2.f) * s - (a + 3.f)) * s * s + 1.f;
  w[3] = 1.f - w[0] - w[1] - w[2];
}

// The 4x4 neighbourhood of a sampling position: first tap (x0, y0) and separable weights.
struct CubicTaps {
  int x0, y0;
  float wx[4], wy[4];
};

TVL1_HD CubicTaps cubic_taps(float px, float py, int h, int w) {
  CubicTaps t;
  // Far-away positions are clamped before the integer conversion (every tap is outside anyway).
  px = vmin(vmax(px, -8.f), static_cast<float>(w) + 8.f);
  py = vmin(vmax(py, -8.f), static_cast<float>(h) + 8.f);
  const float fx = floorf(px), fy = floorf(py);
  cubic_weights(px - fx, t.wx);
  cubic_weights(py - fy, t.wy);
  t.x0 = static_cast<int>(fx) - 1;
  t.y0 = static_cast<int>(fy) - 1;
  return t;
}

// Samples `img` [h, w] with the taps; taps outside the image count as 0 (BORDER_CONSTANT).
TVL1_HD float cubic_sample(const float* img, int h, int w, const CubicTaps& t) {
  float sum = 0.f;
  if (t.x0 >= 0 && t.x0 + 3 < w && t.y0 >= 0 && t.y0 + 3 < h) {
    const float* p = img + static_cast<long long>(t.y0) * w + t.x0;
    for (int j = 0; j < 4; ++j, p += w)
      sum += t.wy[j] * (t.wx[0] * p[0] + t.wx[1] * p[1] + t.wx[2] * p[2] + t.wx[3] * p[3]);
    return sum;
  }
  for (int j = 0; j < 4; ++j) {
    const int y = t.y0 + j;
    if (y < 0 || y >= h) continue;
    const float* row = img + static_cast<long long>(y) * w;
    float r = 0.f;
    for (int i = 0; i < 4; ++i) {
      const int x = t.x0 + i;
      if (x >= 0 && x < w) r += t.wx[i] * row[x];
    }
    sum += t.wy[j] * r;
  }
  return sum;
}

// The linearised data term after a warp: rho(u) = rho_c + I1wx * u1 + I1wy * u2.
TVL1_HD float rho_constant(float i1w, float i1wx, float i1wy, float u1, float u2, float i0) {
  return i1w - i1wx * u1 - i1wy * u2 - i0;
}

// ---- one iteration ------------------------------------------------------------------------

// Thresholding step TH: v = u + coef * (I1wx, I1wy) with grad = I1wx^2 + I1wy^2 and l_t = lambda * theta.
TVL1_HD float threshold_coef(float i1wx, float i1wy, float rho_c, float u1, float u2, float l_t) {
  const float grad = i1wx * i1wx + i1wy * i1wy;
  const float rho = rho_c + (i1wx * u1 + i1wy * u2);
  const float lg = l_t * grad;
  const float fi = grad > kFltEpsilon ? -rho / (grad > kFltEpsilon ? grad : 1.f) : 0.f;
  return rho < -lg ? l_t : (rho > lg ? -l_t : fi);
}

// Divergence of (p1, p2) with backward differences; values before the first row / column are 0.
TVL1_HD float divergence_at(float p1, float p1_left, float p2, float p2_up) {
  return (p1 - p1_left) + (p2 - p2_up);
}

// Primal update of one flow component: u = v + theta * div p, with v = u_old + coef * I1w{x,y}.
TVL1_HD float primal_at(float u_old, float coef, float i1w_d, float theta, float div) {
  const float v = u_old + coef * i1w_d;
  return v + theta * div;
}

// Dual update of one flow component: p = (p + taut * grad u) / (1 + taut * |grad u|), taut = tau / theta.
TVL1_HD void dual_at(float* p1, float* p2, float ux, float uy, float taut) {
  const float ng = 1.f + taut * sqrtf(ux * ux + uy * uy);
  *p1 = (*p1 + taut * ux) / ng;
  *p2 = (*p2 + taut * uy) / ng;
}

// ---- median filter ------------------------------------------------------------------------

// Median of the N values in v (N odd): Batcher's merge-exchange sorting network (Knuth 5.2.2,
// Algorithm M) generated at compile time: every compare-exchange is a template instance with
// constant indices, so v lives in registers (no local memory on the GPU, no loop on the CPU) and
// the min/max results the median does not need are removed as dead code. Works for float and for
// vector types with elementwise comparison (the CPU passes 16 lanes). v is clobbered.
TVL1_HD constexpr int ceil_log2(int n) { return n <= 1 ? 0 : 1 + ceil_log2((n + 1) / 2); }

namespace network {

template <typename T>
TVL1_HD void compare_exchange(T& a, T& b) {
  const T lo = vmin(a, b), hi = vmax(a, b);
  a = lo;
  b = hi;
}

// Step M3: compare-exchange v[i], v[i + D] for every i < N - D with (i & P) == R.
template <int N, int P, int R, int D, int I, typename T>
TVL1_HD void exchanges(T* v) {
  if constexpr (I < N - D) {
    if constexpr ((I & P) == R) compare_exchange(v[I], v[I + D]);
    exchanges<N, P, R, D, I + 1>(v);
  }
}

// Steps M3-M4 for one P: q runs from 2^(t-1) down to P, then d = q - P, r = P.
template <int N, int P, int Q, int R, int D, typename T>
TVL1_HD void merge_round(T* v) {
  exchanges<N, P, R, D, 0>(v);
  if constexpr (Q != P) merge_round<N, P, Q / 2, P, Q - P>(v);
}

// Steps M2-M5: P = 2^(t-1), ..., 2, 1.
template <int N, int P, typename T>
TVL1_HD void merge_sort(T* v) {
  if constexpr (P > 0) {
    merge_round<N, P, (1 << (ceil_log2(N) - 1)), 0, P>(v);
    merge_sort<N, P / 2>(v);
  }
}

}  // namespace network

template <int N, typename T>
TVL1_HD T network_median(T* v) {
  static_assert(N % 2 == 1 && N > 1, "network_median: N must be odd and > 1");
  network::merge_sort<N, (1 << (ceil_log2(N) - 1))>(v);
  return v[N / 2];
}

}  // namespace tvl1
}  // namespace i3d
