// Dual TV-L1 optical flow on the CPU: a batch of frame pairs, OpenCV's algorithm and stopping rule.
//
// Parallelism: with at least as many pairs as threads, each thread solves whole pairs (no
// synchronisation at all); otherwise all threads work on one pair, each on a band of rows, with
// two barriers per iteration. One iteration is one fused sweep over the rows of a band:
// threshold + divergence + primal update of row y, then the forward gradient + dual update of
// row y - 1 (whose inputs, u of rows y - 1 and y, are now final). The dual update of a band's last
// row waits for the next band's first row (after a barrier). Every x loop is `omp simd`.
// The per-pixel math is in csrc/common/tvl1.h, shared with the CUDA kernels.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/tvl1.h"
#include "cpu/cpu_utils.h"

namespace py = pybind11;

namespace i3d {
namespace {

using namespace tvl1;

struct Params {
  float tau, lambda, theta;
  int nscales, warps;
  float epsilon;
  int inner, outer;
  double scale_step;
  int median;
};

// A sense-reversing barrier that spins briefly, then yields: on a busy machine a descheduled
// partner thread gets the core instead of a spinning waiter (OpenMP's barrier spins far longer).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count), waiting_(0), sense_(0) {}
  void wait() {
    const int sense = sense_.load(std::memory_order_relaxed);
    if (waiting_.fetch_add(1, std::memory_order_acq_rel) == count_ - 1) {
      waiting_.store(0, std::memory_order_relaxed);
      sense_.store(sense ^ 1, std::memory_order_release);
      return;
    }
    for (int spin = 0; sense_.load(std::memory_order_acquire) == sense; ++spin) {
      if (spin < 4000)
        __builtin_ia32_pause();
      else
        std::this_thread::yield();
    }
  }

