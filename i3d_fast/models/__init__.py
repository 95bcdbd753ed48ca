from .i3d import ENDPOINTS, InceptionI3d, InceptionModule
from .two_stream import TwoStreamI3D

__all__ = ["ENDPOINTS", "InceptionI3d", "InceptionModule", "TwoStreamI3D"]
