"""The image request from the environment, on the real kernel: in a job whose image is A
(the SLURM_SPANK_SHIFTER_* pair), `SHIFTER_IMAGETYPE=id SHIFTER_IMAGE=<B> shifter CMD`
and `SHIFTER_IMAGE=id:<B> shifter CMD` run B, whether setupRoot prepared A on the node
(the compiled fast path used to run A for the second) or not (Python builds, then the
compiled launcher replays), and in a step whose tasks carry the job's SHIFTER_IMAGETYPE=id
too; the fallbacks apply only without a pair; `none,x` is
refused on every path (the fast path used to take it for "no module")."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap

import pytest

from helpers.prereq import USER1
from shifter.runtime import config as udiconfig
from shifter.runtime.builder import udi

pytestmark = pytest.mark.root

SHIFTER = "/opt/shifter/bin/shifter"
JOB = "4713"


def _marker(text):
    def extra(root):
        with open(os.path.join(root, "etc", "marker"), "w") as f:
            f.write(text + "\n")
    return extra


@pytest.fixture(scope="module")
def env(cluster):
    from tools import squash

    base = tempfile.mkdtemp(prefix="shifter-request-", dir="/var/tmp")
    os.chmod(base, 0o755)
    images = os.path.join(base, "images")
    a = squash.make_image(cluster, "busybox", images, extra=_marker("image-A"))
    b = squash.make_image(cluster, "busybox", images, extra=_marker("image-B"))
    conf = os.path.join(base, "udiRoot.conf")
    with open(conf, "w") as f:
        f.write(textwrap.dedent(f"""\
            udiMount={base}/mnt/udi
            loopMount={base}/mnt/loop
            imagePath={images}
            """))
    os.chmod(images, 0o755)
    config = udiconfig.load(conf)
    yield {"conf": conf, "A": a, "B": b, "config": config}
    udi.teardown(config)
    udi.remove_anchors(config)
    shutil.rmtree(base)


@pytest.fixture(params=["prepared", "private"])
def node(request, env):
    """The node as a job of image A finds it: setupRoot prepared A for it, or nothing."""
    if request.param == "prepared":
        res = subprocess.run(["/opt/shifter/bin/setupRoot", "-U", "4242", "id", env["A"]], capture_output=True,
                             text=True, env={"SHIFTER_CONFIG": env["conf"], "SLURM_JOB_ID": JOB})
        assert res.returncode == 0, res.stderr
    yield {**env, "kind": request.param}
    udi.teardown(env["config"])


def run(env, extra, job_pair=True):
    pw = pwd.getpwnam(USER1)
    e = {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "SHIFTER_CONFIG": env["conf"], "SLURM_JOB_ID": JOB}
    if job_pair:
        e.update(SLURM_SPANK_SHIFTER_IMAGETYPE="id", SLURM_SPANK_SHIFTER_IMAGE=env["A"],
                 SLURM_SPANK_SHIFTER_IMAGEREQUEST="docker:test/busybox:latest")
    e.update(extra)
    return subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                           SHIFTER, "cat", "/etc/marker"], capture_output=True, text=True, env=e, cwd="/tmp",
                          timeout=60)


def _runs(env, extra, job_pair=True) -> str:
    outs = set()
    for _ in range(2):  # a private container: Python builds, then the launcher replays
        res = run(env, extra, job_pair)
        assert res.returncode == 0, (extra, res.stderr)
        outs.add(res.stdout.strip())
    assert len(outs) == 1, outs
    return outs.pop()


def test_the_jobs_image_without_a_request(node):
    assert _runs(node, {}) == "image-A"


def test_the_shifter_pair_wins_over_the_jobs(node):
    assert _runs(node, {"SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": node["B"]}) == "image-B"


def test_shifter_image_alone_as_a_descriptor_wins_over_the_jobs(node):
    assert _runs(node, {"SHIFTER_IMAGE": f"id:{node['B']}"}) == "image-B"


def test_in_a_step_shifter_image_id_b_over_the_tasks_pair_runs_b(node):
    """A step's tasks carry the job's SHIFTER_IMAGETYPE=id and SHIFTER_IMAGE=<A> (the plugin
    hands them the request); `SHIFTER_IMAGE=id:<B> shifter CMD` there runs B on every path
    (both used to read id:id:<B> and refuse it)."""
    task = {"SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": node["A"]}
    assert _runs(node, task) == "image-A"
    assert _runs(node, {**task, "SHIFTER_IMAGE": f"id:{node['B']}"}) == "image-B"


@pytest.mark.parametrize("name", ["SHIFTER_IMAGEREQUEST", "SLURM_SPANK_SHIFTER_IMAGEREQUEST",
                                  "SHIFTER_IMAGE_REQUEST", "SHIFTER"])
def test_fallbacks_only_without_a_pair(node, name):
    assert _runs(node, {name: f"id:{node['B']}"}) == "image-A"
    if node["kind"] == "private":
        assert _runs(node, {name: f"id:{node['B']}"}, job_pair=False) == "image-B"


@pytest.mark.parametrize("modules", ["none,x", "none none"])
def test_none_with_anything_is_refused(node, modules):
    res = run(node, {"SHIFTER_MODULE": modules})
    assert res.returncode == 125 and res.stdout == "", res
    assert res.stderr == (f"shifter: invalid module list '{','.join(modules.replace(' ', ',').split(','))}': "
                          "'none' can't be combined with modules (hint: use --module=none alone, or list the "
                          "modules you want)\n")
