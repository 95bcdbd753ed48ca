"""I3D flow preprocessing and the denseflow JPEG layout."""
import numpy as np
import pytest
import torch

from i3d_fast.flow import decode_flow, encode_flow, read_flow_jpegs, to_i3d_input, write_flow_jpegs

pytest.importorskip("PIL", reason="Pillow (video/test extra) writes and reads the JPEGs")


def test_to_i3d_input_clips_and_scales():
    flow = torch.tensor([[[-30.0, -20.0, 0.0, 10.0, 25.0]], [[1.0, 2.0, 3.0, 4.0, 5.0]]])
    out = to_i3d_input(flow)
    torch.testing.assert_close(out[0, 0], torch.tensor([-1.0, -1.0, 0.0, 0.5, 1.0]))
    assert out.dtype == torch.float32 and out.shape == flow.shape
    torch.testing.assert_close(to_i3d_input(flow, bound=5)[1, 0], torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0]))


def test_denseflow_codes():
    flow = torch.tensor([[[-25.0, -20.0, 0.0, 20.0, 21.0, 10.0]], [[0.0] * 6]])
    codes = encode_flow(flow)
    assert codes[0, 0].tolist() == [0, 0, 128, 255, 255, round(255 * 30 / 40)]
    torch.testing.assert_close(decode_flow(codes)[0, 0, 2], torch.tensor(128 * 40 / 255 - 20))


def test_jpeg_round_trip_layout_and_accuracy(tmp_path):
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    smooth = torch.stack([torch.sin(x / 9) * 8, torch.cos(y / 7) * 5])  # JPEG keeps smooth flow well
    flow = torch.stack([smooth, smooth.flip(-1) + torch.rand(2, 48, 64, generator=g)])
    paths = write_flow_jpegs(flow, tmp_path / "clip", start_index=1)
    assert [p.name for p in paths] == ["flow_x_00001.jpg", "flow_y_00001.jpg", "flow_x_00002.jpg",
                                       "flow_y_00002.jpg"]
    assert not [p for p in (tmp_path / "clip").iterdir() if p.name.startswith(".tmp")]
    back = read_flow_jpegs(tmp_path / "clip")
    assert back.shape == (2, 2, 48, 64) and back.dtype == torch.float32
    assert float((back - flow).abs().mean()) < 0.2  # one code is 40 / 255 = 0.157 px
    from PIL import Image

    with Image.open(paths[0]) as img:
        assert img.mode == "L" and img.size == (64, 48)


def test_read_errors(tmp_path):
    flow = torch.zeros(3, 2, 16, 16)
    paths = write_flow_jpegs(flow, tmp_path)
    paths[3].unlink()  # flow_y_00002.jpg
    with pytest.raises(ValueError, match="do not pair up"):
        read_flow_jpegs(tmp_path)
    paths[2].unlink()
    with pytest.raises(ValueError, match="not consecutive"):
        read_flow_jpegs(tmp_path)
    (tmp_path / "flow_x_00002.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "flow_y_00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode"):
        read_flow_jpegs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no flow_x"):
        read_flow_jpegs(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path)
    with pytest.raises(ValueError, match="bound"):
        to_i3d_input(flow, bound=0)
    with pytest.raises(ValueError, match="non-finite"):
        write_flow_jpegs(torch.full((2, 16, 16), float("nan")), tmp_path / "nan")
    with pytest.raises(ValueError, match=r"\[2, H, W\]"):
        to_i3d_input(torch.zeros(3, 16, 16))
    assert np.all(encode_flow(np.zeros((2, 4, 4))).numpy() == 128)


def test_read_flow_jpegs_refuses_a_folder_not_starting_at_one(tmp_path):
    """An incomplete folder (numbering from 475, as a run cut short by another could leave) is refused;
    start_index says where a folder written with another start begins."""
    from i3d_fast.flow import read_flow_jpegs, write_flow_jpegs

    flows = torch.zeros(3, 2, 8, 8)
    write_flow_jpegs(flows, tmp_path / "late", start_index=475)
    with pytest.raises(ValueError, match="start at index 475, not 1"):
        read_flow_jpegs(tmp_path / "late")
    assert read_flow_jpegs(tmp_path / "late", start_index=475).shape == (3, 2, 8, 8)
    assert read_flow_jpegs(tmp_path / "late", start_index=None).shape == (3, 2, 8, 8)
