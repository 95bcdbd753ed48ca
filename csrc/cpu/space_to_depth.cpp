// Space-to-depth of a channels-last (NDHWC) tensor with zero padding: each (sT, sH, sW) block of
// padded input cells becomes one output cell of sT * sH * sW * C channels, channel
// ((rt * sH + rh) * sW + rw) * C + c holding padded cell (s * i + r) of channel c. A strided
// convolution over few channels (a video network's stem) then runs as a stride-1 convolution over
// many (i3d_fast/kernels/cpu/space_to_depth.py).
//
// Any element size (the values are only moved): for each output cell and each (rt, rh), the sW * C
// values of one input row are contiguous in both tensors and copied as one run; cells in the padding
// are zeros.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "cpu/cpu_utils.h"

namespace py = pybind11;

namespace i3d {
namespace {

struct Blocks {
  int64_t N, T, H, W, C;            // input
  int64_t OT, OH, OW;               // output cells
  std::array<int64_t, 3> stride, before;  // block size and padding before, per (T, H, W)
};

void space_to_depth(const char* x, char* out, int64_t element, const Blocks& b, int threads) {
  const int64_t st = b.stride[0], sh = b.stride[1], sw = b.stride[2];
  const int64_t run = sw * b.C * element;  // bytes of one (rt, rh) run of an output cell
  const int64_t cell = st * sh * run;      // bytes of one output cell
  const int64_t lines = b.N * b.OT * b.OH;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t line = 0; line < lines; ++line) {
    const int64_t oh = line % b.OH, ot = (line / b.OH) % b.OT, n = line / (b.OH * b.OT);
    char* dst_line = out + line * b.OW * cell;
    for (int64_t rt = 0; rt < st; ++rt) {
      const int64_t t = ot * st + rt - b.before[0];
      for (int64_t rh = 0; rh < sh; ++rh) {
        const int64_t h = oh * sh + rh - b.before[1];
        char* dst = dst_line + (rt * sh + rh) * run;
        if (t < 0 || t >= b.T || h < 0 || h >= b.H) {
          for (int64_t ow = 0; ow < b.OW; ++ow) std::memset(dst + ow * cell, 0, run);
          continue;
        }
        const char* src_row = x + ((n * b.T + t) * b.H + h) * b.W * b.C * element;
        for (int64_t ow = 0; ow < b.OW; ++ow) {
          const int64_t w0 = ow * sw - b.before[2];  // first input column of the block
          char* d = dst + ow * cell;
          if (w0 >= 0 && w0 + sw <= b.W) {
            std::memcpy(d, src_row + w0 * b.C * element, run);
            continue;
          }
          const int64_t lo = std::clamp<int64_t>(-w0, 0, sw), hi = std::clamp<int64_t>(b.W - w0, lo, sw);
          const int64_t unit = b.C * element;
          std::memset(d, 0, lo * unit);
          if (hi > lo) std::memcpy(d + lo * unit, src_row + (w0 + lo) * unit, (hi - lo) * unit);
          std::memset(d + hi * unit, 0, (sw - hi) * unit);
        }
      }
    }
  }
}

void forward(uintptr_t x, uintptr_t out, int64_t element, const std::array<int64_t, 5>& ndhwc,
             const std::array<int64_t, 3>& out_cells, const std::array<int64_t, 3>& stride,
             const std::array<int64_t, 3>& before, int threads) {
  const auto [N, T, H, W, C] = ndhwc;
  if (N < 1 || T < 1 || H < 1 || W < 1 || C < 1 || (element != 2 && element != 4 && element != 8))
    throw std::invalid_argument("space_to_depth: bad sizes");
  for (int d = 0; d < 3; ++d) {
    if (stride[d] < 1 || out_cells[d] < 1 || before[d] < 0)
      throw std::invalid_argument("space_to_depth: strides and output cells must be positive, padding >= 0");
  }
  const Blocks b{N, T, H, W, C, out_cells[0], out_cells[1], out_cells[2], stride, before};
  py::gil_scoped_release release;
  space_to_depth(as_ptr<const char>(x), as_ptr<char>(out), element, b, std::max(threads, 1));
}

}  // namespace

void register_space_to_depth(py::module_& m) {
  m.def("space_to_depth", &forward, py::arg("x"), py::arg("out"), py::arg("element"), py::arg("ndhwc"),
        py::arg("out_cells"), py::arg("stride"), py::arg("before"), py::arg("threads"),
        "Space-to-depth of NDHWC x (element bytes per value) into out [N, OT, OH, OW, sT*sH*sW*C]: "
        "output channel ((rt*sH + rh)*sW + rw)*C + c holds input cell (o*s + r - before) of channel c, "
        "zero outside x.");
}

}  // namespace i3d
