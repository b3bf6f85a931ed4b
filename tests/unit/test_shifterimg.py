"""``shifterimg`` and the gateway client: the command line, Shifter's output, and real runs
as the test users against a private gateway (real munge, the site's registries), including
failover across imageGateway URLs, registry logins and imports."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import tempfile

import pytest

from conftest import USER1, USER2
from shifter.errors import UsageError
from shifter.gateway_client import cli
from shifter.gateway_client.client import CredentialStore, GatewayClient, GatewayUnavailable, ImageRecord
from shifter.runtime import config as udiroot
from shifter.tools import gateway as gwtool
from shifter.tools.site import TEST_USERS

from test_gateway_api import SITE, free_port, new_gateway, prerequisites

UIDS = {name: uid for name, uid, _ in TEST_USERS}
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d Pulling Image: (\S+), status: ([A-Z]+)$")


# -- the command line, no gateway needed -------------------------------------------------------


def test_options_go_before_or_after_the_command():
    a = cli.parse_args(["-v", "--user", "root", "pull", "docker:test/x:1"])
    b = cli.parse_args(["pull", "-v", "-u", "root", "docker:test/x:1"])
    for args in (a, b):
        assert args.command == "pull" and args.verbose and args.user == "root"
    assert cli._ids("root,1234", "user") == (0, 1234)
    assert cli._ids("sftestgrp,7", "group") == (7, 4240)
    login = cli.parse_args(["login"])
    assert login.location == "default" and not login.verbose and login.system is None


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["lookup"], "the following arguments are required: image"),
    (["--user", "root", "lookup", "x"], "--user/--group apply to pull and import, not lookup"),
    (["pull", "--user", "no-such-user-here", "x"], "no such user 'no-such-user-here'"),
    (["pull", "--group", "no-such-group-here", "x"], "no such group 'no-such-group-here'"),
])
def test_command_line_mistakes_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        args = cli.parse_args(argv)
        cli._acl(args)


def test_bad_image_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SHIFTER_CONFIG", str(write_udiroot(str(tmp_path), ["http://127.0.0.1:9"])))
    assert cli.main(["pull", "docker:BAD^image"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("shifterimg: invalid image 'docker:BAD^image': character '^'")


def test_images_table_is_shifters():
    records = [ImageRecord.from_json({"id": "ab" * 32, "system": "local", "itype": "docker",
                                      "tag": ["z/b:1", "a/a:2"], "status": "READY", "last_pull": 0.0})]
    lines = cli.image_lines(records)
    assert [line.split()[-1] for line in lines] == ["a/a:2", "z/b:1"]
    assert re.match(r"^local      docker     READY    abababab\w\w   \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d a/a:2$",
                    lines[0])


def test_pull_display_one_line_per_state_or_rewritten_on_a_tty():
    out = io.StringIO()
    show = cli.PullDisplay("docker:x:1", out)
    for status in ("PENDING", "PULLING", "PULLING", "CONVERSION", "READY"):
        show(ImageRecord.from_json({"status": status, "status_message": "m"}))
    lines = out.getvalue().splitlines()
    assert [LINE.match(line).group(2) for line in lines] == ["PENDING", "PULLING", "CONVERSION", "READY"]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    show = cli.PullDisplay("docker:x:1", tty)
    show(ImageRecord.from_json({"status": "PULLING", "status_message": "layer 1/2"}))
    show(ImageRecord.from_json({"status": "READY"}))
    assert tty.getvalue().startswith("\r\x1b[2K") and "(layer 1/2)" in tty.getvalue()
    assert tty.getvalue().endswith("status: READY\n")


def test_records_from_shifters_gateway_parse():
    # Shifter fills missing fields with 'MISSING' and older versions say userAcl
    record = ImageRecord.from_json({"id": "MISSING", "status": "PULLING", "tag": "a:1",
                                    "userAcl": [1, "2"], "last_pull": "MISSING"})
    assert record.id is None and record.tags == ("a:1",) and record.user_acl == (1, 2)
    with pytest.raises(Exception, match="invalid image record"):
        ImageRecord.from_json(["not", "a", "record"])


def test_no_gateway_answering_is_one_clear_error(tmp_path):
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    config = udiroot.load(str(write_udiroot(str(tmp_path), dead)))
    with pytest.raises(GatewayUnavailable, match=r"can't reach the image gateway: http://127.0.0.1:\d+: "
                                                 r"connection refused; http://127.0.0.1:\d+: connection refused"):
        GatewayClient(config).images()


# -- real runs as the test users ----------------------------------------------------------------


def write_udiroot(directory: str, gateways: list[str]) -> str:
    return gwtool.write_client_config(os.path.join(directory, "udiRoot.conf"), SITE, gateways,
                                      os.path.join(directory, "images"))


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


@pytest.mark.root
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


@pytest.mark.root
def test_unknown_tag_exits_non_zero_with_one_line(img):
    res = img("pull", "docker:test/no-such:latest")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith("shifterimg: can't pull docker:test/no-such:latest: image not found")
    assert LINE.match(res.stdout.splitlines()[-1]).group(2) == "FAILURE"
    missing = img("lookup", "docker:test/no-such:latest")
    assert missing.returncode == 1 and missing.stderr.startswith("shifterimg: image not found")


@pytest.mark.root
def test_private_image_is_invisible_to_the_other_user(img):
    res = img("pull", "--user", USER1, "docker:test/debian:oci")
    assert res.returncode == 0, res.stderr
    assert img("lookup", "test/debian:oci").returncode == 0
    other = img("lookup", "test/debian:oci", user=USER2)
    assert other.returncode == 1 and "image not found" in other.stderr
    assert "test/debian:oci" not in img("images", user=USER2).stdout
    assert "test/debian:oci" in img("images").stdout


@pytest.mark.root
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


@pytest.mark.root
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


@pytest.mark.root
def test_verbose_traces_and_proxies_never_catch_loopback(img):
    res = img("-v", "images", env={"http_proxy": f"http://127.0.0.1:{free_port()}",
                                   "HTTP_PROXY": f"http://127.0.0.1:{free_port()}"})
    assert res.returncode == 0, res.stderr
    assert re.search(r"shifterimg: GET http://127.0.0.1:\d+/api/list/local/: connection refused", res.stderr)
    assert re.search(r"shifterimg: GET http://127.0.0.1:\d+/api/list/local/ -> 200", res.stderr)


@pytest.mark.root
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
