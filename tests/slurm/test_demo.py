"""README's first command: the demo's job runs and checks itself (3 nodes, prepared
containers with the volume and the XFS cache, 3 MPI ranks, every node's prolog/epilog)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slurm
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_demo_job_runs_and_reports_ok(cluster):
    res = subprocess.run([sys.executable, "-m", "tools.demo"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "SHIFTER_CHECKOUT": CHECKOUT})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.rstrip().endswith("demo: ok"), res.stdout
    assert res.stdout.count("hello from rank") == 3
