"""In the local cluster's namespace mode, a UDI built on one node is that node's alone."""

from __future__ import annotations

import os
import subprocess

import pytest

from tools import cluster as cluster_tool
from tools import squash

pytestmark = pytest.mark.slurm


def _ns(site, node: str, argv: list[str]) -> subprocess.CompletedProcess:
    pid = open(cluster_tool.slurmd_pidfile(site, node)).read().strip()
    return subprocess.run(["nsenter", "-t", pid, "-m", "--", *argv], capture_output=True, text=True,
                          env={"SHIFTER_CONFIG": os.path.join(site.prefix, "etc", "udiRoot.conf"),
                               "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})


def test_setuproot_on_one_node_is_invisible_on_the_others(cluster, runner):
    image_id = squash.make_image(cluster, "busybox", cluster.images)
    try:
        res = _ns(cluster, "n1", ["/opt/shifter/bin/setupRoot", "-U", "4242", "id", image_id])
        assert res.returncode == 0, res.stderr
        mounts = {n: _ns(cluster, n, ["cat", "/proc/self/mountinfo"]).stdout for n in ("n1", "n2")}
        assert " /var/udiMount " in mounts["n1"] and "shifter-udi" in mounts["n1"]
        assert "shifter-udi" not in mounts["n2"]
        assert "shifter-udi" not in open("/proc/self/mountinfo").read()
        # the jobs of n1 see it, those of n2 don't
        probe = ["test", "-e", "/var/udiMount/var/shifter/launch.plan"]
        assert runner.run(["srun", "-N1", "-w", "n1", *probe]).returncode == 0
        assert runner.run(["srun", "-N1", "-w", "n2", *probe]).returncode != 0
    finally:
        res = _ns(cluster, "n1", ["/opt/shifter/bin/unsetupRoot"])
        for suffix in (".squashfs", ".meta"):
            os.unlink(os.path.join(cluster.images, image_id + suffix))
    assert res.returncode == 0, res.stderr
    assert "shifter-udi" not in _ns(cluster, "n1", ["cat", "/proc/self/mountinfo"]).stdout
