"""TV-L1 optical flow for two-stream I3D.

- :func:`tvl1`: Dual TV-L1 flow of a frame pair or a batch of pairs (C++ CPU / CUDA solvers,
  OpenCV's algorithm and defaults, :class:`TVL1Params`).
- :func:`tvl1_video`: the T - 1 flows of T frames.
- :func:`to_i3d_input`: clip to [-bound, bound] and scale to [-1, 1] (I3D's flow input).
- :func:`write_flow_jpegs` / :func:`read_flow_jpegs`: denseflow's ``flow_x_00001.jpg`` layout.
"""
from .i3d import decode_flow, encode_flow, read_flow_jpegs, to_i3d_input, write_flow_jpegs
from .params import TVL1Params
from .solver import tvl1, tvl1_video

__all__ = ["TVL1Params", "decode_flow", "encode_flow", "read_flow_jpegs", "to_i3d_input", "tvl1", "tvl1_video",
           "write_flow_jpegs"]
