"""Padding arithmetic shared by every 3D op (TensorFlow "SAME"/"VALID" or explicit)."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

Triple = Tuple[int, int, int]
#: Padding per dimension (T, H, W) as (before, after) cell counts.
Pads = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]
PaddingArg = Union[str, int, Sequence[int], Sequence[Sequence[int]]]


def triple(value: Union[int, Sequence[int]], name: str) -> Triple:
    """``3`` -> ``(3, 3, 3)``; a 3-sequence of positive ints is returned as a tuple."""
    if isinstance(value, int):
        value = (value, value, value)
    value = tuple(value)
    if len(value) != 3 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{name} must be a positive int or three positive ints (T, H, W), got {value!r}")
    return value  # type: ignore[return-value]


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension: ``(before, after)``, the odd cell at the end.

    ``out = ceil(size / stride)``; ``total = max((out - 1) * stride + kernel - size, 0)``.
    E.g. size 224, kernel 7, stride 2 -> (2, 3); size 79, kernel 7, stride 2 -> (3, 3).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def resolve_padding(spatial: Sequence[int], kernel: Triple, stride: Triple, padding: PaddingArg) -> Pads:
    """Turns ``padding`` into per-dimension (before, after) pads for input sizes ``spatial`` (T, H, W).

    ``padding`` is "same" (TensorFlow), "valid" (none), an int or (T, H, W) ints (symmetric), or
    ((t0, t1), (h0, h1), (w0, w1)).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "same":
            return tuple(same_padding(s, k, st) for s, k, st in zip(spatial, kernel, stride))  # type: ignore[return-value]
        if mode == "valid":
            return ((0, 0), (0, 0), (0, 0))
        raise ValueError(f"padding must be 'same', 'valid', an int or per-dimension ints, got {padding!r}")
    if isinstance(padding, int):
        padding = (padding, padding, padding)
    padding = tuple(padding)
    if len(padding) != 3:
        raise ValueError(f"padding needs one entry per dimension (T, H, W), got {padding!r}")
    pads = []
    for p in padding:
        pair = (p, p) if isinstance(p, int) else tuple(p)
        if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
            raise ValueError(f"padding entries must be non-negative ints or (before, after) pairs, got {padding!r}")
        pads.append(pair)
    return tuple(pads)  # type: ignore[return-value]


def output_size(size: int, kernel: int, stride: int, pad: Tuple[int, int]) -> int:
    """Number of windows along one dimension (``floor((size + pads - kernel) / stride) + 1``)."""
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def flat_pads(pads: Pads) -> list:
    """((t0, t1), (h0, h1), (w0, w1)) -> [t0, t1, h0, h1, w0, w1] (the custom-op schema form)."""
    return [p for pair in pads for p in pair]


def nested_pads(flat: Sequence[int]) -> Pads:
    """Inverse of :func:`flat_pads`."""
    return ((flat[0], flat[1]), (flat[2], flat[3]), (flat[4], flat[5]))
