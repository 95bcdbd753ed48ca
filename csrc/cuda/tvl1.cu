// Dual TV-L1 optical flow on CUDA: every launch covers all N pairs of a batch (blockIdx.z = pair).
//
// Compiled just in time with NVRTC (i3d_fast/kernels/cuda/tvl1.py); the per-pixel math is
// csrc/common/tvl1.h, shared with the CPU solver. Planes are [N, h, w] float32, row-major.
//
// OpenCV's stopping rule runs on the device, per pair: `state[4 * pair + ...]` holds
//   kActive: 1 while the pair iterates (OpenCV's `error > eps^2 * pixels`), set by each warp,
//   kCurU, kCurP: which of the two u / p buffers holds the current values (the fused iteration
//                 reads one and writes the other, so neighbouring tiles never race),
//   kTicket: blocks of the running kernel that finished (the last one does the bookkeeping).
// The stopping sum is deterministic: each block writes the sum of its pixels' squared updates (in
// double) to `partial[pair * blocks + block]`; the pair's last block sums those in a fixed order,
// in double, and compares with OpenCV's float eps^2 * pixels. Inactive pairs return at once, so the
// host only polls "any pair active" now and then to stop launching.
#include "common/tvl1.h"

using namespace i3d::tvl1;

namespace {

constexpr int kActive = 0, kCurU = 1, kCurP = 2, kTicket = 3;
constexpr int TX = 32, TY = 8;  // tile of one block: 256 threads

__device__ __forceinline__ long long plane_offset(int pair, int plane_count, int k, long long plane) {
  return (static_cast<long long>(pair) * plane_count + k) * plane;
}

// Block-wide sum (blockDim.x * blockDim.y == 256) into thread 0, in double and in a fixed order
// (the same bits on every run). All threads call it; the shared buffer may be reused after the
// next __syncthreads.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[TX * TY / 32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
  const int warp = (threadIdx.y * blockDim.x + threadIdx.x) >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (warp == 0 && lane == 0)
    for (int i = 0; i < TX * TY / 32; ++i) total += warp_sums[i];
  return total;
}

// True in every thread of the block that finished last among the pair's blocks (all threads call it).
__device__ bool last_block(int* state) {
  __shared__ bool is_last;
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    __threadfence();
    const int ticket = atomicAdd(state + kTicket, 1);
    is_last = ticket == static_cast<int>(gridDim.x * gridDim.y) - 1;
  }
  __syncthreads();
  return is_last;
}

}  // namespace

// Bilinear resize (pyramid levels: mult 1; flow upsampling: mult 1 / scaleStep) of n planes.
extern "C" __global__ void tvl1_resize(const float* src, int sh, int sw, float* dst, int dh, int dw, double scale_y,
                                       double scale_x, float mult) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= dw || y >= dh) return;
  const float* s = src + static_cast<long long>(blockIdx.z) * sh * sw;
  dst[(static_cast<long long>(blockIdx.z) * dh + y) * dw + x] =
      resize_linear_at(s, sw, linear_tap(y, scale_y, sh), linear_tap(x, scale_x, sw), mult);
}

// Flow upsampling from the current u buffer of a coarse level into buffer 0 of the finer level.
extern "C" __global__ void tvl1_upsample(const float* u, const int* state, int n, int sh, int sw, float* dst, int dh,
                                         int dw, double scale_y, double scale_x, float mult) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= dw || y >= dh) return;
  const int pair = blockIdx.z;
  const long long splane = static_cast<long long>(sh) * sw, dplane = static_cast<long long>(dh) * dw;
  const float* cur = u + static_cast<long long>(state[4 * pair + kCurU]) * n * 2 * splane;
  const LinearTap ty = linear_tap(y, scale_y, sh), tx = linear_tap(x, scale_x, sw);
  for (int k = 0; k < 2; ++k)
    dst[plane_offset(pair, 2, k, dplane) + static_cast<long long>(y) * dw + x] =
        resize_linear_at(cur + plane_offset(pair, 2, k, splane), sw, ty, tx, mult);
}

extern "C" __global__ void tvl1_gradient(const float* img, int h, int w, float* dx, float* dy) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= w || y >= h) return;
  const long long base = static_cast<long long>(blockIdx.z) * h * w;
  const long long i = base + static_cast<long long>(y) * w + x;
  centered_gradient_at(img + base, h, w, y, x, dx + i, dy + i);
}

