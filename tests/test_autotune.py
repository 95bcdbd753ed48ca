"""The measured C++-vs-oneDNN choice (kernels/cpu/autotune.py)."""
import time

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
