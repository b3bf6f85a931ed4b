"""What the compiled SPANK shim handles without Python, and that it does exactly what
Python does for the same request.

tests/data/contracts/shim_route.json is run through the installed shifter_slurm.so, driven by a
stand-in for srun/sbatch (tests/data/shim_harness.c: the real SPANK call sequence over a
fake SPANK API; when the shim loads Python, the real embedded Python runs), and through
shifter.spank.dispatch directly: both must give each case's route, job-control
variables, task variables or error line.  tests/data/contracts/udiconf_imagepath.json is run
through the shim's C reader of udiRoot.conf (spank/udiconf_key.h) and Python's parser.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers.shim import A, B, compiler, run_shim, shim_site
from shifter.errors import ShifterError
from shifter.runtime import config as udiconfig
from shifter.spank import dispatch
from shifter.spank.handle import CTX_ALLOCATOR, CTX_LOCAL
from helpers.fake_spank import FakeSpank

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
SPANK_SRC = os.path.join(HERE, "..", "..", "spank")
ROUTES = json.load(open(os.path.join(DATA, "contracts", "shim_route.json")))["cases"]
CONF_CASES = json.load(open(os.path.join(DATA, "contracts", "udiconf_imagepath.json")))["cases"]


@pytest.fixture(scope="module")
def site():
    """A world-readable directory of fake images, a volume source, udiRoot.conf and the
    compiled harness (helpers.shim)."""
    with shim_site() as s:
        yield s


def _subst(value, site):
    if isinstance(value, str):
        return value.replace("{A}", A).replace("{B}", B).replace("{dir}", site["dir"])
    if isinstance(value, list):
        return [_subst(v, site) for v in value]
    if isinstance(value, dict):
        return {_subst(k, site): _subst(v, site) for k, v in value.items()}
    return value


INHERITED = "SLURM_SPANK__SLURM_SPANK_OPTION_shifter_"


def run_python(site, context, env, options, monkeypatch, plugstack=()):
    """The same request through shifter.spank.dispatch, with what Slurm and the shim
    would hand it: the options as the shim collects them (inherited, then the command
    line; --volume values joined), and each given option's _SLURM_SPANK_OPTION_ variable."""
    from shifter.spank import request

    def no_gateway(config, image):
        if image.type in ("docker", "custom"):
            raise AssertionError(f"the gateway was asked for {image}")
        return image

    monkeypatch.setattr(request, "resolve_id", no_gateway)
    given: list[tuple[str, str]] = [(k[len(INHERITED):], v) for k, v in env.items() if k.startswith(INHERITED)]
    given += [tuple(o) for o in options]
    collected: dict[str, str] = {}
    slurm_set: dict[str, str] = {}
    for name, value in given:
        collected[name] = f"{collected[name]};{value}" if name == "volume" and name in collected else value
        slurm_set[f"_SLURM_SPANK_OPTION_shifter_{name}"] = value
    environ = {"PATH": "/usr/bin:/bin", **env, **slurm_set}
    monkeypatch.setattr(os, "environ", environ)
    sp = FakeSpank(CTX_LOCAL if context == "local" else CTX_ALLOCATOR, uid=os.getuid(), gid=os.getgid())
    sp.control_env.update(slurm_set)
    rc = dispatch.run(sp, "init_post_opt", [f"shifter_config={site['conf']}", *plugstack], collected)
    return {"rc": 0 if rc == 1 else -1, "control": sp.control_env, "errors": sp.errors,
            "env": {k: v for k, v in environ.items() if k.startswith(("SHIFTER_", "_SLURM_SPANK_OPTION_"))}}


def _tasks(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith("SHIFTER_") and k != "SHIFTER_CONFIG"}


def _check(case, out):
    if "error" in case:
        assert out["rc"] == -1 and len(out["errors"]) == 1, out
        assert case["error"] in out["errors"][0] and out["errors"][0].startswith("shifter: "), out["errors"]
        return
    assert out["rc"] == 0 and out["errors"] == [], out
    assert out["control"] == case["control"]
    assert _tasks(out["env"]) == case["tasks"]
    # what srun/salloc's own children inherit: the options as rewritten for the job
    options_env = {k: v for k, v in out["env"].items() if k.startswith("_SLURM_SPANK_OPTION_")}
    assert options_env == {k: v for k, v in case["control"].items() if k.startswith("_SLURM_SPANK_OPTION_")}