 private:
  const int count_;
  std::atomic<int> waiting_;
  std::atomic<int> sense_;
};

// The threads that share one pair (a team of one runs inside a loop over pairs, without barriers).
struct Team {
  int tid = 0, size = 1;
  Barrier* sync = nullptr;
  void barrier() const {
    if (size > 1) sync->wait();
  }
  void band(int rows, int* y0, int* y1) const {
    *y0 = static_cast<int>(static_cast<int64_t>(rows) * tid / size);
    *y1 = static_cast<int>(static_cast<int64_t>(rows) * (tid + 1) / size);
  }
};

// Levels with fewer pixels than this are solved by one thread of a team.
constexpr int64_t kMinSplitArea = 16384;

struct Size2 {
  int h, w;
  int64_t area() const { return static_cast<int64_t>(h) * w; }
};

std::vector<Size2> pyramid_sizes(int h, int w, int nscales, double scale_step) {
  std::vector<Size2> sizes{{h, w}};
  for (int s = 1; s < nscales; ++s) {
    const Size2 prev = sizes.back();
    const int nh = static_cast<int>(std::nearbyint(prev.h * scale_step));
    const int nw = static_cast<int>(std::nearbyint(prev.w * scale_step));
    if (nh < kMinLevelSize || nw < kMinLevelSize) break;
    sizes.push_back({nh, nw});
  }
  return sizes;
}

// ---- passes over a band of rows [y0, y1) ------------------------------------------------------

void resize_rows(const float* src, Size2 in, float* dst, Size2 out, double scale_y, double scale_x, float mult,
                 int y0, int y1) {
  for (int y = y0; y < y1; ++y) {
    const LinearTap ty = linear_tap(y, scale_y, in.h);
    float* row = dst + static_cast<int64_t>(y) * out.w;
    for (int x = 0; x < out.w; ++x) row[x] = resize_linear_at(src, in.w, ty, linear_tap(x, scale_x, in.w), mult);
  }
}

void gradient_rows(const float* img, Size2 s, float* dx, float* dy, int y0, int y1) {
  for (int y = y0; y < y1; ++y)
    for (int x = 0; x < s.w; ++x) {
      const int64_t i = static_cast<int64_t>(y) * s.w + x;
      centered_gradient_at(img, s.h, s.w, y, x, dx + i, dy + i);
    }
}

// One warp: I1 and its gradients sampled at x + u, then rho_c. grad is recomputed where needed.
void warp_rows(const float* i0, const float* i1, const float* i1x, const float* i1y, const float* u1,
               const float* u2, Size2 s, float* i1wx, float* i1wy, float* rho, int y0, int y1) {
  for (int y = y0; y < y1; ++y)
    for (int x = 0; x < s.w; ++x) {
      const int64_t i = static_cast<int64_t>(y) * s.w + x;
      const CubicTaps t = cubic_taps(static_cast<float>(x) + u1[i], static_cast<float>(y) + u2[i], s.h, s.w);
      const float w0 = cubic_sample(i1, s.h, s.w, t);
      i1wx[i] = cubic_sample(i1x, s.h, s.w, t);
      i1wy[i] = cubic_sample(i1y, s.h, s.w, t);
      rho[i] = rho_constant(w0, i1wx[i], i1wy[i], u1[i], u2[i], i0[i]);
    }
}

// K x K median (replicated borders), 16 pixels at a time in vector lanes.
typedef float Lanes __attribute__((vector_size(64)));
constexpr int kLanes = 16;

template <int K>
void median_rows(const float* src, float* dst, Size2 s, int y0, int y1) {
  constexpr int R = K / 2;
  Lanes v[K * K];
  for (int y = y0; y < y1; ++y) {
    const float* rows[K];
    for (int j = 0; j < K; ++j) rows[j] = src + static_cast<int64_t>(std::clamp(y + j - R, 0, s.h - 1)) * s.w;
    float* out = dst + static_cast<int64_t>(y) * s.w;
    for (int x = 0; x < s.w; x += kLanes) {
      const bool inside = x - R >= 0 && x + kLanes - 1 + R < s.w;
      for (int j = 0; j < K; ++j)
        for (int i = 0; i < K; ++i) {
          Lanes& lane = v[j * K + i];
          if (inside) {
            std::memcpy(&lane, rows[j] + x + i - R, sizeof(Lanes));
          } else {
            for (int l = 0; l < kLanes; ++l) lane[l] = rows[j][std::clamp(x + l + i - R, 0, s.w - 1)];
          }
        }
      const Lanes m = network_median<K * K>(v);
      const int n = std::min(kLanes, s.w - x);
      for (int l = 0; l < n; ++l) out[x + l] = m[l];
    }
  }
}

void median_band(int ksize, const float* src, float* dst, Size2 s, int y0, int y1) {
  if (ksize == 3)
    median_rows<3>(src, dst, s, y0, y1);
  else
    median_rows<5>(src, dst, s, y0, y1);
}

struct Flow {
  float *u1, *u2, *p11, *p12, *p21, *p22;
  const float *i1wx, *i1wy, *rho;
};

// Threshold + divergence + primal update of row y; returns the row's squared update.
inline double primal_row(const Flow& f, Size2 s, int y, const float* zero_row, float l_t, float theta) {
  const int64_t o = static_cast<int64_t>(y) * s.w;
  const float *wx = f.i1wx + o, *wy = f.i1wy + o, *rc = f.rho + o;
  const float *p11 = f.p11 + o, *p12 = f.p12 + o, *p21 = f.p21 + o, *p22 = f.p22 + o;
  const float* p12u = y > 0 ? p12 - s.w : zero_row;
  const float* p22u = y > 0 ? p22 - s.w : zero_row;
  float *u1 = f.u1 + o, *u2 = f.u2 + o;
  float err = 0.f;
  {
    const float coef = threshold_coef(wx[0], wy[0], rc[0], u1[0], u2[0], l_t);
    const float n1 = primal_at(u1[0], coef, wx[0], theta, divergence_at(p11[0], 0.f, p12[0], p12u[0]));
    const float n2 = primal_at(u2[0], coef, wy[0], theta, divergence_at(p21[0], 0.f, p22[0], p22u[0]));
    err += (n1 - u1[0]) * (n1 - u1[0]) + (n2 - u2[0]) * (n2 - u2[0]);
    u1[0] = n1;
    u2[0] = n2;
  }
#pragma omp simd reduction(+ : err)
  for (int x = 1; x < s.w; ++x) {
    const float coef = threshold_coef(wx[x], wy[x], rc[x], u1[x], u2[x], l_t);
    const float n1 = primal_at(u1[x], coef, wx[x], theta, divergence_at(p11[x], p11[x - 1], p12[x], p12u[x]));
    const float n2 = primal_at(u2[x], coef, wy[x], theta, divergence_at(p21[x], p21[x - 1], p22[x], p22u[x]));
    const float d1 = n1 - u1[x], d2 = n2 - u2[x];
    err += d1 * d1 + d2 * d2;
    u1[x] = n1;
    u2[x] = n2;
  }
  return err;
}

// Forward gradient of the (final) u of rows y and y + 1, dual update of row y.
inline void dual_row(const Flow& f, Size2 s, int y, float taut) {
  const int64_t o = static_cast<int64_t>(y) * s.w;
  const float *u1 = f.u1 + o, *u2 = f.u2 + o;
  const float* u1d = y < s.h - 1 ? u1 + s.w : u1;  // the last row has no dy
  const float* u2d = y < s.h - 1 ? u2 + s.w : u2;
  float *p11 = f.p11 + o, *p12 = f.p12 + o, *p21 = f.p21 + o, *p22 = f.p22 + o;
  const int last = s.w - 1;
#pragma omp simd
  for (int x = 0; x < last; ++x) {
    dual_at(p11 + x, p12 + x, u1[x + 1] - u1[x], u1d[x] - u1[x], taut);
    dual_at(p21 + x, p22 + x, u2[x + 1] - u2[x], u2d[x] - u2[x], taut);
  }
  dual_at(p11 + last, p12 + last, 0.f, u1d[last] - u1[last], taut);
  dual_at(p21 + last, p22 + last, 0.f, u2d[last] - u2[last], taut);
}

// One iteration on the team's band; every thread returns the pair's total squared update (summed
// in the same order by every thread, so all take the same stopping decision). `partial` holds
// team.size doubles: written before the first barrier, read between the two.
double iterate_band(const Flow& f, Size2 s, const Team& team, const float* zero_row, float l_t, float theta,
                    float taut, double* partial) {
  int y0, y1;
  team.band(s.h, &y0, &y1);
  double err = 0.0;
  for (int y = y0; y < y1; ++y) {
    err += primal_row(f, s, y, zero_row, l_t, theta);
    if (y > y0) dual_row(f, s, y - 1, taut);
  }
  partial[team.tid] = err;
  team.barrier();
  if (y1 > y0) dual_row(f, s, y1 - 1, taut);
  double total = 0.0;
  for (int t = 0; t < team.size; ++t) total += partial[t];
  team.barrier();
  return total;
}

// ---- the solver ----------------------------------------------------------------------------

// Buffers for one pair at its finest size (reused across pairs and levels).
struct Workspace {
  std::vector<float> i0s, i1s;  // pyramid levels, concatenated
  std::vector<float> buf;       // 13 finest-size planes
  std::vector<float> zero_row;
  std::vector<double> partial;
  std::vector<int64_t> level_offset;
  std::array<float*, 4> planes{};  // u1, u2, t1, t2 after a level solved by one thread

