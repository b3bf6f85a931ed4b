"""The job's cgroup (shifter.wlm.cgroup) on the real kernel: cgroup v1 (the memory
controller's hierarchy, where limits apply) and v2 (the unified hierarchy, here without
controllers: containment and cgroup.kill)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers.prereq import require

from shifter.wlm import cgroup

pytestmark = pytest.mark.root

V1 = "/sys/fs/cgroup/memory"
V2 = "/sys/fs/cgroup/unified"
UID = 4242


def _job_id() -> int:
    return 4_000_000_000 + os.getpid() % 1_000_000  # far above the local site's job ids


def _mount(path, version):
    require(os.path.isdir(path), f"needs the cgroup hierarchy at {path}")
    assert cgroup.version(path) == version


def _spawn_in(cg: cgroup.JobCgroup, argv) -> subprocess.Popen:
    """A process started inside the job's cgroup (it joins before it execs)."""
    procs = os.path.join(cg.path, "cgroup.procs")
    return subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv])


@pytest.mark.parametrize("mount, version", [(V1, 1), (V2, 2)], ids=["v1", "v2"])
def test_epilog_kills_every_process_and_removes_the_levels(mount, version):
    _mount(mount, version)
    cg = cgroup.JobCgroup(mount, UID, _job_id(), "n1")
    assert cg.create() == f"{mount}/shifter/uid_{UID}/job_{cg.job_id}/n1"
    # a process tree that forks on: the shell and its background children
    proc = _spawn_in(cg, ["/bin/sh", "-c", "sleep 300 & sleep 300 & (sleep 300 &) ; wait"])
    try:
        deadline = time.monotonic() + 5
        while len(cg.pids()) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = cg.pids()
        assert len(pids) >= 4, pids
        assert cg.kill() == len(pids)
        assert cg.pids() == []
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        removed = cg.remove()
        assert cg.path in removed and not os.path.exists(cg.path)
        assert not os.path.exists(os.path.dirname(cg.path))  # job level (no other node's)
    finally:
        proc.kill()
        proc.wait()
        cg.kill()
        cg.remove()


def test_levels_shared_with_another_job_stay():
    _mount(V2, 2)
    mine, other = cgroup.JobCgroup(V2, UID, _job_id()), cgroup.JobCgroup(V2, UID, _job_id() + 1)
    mine.create()
    other.create()
    try:
        mine.remove()
        assert not os.path.exists(mine.path)
        assert os.path.isdir(other.path)  # uid_ and shifter levels kept for it
    finally:
        other.remove()
    assert not os.path.exists(os.path.join(V2, "shifter", f"uid_{UID}", f"job_{other.job_id}"))


def test_v1_memory_limit_applies_to_the_jobs_processes():
    """A limit on the job's v1 memory cgroup holds for what runs in it: a process that
    allocates past it is killed by the kernel (OOM), one that stays below runs."""
    _mount(V1, 1)
    cg = cgroup.JobCgroup(V1, UID, _job_id())
    cg.create()
    try:
        for name, value in (("memory.limit_in_bytes", 64 << 20), ("memory.memsw.limit_in_bytes", 64 << 20)):
            path = os.path.join(cg.path, name)
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write(str(value))
        grab = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096]); print('ok')"
        small = _spawn_in(cg, [sys.executable, "-c", grab, "16"])
        assert small.wait(timeout=60) == 0
        big = _spawn_in(cg, [sys.executable, "-c", grab, "256"])
        assert big.wait(timeout=60) == -9  # SIGKILL from the OOM killer
    finally:
        cg.kill()
        cg.remove()
    assert not os.path.exists(cg.path)
