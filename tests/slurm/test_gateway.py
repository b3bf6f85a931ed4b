"""The site's image gateway on the local cluster: test users pull, look up and list images with
``shifterimg`` (real munge, the real registries), the squashfs files mount and hold the image
(after whiteouts), private images stay private, and jobs reach the gateway from the nodes."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile

import pytest
import requests

from helpers.prereq import USER1, USER2
from shifter.runtime import config as udiroot
from shifter.runtime import meta
from tools import gateway
from tools.images import LAYERS_EXPECT

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


# -- hostile input against the site's gateway (issue 9, item 4) -----------------------------------


def _log_since(site, offset: int) -> str:
    with open(gateway.log_path(site), "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


def test_the_site_gateway_log_cannot_be_forged(site_gateway):
    offset = os.path.getsize(gateway.log_path(site_gateway))
    forged = "2026-01-01 00:00:00,000 INFO FORGED-BY-A-TEST"
    for path in (f"/api/lookup/local/docker/y%0A{forged.replace(' ', '%20')}%0A/",
                 "/api/lookup/local/docker/y%00z/"):
        resp = requests.get(gateway.url(site_gateway) + path, proxies={"http": None}, timeout=30)
        assert resp.status_code in (401, 404) and set(resp.json()) == {"status", "error", "message"}
    new = _log_since(site_gateway, offset)
    assert "\0" not in new
    assert not [line for line in new.splitlines() if line.startswith(forged)]
    assert "y\\x0a" + forged in new and "y\\x00z" in new


def test_the_site_gateway_answers_every_error_in_json(site_gateway):
    base = gateway.url(site_gateway)
    no_proxy = {"http": None}
    for resp, status in (
            (requests.get(base + "/api/list/..%2f/", proxies=no_proxy, allow_redirects=False, timeout=30), 404),
            (requests.post(base + "/api/pull/local/docker/x%3Brm%20-rf%20%2F/", proxies=no_proxy,
                           allow_redirects=False, timeout=30), 404),
            (requests.get(base + "/api/lookup/local/docker/" + "a" * 70000 + "/", proxies=no_proxy,
                          timeout=30), 414),
            (requests.get(base + "/api/list/local/", headers={"X-Big": "a" * 70000}, proxies=no_proxy,
                          timeout=30), 431),
            (requests.delete(base + "/api/list/local/", proxies=no_proxy, timeout=30), 405)):
        assert resp.status_code == status, (resp.status_code, resp.text[:200])
        assert resp.headers["Content-Type"].startswith("application/json")
        data = resp.json()
        assert set(data) == {"status", "error", "message"} and data["status"] == status


@pytest.fixture
def import_behind_a_symlink():
    """As root: USER1's directory holding a symlink to a 0700 root directory, in which a
    squashfs file owned by USER1 waits (the gateway, as root, would reach it)."""
    uid = pwd.getpwnam(USER1).pw_uid
    base = tempfile.mkdtemp(prefix="shifter-import-attack-")
    os.chmod(base, 0o755)
    mine, secret, tree = (os.path.join(base, d) for d in ("mine", "secret", "tree"))
    os.mkdir(mine)
    os.chown(mine, uid, uid)
    os.mkdir(secret, 0o700)
    os.makedirs(os.path.join(tree, "etc"))
    with open(os.path.join(tree, "etc", "root-only"), "w") as f:
        f.write("root's\n")
    image = os.path.join(secret, "image.squashfs")
    subprocess.run(["mksquashfs", tree, image, "-all-root", "-no-xattrs", "-quiet"], check=True,
                   capture_output=True)
    os.chown(image, uid, uid)
    os.symlink(secret, os.path.join(mine, "link"))
    yield os.path.join(mine, "link", "image.squashfs"), image
    shutil.rmtree(base)


def test_shifterimg_import_through_a_symlink_into_a_root_directory_looks_missing(
        runner, site_gateway, import_behind_a_symlink):
    """The attack with the real client and USER1's munge credential: before, root followed the
    symlink and imported the file; now it is refused exactly like a missing file."""
    via_link, real = import_behind_a_symlink
    image = "custom:stolen-by-symlink:v1"
    attempt = shifterimg(runner, "import", via_link, image)
    assert attempt.returncode == 1 and attempt.stdout == ""
    assert attempt.stderr.count("\n") == 1 and "not a regular file that sftest1 can open" in attempt.stderr
    os.unlink(real)
    missing = shifterimg(runner, "import", via_link, image)
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", attempt.stderr)
    assert shifterimg(runner, "lookup", image).returncode != 0
