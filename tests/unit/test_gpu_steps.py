"""The step's GPUs, one rule written twice: shifter.runtime.devices (Python) and the
compiled launcher's step_gpus/gpu_id (SHIFTER_LAUNCHER_PRINT_GPUS reports what it would
cover).  tests/data/contracts/gpu_steps.json is the table both must follow."""

import json
import os
import subprocess
import sys

import pytest

from shifter.runtime import config, devices

LAUNCHER = os.path.join(sys.prefix, "bin", "shifter")
with open(os.path.join(os.path.dirname(__file__), "..", "data", "contracts", "gpu_steps.json"), encoding="utf-8") as f:
    CASES = json.load(f)["cases"]


def _module(paths):
    return config.Module(name="gpu", gpu_devices=tuple(paths))  # the rule alone (config refuses a number twice)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_python(case):
    assert devices.covered([_module(case["devices"])], case["env"]) == case["covered"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_compiled_launcher(case):
    env = {"PATH": "/usr/bin:/bin", **case["env"], "SHIFTER_LAUNCHER_PRINT_GPUS": " ".join(case["devices"])}
    res = subprocess.run([LAUNCHER, "true"], env=env, capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"covered": case["covered"]}
