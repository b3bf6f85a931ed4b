"""The job's cgroup path (one contract, C and Python: tests/data/contracts/job_cgroup.json) and the
cgroup module's handling of v1/v2 hierarchies (on fakes of their files; the real kernel
is tests/root/test_cgroup.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from helpers.prereq import require

from shifter.errors import ConfigError
from shifter.spank.plugstack import PlugstackArgs
from shifter.wlm import cgroup
from shifter.wlm.jobinfo import JobInfo

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
CASES = json.load(open(os.path.join(DATA, "contracts", "job_cgroup.json")))["cases"]


def _py(case):
    try:
        return cgroup.job_path(case["mount"], case["uid"], case["job"], case["node"])
    except ValueError:
        return None


@pytest.mark.parametrize("case", CASES, ids=[f"{c['mount']}-{c['job']}-{c['node']}" for c in CASES])
def test_python_follows_the_vectors(case):
    assert _py(case) == case["path"]


@pytest.fixture(scope="module")
def c_driver(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        require(False, "needs a C compiler")
    exe = str(tmp_path_factory.mktemp("cg") / "job_cgroup")
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-I", os.path.join(HERE, "..", "..", "spank"), "-o", exe,
                    os.path.join(DATA, "job_cgroup.c")], check=True)
    return exe


@pytest.mark.parametrize("case", CASES, ids=[f"{c['mount']}-{c['job']}-{c['node']}" for c in CASES])
def test_c_follows_the_vectors(c_driver, case):
    argv = [c_driver, case["mount"], str(case["uid"]), str(case["job"])]
    if case["node"] is not None:
        argv.append(case["node"])
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    assert (res.stdout.strip() if res.returncode == 0 else None) == case["path"]


def _job(node="n2"):
    return JobInfo(job_id=12, node=node, uid=4242, gid=4242, image_type="id", image="a" * 64, request=None,
                   volume=None, module=None, ccm=False)


def test_for_job_follows_the_plugstack():
    assert cgroup.for_job(PlugstackArgs(), _job()) is None
    cg = cgroup.for_job(PlugstackArgs(memory_cgroup="/sys/fs/cgroup/memory"), _job())
    assert cg.path == "/sys/fs/cgroup/memory/shifter/uid_4242/job_12"
    cg = cgroup.for_job(PlugstackArgs(memory_cgroup="/sys/fs/cgroup/memory", cgroup_per_node=True), _job())
    assert cg.path == "/sys/fs/cgroup/memory/shifter/uid_4242/job_12/n2"


def test_version_reads_the_mount_table(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n"
        "31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "32 30 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroup.version("/sys/fs/cgroup/memory", str(table)) == 1
    assert cgroup.version("/sys/fs/cgroup/unified", str(table)) == 2
    with pytest.raises(ConfigError) as exc:
        cgroup.version("/sys/fs/cgroup", str(table))
    assert "memory_cgroup=/sys/fs/cgroup is not a cgroup hierarchy (it is on tmpfs)" in str(exc.value)


def test_a_missing_mount_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError) as exc:
        cgroup.JobCgroup(str(tmp_path / "nope"), 4242, 12).create()
    assert f"memory_cgroup={tmp_path / 'nope'} does not exist" in str(exc.value)


# ------------------------------------- containers of a host directory hide the anchors
def test_a_host_directory_container_leaves_out_shifters_anchors(tmp_path):
    """local:/ (--ccm) merges the host's /var: the anchors where every job's container
    and image are mounted are left out, the rest is bound."""
    from shifter.runtime import config as udiconfig
    from shifter.runtime.builder import execute, udi

    host_var = tmp_path / "var"
    for name in ("udiMount", "udiMount.jobs", "udiLoopMount", "udiLoopMount.jobs", "lib", "udiMount.jobs.x"):
        (host_var / name).mkdir(parents=True)
    config = udiconfig.parse(f"udiMount={host_var}/udiMount\nloopMount={host_var}/udiLoopMount\n")
    hide = udi.hidden_host_paths(config)
    target = tmp_path / "udi-var"
    target.mkdir()
    bound = []

    class Binds(execute.Executor):  # the executor without mounting: the binds it would make
        def bind(self, src, target, flags, recursive=False, src_name=None):
            bound.append(src)

    Binds("root", config, 0, 0, ()).run([("merge", str(host_var), str(target), frozenset(), hide)])
    assert sorted(os.path.basename(b) for b in bound) == ["lib", "udiMount.jobs.x"]