  Workspace(const std::vector<Size2>& sizes, int team_size) {
    int64_t total = 0;
    for (const Size2& s : sizes) {
      level_offset.push_back(total);
      total += s.area();
    }
    i0s.resize(total);
    i1s.resize(total);
    buf.resize(13 * sizes[0].area());
    zero_row.assign(sizes[0].w, 0.f);
    partial.assign(team_size, 0.0);
  }
  float* plane(int k, const std::vector<Size2>& sizes) { return buf.data() + k * sizes[0].area(); }
};

// Frame -> float 0..255 (uint8 as is, float32 in [0, 1] times 255, as OpenCV does).
template <typename T>
void load_rows(const T* src, float* dst, int w, float mult, int y0, int y1) {
  for (int64_t i = static_cast<int64_t>(y0) * w; i < static_cast<int64_t>(y1) * w; ++i)
    dst[i] = static_cast<float>(src[i]) * mult;
}

// Solves one pair with `team`; all team threads call it. Returns the number of inner iterations.
int64_t solve_pair(const void* frame0, const void* frame1, bool is_u8, const std::vector<Size2>& sizes,
                   const Params& prm, float* out, Workspace& ws, const Team& team) {
  const Size2 full = sizes[0];
  int y0, y1;
  team.band(full.h, &y0, &y1);
  if (is_u8) {
    load_rows(static_cast<const uint8_t*>(frame0), ws.i0s.data(), full.w, 1.f, y0, y1);
    load_rows(static_cast<const uint8_t*>(frame1), ws.i1s.data(), full.w, 1.f, y0, y1);
  } else {
    load_rows(static_cast<const float*>(frame0), ws.i0s.data(), full.w, 255.f, y0, y1);
    load_rows(static_cast<const float*>(frame1), ws.i1s.data(), full.w, 255.f, y0, y1);
  }
  const double inv_step = 1.0 / prm.scale_step;
  const int nlevels = static_cast<int>(sizes.size());
  for (int l = 1; l < nlevels; ++l) {
    team.barrier();
    team.band(sizes[l].h, &y0, &y1);
    const int64_t a = ws.level_offset[l - 1], b = ws.level_offset[l];
    resize_rows(ws.i0s.data() + a, sizes[l - 1], ws.i0s.data() + b, sizes[l], inv_step, inv_step, 1.f, y0, y1);
    resize_rows(ws.i1s.data() + a, sizes[l - 1], ws.i1s.data() + b, sizes[l], inv_step, inv_step, 1.f, y0, y1);
  }
  float* i1x = ws.plane(0, sizes);
  float* i1y = ws.plane(1, sizes);
  float* i1wx = ws.plane(2, sizes);
  float* i1wy = ws.plane(3, sizes);
  float* rho = ws.plane(4, sizes);
  float *u1 = ws.plane(5, sizes), *u2 = ws.plane(6, sizes);
  float *t1 = ws.plane(7, sizes), *t2 = ws.plane(8, sizes);
  float *p11 = ws.plane(9, sizes), *p12 = ws.plane(10, sizes), *p21 = ws.plane(11, sizes),
        *p22 = ws.plane(12, sizes);
  const float l_t = prm.lambda * prm.theta;
  const float taut = prm.tau / prm.theta;
  int64_t iterations = 0;

  for (int l = nlevels - 1; l >= 0; --l) {
    const Size2 s = sizes[l];
    const float* i0 = ws.i0s.data() + ws.level_offset[l];
    const float* i1 = ws.i1s.data() + ws.level_offset[l];
    // Small levels run on one thread: their iterations are too short to pay for two barriers each.
    const bool split = team.size > 1 && s.area() >= kMinSplitArea;
    const Team lt = split ? team : Team{};
    team.barrier();  // the pyramid (or the coarser level's u) is complete
    if (split || team.tid == 0) {
      lt.band(s.h, &y0, &y1);
      const int64_t r0 = static_cast<int64_t>(y0) * s.w, r1 = static_cast<int64_t>(y1) * s.w;
      gradient_rows(i1, s, i1x, i1y, y0, y1);
      if (l == nlevels - 1) {
        std::fill(u1 + r0, u1 + r1, 0.f);
        std::fill(u2 + r0, u2 + r1, 0.f);
      } else {
        const Size2 c = sizes[l + 1];
        const float mult = static_cast<float>(inv_step);
        resize_rows(u1, c, t1, s, double(c.h) / s.h, double(c.w) / s.w, mult, y0, y1);
        resize_rows(u2, c, t2, s, double(c.h) / s.h, double(c.w) / s.w, mult, y0, y1);
        std::swap(u1, t1);
        std::swap(u2, t2);
      }
      std::fill(p11 + r0, p11 + r1, 0.f);
      std::fill(p12 + r0, p12 + r1, 0.f);
      std::fill(p21 + r0, p21 + r1, 0.f);
      std::fill(p22 + r0, p22 + r1, 0.f);
      lt.barrier();  // gradients and u of the whole level are ready

      // OpenCV compares the float sum of squared updates with this float threshold.
      const float scaled_eps = prm.epsilon * prm.epsilon * static_cast<float>(s.area());
      for (int warp = 0; warp < prm.warps; ++warp) {
        warp_rows(i0, i1, i1x, i1y, u1, u2, s, i1wx, i1wy, rho, y0, y1);
        double error = DBL_MAX;
        for (int outer = 0; error > scaled_eps && outer < prm.outer; ++outer) {
          if (prm.median > 1) {
            median_band(prm.median, u1, t1, s, y0, y1);
            median_band(prm.median, u2, t2, s, y0, y1);
            lt.barrier();
            std::swap(u1, t1);
            std::swap(u2, t2);
          }
          const Flow f{u1, u2, p11, p12, p21, p22, i1wx, i1wy, rho};
          for (int inner = 0; error > scaled_eps && inner < prm.inner; ++inner) {
            error = iterate_band(f, s, lt, ws.zero_row.data(), l_t, prm.theta, taut, ws.partial.data());
            ++iterations;
          }
        }
        lt.barrier();  // the next warp reads I1 everywhere, and u of this band only
      }
    }
    if (!split && team.size > 1) {  // the other threads take over the worker's buffer order
      if (team.tid == 0) ws.planes = {u1, u2, t1, t2};
      team.barrier();
      u1 = ws.planes[0];
      u2 = ws.planes[1];
      t1 = ws.planes[2];
      t2 = ws.planes[3];
    }
  }
  team.band(full.h, &y0, &y1);
  const int64_t r0 = static_cast<int64_t>(y0) * full.w, r1 = static_cast<int64_t>(y1) * full.w;
  std::copy(u1 + r0, u1 + r1, out + r0);
  std::copy(u2 + r0, u2 + r1, out + full.area() + r0);
  return iterations;
}

// The calling OpenMP team as a Team (every thread of a parallel region calls it); `holder` is
// shared by the team and owns the barrier.
Team make_team(std::unique_ptr<Barrier>& holder) {
#pragma omp single
  holder = std::make_unique<Barrier>(omp_get_num_threads());
  return Team{omp_get_thread_num(), omp_get_num_threads(), holder.get()};
}

Params make_params(float tau, float lambda, float theta, int nscales, int warps, float epsilon, int inner, int outer,
                   double scale_step, int median) {
  if (median != 1 && median != 3 && median != 5) throw std::invalid_argument("tvl1: median_filtering must be 1, 3 or 5");
  return Params{tau, lambda, theta, nscales, warps, epsilon, inner, outer, scale_step, median};
}

std::vector<int64_t> tvl1_solve(uintptr_t frames0, uintptr_t frames1, const std::string& dtype, int64_t n, int h,
                                int w, uintptr_t out, float tau, float lambda, float theta, int nscales, int warps,
                                float epsilon, int inner, int outer, double scale_step, int median, int threads) {
  const bool is_u8 = dtype == "uint8";
  if (!is_u8 && dtype != "float32") throw std::invalid_argument("tvl1_solve: dtype must be uint8 or float32");
  if (h < kMinLevelSize || w < kMinLevelSize) throw std::invalid_argument("tvl1_solve: frames below 16x16");
  const Params prm = make_params(tau, lambda, theta, nscales, warps, epsilon, inner, outer, scale_step, median);
  const std::vector<Size2> sizes = pyramid_sizes(h, w, nscales, scale_step);
  const int64_t frame = static_cast<int64_t>(h) * w;
  const size_t elem = is_u8 ? 1 : 4;
  const char* f0 = reinterpret_cast<const char*>(frames0);
  const char* f1 = reinterpret_cast<const char*>(frames1);
  float* flow = as_ptr<float>(out);
  std::vector<int64_t> iterations(n, 0);
  threads = std::max(1, threads);
  py::gil_scoped_release release;
  // Pairs in parallel (one thread each) while a full round of pairs is left, then the rest with all threads.
  const int64_t parallel_pairs = n >= threads ? n - n % threads : 0;
  if (parallel_pairs > 0) {
#pragma omp parallel num_threads(threads)
    {
      Workspace ws(sizes, 1);
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < parallel_pairs; ++i)
        iterations[i] = solve_pair(f0 + i * frame * elem, f1 + i * frame * elem, is_u8, sizes, prm,
                                   flow + i * 2 * frame, ws, Team{});
    }
  }
  if (parallel_pairs < n) {
    Workspace ws(sizes, threads);
    std::unique_ptr<Barrier> barrier;
    for (int64_t i = parallel_pairs; i < n; ++i) {
#pragma omp parallel num_threads(threads)
      {
        const Team team = make_team(barrier);
        const int64_t it = solve_pair(f0 + i * frame * elem, f1 + i * frame * elem, is_u8, sizes, prm,
                                      flow + i * 2 * frame, ws, team);
        if (team.tid == 0) iterations[i] = it;
      }
    }
  }
  return iterations;
}

