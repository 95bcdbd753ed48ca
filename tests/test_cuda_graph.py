"""The fused model on the Triton backend can be captured in a CUDA graph: after an eager warm-up
(kernel compilation, first-use checks, weight packing and launch plans), a forward pass issues
only kernel launches and stream-ordered allocations, so capture and replay give eager's logits,
and a replay reads what was copied into the captured input."""
import pytest
import torch

import i3d_fast
from i3d_fast import InceptionI3d

from _models import randomise_batchnorm


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fused_model_cuda_graph_replay_matches_eager(dtype):
    torch.manual_seed(3)
    model = randomise_batchnorm(InceptionI3d(num_classes=10, adaptive_head=True)).eval().cuda()
    fused = i3d_fast.fuse(model, dtype=dtype, backend="triton")
    first, second = (torch.rand(2, 3, 16, 64, 64, device="cuda") * 2 - 1 for _ in range(2))
    static = first.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fused(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fused(static)
    for x in (first, second):
        static.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(captured, fused(x), rtol=0, atol=0)
