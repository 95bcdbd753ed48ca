"""i3d_fast.malloc: glibc set to serve large tensors from reused heap memory (checked in a fresh
interpreter through mallinfo2's count of mmapped bytes, so the test process keeps its own malloc)."""
import os
import platform
import subprocess
import sys

import pytest

from i3d_fast import malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

# Prints the bytes in mmapped blocks while a 64 MiB tensor lives, after one was allocated and freed.
PROBE = """
import ctypes, sys, torch
from i3d_fast import malloc
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print("no-mallinfo2"); sys.exit()
libc.mallinfo2.restype = Info
applied = malloc.configure_from_environment()
torch.empty(1 << 24).fill_(1)  # allocated and freed
t = torch.empty(1 << 24)
print(applied, libc.mallinfo2().hblkhd >> 20, malloc.setting())
"""


def _probe(choice: str):
    env = {**os.environ, "I3D_FAST_MALLOC": choice}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    line = out.stdout.strip().splitlines()[-1]
    if line == "no-mallinfo2":
        pytest.skip("this glibc has no mallinfo2")
    applied, mmapped, setting = line.split(" ", 2)
    return applied == "True", int(mmapped), setting


def test_reuse_serves_large_tensors_from_the_heap():
    applied, mmapped, setting = _probe("reuse")
    assert applied and mmapped < 64, f"{mmapped} MiB still in mmapped blocks"
    assert "reused" in setting


def test_default_keeps_glibcs_mmap():
    applied, mmapped, setting = _probe("default")
    assert not applied and mmapped >= 64
    assert setting == "the C library's default"


def test_bad_values_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="threshold_bytes"):
        malloc.reuse_freed_memory(1 << 31)
    monkeypatch.setenv("I3D_FAST_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="I3D_FAST_MALLOC"):
        malloc.configure_from_environment()
