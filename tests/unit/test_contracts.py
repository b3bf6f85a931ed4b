"""One owner per contract, one set of vectors: every file in tests/data/contracts/ runs
through the Python owner and through the compiled code (docs/dev.md, "Contracts").

The compiled side here is the contract driver (tests/data/contract_driver.c): the
launcher's own sources (runtime/launcher/*.c: launcher.c and replay_plan.c included whole, the
others linked) built with the shipped launcher's flags and the header the build writes from
the owners (shifter.runtime.contract_header).
The shim's contracts run through the installed plugin in their own test modules
(named in CONTRACTS); this module checks that every vector file is run by one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from helpers import image_request
from helpers.prereq import require

from shifter import exit_codes, paths
from shifter.runtime import contract_header, envrequest, plan, privplan

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(SRC, "tests", "data")
VECTORS = os.path.join(DATA, "contracts")
PREFIX = "/opt/shifter"  # the installation the request_key vectors assume

#: vector file -> (owner module, the C that follows it, the test module that runs both)
CONTRACTS = {
    "image_request.json": ("runtime/envrequest.py", "runtime/launcher/envrequest.c", "test_contracts.py"),
    "request_key.json": ("runtime/privplan.py", "runtime/launcher/replay_plan.c", "test_contracts.py"),
    "launch_plan.json": ("runtime/plan.py", "runtime/launcher/launcher.c", "test_contracts.py"),
    "launch_match.json": ("runtime/plan.py", "runtime/launcher/launcher.c", "test_contracts.py"),
    "private_plan.json": ("runtime/privplan.py", "runtime/launcher/replay_plan.c", "test_contracts.py"),
    "plugstack_args.json": ("spank/plugstack.py", "spank/shim_config.c", "test_plugstack.py"),
    "shim_route.json": ("spank/request.py", "spank/shim_route.c", "test_shim_route.py"),
    "udiconf_imagepath.json": ("runtime/config.py", "spank/udiconf_key.h", "test_shim_route.py"),
    "job_udi.json": ("runtime/jobpath.py", "runtime/launcher/launcher.c", "test_jobpath.py"),
    "plandir.json": ("runtime/plandir.py", "runtime/launcher/plandir.h", "test_plandir.py"),
    "job_cgroup.json": ("wlm/cgroup.py", "spank/cgroup_path.h", "test_cgroup.py"),
    "gpu_steps.json": ("runtime/devices.py", "runtime/launcher/launcher.c", "test_gpu_steps.py"),
}


def cases(name):
    with open(os.path.join(VECTORS, name), encoding="utf-8") as f:
        return json.load(f)["cases"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The contract driver, compiled as the build compiles the launcher."""
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        require(False, "needs a C compiler")
    out = tmp_path_factory.mktemp("contracts")
    gen = str(out / "gen")
    contract_header.write(SRC, os.path.join(gen, contract_header.HEADER))
    with open(os.path.join(gen, "exit_codes.h"), "w") as f:  # the build's other generated header
        f.write(exit_codes.c_header())
    exe = str(out / "contract_driver")
    with open(os.path.join(DATA, "contract_driver.c"), encoding="utf-8") as f:  # the sources it includes whole
        included = set(re.findall(r'^#include "(\w+\.c)"', f.read(), flags=re.M))
    assert included, "the driver includes the launcher's sources"
    sources = [s for s in contract_header.LAUNCHER_SOURCES if os.path.basename(s) not in included]
    assert len(sources) == len(contract_header.LAUNCHER_SOURCES) - len(included)
    subprocess.run([cc, *contract_header.LAUNCHER_CFLAGS, "-I", gen, "-I", os.path.join(SRC, "runtime", "launcher"),
                    "-o", exe, os.path.join(DATA, "contract_driver.c"), *(os.path.join(SRC, s) for s in sources)],
                   check=True)
    return exe


def run_driver(driver, *args, env=None):
    res = subprocess.run([driver, *args], env={"PATH": "/usr/bin:/bin", **(env or {})}, capture_output=True,
                         text=True, timeout=30, cwd="/")
    assert res.returncode == 0 and not res.stderr, res.stderr
    return json.loads(res.stdout)


def write_items(tmp_path, case) -> str:
    data = b"\0".join(s.encode() for s in case["items"])
    if case["items"] and not case.get("no_final_nul"):
        data += b"\0"
    path = tmp_path / "plan"
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------ the request in the environment
REQUESTS = image_request.CASES


@pytest.mark.parametrize("case", REQUESTS, ids=[c["name"] for c in REQUESTS])
def test_request_python(case):
    assert image_request.python_answer(case["env"]) == image_request.expected(case)


@pytest.mark.parametrize("case", REQUESTS, ids=[c["name"] for c in REQUESTS])
def test_request_c(driver, case):
    assert run_driver(driver, "request", env=case["env"]) == image_request.expected(case)


# ------------------------------------------------------------ the private plan's request key
KEYS = cases("request_key.json")