// ---- single steps, for the tests (float32 planes, the same passes the solver runs) -----------

std::vector<std::pair<int, int>> tvl1_pyramid_sizes(int h, int w, int nscales, double scale_step) {
  std::vector<std::pair<int, int>> out;
  for (const Size2& s : pyramid_sizes(h, w, nscales, scale_step)) out.emplace_back(s.h, s.w);
  return out;
}

void tvl1_resize(uintptr_t src, int sh, int sw, uintptr_t dst, int dh, int dw, double scale_y, double scale_x,
                 float mult) {
  resize_rows(as_ptr<const float>(src), {sh, sw}, as_ptr<float>(dst), {dh, dw}, scale_y, scale_x, mult, 0, dh);
}

void tvl1_centered_gradient(uintptr_t img, int h, int w, uintptr_t dx, uintptr_t dy) {
  gradient_rows(as_ptr<const float>(img), {h, w}, as_ptr<float>(dx), as_ptr<float>(dy), 0, h);
}

void tvl1_warp(uintptr_t i0, uintptr_t i1, uintptr_t i1x, uintptr_t i1y, uintptr_t u1, uintptr_t u2, int h, int w,
               uintptr_t i1wx, uintptr_t i1wy, uintptr_t rho) {
  warp_rows(as_ptr<const float>(i0), as_ptr<const float>(i1), as_ptr<const float>(i1x), as_ptr<const float>(i1y),
            as_ptr<const float>(u1), as_ptr<const float>(u2), {h, w}, as_ptr<float>(i1wx), as_ptr<float>(i1wy),
            as_ptr<float>(rho), 0, h);
}

