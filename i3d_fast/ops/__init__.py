"""Functional ops. Each op validates its arguments, then dispatches to a backend kernel in
:mod:`i3d_fast.kernels` through a ``torch.library`` custom op (so it works under torch.compile)."""
from .conv3d import conv3d
from .conv3d_bn import conv3d_bn_relu
from .dispatch import NoBackendError
from ..padding import same_padding
from .pool3d import avg_pool3d, max_pool3d

__all__ = ["NoBackendError", "avg_pool3d", "conv3d", "conv3d_bn_relu", "max_pool3d", "same_padding"]