@pytest.mark.parametrize("case", KEYS, ids=[c["name"] for c in KEYS])
def test_request_key_python(case, monkeypatch):
    monkeypatch.setattr(paths, "DEFAULT_CONFIG", f"{PREFIX}/etc/udiRoot.conf")
    key = privplan.request_key(case["env"], paths.config_path(environ=case["env"]), case["uid"], case["gid"],
                               case["groups"])
    assert key == case["key"]
    assert (key and privplan.plan_name(key)) == case["plan"]


@pytest.mark.parametrize("case", KEYS, ids=[c["name"] for c in KEYS])
def test_request_key_c(driver, case):
    out = run_driver(driver, "key", str(case["uid"]), str(case["gid"]), ",".join(map(str, case["groups"])),
                     PREFIX, env=case["env"])
    assert out == {"key": case["key"], "name": case["plan"]}


# ------------------------------------------------------------ the launch plan
LAUNCH_PLANS = cases("launch_plan.json")


def python_launch_plan(data: bytes):
    try:
        p = plan.loads(data)
    except ValueError:
        return None
    out = {key: str(getattr(p, key)) for key in plan.SINGLE_KEYS}
    out.update({key: list(getattr(p, key)) for key in plan.LIST_KEYS})
    return out


@pytest.mark.parametrize("case", LAUNCH_PLANS, ids=[c["name"] for c in LAUNCH_PLANS])
def test_launch_plan_python(case, tmp_path):
    with open(write_items(tmp_path, case), "rb") as f:
        assert python_launch_plan(f.read()) == case["plan"]


@pytest.mark.parametrize("case", LAUNCH_PLANS, ids=[c["name"] for c in LAUNCH_PLANS])
def test_launch_plan_c(driver, case, tmp_path):
    out = run_driver(driver, "launchplan", write_items(tmp_path, case))
    if case["plan"] is None:
        assert out == {"valid": False}
    else:  # the launcher keeps all but udi and entry
        want = {k: v for k, v in case["plan"].items() if k not in ("udi", "entry")}
        assert out == {"valid": True, **want}


def test_a_written_plan_reads_back_on_both_sides(driver, tmp_path):
    """What plan.dumps writes is what both readers read."""
    p = plan.Plan(uid=4242, gid=4240, jobid="9", image_type="id", image_id="c" * 64, volumes="/a:/b", modules="",
                  udi="/u", modules_default="1", workdir="/w", entry=("/e",), cmd=("/bin/true",),
                  env=("=A=1", "-B"), userhook=("/h",), gpudev=("/dev/nvidia3",))
    path = tmp_path / "launch.plan"
    path.write_bytes(plan.dumps(p))
    assert plan.loads(path.read_bytes()) == p
    out = run_driver(driver, "launchplan", str(path))
    assert out == {"valid": True, **{k: v for k, v in python_launch_plan(plan.dumps(p)).items()
                                     if k not in ("udi", "entry")}}


# ------------------------------------------------------------ which prepared UDI a request uses
MATCHES = cases("launch_match.json")


def match_plan(case) -> plan.Plan:
    p = case["plan"]
    return plan.Plan(uid=int(p["uid"]), gid=int(p["gid"]), jobid=p["jobid"], image_type=p["image_type"],
                     image_id=p["image_id"], volumes=p["volumes"], modules=p["modules"], udi="/var/udiMount",
                     modules_default=p["modules_default"])


@pytest.mark.parametrize("case", MATCHES, ids=[c["name"] for c in MATCHES])
def test_launch_match_python(case):
    assert plan.matches(match_plan(case), case["uid"], case["gid"], case["env"]) is case["match"]


@pytest.mark.parametrize("case", MATCHES, ids=[c["name"] for c in MATCHES])
def test_launch_match_c(driver, case, tmp_path):
    path = tmp_path / "launch.plan"
    path.write_bytes(plan.dumps(match_plan(case)))
    out = run_driver(driver, "match", str(path), str(case["uid"]), str(case["gid"]), env=case["env"])
    assert out == {"match": case["match"]}


# ------------------------------------------------------------ the private plan
PRIVATE_PLANS = cases("private_plan.json")


def python_private_plan(data: bytes, key: str, uid: int):
    try:
        records = privplan.loads(data)
        privplan.check(records, key, uid)
    except ValueError:
        return None
    out = {"kind": None, "root": None, "fuse": None, "input": [], "env": [], "userhook": [], "cmd": [], "ops": []}
    for name, *args in records:
        args = [a.decode(errors="surrogateescape") for a in args]
        if name in ("kind", "root", "fuse"):
            out[name] = args[0]
        elif name == "input":
            out["input"] += args
        elif name in ("env", "userhook", "cmd"):
            out[name].append(args[0])
        elif name != "key":
            out["ops"].append([name, *args])
    return out