void tvl1_median(uintptr_t src, uintptr_t dst, int h, int w, int ksize) {
  if (ksize != 3 && ksize != 5) throw std::invalid_argument("tvl1_median: ksize must be 3 or 5");
  median_band(ksize, as_ptr<const float>(src), as_ptr<float>(dst), {h, w}, 0, h);
}

// `iterations` fused iterations in place on (u, p) with `threads` threads sharing the image.
std::vector<double> tvl1_iterate(uintptr_t i1wx, uintptr_t i1wy, uintptr_t rho, uintptr_t u1, uintptr_t u2,
                                 uintptr_t p11, uintptr_t p12, uintptr_t p21, uintptr_t p22, int h, int w, float l_t,
                                 float theta, float taut, int iterations, int threads) {
  const Flow f{as_ptr<float>(u1),         as_ptr<float>(u2),         as_ptr<float>(p11),
               as_ptr<float>(p12),        as_ptr<float>(p21),        as_ptr<float>(p22),
               as_ptr<const float>(i1wx), as_ptr<const float>(i1wy), as_ptr<const float>(rho)};
  const std::vector<float> zero_row(w, 0.f);
  std::vector<double> partial(std::max(1, threads), 0.0);
  std::vector<double> errors(iterations, 0.0);
  std::unique_ptr<Barrier> barrier;
  py::gil_scoped_release release;
#pragma omp parallel num_threads(std::max(1, threads))
  {
    const Team team = make_team(barrier);
    for (int k = 0; k < iterations; ++k) {
      const double e = iterate_band(f, {h, w}, team, zero_row.data(), l_t, theta, taut, partial.data());
      if (team.tid == 0) errors[k] = e;
    }
  }
  return errors;
}

}  // namespace

