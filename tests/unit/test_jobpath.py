"""The job container's path rule (tests/data/contracts/job_udi.json) through the Python code
(shifter.runtime.jobpath) and the compiled launcher (SHIFTER_LAUNCHER_PRINT_UDI=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shifter.runtime import jobpath

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = json.load(open(os.path.join(HERE, "..", "data", "contracts", "job_udi.json")))["cases"]
LAUNCHER = os.path.join(sys.prefix, "bin", "shifter")


def _env(case):
    return {} if case["job"] is None else {"SLURM_JOB_ID": case["job"]}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_python(case):
    assert jobpath.prepared_udi(case["udiMount"], _env(case)) == case["udi"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_compiled_launcher(case, tmp_path):
    conf = tmp_path / "udiRoot.conf"
    conf.write_text(f"udiMount={case['udiMount']}\n")
    res = subprocess.run([LAUNCHER, "true"], capture_output=True, text=True, timeout=10,
                         env={**_env(case), "SHIFTER_CONFIG": str(conf), "SHIFTER_LAUNCHER_PRINT_UDI": "1"})
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert json.loads(res.stdout) == {"udi": case["udi"]}


def test_job_dirs_are_derived_from_one_rule():
    assert jobpath.udi("/var/udiMount", 5) == "/var/udiMount.jobs/5/root"
    assert jobpath.loop("/var/udiLoopMount", 5) == "/var/udiLoopMount.jobs/5/image"
    assert jobpath.error_file("/var/udiMount", 5) == "/var/udiMount.jobs/5/error"
    with pytest.raises(ValueError):
        jobpath.job_dir("/var/udiMount", "../5")
