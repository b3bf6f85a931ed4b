"""The site's image gateway on the local cluster: test users pull, look up and list images with
``shifterimg`` (real munge, the real registries), the squashfs files mount and hold the image
(after whiteouts), private images stay private, and jobs reach the gateway from the nodes."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest

from conftest import USER1, USER2
from shifter.runtime import config as udiroot
from shifter.runtime import meta
from shifter.tools import gateway
from shifter.tools.images import LAYERS_EXPECT

pytestmark = pytest.mark.slurm

STATUS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d Pulling Image: (\S+), status: ([A-Z]+)$")


@pytest.fixture(scope="module")
def site_gateway(cluster):
    gateway.start(cluster)  # idempotent: tools/cluster up starts it too
    return cluster


@pytest.fixture(scope="module")
def image_dir(site_gateway) -> str:
    return udiroot.load(os.path.join(site_gateway.prefix, "etc", "udiRoot.conf")).imagePath


def shifterimg(runner, *args, user=USER1):
    return runner.run(["shifterimg", *args], user=user)


def pull(runner, image: str, *options, user=USER1) -> subprocess.CompletedProcess:
    res = shifterimg(runner, "pull", *options, image, user=user)
    lines = res.stdout.splitlines()
    assert lines and all(STATUS_LINE.match(line) for line in lines), res.stdout
    return res


def test_pull_lookup_images_as_a_test_user(runner, site_gateway, image_dir):
    res = pull(runner, "docker:test/busybox:latest")
    assert res.returncode == 0, res.stderr
    assert STATUS_LINE.match(res.stdout.splitlines()[-1]).groups() == ("docker:test/busybox:latest", "READY")
    lookup = shifterimg(runner, "lookup", "docker:test/busybox:latest")
    assert lookup.returncode == 0, lookup.stderr
    image_id = lookup.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", image_id)
    listing = shifterimg(runner, "images", user=USER2)
    assert listing.returncode == 0
    row = [line.split() for line in listing.stdout.splitlines() if line.endswith("test/busybox:latest")]
    assert row and row[0][:4] == ["local", "docker", "READY", image_id[:10]]
    assert os.path.exists(os.path.join(image_dir, f"{image_id}.squashfs"))
    assert meta.read(os.path.join(image_dir, f"{image_id}.meta")).cmd == ("/bin/sh",)


@pytest.mark.root
def test_the_squashfs_mounts_and_holds_the_image_after_whiteouts(runner, site_gateway, image_dir):
    assert pull(runner, "docker:test/layers:latest").returncode == 0
    image_id = shifterimg(runner, "lookup", "test/layers:latest").stdout.strip()
    mnt = tempfile.mkdtemp(prefix="shifter-gw-mnt-")
    subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro,nodev,nosuid",
                    os.path.join(image_dir, f"{image_id}.squashfs"), mnt], check=True)
    try:
        for path in LAYERS_EXPECT["present"]:
            assert os.path.lexists(mnt + path), path
        for path in LAYERS_EXPECT["absent"]:
            assert not os.path.lexists(mnt + path), path
        for path, text in LAYERS_EXPECT["contents"].items():
            with open(mnt + path) as f:
                assert f.read() == text
        assert os.readlink(mnt + "/bin/sh") == "/bin/busybox"
        st = os.lstat(mnt + "/data/keep.txt")
        assert (st.st_uid, st.st_gid) == (0, 0)  # -all-root
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)


def test_unknown_tag_fails_with_one_clear_line(runner, site_gateway):
    res = pull(runner, "docker:test/no-such:latest")
    assert res.returncode != 0
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(
        "shifterimg: can't pull docker:test/no-such:latest: image not found")


def test_private_image_is_invisible_to_the_other_test_user(runner, site_gateway):
    image = "docker:test/busybox:oci"
    # start from scratch: an admin (root) expires whatever an earlier run left
    shifterimg(runner, "expire", image, user=None)
    try:
        res = pull(runner, image, "--user", USER1)
        assert res.returncode == 0, res.stderr
        assert shifterimg(runner, "lookup", image).returncode == 0
        other = shifterimg(runner, "lookup", image, user=USER2)
        assert other.returncode == 1 and "image not found" in other.stderr
        assert "test/busybox:oci" not in shifterimg(runner, "images", user=USER2).stdout
        assert "test/busybox:oci" in shifterimg(runner, "images").stdout
    finally:
        assert shifterimg(runner, "expire", image, user=None).returncode == 0


def test_jobs_reach_the_gateway_from_the_nodes(runner, site_gateway):
    assert pull(runner, "docker:test/busybox:latest").returncode == 0
    expected = shifterimg(runner, "lookup", "test/busybox:latest").stdout.strip()
    res = runner.run(["srun", "-N2", "shifterimg", "lookup", "docker:test/busybox:latest"], timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [expected, expected]
