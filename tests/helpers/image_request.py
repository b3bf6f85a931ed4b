"""The image-request vectors (tests/data/contracts/image_request.json): the table's answer
for a case, and what the contract's Python owner (shifter.runtime.envrequest) answers.
Run by test_image_request.py (the installed launcher) and test_contracts.py (the
launcher's sources)."""

from __future__ import annotations

import json
import os

from shifter.errors import UsageError
from shifter.runtime import envrequest

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "contracts",
                       "image_request.json")
with open(VECTORS, encoding="utf-8") as _f:
    CASES = json.load(_f)["cases"]


def expected(case) -> dict:
    out = {"image": case["image"], "volume": case["volume"]}
    if "error" in case:
        out["error"] = case["error"]
    else:
        out["modules"] = case["modules"]
    return out


def python_answer(env) -> dict:
    try:
        return envrequest.env_request(env)
    except UsageError:
        return {"image": envrequest.env_image_spec(env), "volume": envrequest.env_volume(env), "error": "module"}
