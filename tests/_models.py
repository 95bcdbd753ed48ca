"""Helpers for tests that build models."""
import torch


def randomise_batchnorm(model: torch.nn.Module, spread: float = 0.2) -> torch.nn.Module:
    """Gives every BatchNorm3d non-trivial statistics and affine parameters (fresh ones are the
    identity in eval mode), from torch's RNG; returns the model."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-spread, spread)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-spread, spread)
    return model
