"""i3d_fast._atomic: outputs appear complete under their final name, or not at all, with the
permissions of a plain open/mkdir."""
import os
import stat

import pytest

from i3d_fast._atomic import PARTIAL, atomic_dir, atomic_file, atomic_write


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_atomic_write_replaces_only_on_success(tmp_path, umask_027):
    path = tmp_path / "sub" / "out.txt"
    with atomic_write(path, "w") as f:
        f.write("first")
        assert not path.exists()  # nothing under the final name while writing
    assert path.read_text() == "first" and _mode(path) == 0o640
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, "w") as f:
            f.write("second, half")
            raise RuntimeError("boom")
    assert path.read_text() == "first" and os.listdir(tmp_path / "sub") == ["out.txt"]
    with atomic_write(path) as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(path, "a"):
            pass


def test_atomic_file_gives_a_path_and_cleans_up(tmp_path, umask_027):
    path = tmp_path / "w.npy"
    with atomic_file(path) as target:
        assert target.name == "w.npy" and target.parent.name.startswith(f".w.npy{PARTIAL}")
        target.write_bytes(b"data")
    assert path.read_bytes() == b"data" and os.listdir(tmp_path) == ["w.npy"] and _mode(path) == 0o640
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_file(tmp_path / "none.bin"):
            pass
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "half.bin") as target:
            target.write_bytes(b"half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["w.npy"]


def test_atomic_dir(tmp_path, umask_027):
    out = tmp_path / "clip"
    with atomic_dir(out) as tmp:
        (tmp / "a.jpg").write_bytes(b"x")
        assert not out.exists()
    assert os.listdir(out) == ["a.jpg"] and _mode(out) == 0o750
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "other") as tmp:
            (tmp / "b.jpg").write_bytes(b"y")
            raise OSError("disk full")
    assert os.listdir(tmp_path) == ["clip"]
