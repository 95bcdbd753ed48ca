"""Small real videos for the tests, encoded with PyAV (FFmpeg): a bright square moving over a gradient."""
from fractions import Fraction
from pathlib import Path

import numpy as np


def pattern(index: int, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: a gradient background whose blue level jumps each frame, and a 12-pixel square that
    moves 2 pixels per frame."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    np.full_like(x, (index * 41) % 256)], axis=-1).astype(np.uint8)
    top, left = (height - 12) // 2, (2 * index) % max(width - 12, 1)
    img[top:top + 12, left:left + 12] = 255
    return img


def make_video(path: Path, frames: int = 24, fps=25, height: int = 64, width: int = 80, codec: str = "mpeg4",
               pix_fmt: str = "yuv420p", options=None) -> Path:
    """Encodes ``frames`` frames at ``fps`` (int or Fraction) into ``path`` (container from the suffix)."""
    import av

    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec != "gif":
            stream.bit_rate = 4_000_000  # high enough that every frame stays close to its source
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)


def make_truncated_video(path: Path, frames: int = 60) -> Path:
    """An mp4 with its index at the front (faststart), cut to half its bytes: it declares ``frames``
    frames (2.4 s at 25 fps) but decodes about half of them."""
    whole = make_video(path.with_name("whole-" + path.name), frames, 25, options={"movflags": "faststart"})
    data = whole.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    whole.unlink()
    return Path(path)
