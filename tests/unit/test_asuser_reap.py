"""shifter.asuser's child is reaped as soon as it exits, and never waited for forever."""

import os
import signal
import time

from shifter import asuser


def _child(seconds: float) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        time.sleep(seconds)
        os._exit(0)
    return pid


def test_an_exiting_child_is_reaped_at_its_exit():
    pid = _child(0.05)
    t0 = time.monotonic()
    asuser._reap(pid, timeout=5)
    assert time.monotonic() - t0 < 1
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # reaped: not ours to wait for any more
    else:
        raise AssertionError("the child was not reaped")


def test_a_child_that_does_not_exit_is_left_after_the_timeout():
    pid = _child(30)
    try:
        t0 = time.monotonic()
        asuser._reap(pid, timeout=0.2)
        elapsed = time.monotonic() - t0
        assert 0.15 < elapsed < 2
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still running, still ours
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_without_pidfds_it_polls(monkeypatch):
    def no_pidfd(pid):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    pid = _child(0.05)
    asuser._reap(pid, timeout=5)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    else:
        raise AssertionError("the child was not reaped")
