"""TV-L1 parameters: OpenCV's names (snake_case) and defaults, validated."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict


@dataclass(frozen=True)
class TVL1Params:
    """Parameters of the Dual TV-L1 solver, with OpenCV's ``DualTVL1OpticalFlow`` defaults.

    Attributes (OpenCV name in brackets):
        tau (tau): time step of the dual update, 0 < tau <= 0.25 for stability.
        lambda_ (lambda): weight of the data term; larger gives less smooth flow. Also accepted as
            ``lambda`` in ``**params``.
        theta (theta): tightness of the coupling between u and v.
        nscales (nScales): pyramid levels (fewer when a level would be below 16 px).
        warps (warpings): warps per level (I1 resampled at x + u each time).
        epsilon (epsilon): stopping threshold: iterations stop once the mean squared update of u
            per pixel is below epsilon^2.
        inner_iterations (innerIterations), outer_iterations (outerIterations): iteration limits per
            warp; the median filter runs before each outer iteration.
        scale_step (scaleStep): size ratio between pyramid levels, in (0, 1).
        median_filtering (medianFiltering): median filter size on u before each outer iteration:
            5, or 1 for none (OpenCV's float median supports 3 and 5; we support 1, 3 and 5).

    OpenCV's ``gamma`` (illumination term) and ``useInitialFlow`` are not supported.
    """

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    median_filtering: int = 5

    def __post_init__(self):
        for name in ("tau", "lambda_", "theta", "epsilon", "scale_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"TVL1Params.{name} must be a finite number, got {value!r}")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations", "median_filtering"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"TVL1Params.{name} must be an int, got {value!r}")
        if not 0 < self.tau <= 0.25:
            raise ValueError(f"TVL1Params.tau must be in (0, 0.25] (the dual step is unstable above), got {self.tau}")
        if self.lambda_ <= 0:
            raise ValueError(f"TVL1Params.lambda_ must be > 0, got {self.lambda_}")
        if self.theta <= 0:
            raise ValueError(f"TVL1Params.theta must be > 0, got {self.theta}")
        if self.epsilon < 0:
            raise ValueError(f"TVL1Params.epsilon must be >= 0, got {self.epsilon}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"TVL1Params.scale_step must be in (0, 1), got {self.scale_step}")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"TVL1Params.{name} must be >= 1, got {getattr(self, name)}")
        if self.median_filtering not in (1, 3, 5):
            raise ValueError(f"TVL1Params.median_filtering must be 1 (off), 3 or 5, got {self.median_filtering}")

    @classmethod
    def from_kwargs(cls, params: "TVL1Params | None" = None, **kwargs: Any) -> "TVL1Params":
        """``params`` (or the defaults) with ``kwargs`` replaced; accepts ``lambda`` for ``lambda_``
        and OpenCV's camelCase names (``nScales``, ``innerIterations``, ...)."""
        base = asdict(params if params is not None else cls())
        names = {f.name for f in fields(cls)}
        for key, value in kwargs.items():
            name = _ALIASES.get(key, key)
            if name not in names:
                raise TypeError(f"unknown TV-L1 parameter {key!r}; known: {sorted(names)} "
                                f"(or OpenCV's names {sorted(_ALIASES)})")
            base[name] = value
        return cls(**base)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


_ALIASES = {
    "lambda": "lambda_",
    "nScales": "nscales",
    "warpings": "warps",
    "innerIterations": "inner_iterations",
    "outerIterations": "outer_iterations",
    "scaleStep": "scale_step",
    "medianFiltering": "median_filtering",
}