void register_tvl1(py::module_& m) {
  m.def("tvl1_solve", &tvl1_solve,
        "Dual TV-L1 flow of n pairs [n, h, w] (uint8, or float32 in [0, 1]) into out [n, 2, h, w] float32; "
        "returns the inner iterations run per pair",
        py::arg("frames0"), py::arg("frames1"), py::arg("dtype"), py::arg("n"), py::arg("h"), py::arg("w"),
        py::arg("out"), py::arg("tau"), py::arg("lambda_"), py::arg("theta"), py::arg("nscales"), py::arg("warps"),
        py::arg("epsilon"), py::arg("inner_iterations"), py::arg("outer_iterations"), py::arg("scale_step"),
        py::arg("median_filtering"), py::arg("threads"));
  m.def("tvl1_pyramid_sizes", &tvl1_pyramid_sizes, py::arg("h"), py::arg("w"), py::arg("nscales"),
        py::arg("scale_step"));
  m.def("tvl1_resize", &tvl1_resize, py::arg("src"), py::arg("sh"), py::arg("sw"), py::arg("dst"), py::arg("dh"),
        py::arg("dw"), py::arg("scale_y"), py::arg("scale_x"), py::arg("mult"));
  m.def("tvl1_centered_gradient", &tvl1_centered_gradient, py::arg("img"), py::arg("h"), py::arg("w"), py::arg("dx"),
        py::arg("dy"));
  m.def("tvl1_warp", &tvl1_warp, py::arg("i0"), py::arg("i1"), py::arg("i1x"), py::arg("i1y"), py::arg("u1"),
        py::arg("u2"), py::arg("h"), py::arg("w"), py::arg("i1wx"), py::arg("i1wy"), py::arg("rho"));
  m.def("tvl1_median", &tvl1_median, py::arg("src"), py::arg("dst"), py::arg("h"), py::arg("w"), py::arg("ksize"));
  m.def("tvl1_iterate", &tvl1_iterate, py::arg("i1wx"), py::arg("i1wy"), py::arg("rho"), py::arg("u1"),
        py::arg("u2"), py::arg("p11"), py::arg("p12"), py::arg("p21"), py::arg("p22"), py::arg("h"), py::arg("w"),
        py::arg("l_t"), py::arg("theta"), py::arg("taut"), py::arg("iterations"), py::arg("threads"));
}

}  // namespace i3d