// One warp for every pair: I1, I1x, I1y sampled at x + u; starts the pair's iterations.
extern "C" __global__ void tvl1_warp(const float* i0, const float* i1, const float* i1x, const float* i1y,
                                     const float* u, int* state, int n, int h, int w, float* i1wx, float* i1wy,
                                     float* rho) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  const int pair = blockIdx.z;
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0) state[4 * pair + kActive] = 1;
  if (x >= w || y >= h) return;
  const long long plane = static_cast<long long>(h) * w;
  const long long i = pair * plane + static_cast<long long>(y) * w + x;
  const float* cur = u + static_cast<long long>(state[4 * pair + kCurU]) * n * 2 * plane;
  const float u1 = cur[plane_offset(pair, 2, 0, plane) + static_cast<long long>(y) * w + x];
  const float u2 = cur[plane_offset(pair, 2, 1, plane) + static_cast<long long>(y) * w + x];
  const CubicTaps t = cubic_taps(static_cast<float>(x) + u1, static_cast<float>(y) + u2, h, w);
  const long long base = pair * plane;
  const float w0 = cubic_sample(i1 + base, h, w, t);
  const float wx = cubic_sample(i1x + base, h, w, t);
  const float wy = cubic_sample(i1y + base, h, w, t);
  i1wx[i] = wx;
  i1wy[i] = wy;
  rho[i] = rho_constant(w0, wx, wy, u1, u2, i0[i]);
}

// K x K median (replicated borders) of both flow components of active pairs, into the other u buffer.
template <int K>
__device__ void median_kernel(float* u, int* state, int n, int h, int w) {
  const int pair = blockIdx.z;
  int* st = state + 4 * pair;
  if (!st[kActive]) return;  // uniform over the block and over the kernel
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  const long long plane = static_cast<long long>(h) * w;
  const int cur = st[kCurU];
  if (x < w && y < h) {
    for (int k = 0; k < 2; ++k) {
      const float* src = u + static_cast<long long>(cur) * n * 2 * plane + plane_offset(pair, 2, k, plane);
      float* dst = u + static_cast<long long>(cur ^ 1) * n * 2 * plane + plane_offset(pair, 2, k, plane);
      float v[K * K];
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int yy = min(max(y + j - K / 2, 0), h - 1);
#pragma unroll
        for (int i = 0; i < K; ++i) v[j * K + i] = src[static_cast<long long>(yy) * w + min(max(x + i - K / 2, 0), w - 1)];
      }
      dst[static_cast<long long>(y) * w + x] = network_median<K * K>(v);
    }
  }
  if (last_block(st) && threadIdx.x == 0 && threadIdx.y == 0) {
    st[kTicket] = 0;
    st[kCurU] = cur ^ 1;
  }
}

extern "C" __global__ void tvl1_median3(float* u, int* state, int n, int h, int w) { median_kernel<3>(u, state, n, h, w); }
extern "C" __global__ void tvl1_median5(float* u, int* state, int n, int h, int w) { median_kernel<5>(u, state, n, h, w); }

