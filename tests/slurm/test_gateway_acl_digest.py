"""Private pulls, private images on disk and pull by digest, end to end with the test users'
real commands (issue items 3, 11 and 15).

Most tests use a gateway of their own (``tools.gateway.Instance``: the installed code, the
site's registries and munge, its own catalog and imageDir) and a udiRoot.conf naming it
(``SHIFTER_CONFIG``), so `shifterimg` and `shifter` as sftest1/sftest2 behave as on a site
whose gateway is that one.  The last test submits jobs with ``--image=docker:REPO@sha256:...``,
which the SPANK plugin resolves through the site's gateway.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from helpers.prereq import USER1, USER2
from shifter.runtime import imagefiles, meta
from tools import gateway as gwtool
from tools import images as test_images
from tools.site import TEST_SHARED_GROUP, TEST_USERS

pytestmark = pytest.mark.slurm

UIDS = {name: uid for name, uid, _ in TEST_USERS}
GROUP = TEST_SHARED_GROUP[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gw(cluster):
    """A private gateway and a udiRoot.conf that names it (world-readable for the test users)."""
    base = tempfile.mkdtemp(prefix="shifter-gw-acl.", dir="/tmp")
    os.chmod(base, 0o755)
    gateway = gwtool.Instance(base, cluster, _free_port()).start()
    conf = gwtool.write_client_config(os.path.join(base, "udiRoot.conf"), cluster, [gateway.url],
                                      gateway.image_dir)
    gateway.conf = conf
    yield gateway
    gateway.stop()
    shutil.rmtree(base, ignore_errors=True)


def run(runner, gw, argv, user=USER1, **kw) -> subprocess.CompletedProcess:
    return runner.run(argv, user=user, env={"SHIFTER_CONFIG": gw.conf}, **kw)


def shifterimg(runner, gw, *args, user=USER1) -> subprocess.CompletedProcess:
    return run(runner, gw, ["shifterimg", *args], user=user, timeout=300)


def record(runner, gw, image, user=USER1) -> dict:
    """What `shifterimg --json lookup` says (the gateway's record for this user)."""
    res = shifterimg(runner, gw, "--json", "lookup", image, user=user)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def pulled(runner, gw, image, *options, user=USER1) -> dict:
    res = shifterimg(runner, gw, "--json", *options, "pull", image, user=user)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "READY", data
    return data


def files_of(gw, image_id) -> list[str]:
    return [os.path.join(gw.image_dir, image_id + ext) for ext in (".squashfs", ".meta")]


# -- item 11: pulls with ACLs ------------------------------------------------------------------


def test_a_pull_with_other_users_keeps_the_caller_in(runner, gw):
    """`shifterimg -u 1000,1001 pull` by sftest1 stored [1000, 1001]: sftest1 lost the image."""
    data = pulled(runner, gw, "docker:test/layers:latest", "-u", "1000,1001")
    assert data["userACL"] == [1000, 1001, UIDS[USER1]]
    assert record(runner, gw, "docker:test/layers:latest")["id"] == data["id"]
    other = shifterimg(runner, gw, "lookup", "docker:test/layers:latest", user=USER2)
    assert other.returncode == 1 and "image not found" in other.stderr
    grouped = pulled(runner, gw, "docker:test/layers:latest", "-g", "1000", user=USER2)
    assert grouped["groupACL"] == [1000, UIDS[USER2]]  # sftest2's gid joins the group ACL
    assert record(runner, gw, "docker:test/layers:latest", user=USER2)["groupACL"] == [1000, UIDS[USER2]]


def test_a_private_pull_of_a_public_tag_lives_beside_it(runner, gw):
    public = pulled(runner, gw, "docker:test/busybox:latest", user=USER2)
    assert public["userACL"] == []
    res = shifterimg(runner, gw, "-u", USER1, "pull", "docker:test/busybox:latest")
    assert res.returncode == 0, res.stderr
    # sftest1 is told that the same content is public here
    assert "shifterimg: note: docker:test/busybox:latest: the same image (same id) is also public" \
        in res.stderr
    mine = record(runner, gw, "docker:test/busybox:latest")
    assert mine["userACL"] == [UIDS[USER1]] and mine["id"] == public["id"]
    theirs = record(runner, gw, "docker:test/busybox:latest", user=USER2)
    assert theirs["userACL"] == [] and theirs["id"] == public["id"]
    images = shifterimg(runner, gw, "images", user=USER2)
    assert images.returncode == 0 and "test/busybox:latest" in images.stdout


# -- item 3: private images on disk ------------------------------------------------------------


def test_a_private_image_is_unreadable_on_disk_to_others_and_runs_for_its_users(runner, gw):
    data = pulled(runner, gw, "docker:test/busybox:oci", "-u", USER1)
    assert data["userACL"] == [UIDS[USER1]]
    squashfs, meta_path = files_of(gw, data["id"])
    for path in (squashfs, meta_path):
        assert imagefiles.get_access(path) == (0o640, (UIDS[USER1],), ())
    # sftest2 can't read the files (before: 0644, anyone could unsquashfs them)
    cat = run(runner, gw, ["cat", meta_path], user=USER2)
    assert cat.returncode != 0 and "Permission denied" in cat.stderr
    uns = run(runner, gw, ["unsquashfs", "-l", squashfs], user=USER2)
    assert uns.returncode != 0 and "Permission denied" in (uns.stderr + uns.stdout)
    refused = run(runner, gw, ["shifter", f"--image=id:{data['id']}", "true"], user=USER2)
    assert refused.returncode != 0 and "there is no such image, or it is not yours to use" in refused.stderr
    assert refused.stderr.count("\n") <= 2, refused.stderr  # one line and its hint
    # sftest1 runs it as a private container (squashfuse as sftest1)
    ran = run(runner, gw, ["shifter", "--image=docker:test/busybox:oci", "sh", "-c", "id -u; ls /bin/busybox"])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(UIDS[USER1]), "/bin/busybox"]
    # ... and as the compiled launcher replays it (what `srun shifter CMD` in a job does): the
    # first run builds in Python and records a plan, the second replays it, reading the
    # image as sftest1 (SHIFTER_REPLAY_DEBUG: the launcher says why when it does not replay)
    by_id = {"SHIFTER_CONFIG": gw.conf, "SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": data["id"],
             "SHIFTER_REPLAY_DEBUG": "1"}
    for attempt in range(2):
        ran = runner.run(["shifter", "sh", "-c", "id -u; ls /bin/busybox"], user=USER1, env=by_id)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == [str(UIDS[USER1]), "/bin/busybox"]
    why_not = [ln for ln in ran.stderr.splitlines() if "private plan:" in ln and "plan directory" not in ln]
    assert why_not == [], ran.stderr  # replayed
    theirs = runner.run(["shifter", "true"], user=USER2, env=by_id)
    assert theirs.returncode != 0 and "not yours to use" in theirs.stderr, theirs.stderr
    # sharing with the group (a second private record) opens the files to the group
    pulled(runner, gw, "docker:test/busybox:oci", "-u", USER1, "-g", str(GROUP))
    for path in (squashfs, meta_path):
        mode, users, groups = imagefiles.get_access(path)
        assert mode == 0o640 and users == (UIDS[USER1],) and GROUP in groups
    assert GROUP in meta.read(meta_path).group_acl
    ran = run(runner, gw, ["shifter", f"--image=id:{data['id']}", "id", "-u"], user=USER2)
    assert ran.returncode == 0 and ran.stdout.strip() == str(UIDS[USER2]), ran.stderr