@pytest.mark.parametrize("case", PRIVATE_PLANS, ids=[c["name"] for c in PRIVATE_PLANS])
def test_private_plan_python(case, tmp_path):
    with open(write_items(tmp_path, case), "rb") as f:
        assert python_private_plan(f.read(), case["key"], case["uid"]) == case["plan"]


@pytest.mark.parametrize("case", PRIVATE_PLANS, ids=[c["name"] for c in PRIVATE_PLANS])
def test_private_plan_c(driver, case, tmp_path):
    out = run_driver(driver, "privateplan", write_items(tmp_path, case), case["key"], str(case["uid"]))
    assert out == ({"valid": False} if case["plan"] is None else {"valid": True, **case["plan"]})


def test_the_records_are_the_owners(driver):
    """The launcher's record table is privplan's: names, arity, which strings are paths."""
    table = run_driver(driver, "records")
    assert table == {name: [arity, sum(1 << i for i in privplan.PATHS.get(name, ()))]
                     for name, arity in privplan.ARITY.items()}


# ------------------------------------------------------------ every vector file has its runners
def test_every_vector_file_has_an_owner_c_and_a_runner():
    files = sorted(n for n in os.listdir(VECTORS) if n.endswith(".json"))
    assert files == sorted(CONTRACTS)
    with open(os.path.join(SRC, "docs", "dev.md"), encoding="utf-8") as f:
        dev = f.read()
    for name, (owner, c_file, runner) in CONTRACTS.items():
        assert os.path.exists(os.path.join(SRC, owner)) and os.path.exists(os.path.join(SRC, c_file)), name
        with open(os.path.join(HERE, runner), encoding="utf-8") as f:
            assert f'"{name}"' in f.read(), f"{runner} does not run {name}"
        assert f"| `{owner}` | `{c_file}` | `tests/data/contracts/{name}` |" in dev, f"docs/dev.md lacks {name}"


def test_the_c_side_takes_the_owners_names():
    """The header the build writes holds each owner's value: change the owner, the C follows."""
    text = contract_header.render(SRC)
    for name in ("IMAGE", "JOB_IMAGE", "JOB_VOLUME", "CONFIG"):
        assert f'#define ENV_{name} "{getattr(envrequest, name)}"' in text
    from shifter.spank import plugstack

    assert '#define PLUGSTACK_KNOWN_KEYS_TEXT "' + ", ".join(plugstack.KNOWN_KEYS) + '"' in text
    assert f'#define LAUNCH_PLAN_MAGIC "{plan.MAGIC}"' in text
    assert f'#define PRIVATE_PLAN_KEY_VERSION "{privplan.KEY_VERSION}"' in text


def test_the_c_writes_no_owned_name_itself():
    """The launcher's and the shim's C spell no variable name or magic string the owners
    define: they use the generated header's macros (so a renamed variable can't drift)."""
    owned = [v for k, v in vars(envrequest).items() if k.isupper() and isinstance(v, str) and k != "PROLOG_PREFIX"]
    owned += [plan.MAGIC, privplan.MAGIC, privplan.KEY_VERSION, plan.RELPATH]
    owned += [name for names in envrequest.IMAGE_PAIRS for name in names] + list(envrequest.FALLBACK_IMAGE_VARS)
    c_files = [*contract_header.LAUNCHER_SOURCES, *contract_header.SHIM_SOURCES]
    c_files += [os.path.join(d, name) for d in ("runtime/launcher", "spank")
                for name in sorted(os.listdir(os.path.join(SRC, d))) if name.endswith(".h")]
    assert "spank/shim_route.c" in c_files and "runtime/launcher/replay_plan.c" in c_files
    for rel in c_files:
        with open(os.path.join(SRC, rel), encoding="utf-8") as f:
            code = f.read()
        for value in owned:
            assert f'"{value}"' not in code, f"{rel} spells {value!r}: use shifter_contracts.h"


def test_python_writes_no_private_plan_the_launcher_refuses(tmp_path):
    """The writer checks what it writes against the readers' rule: an execution the
    launcher would refuse (here a staging path `@x`) leaves no plan; a valid one is
    written and reads back valid."""
    import types

    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        key = KEYS[4]["key"]
        saver = privplan.Saver(key, "user", 4242, [], ["=A=1"], [], ["/bin/true"], (directory, str(tmp_path)))
        bad = types.SimpleNamespace(unsaveable=None, done=[("mkdir", "@x", "700")])  # an executor
        assert saver(bad, "@/root", "/usr/bin/squashfuse_ll") is None
        assert os.listdir(tmp_path) == []
        good = types.SimpleNamespace(unsaveable=None, done=[("mkdir", "@/x", "700")])
        written = saver(good, "@/root", "/usr/bin/squashfuse_ll")
        assert written == str(tmp_path / privplan.plan_name(key))
        with open(written, "rb") as f:
            assert python_private_plan(f.read(), key, 4242)["ops"] == [["mkdir", "@/x", "700"]]
    finally:
        os.close(directory)
