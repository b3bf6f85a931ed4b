"""``shifterimg`` run as the test users against a private gateway (real munge, the site's
registries): failover across imageGateway URLs, private images, registry logins, imports and
the admin commands."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile

import pytest

from helpers.gateway import PULL_LINE as LINE
from helpers.gateway import free_port, write_udiroot
from helpers.prereq import UIDS, USER1, USER2
from helpers.site_gateway import SITE, new_gateway, prerequisites
from shifter.gateway_client.client import CredentialStore

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def gateway():
    prerequisites()
    gw = new_gateway(import_users=(USER1,)).start()
    yield gw
    gw.stop()
    shutil.rmtree(gw.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def conf(gateway):
    """udiRoot.conf whose first imageGateway is dead: every run below fails over."""
    return write_udiroot(gateway.dir, [f"http://127.0.0.1:{free_port()}", gateway.url])


@pytest.fixture
def img(runner, conf):
    def run(*args, user=USER1, stdin=None, env=None):
        argv = ["shifterimg", *args]
        full_env = {"SHIFTER_CONFIG": conf, **(env or {})}
        if stdin is None:
            return runner.run(argv, user=user, env=full_env)
        pw_user = ["setpriv", f"--reuid={UIDS[user]}", f"--regid={UIDS[user]}", "--init-groups", "--"]
        return subprocess.run(pw_user + argv, input=stdin, capture_output=True, text=True, timeout=120,
                              env=runner.env(user, **full_env), cwd="/")
    return run


def test_pull_lookup_images_as_a_user_with_failover(img):
    res = img("pull", "docker:test/busybox:latest")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert all(LINE.match(line) for line in lines) and LINE.match(lines[-1]).groups() == (
        "docker:test/busybox:latest", "READY")
    lookup = img("lookup", "test/busybox")
    assert lookup.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", lookup.stdout)
    images = img("images", user=USER2)
    assert images.returncode == 0
    assert any(line.split()[-1] == "test/busybox:latest" and line.split()[3] == lookup.stdout[:10]
               for line in images.stdout.splitlines())
    as_json = img("--json", "lookup", "test/busybox:latest")
    assert '"status": "READY"' in as_json.stdout


def test_unknown_tag_exits_non_zero_with_one_line(img):
    res = img("pull", "docker:test/no-such:latest")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith("shifterimg: can't pull docker:test/no-such:latest: image not found")
    assert LINE.match(res.stdout.splitlines()[-1]).group(2) == "FAILURE"
    missing = img("lookup", "docker:test/no-such:latest")
    assert missing.returncode == 1 and missing.stderr.startswith("shifterimg: image not found")


def test_private_image_is_invisible_to_the_other_user(img):
    res = img("pull", "--user", USER1, "docker:test/debian:oci")
    assert res.returncode == 0, res.stderr
    assert img("lookup", "test/debian:oci").returncode == 0
    other = img("lookup", "test/debian:oci", user=USER2)
    assert other.returncode == 1 and "image not found" in other.stderr
    assert "test/debian:oci" not in img("images", user=USER2).stdout
    assert "test/debian:oci" in img("images").stdout


def test_login_stores_a_munged_credential_used_by_pull(img):
    cred_file = f"/home/{USER1}/.udiRoot/.cred"
    backup = None
    if os.path.exists(cred_file):
        with open(cred_file) as f:
            backup = f.read()
        os.unlink(cred_file)
    try:
        private = f"{SITE.registry_url(auth=True)}/test/busybox:latest"
        before = img("pull", private)
        assert before.returncode == 1 and "requires a login" in before.stderr
        login = img("login", SITE.registry_url(auth=True),
                    stdin=f"{SITE.registry_user}\n{SITE.registry_password}\n")
        assert login.returncode == 0, login.stderr
        st = os.stat(cred_file)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == UIDS[USER1]
        assert stat.S_IMODE(os.stat(os.path.dirname(cred_file)).st_mode) == 0o700
        with open(cred_file) as f:
            text = f.read()
        assert text.startswith(f"local:{SITE.registry_url(auth=True)}=MUNGE:")
        assert SITE.registry_password not in text
        after = img("pull", private)
        assert after.returncode == 0, after.stderr
        # another user's credential file is not this user's login
        assert CredentialStore(cred_file).logins("local", SITE.munge_socket) == {}  # read as root
        bad = img("login", "no/slashes")
        assert bad.returncode == 2 and "invalid location" in bad.stderr
    finally:
        if os.path.exists(cred_file):
            os.unlink(cred_file)
        if backup is not None:
            with open(cred_file, "w") as f:
                f.write(backup)
            os.chown(cred_file, UIDS[USER1], UIDS[USER1])
            os.chmod(cred_file, 0o600)


def test_import_by_an_allowed_and_a_refused_user(img):
    d = tempfile.mkdtemp(prefix="shifter-import-")
    try:
        os.chmod(d, 0o755)
        tree = os.path.join(d, "tree")
        os.makedirs(os.path.join(tree, "etc"))
        with open(os.path.join(tree, "etc", "mine"), "w") as f:
            f.write("mine\n")
        image = os.path.join(d, "mine.squashfs")
        subprocess.run(["mksquashfs", tree, image, "-all-root", "-quiet", "-comp", "lz4"], check=True)
        os.chown(image, UIDS[USER2], UIDS[USER2])
        refused = img("import", image, "custom:mine:v1", user=USER2)
        assert refused.returncode == 1 and "may not import images" in refused.stderr
        os.chown(image, UIDS[USER1], UIDS[USER1])
        ok = img("import", image, "custom:mine:v1")
        assert ok.returncode == 0, ok.stderr
        assert LINE.match(ok.stdout.splitlines()[-1]).groups() == ("custom:mine:v1", "READY")
    finally:
        shutil.rmtree(d)


def test_verbose_traces_and_proxies_never_catch_loopback(img):
    res = img("-v", "images", env={"http_proxy": f"http://127.0.0.1:{free_port()}",
                                   "HTTP_PROXY": f"http://127.0.0.1:{free_port()}"})
    assert res.returncode == 0, res.stderr
    assert re.search(r"shifterimg: GET http://127.0.0.1:\d+/api/list/local/: connection refused", res.stderr)
    assert re.search(r"shifterimg: GET http://127.0.0.1:\d+/api/list/local/ -> 200", res.stderr)


def test_admin_commands(img, runner):
    assert img("expire", "test/busybox:latest").returncode == 1  # sftest1 is not an admin
    assert "not an admin" in img("expire", "test/busybox:latest").stderr
    assert img("pull", "docker:test/layers:latest").returncode == 0
    queue = img("queue")
    assert queue.returncode == 0
    as_root = img("metrics", "--limit", "5", user=None)
    assert as_root.returncode == 0, as_root.stderr
    expired = img("expire", "test/layers:latest", user=None)
    assert expired.returncode == 0 and expired.stdout == ""
    assert img("lookup", "test/layers:latest").returncode == 1