@pytest.mark.parametrize("case", ROUTES, ids=[c["name"] for c in ROUTES])
def test_compiled_shim(site, case):
    case = _subst(case, site)
    out = run_shim(site, case["context"], case["env"], case["options"],
                   plugstack=[f"shifter_config={site['conf']}", *case.get("plugstack", [])])
    assert out["python"] == (case["route"] == "python"), out
    _check(case, out)


@pytest.mark.parametrize("case", ROUTES, ids=[c["name"] for c in ROUTES])
def test_python(site, case, monkeypatch):
    case = _subst(case, site)
    _check(case, run_python(site, case["context"], case["env"], case["options"], monkeypatch,
                            case.get("plugstack", ())))


def test_the_table_covers_both_routes_and_contexts():
    kinds = {(c["route"], c["context"], "error" in c) for c in ROUTES}
    for kind in [("shim", "allocator", False), ("shim", "local", False), ("python", "allocator", False),
                 ("python", "local", False), ("python", "allocator", True), ("python", "local", True)]:
        assert kind in kinds, kind


def test_config_from_shifter_config_when_plugstack_names_none(site):
    """Python's order (shifter.paths.config_path): plugstack, SHIFTER_CONFIG, the prefix's."""
    out = run_shim(site, "allocator", {}, [("image", f"id:{A}")], plugstack=[],
                   extra_env={"SHIFTER_CONFIG": site["conf"]})
    assert not out["python"] and out["rc"] == 0, out
    # the plugstack argument wins over SHIFTER_CONFIG (which then names no file)
    out = run_shim(site, "allocator", {}, [("image", f"id:{A}")], extra_env={"SHIFTER_CONFIG": "/no/such.conf"})
    assert not out["python"] and out["rc"] == 0, out


def test_a_config_the_shim_cannot_read_for_sure_is_left_to_python(site):
    conf = os.path.join(site["top"], "twice.conf")
    with open(conf, "w") as f:
        f.write(f"system=test\nimagePath={site['top']}/images\nimagePath=/elsewhere\n")
    out = run_shim(site, "allocator", {}, [("image", f"id:{A}")], plugstack=[f"shifter_config={conf}"])
    assert out["python"] and out["rc"] == -1, out
    assert len(out["errors"]) == 1 and "imagePath is set twice" in out["errors"][0]


def test_failing_to_hand_the_image_to_the_job_is_one_error(site):
    out = run_shim(site, "allocator", {}, [("image", f"id:{A}")], extra_env={"HARNESS_CONTROL_FAILS": "1"})
    assert not out["python"] and out["rc"] == -1
    assert out["errors"] == ["shifter: can't hand SHIFTER_IMAGE to the job: spank_job_control_setenv failed"]


def test_no_shifter_option_no_python_no_variables(site):
    for context, env in (("allocator", {}), ("local", {"SLURM_JOB_ID": "7"})):
        out = run_shim(site, context, env, [])
        assert out.pop("registered") == ["image", "volume", "module"]
        assert out == {"rc": 0, "python": False, "control": {}, "env": {}, "errors": [], "infos": [],
                       "debug": []}


# -------------------------------------------------------------- udiRoot.conf's imagePath
@pytest.fixture(scope="module")
def conf_reader(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("udiconf") / "udiconf_imagepath")
    subprocess.run([compiler(), "-O2", "-Wall", "-Wextra", "-I", SPANK_SRC, "-o", exe,
                    os.path.join(DATA, "udiconf_imagepath.c")], check=True)
    return exe


@pytest.mark.parametrize("case", CONF_CASES, ids=[c["name"] for c in CONF_CASES])
def test_c_reads_imagepath_as_the_vectors_say(conf_reader, case, tmp_path):
    path = tmp_path / "udiRoot.conf"
    path.write_bytes(case["text"].encode())
    res = subprocess.run([conf_reader, str(path), *([case["key"]] if "key" in case else [])],
                         capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    assert (res.stdout.rstrip("\n") if res.returncode == 0 else None) == case["c"]


@pytest.mark.parametrize("case", CONF_CASES, ids=[c["name"] for c in CONF_CASES])
def test_python_reads_imagepath_as_the_vectors_say(case):
    try:
        got = getattr(udiconfig.parse(case["text"]), case.get("key", "imagePath"))
    except ShifterError:
        got = "error"
    assert got == case["python"]


def test_where_c_answers_python_agrees():
    for case in CONF_CASES:
        if case["c"] is not None and case["python"] != "error":
            assert case["c"] == case["python"], case["name"]
    refused = [c for c in CONF_CASES if c["c"] is not None and c["python"] == "error"]
    assert [c["name"] for c in refused] == ["C reads imagePath, Python refuses another key"]
