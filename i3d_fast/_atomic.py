"""Atomic outputs: a file or folder exists under its final name only once it is complete.

- :func:`atomic_write`: a file object on a temp file beside the target, renamed over it on success.
- :func:`atomic_file`: a path for writers that take a file name (inside a temp folder beside the target).
- :func:`atomic_dir`: a temp folder beside the target, renamed to it on success.

On an error the temp file or folder is removed and the target is untouched. Results get the
permissions a plain ``open`` / ``mkdir`` would (the process umask), not ``tempfile``'s private 0600 /
0700. Temp names start with ``.<target name>.partial-`` (see :data:`PARTIAL`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]
#: Temp names: ``.<final name><PARTIAL><random>``, so a stale one can be traced to its output.
PARTIAL = ".partial-"


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_name_prefix(path: PathLike) -> str:
    return f".{Path(path).name}{PARTIAL}"


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """``with atomic_write(path, "w") as f: f.write(...)``: writes a temp file in ``path``'s folder
    (created if needed) and renames it to ``path`` when the block ends without an error; on an error
    the temp file is removed and ``path`` is untouched. ``mode``: "wb", or "w" (text, ``encoding``
    default UTF-8)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_name_prefix(path), suffix=path.suffix)
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp: (fill tmp)``: a fresh hidden temp folder beside ``path``
    (parents created), renamed to ``path`` when the block ends without an error, removed with its
    contents on an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_name_prefix(path), dir=path.parent))
    try:
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700 folders
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """For writers that take a file name: yields a path with ``path``'s name inside a fresh hidden
    temp folder beside it (nothing exists there yet). When the block ends without an error the file
    written there is renamed to ``path`` (FileNotFoundError when none was written); on an error, or
    then, the temp folder is removed with whatever it holds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_name_prefix(path), dir=path.parent))
    try:
        target = tmp / path.name
        yield target
        if not target.is_file():
            raise FileNotFoundError(f"nothing was written to {path}")
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