// One fused iteration for every active pair: threshold + divergence + primal update on the tile and
// one extra row and column (kept in shared memory), then forward gradient + dual update on the tile.
// Reads the current u / p buffers, writes the other ones. Launch with blockDim (32, 8); `partial`
// holds n * gridDim.x * gridDim.y doubles.
extern "C" __global__ void tvl1_iterate(const float* i1wx, const float* i1wy, const float* rho, float* u, float* p,
                                        int* state, double* partial, int n, int h, int w, float l_t, float theta,
                                        float taut, float scaled_eps) {
  const int pair = blockIdx.z;
  int* st = state + 4 * pair;
  if (!st[kActive]) return;  // uniform over the block and over the kernel
  __shared__ float s1[TY + 1][TX + 1], s2[TY + 1][TX + 1];
  const long long plane = static_cast<long long>(h) * w;
  const int cu = st[kCurU], cp = st[kCurP];
  const float* u1 = u + static_cast<long long>(cu) * n * 2 * plane + plane_offset(pair, 2, 0, plane);
  const float* u2 = u1 + plane;
  float* o1 = u + static_cast<long long>(cu ^ 1) * n * 2 * plane + plane_offset(pair, 2, 0, plane);
  float* o2 = o1 + plane;
  const float* p11 = p + static_cast<long long>(cp) * n * 4 * plane + plane_offset(pair, 4, 0, plane);
  const float *p12 = p11 + plane, *p21 = p12 + plane, *p22 = p21 + plane;
  float* q11 = p + static_cast<long long>(cp ^ 1) * n * 4 * plane + plane_offset(pair, 4, 0, plane);
  float *q12 = q11 + plane, *q21 = q12 + plane, *q22 = q21 + plane;
  const long long base = pair * plane;
  const int x0 = blockIdx.x * TX, y0 = blockIdx.y * TY;
  const int tid = threadIdx.y * TX + threadIdx.x;

  double sq = 0.0;
  for (int k = tid; k < (TY + 1) * (TX + 1); k += TX * TY) {
    const int ly = k / (TX + 1), lx = k % (TX + 1);
    const int x = x0 + lx, y = y0 + ly;
    if (x >= w || y >= h) continue;
    const long long i = static_cast<long long>(y) * w + x;
    const float a1 = u1[i], a2 = u2[i];
    const float coef = threshold_coef(i1wx[base + i], i1wy[base + i], rho[base + i], a1, a2, l_t);
    const float div1 = divergence_at(p11[i], x > 0 ? p11[i - 1] : 0.f, p12[i], y > 0 ? p12[i - w] : 0.f);
    const float div2 = divergence_at(p21[i], x > 0 ? p21[i - 1] : 0.f, p22[i], y > 0 ? p22[i - w] : 0.f);
    const float n1 = primal_at(a1, coef, i1wx[base + i], theta, div1);
    const float n2 = primal_at(a2, coef, i1wy[base + i], theta, div2);
    s1[ly][lx] = n1;
    s2[ly][lx] = n2;
    if (lx < TX && ly < TY) sq += static_cast<double>((n1 - a1) * (n1 - a1) + (n2 - a2) * (n2 - a2));
  }
  __syncthreads();
  const int tx = threadIdx.x, ty = threadIdx.y, x = x0 + tx, y = y0 + ty;
  if (x < w && y < h) {
    const long long i = static_cast<long long>(y) * w + x;
    const float c1 = s1[ty][tx], c2 = s2[ty][tx];
    const float u1x = x < w - 1 ? s1[ty][tx + 1] - c1 : 0.f, u1y = y < h - 1 ? s1[ty + 1][tx] - c1 : 0.f;
    const float u2x = x < w - 1 ? s2[ty][tx + 1] - c2 : 0.f, u2y = y < h - 1 ? s2[ty + 1][tx] - c2 : 0.f;
    float a = p11[i], b = p12[i];
    dual_at(&a, &b, u1x, u1y, taut);
    q11[i] = a;
    q12[i] = b;
    a = p21[i];
    b = p22[i];
    dual_at(&a, &b, u2x, u2y, taut);
    q21[i] = a;
    q22[i] = b;
    o1[i] = c1;
    o2[i] = c2;
  }
  const int blocks = gridDim.x * gridDim.y;
  double* sums = partial + static_cast<long long>(pair) * blocks;
  const double total = block_sum(sq);
  if (tid == 0) sums[blockIdx.y * gridDim.x + blockIdx.x] = total;
  if (last_block(st)) {  // every block's sum is written and fenced: add them up in a fixed order
    double mine = 0.0;
    for (int b = tid; b < blocks; b += TX * TY) mine += __ldcg(sums + b);
    const double e = block_sum(mine);
    if (tid == 0) {
      st[kActive] = e > static_cast<double>(scaled_eps) ? 1 : 0;
      st[kCurU] = cu ^ 1;
      st[kCurP] = cp ^ 1;
      st[kTicket] = 0;
    }
  }
}

// The current u of every pair into out [n, 2, h, w].
extern "C" __global__ void tvl1_output(const float* u, const int* state, int n, int h, int w, float* out) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= w || y >= h) return;
  const int pair = blockIdx.z;
  const long long plane = static_cast<long long>(h) * w;
  const float* cur = u + static_cast<long long>(state[4 * pair + kCurU]) * n * 2 * plane;
  for (int k = 0; k < 2; ++k) {
    const long long i = plane_offset(pair, 2, k, plane) + static_cast<long long>(y) * w + x;
    out[i] = cur[i];
  }
}
