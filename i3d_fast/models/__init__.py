from .i3d import ENDPOINTS, InceptionI3d, InceptionModule
from .inception2d import I3D_TIME_KERNELS, I3D_TIME_STRIDES, InceptionV1
from .two_stream import TwoStreamI3D
from .fused import FusedInceptionI3d, FusedTwoStreamI3D, fuse

__all__ = ["ENDPOINTS", "FusedInceptionI3d", "FusedTwoStreamI3D", "I3D_TIME_KERNELS", "I3D_TIME_STRIDES",
           "InceptionI3d", "InceptionModule", "InceptionV1", "TwoStreamI3D", "fuse"]
