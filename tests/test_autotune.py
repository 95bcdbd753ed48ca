"""The measured C++-vs-oneDNN choice (kernels/cpu/autotune.py), and its file of measurements."""
import json
import time
import warnings

import pytest
import torch

from i3d_fast.kernels.cpu import autotune


def _sleeper(seconds, calls):
    def run():
        calls.append(seconds)
        time.sleep(seconds)
    return run


def test_faster_kernel_is_kept_and_verdict_cached():
    calls = []
    made = []

    def candidates():
        made.append(1)
        return _sleeper(0.0, calls), _sleeper(0.004, calls)

    key = ("test", "faster")
    assert autotune.slower(key, candidates) is None
    runs = len(calls)
    assert autotune.slower(key, candidates) is None
    assert len(made) == 1 and len(calls) == runs  # measured once
    mine, onednn = autotune.verdicts()[key]
    assert mine < onednn


def test_slower_kernel_is_rejected_with_the_times():
    why = autotune.slower(("test", "slower"), lambda: (_sleeper(0.004, []), _sleeper(0.0, [])))
    assert why is not None and "measured slower than ATen" in why and "ms" in why


def test_autotune_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("I3D_FAST_AUTOTUNE", "0")
    assert not autotune.enabled()
    monkeypatch.setenv("I3D_FAST_AUTOTUNE", "1")
    assert autotune.enabled()


def test_a_baseline_without_a_kernel_loses():
    def missing():
        raise NotImplementedError("no bf16 kernel")

    assert autotune.slower(("test", "missing"), lambda: (lambda: None, missing)) is None


def test_fastest_of_several_needs_the_margin_over_the_baseline():
    calls = []
    choice = autotune.fastest(("test", "three"), lambda: [("onednn", _sleeper(0.006, calls)),
                                                          ("a", _sleeper(0.004, calls)), ("b", _sleeper(0.002, calls))])
    assert choice == "b"
    runs = len(calls)
    assert autotune.fastest(("test", "three"), lambda: []) == "b" and len(calls) == runs  # measured once
    assert set(autotune.choices()[("test", "three")]) == {"onednn", "a", "b"}
    # not below the margin of the baseline's time (sleep never returns early): the baseline stays
    assert autotune.fastest(("test", "tie"), lambda: [("onednn", _sleeper(0.0029, [])),
                                                      ("a", _sleeper(0.003, []))]) == "onednn"


def _new_process(monkeypatch):
    """Forgets every in-memory measurement, as a fresh process would."""
    monkeypatch.setattr(autotune, "_VERDICTS", {})
    monkeypatch.setattr(autotune, "_CHOICES", {})
    monkeypatch.setattr(autotune, "_PERSISTED", autotune._Persisted())


def _never():
    raise AssertionError("measured again instead of read from the cache file")


def test_measurements_persist_for_the_next_process(monkeypatch, tmp_path):
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "cache"))
    _new_process(monkeypatch)
    path = autotune.cache_path()
    assert path.parent == tmp_path / "cache" and path.name.startswith("autotune-")
    choice = autotune.fastest(("persist", 1, (2, 3), torch.float32),
                              lambda: [("onednn", _sleeper(0.004, [])), ("ours", _sleeper(0.0, []))])
    verdict = autotune.slower(("persist", "v"), lambda: (_sleeper(0.004, []), _sleeper(0.0, [])))
    data = json.loads(path.read_text())
    assert data["fingerprint"] == autotune.fingerprint() and len(data["choices"]) == len(data["verdicts"]) == 1
    _new_process(monkeypatch)
    assert autotune.fastest(("persist", 1, (2, 3), torch.float32), _never) == choice == "ours"
    assert autotune.slower(("persist", "v"), _never) == verdict
    assert data["choices"][repr(("persist", 1, (2, 3), torch.float32))][0][0] == "onednn"  # the baseline first
    # another machine's (or build's) measurements are not used, and are replaced by this one's
    data["fingerprint"]["cpu"] = "another CPU"
    path.write_text(json.dumps(data))
    _new_process(monkeypatch)
    calls = []
    autotune.fastest(("persist", 1, (2, 3), torch.float32), lambda: [("onednn", _sleeper(0.0, calls)),
                                                                      ("ours", _sleeper(0.0, calls))])
    assert calls and json.loads(path.read_text())["fingerprint"] == autotune.fingerprint()


def test_a_corrupt_cache_file_is_warned_about_and_rewritten(monkeypatch, tmp_path):
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    _new_process(monkeypatch)
    path = autotune.cache_path()
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring the kernel timing cache"):
        autotune.fastest(("corrupt",), lambda: [("onednn", _sleeper(0.0, [])), ("ours", _sleeper(0.0, []))])
    assert json.loads(path.read_text())["fingerprint"] == autotune.fingerprint()


def test_persistence_off_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(autotune.CACHE_ENV, "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _new_process(monkeypatch)
    assert autotune.cache_path() is None
    autotune.fastest(("off",), lambda: [("onednn", _sleeper(0.0, [])), ("ours", _sleeper(0.0, []))])
    assert not any(tmp_path.iterdir())
    monkeypatch.delenv(autotune.CACHE_ENV)
    assert autotune.cache_path().parent == tmp_path / "i3d_fast"


def test_an_unwritable_cache_is_warned_about_once(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(autotune.CACHE_ENV, str(blocker))  # the folder is a file
    _new_process(monkeypatch)
    with pytest.warns(UserWarning, match="cannot write the kernel timing cache"):
        autotune.fastest(("ro", 1), lambda: [("onednn", _sleeper(0.0, [])), ("ours", _sleeper(0.0, []))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autotune.fastest(("ro", 2), lambda: [("onednn", _sleeper(0.0, [])), ("ours", _sleeper(0.0, []))])
