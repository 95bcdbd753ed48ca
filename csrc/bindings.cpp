// The i3d_fast._C extension: every CPU kernel registers its functions here.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace i3d {
void register_pool3d(py::module_& m);
void register_tvl1(py::module_& m);
void register_winograd3d(py::module_& m);
void register_pointwise_conv3d(py::module_& m);
void register_batch_norm(py::module_& m);
void register_space_to_depth(py::module_& m);
}  // namespace i3d

PYBIND11_MODULE(_C, m) {
  m.doc() = "i3d_fast CPU kernels (C++17, OpenMP). Takes raw pointers; see i3d_fast.kernels.cpu.";
  i3d::register_pool3d(m);
  i3d::register_tvl1(m);
  i3d::register_winograd3d(m);
  i3d::register_pointwise_conv3d(m);
  i3d::register_batch_norm(m);
  i3d::register_space_to_depth(m);
}
