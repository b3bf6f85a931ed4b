"""One table (tests/data/contracts/image_request.json) of what `shifter CMD` takes from the
environment -- image, volumes, modules, or a refusal -- run through the contract's owner
(shifter.runtime.envrequest.env_request, which the Python launcher uses) and the installed
compiled launcher (its SHIFTER_LAUNCHER_PRINT_REQUEST=1 report): both must give the table's
answer.  (tests/unit/test_contracts.py runs it through the launcher's sources too.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.image_request import CASES, expected, python_answer
from shifter.errors import UsageError
from shifter.runtime import envrequest

LAUNCHER = os.path.join(sys.prefix, "bin", "shifter")


def compiled_choice(env) -> dict:
    res = subprocess.run([LAUNCHER, "true"], env={**env, "SHIFTER_LAUNCHER_PRINT_REQUEST": "1"},
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 0 and not res.stderr, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_python_launcher(case):
    assert python_answer(case["env"]) == expected(case)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_compiled_launcher(case):
    assert compiled_choice(case["env"]) == expected(case)


def test_the_table_covers_the_contract():
    names = {n for c in CASES for n in c["env"]}
    for var in ("SHIFTER_IMAGE", "SHIFTER_IMAGETYPE", "SLURM_SPANK_SHIFTER_IMAGE", "SLURM_SPANK_SHIFTER_IMAGETYPE",
                *envrequest.FALLBACK_IMAGE_VARS, "SHIFTER_VOLUME", "SLURM_SPANK_SHIFTER_VOLUME",
                "SHIFTER_MODULE", "SLURM_SPANK_SHIFTER_MODULE"):
        assert var in names, var


def test_module_refusal_is_one_line_naming_the_list():
    from shifter.runtime.modules import normalize

    with pytest.raises(UsageError) as e:
        normalize("none,x")
    assert "'none,x'" in str(e.value) and "'none' can't be combined" in str(e.value)
