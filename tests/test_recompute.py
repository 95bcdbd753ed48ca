"""ops.recompute: unit outputs, max pools of them and Inception concatenations saved for backward as
recipes (remade in backward) instead of tensors. Gradients must be bit-identical to saving the
tensors, with less saved memory; in-place changes, retained graphs and changed BatchNorm parameters
behave as autograd's saved tensors do."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i3d_fast.layers import MaxPool3d, Unit3D
from i3d_fast.models import InceptionI3d
from i3d_fast.ops import recompute

CL = torch.channels_last_3d


class Net(nn.Module):
    """Every recipe kind: a strided unit and max pool (nested recipe), a unit read by a unit, a
    concatenation of units, a stride-1 max pool of it, a unit reading that."""

    def __init__(self):
        super().__init__()
        self.stem = Unit3D(3, 8, 3, 2)
        self.pool = MaxPool3d(3, 2)
        self.a = Unit3D(8, 8, 1)
        self.b = Unit3D(8, 6, 3)
        self.c = Unit3D(8, 5, 1)
        self.same_pool = MaxPool3d(3, 1)
        self.d = Unit3D(11, 4, 1)

    def forward(self, x, in_place=False):
        a = self.a(self.pool(self.stem(x)))
        if in_place:
            a.add_(1.0)
        joined = recompute.cat([self.b(a), self.c(a)], dim=1)
        return self.d(self.same_pool(joined)).sum(dim=(2, 3, 4))


def _grads(monkeypatch, enabled, in_place=False, backward=None):
    monkeypatch.setenv("I3D_FAST_RECOMPUTE", "1" if enabled else "0")
    torch.manual_seed(0)
    net = Net().train()
    x = torch.randn(2, 3, 8, 12, 12).contiguous(memory_format=CL).requires_grad_()
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = (net(x, in_place) ** 2).sum()
    (backward or (lambda loss: loss.backward()))(loss)
    return [x.grad] + [p.grad for p in net.parameters()], sum(saved.values())


def test_gradients_are_bit_identical_with_less_saved(monkeypatch):
    ours, ours_saved = _grads(monkeypatch, True)
    plain, plain_saved = _grads(monkeypatch, False)
    assert all(torch.equal(a, b) for a, b in zip(ours, plain))
    assert ours_saved < plain_saved


def test_an_output_changed_in_place_is_saved_itself(monkeypatch):
    ours, _ = _grads(monkeypatch, True, in_place=True)
    plain, _ = _grads(monkeypatch, False, in_place=True)
    assert all(torch.equal(a, b) for a, b in zip(ours, plain))


def test_retained_graph_backward_twice(monkeypatch):
    def twice(loss):
        loss.backward(retain_graph=True)
        loss.backward()

    ours, _ = _grads(monkeypatch, True, backward=twice)
    plain, _ = _grads(monkeypatch, False)
    assert all(torch.equal(a, 2 * b) for a, b in zip(ours, plain))


def test_second_backward_without_retain_graph_raises(monkeypatch):
    def twice(loss):
        loss.backward()
        loss.backward()

    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        _grads(monkeypatch, True, backward=twice)


def test_bn_weight_changed_before_backward_raises(monkeypatch):
    monkeypatch.setenv("I3D_FAST_RECOMPUTE", "1")
    net = Net().train()
    loss = net(torch.randn(1, 3, 8, 12, 12)).sum()
    with torch.no_grad():
        net.a.bn.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_i3d_saves_no_unit_output_it_can_remake(monkeypatch):
    """In InceptionI3d the 3x3x3 units, the max pools and the blocks' pools save recipes: what stays
    saved is every unit's conv output, the clip and the weights (about half of saving everything)."""
    sizes = {}
    for enabled in (True, False):
        monkeypatch.setenv("I3D_FAST_RECOMPUTE", "1" if enabled else "0")
        torch.manual_seed(0)
        model = InceptionI3d(10, adaptive_head=True).to(memory_format=CL).train()
        saved = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(1, 3, 8, 64, 64).contiguous(memory_format=CL))
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        sizes[enabled] = sum(saved.values()) - params
    assert sizes[True] < 0.65 * sizes[False]


def test_compiled_and_reference_paths_save_tensors(monkeypatch):
    """The reference backend has no recipe: its outputs are saved as tensors, gradients unchanged."""
    monkeypatch.setenv("I3D_FAST_RECOMPUTE", "1")
    unit_a, unit_b = Unit3D(3, 4, 3), Unit3D(4, 4, 3)
    x = torch.randn(1, 3, 4, 6, 6)
    from i3d_fast import layers

    y = layers.conv_bn_relu(x, unit_a.conv3d, unit_a.bn, "same", True, backend="reference")
    assert recompute._valid(y) is None
    out = unit_b(y)
    out.sum().backward()
    assert unit_a.conv3d.weight.grad is not None and torch.isfinite(unit_a.conv3d.weight.grad).all()
