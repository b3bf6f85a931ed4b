"""A 16-node image job on the local site (16 slurmd namespaces on one machine): every node's
prolog prepares the job's container, every step enters it, every epilog removes it.  The
cluster goes back to its former size afterwards."""

from __future__ import annotations

import time

import pytest

from tools import cluster as tool
from tools.site import Site

pytestmark = pytest.mark.slurm
NODES = 16


@pytest.fixture(scope="module")
def big(cluster):
    before = cluster.nodes
    site = Site(nodes=NODES)
    tool.up(site, images=False)
    yield site
    tool.up(Site(nodes=before), images=False)


def test_a_sixteen_node_job_runs_in_prepared_containers_everywhere(big, runner):
    res = runner.run(["srun", f"-N{NODES}", "--ntasks-per-node=1", "--image=docker:test/busybox:latest", "shifter",
                      "sh", "-c", "echo $(hostname) $(test -r /var/shifter/launch.plan && echo prepared)"],
                     timeout=300)
    assert res.returncode == 0, res.stderr
    rows = sorted(res.stdout.split("\n")[:-1])
    assert sorted(rows) == sorted(f"{n} prepared" for n in big.node_names()), res.stdout
    deadline = time.monotonic() + 60  # the epilogs run after srun returns

    def left():
        out = []
        for node in big.node_names():
            pid = open(tool.slurmd_pidfile(big, node)).read().strip()
            with open(f"/proc/{pid}/mountinfo") as f:
                out += [(node, ln.split()[4]) for ln in f if ".jobs/" in ln.split()[4]]
        return out

    while left():
        assert time.monotonic() < deadline, left()[:3]
        time.sleep(0.2)