# -- item 15: pull by digest -------------------------------------------------------------------


def test_pull_lookup_and_run_by_digest(runner, gw, cluster):
    digest = test_images.remote_digest(cluster, "test/layers:latest")
    image = f"docker:test/layers@{digest}"
    res = shifterimg(runner, gw, "pull", image, user=USER2)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1].endswith(f"Pulling Image: {image}, status: READY")
    lookup = shifterimg(runner, gw, "lookup", image, user=USER2)
    assert lookup.returncode == 0 and lookup.stdout.strip() == digest.split(":")[1], lookup.stderr
    tagged = pulled(runner, gw, "docker:test/layers:latest", user=USER2)
    assert tagged["id"] == digest.split(":")[1]  # one image for the tag and the digest
    assert f"test/layers@{digest}" in tagged["tag"]
    ran = run(runner, gw, ["shifter", f"--image={image}", "sh", "-c", "echo $SHIFTER_TEST_IMAGE"],
              user=USER2)
    assert ran.returncode == 0 and ran.stdout.strip() == "layers", ran.stderr
    bad = shifterimg(runner, gw, "pull", "docker:test/layers@sha256:1234", user=USER2)
    assert bad.returncode == 2 and "sha256:<64 lowercase hex digits>" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_jobs_take_an_image_by_digest(runner, cluster):
    """sbatch/srun --image=docker:REPO@sha256:... through the site's gateway (restarted on
    the installed code by tools.gateway.start when it changed)."""
    gwtool.start(cluster)
    digest = test_images.remote_digest(cluster, "test/busybox:latest")
    image = f"docker:test/busybox@{digest}"
    pull = runner.run(["shifterimg", "pull", image], timeout=300)
    assert pull.returncode == 0, pull.stderr
    out = os.path.join(tempfile.mkdtemp(prefix="shifter-digest-job.", dir="/tmp"), "out")
    os.chmod(os.path.dirname(out), 0o777)
    script = "srun -N1 /opt/shifter/bin/shifter sh -c 'echo in=$SHIFTER_TEST_IMAGE'"
    res = runner.run(["sbatch", "-N1", f"--output={out}", f"--image={image}", "--wait", "--wrap", script],
                     timeout=300)
    assert res.returncode == 0, (res.stdout, res.stderr, open(out).read() if os.path.exists(out) else "")
    with open(out) as f:
        text = f.read()
    assert "in=busybox" in text, text
    step = runner.run(["srun", "-N1", f"--image={image}", "/opt/shifter/bin/shifter", "sh", "-c",
                       "echo in=$SHIFTER_TEST_IMAGE"], timeout=300)
    assert step.returncode == 0 and step.stdout.strip() == "in=busybox", step.stderr
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
