"""i3d_fast: fast two-stream I3D for PyTorch.

- :class:`InceptionI3d`, :class:`TwoStreamI3D`: the models (piergiaj-compatible weights).
- :class:`InceptionV1`: the 2D Inception-v1 that I3D inflates (``InceptionI3d.from_2d`` bootstraps I3D from it).
- :mod:`i3d_fast.ops`: fused/fast kernels behind one dispatching function per op.
- :mod:`i3d_fast.layers`: drop-in ``nn.Module`` layers over the ops.
- :func:`fuse`: the fused inference model.
- :func:`convert`: any 3D network's Conv3d / BatchNorm3d / ReLU / pools on the ops, in place.
- :func:`inflate`: a 2D network turned into its 3D counterpart (I3D's weight bootstrap).
- :mod:`i3d_fast.flow`: TV-L1 optical flow and the I3D flow preprocessing.
"""
from . import flow, layers, ops
from .convert import ConversionReport, convert
from .inflate import inflate
from .models import ENDPOINTS, InceptionI3d, InceptionV1, TwoStreamI3D, fuse
from .weights import WeightsError

__version__ = "0.1.0"
__all__ = ["ENDPOINTS", "ConversionReport", "convert", "InceptionI3d", "InceptionV1", "TwoStreamI3D", "WeightsError",
           "flow", "fuse", "inflate", "layers", "ops"]
