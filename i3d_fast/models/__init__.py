from .i3d import ENDPOINTS, InceptionI3d, InceptionModule
from .two_stream import TwoStreamI3D
from .fused import FusedInceptionI3d, FusedTwoStreamI3D, fuse

__all__ = ["ENDPOINTS", "FusedInceptionI3d", "FusedTwoStreamI3D", "InceptionI3d", "InceptionModule", "TwoStreamI3D",
           "fuse"]
