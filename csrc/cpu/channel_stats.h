// Per-channel batch statistics (mean, biased variance) of a convolution's output, gathered in the
// convolution's own store loop (winograd3d.cpp, pointwise_conv3d.cpp) so training-mode BatchNorm
// needs no separate pass over the output to compute them.
//
// The output is cut into the kernel's work chunks. Per chunk and channel: the chunk's first output
// k (a pilot that keeps the sums free of cancellation when |mean| >> std), the count, and the sums of
// (z - k) and (z - k)^2, added in float over a few values (one tile / one micro-panel of rows) and in
// double across them. Chunks are merged in chunk order by Chan et al.'s pairwise formula, in double:
// the result does not depend on which thread took which chunk (for a given chunking, i.e. thread
// count).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/gemm_panel.h"

namespace i3d {
namespace gemm {

class ChunkStats {
 public:
  ChunkStats(int64_t chunks, int64_t cout)
      : coutp_(round_up(cout, 16)), sums_(static_cast<size_t>(chunks) * 3 * coutp_, 0.0), counts_(chunks, 0) {}

  // Sets chunk's pilot for channels [c0, c0 + 16).
  void set_pilot(int64_t chunk, int64_t c0, v16 pilot) {
    double* k = row(chunk) + 2 * coutp_ + c0;
    for (int i = 0; i < 16; ++i) k[i] = pilot[i];
  }
  // Adds float partial sums of (z - k) and (z - k)^2 for channels [c0, c0 + 16) into the chunk's doubles.
  void add(int64_t chunk, int64_t c0, v16 sum, v16 sumsq) {
    double* s = row(chunk) + c0;
    double* q = s + coutp_;
    accumulate(s, sum);
    accumulate(q, sumsq);
  }
  void add_count(int64_t chunk, int64_t values) { counts_[chunk] += values; }

  // Mean and biased variance of channels [0, cout) over all chunks, into float mean / var.
  void merge(int64_t cout, float* mean, float* var) const {
    for (int64_t c = 0; c < cout; ++c) {
      double n = 0.0, m = 0.0, m2 = 0.0;
      for (int64_t chunk = 0; chunk < static_cast<int64_t>(counts_.size()); ++chunk) {
        const double nb = static_cast<double>(counts_[chunk]);
        if (nb == 0.0) continue;
        const double* r = row(chunk);
        const double s = r[c], q = r[coutp_ + c], k = r[2 * coutp_ + c];
        const double mb = k + s / nb, m2b = std::max(q - s * s / nb, 0.0);
        const double total = n + nb, delta = mb - m;
        m += delta * nb / total;
        m2 += m2b + delta * delta * n * nb / total;
        n = total;
      }
      mean[c] = static_cast<float>(m);
      var[c] = static_cast<float>(n > 0.0 ? m2 / n : 0.0);
    }
  }

 private:
  static void accumulate(double* p, v16 v) {
    const v8 lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    const v8 hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v8d a, b;
    std::memcpy(&a, p, sizeof(a));
    std::memcpy(&b, p + 8, sizeof(b));
    a += __builtin_convertvector(lo, v8d);
    b += __builtin_convertvector(hi, v8d);
    std::memcpy(p, &a, sizeof(a));
    std::memcpy(p + 8, &b, sizeof(b));
  }
  double* row(int64_t chunk) { return sums_.data() + chunk * 3 * coutp_; }
  const double* row(int64_t chunk) const { return sums_.data() + chunk * 3 * coutp_; }

  int64_t coutp_;
  std::vector<double> sums_;  // per chunk: [sum (z - k) | sum (z - k)^2 | k], coutp each
  std::vector<int64_t> counts_;
};

}  // namespace gemm
}  // namespace i3d
