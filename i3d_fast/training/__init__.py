"""Training and evaluating I3D streams on labelled videos (``i3d-fast train`` / ``evaluate`` /
``make-synthetic``).

- :mod:`.data`: datasets (class folders, UCF101-style splits), clips with DeepMind's augmentation,
  seeded batches for torch.utils.data.
- :mod:`.loop`: :func:`train` with :class:`TrainOptions` (both streams, validation, mixed precision,
  torchrun, exact resume).
- :mod:`.evaluate`: video-level top-1 / top-5 over several clips per video, per stream and fused.
- :mod:`.synthetic`: a small motion-classification dataset to prove a setup learns.
- :mod:`.checkpoint`: the files of a run's output folder.
"""
from .evaluate import evaluate
from .loop import TrainOptions, train
from .synthetic import make_synthetic

__all__ = ["TrainOptions", "evaluate", "make_synthetic", "train"]
