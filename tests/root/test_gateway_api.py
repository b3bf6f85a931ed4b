"""The gateway's REST API end to end: a real ``shifter-gateway`` process (private config,
catalog and imageDir), real munge credentials of the test users, the site's real registries.

Covers the wire contract (paths, record fields, error bodies, never a 500), ACLs, registry
logins in the credential, one conversion for concurrent pulls, a gateway killed mid-pull
and restarted, expire/autoexpire, import, queue and metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from helpers.site_gateway import NO_PROXY, SITE, Api, credential, new_gateway, prerequisites
from shifter.errors import ShifterError
from shifter.gateway.catalog import API_FIELDS
from shifter.runtime import imagefiles, meta
from tools import gateway as gwtool
from tools import images as test_images
from tools.images import LAYERS_EXPECT
from tools.site import TEST_SHARED_GROUP, TEST_USERS

pytestmark = pytest.mark.root  # credentials of the test users are made with setpriv

UIDS = {name: uid for name, uid, _ in TEST_USERS}
USER1, USER2 = TEST_USERS[0][0], TEST_USERS[1][0]
GROUP = TEST_SHARED_GROUP[1]
ERROR_KEYS = {"status", "error", "message"}


@pytest.fixture(scope="module")
def gw():
    prerequisites()
    gateway = new_gateway(import_users=(USER1,)).start()
    yield gateway
    gateway.stop()
    shutil.rmtree(gateway.dir, ignore_errors=True)


@pytest.fixture
def fresh():
    """A gateway of its own for tests that kill, restart or count conversions."""
    prerequisites()
    made = []

    def make(**config) -> gwtool.Instance:
        gateway = new_gateway(**config).start()
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.kill()
        shutil.rmtree(gateway.dir, ignore_errors=True)


@pytest.fixture
def api(gw) -> Api:
    return Api(gw)


# -- the contract --------------------------------------------------------------------------------


def test_pull_lookup_list_and_the_image_files(api, gw):
    first = api.ok("POST", "/api/pull/local/docker/test/layers/", user=USER1)
    assert tuple(first) == API_FIELDS and first["status"] in ("PENDING", "PULLING", "CONVERSION",
                                                              "TRANSFER", "READY")
    record = api.pull("test/layers:latest", user=USER1)
    assert record["status"] == "READY", record
    assert tuple(record) == API_FIELDS
    image_id = record["id"]
    assert len(image_id) == 64 and int(image_id, 16) >= 0
    assert image_id == test_images.remote_digest(SITE, "test/layers:latest").split(":")[1]
    assert record["tag"] == ["test/layers:latest"] and record["itype"] == "docker"
    assert record["system"] == "local" and record["userACL"] == [] and record["groupACL"] == []
    assert "SHIFTER_TEST_IMAGE=layers" in record["ENV"] and record["WORKDIR"] == "/"
    assert isinstance(record["last_pull"], float) and record["LABELS"] == {}

    assert api.lookup("test/layers", user=USER2).json() == record  # no tag means :latest
    assert "test/layers:latest" in api.tags(user=USER2)
    squashfs = os.path.join(gw.image_dir, f"{image_id}.squashfs")
    info = meta.read(os.path.join(gw.image_dir, f"{image_id}.meta"))
    assert info.format == "squashfs" and info.cmd == ("/bin/sh",) and not info.private
    assert "SHIFTER_TEST_IMAGE=layers" in info.env
    listing = subprocess.run(["unsquashfs", "-lc", "-d", "", squashfs], capture_output=True, text=True,
                             check=True).stdout.split()
    for path in LAYERS_EXPECT["present"]:
        assert path in listing, path
    for path in LAYERS_EXPECT["absent"]:
        assert path not in listing, path
    assert not [p for p in listing if "/.wh." in p]
    assert [f for f in os.listdir(gw.image_dir) if f.startswith(".")] == []  # no temporary files


def test_a_pull_of_an_image_already_here_is_immediate(api):
    api.pull("test/layers:latest")
    t0 = time.monotonic()
    record = api.ok("POST", "/api/pull/local/docker/test/layers:latest/")
    assert record["status"] == "READY" and time.monotonic() - t0 < 2


@pytest.mark.parametrize("method, path, auth, expect", [
    ("GET", "/api/lookup/nosuchsystem/docker/test/busybox/", "root", 404),
    ("GET", "/api/list/nosuchsystem/", "root", 404),
    ("GET", "/api/lookup/local/docker/test/never-pulled:1/", "root", 404),
    ("GET", "/api/lookup/local/nosuchtype/test/busybox/", "root", 400),
    ("GET", "/api/lookup/local/docker/UPPER/Case/", "root", 400),
    ("GET", "/api/lookup/local/docker/test/busybox:bad%20tag/", "root", 400),
    ("GET", "/api/lookup/local/docker/..%2F..%2Fetc%2Fpasswd/", "root", 400),
    ("GET", "/api/lookup/local/docker/" + "a" * 5000 + "/", "root", 400),
    ("GET", "/api/lookup/local/docker/test/busybox/", None, 401),
    ("GET", "/api/lookup/local/docker/test/busybox/", "MUNGE:garbage:", 401),
    ("GET", "/api/lookup/local/docker/test/busybox/", "not even munge", 401),
    ("GET", "/api/lookup/local/docker/test/busybox/", "MUNGE:" + "A" * 60000, 401),
    ("POST", "/api/pull/local/docker/test/busybox/", "body:{not json", 400),
    ("POST", "/api/pull/local/docker/test/busybox/", "body:[1, 2]", 400),
    ("POST", "/api/pull/local/docker/test/busybox/", 'body:{"allowed_uids": "1,x"}', 400),
    ("POST", "/api/pull/local/docker/test/busybox/", 'body:{"allowed_uids": "-1"}', 400),
    ("POST", "/api/pull/local/docker/test/busybox/", 'body:{"allowed_gids": {"a": 1}}', 400),
    ("POST", "/api/pull/local/docker/test/busybox/", "body:" + json.dumps({"x": "y" * 70000}), 413),
    ("POST", "/api/pull/local/custom/test/busybox/", "root", 400),
    ("POST", "/api/pull/local/docker/quay.io/x/y:1/", "root", 404),
    ("GET", "/api/pull/local/docker/test/busybox/", "root", 405),
    ("GET", "/api/nosuchop/local/", "root", 404),
    ("GET", "/api/metrics/local/?limit=lots", "root", 400),
    ("GET", "/api/metrics/local/?limit=0", "root", 400),
    ("GET", "/api/expire/local/docker/test/never-pulled:1/", "root", 404),
    ("GET", "/api/expire/local/docker/test/layers/", USER1, 403),
    ("GET", "/api/autoexpire/local/", USER2, 403),
    ("GET", "/api/metrics/local/", USER2, 403),
    ("POST", "/api/doimport/local/custom/x:1/", USER2, 403),
    ("POST", "/api/doimport/local/custom/x:1/", "body:{}", 400),
    ("POST", "/api/doimport/local/custom/x:1/", 'body:{"filepath": "relative"}', 400),
    ("POST", "/api/doimport/local/custom/x@sha256:" + "a" * 64 + "/", 'body:{"filepath": "/x"}', 400),
    ("GET", "/api/lookup/local/custom/x@sha256:" + "a" * 64 + "/", "root", 400),
    ("GET", "/api/lookup/local/docker/x@sha256:abc/", "root", 400),
    ("GET", "/api/lookup/local/docker/x:1@sha256:" + "a" * 64 + "/", "root", 400),
    ("POST", "/api/doimport/local/custom/x:1/", 'body:{"filepath": "/nonexistent"}', 400),
    ("POST", "/api/doimport/local/custom/x:1/", 'body:{"filepath": "/etc/passwd", "format": "ext4"}', 400),
])
def test_client_mistakes_get_json_errors_never_500(api, method, path, auth, expect):
    body = None
    if auth and auth.startswith("body:"):
        body, auth = auth[5:], "root"
    if auth in UIDS or auth == "root":
        resp = api.call(method, path, user=auth, body=body)
    else:
        resp = api.call(method, path, cred=auth, body=body)
    assert resp.status_code == expect, resp.text
    data = resp.json()
    assert set(data) == ERROR_KEYS and data["status"] == expect
    assert isinstance(data["error"], str) and data["error"]
    assert data["message"].startswith(data["error"])


def test_replayed_and_expired_credentials_are_refused(api):
    cred = credential()
    assert api.call("GET", "/api/list/local/", cred=cred).status_code == 200
    again = api.call("GET", "/api/list/local/", cred=cred)
    assert again.status_code == 401 and "replayed credential" in again.json()["error"]
    old = credential(ttl=1)
    time.sleep(2.1)
    late = api.call("GET", "/api/list/local/", cred=old)
    assert late.status_code == 401 and "expired credential" in late.json()["error"]


def test_unknown_tag_fails_with_the_registrys_reason(api):
    record = api.pull("test/no-such:latest", user=USER1)
    assert record["status"] == "FAILURE" and record["id"] is None
    assert "not in the registry" in record["status_message"]
    assert api.lookup("test/no-such:latest").status_code == 404


# -- ACLs ------------------------------------------------------------------------------------


def test_private_image_is_invisible_to_another_uid(api, gw):
    record = api.pull("test/busybox:oci", user=USER1, body={"allowed_uids": str(UIDS[USER1])})
    assert record["status"] == "READY" and record["userACL"] == [UIDS[USER1]]
    info = meta.read(os.path.join(gw.image_dir, f"{record['id']}.meta"))
    assert info.user_acl == (UIDS[USER1],)
    assert api.lookup("test/busybox:oci", user=USER1).status_code == 200
    hidden = api.lookup("test/busybox:oci", user=USER2)
    assert hidden.status_code == 404 and set(hidden.json()) == ERROR_KEYS
    assert "test/busybox:oci" not in api.tags(user=USER2)
    assert "test/busybox:oci" in api.tags(user=USER1) and "test/busybox:oci" in api.tags()  # root
    # the member shares it with the group: a second private record (the caller's gid joins
    # the group ACL, as in Shifter), and the files are readable by the union of both
    again = api.pull("test/busybox:oci", user=USER1, body={"allowed_uids": str(UIDS[USER1]),
                                                           "allowed_gids": str(GROUP)})
    assert again["groupACL"] == sorted({GROUP, UIDS[USER1]}) and again["id"] == record["id"]
    assert api.lookup("test/busybox:oci", user=USER2).json()["groupACL"] == again["groupACL"]
    assert GROUP in meta.read(os.path.join(gw.image_dir, f"{record['id']}.meta")).group_acl


def test_a_pull_with_an_acl_adds_the_caller(api):
    """Item 11: allowed_uids=1000,1001 by uid 4242 used to store [1000, 1001] and lock the
    caller out of the image they had just pulled."""
    record = api.pull("test/layers:latest", user=USER1, body={"allowed_uids": "1000,1001"})
    assert record["status"] == "READY" and record["userACL"] == [1000, 1001, UIDS[USER1]]
    assert api.lookup("test/layers:latest", user=USER1).json()["userACL"] == record["userACL"]
    grouped = api.pull("test/layers:latest", user=USER2, body={"allowed_gids": "1000"})
    assert grouped["userACL"] == [] and grouped["groupACL"] == [1000, UIDS[USER2]]
    assert api.lookup("test/layers:latest", user=USER2).json()["groupACL"] == [1000, UIDS[USER2]]


def test_a_private_pull_of_a_public_tag_makes_a_record_beside_it(api, gw):
    """Item 11: the same pull for a tag already READY and public used to return the public
    record with a note.  Now it pulls and makes the caller's private record; other users keep
    the public one; the same ACL in another order does not pull again."""
    public = api.pull("test/busybox:latest", user=USER1)
    assert public["status"] == "READY" and public["userACL"] == []
    queued = gw.log_text().count("pull of docker:test/busybox:latest queued")
    body = {"allowed_uids": f"{UIDS[USER1]},1000"}
    private = api.pull("test/busybox:latest", user=USER2, body=body)
    assert gw.log_text().count("pull of docker:test/busybox:latest queued") == queued + 1
    assert private["status"] == "READY" and private["id"] == public["id"]
    assert private["userACL"] == sorted([1000, UIDS[USER1], UIDS[USER2]])
    # the caller is told that the same content is public here (its files stay world-readable)
    assert "also public" in private["status_message"]
    # lookups: USER2 (and USER1, named in the ACL) get the private record; root the public one
    assert api.lookup("test/busybox:latest", user=USER2).json()["userACL"] == private["userACL"]
    assert api.lookup("test/busybox:latest", user=USER1).json()["userACL"] == private["userACL"]
    assert api.lookup("test/busybox:latest").json()["userACL"] == []
    # the same ids in another order (and the caller's own uid spelled out) are the same request
    same = api.pull("test/busybox:latest", user=USER2,
                    body={"allowed_uids": f"1000,{UIDS[USER2]},{UIDS[USER1]},1000"})
    assert same["userACL"] == private["userACL"] and same["last_pull"] == private["last_pull"]
    assert gw.log_text().count("pull of docker:test/busybox:latest queued") == queued + 1
    # the public record is still there, for everyone, and its files are public
    listed = [r for r in api.ok("GET", "/api/list/local/", user=USER2)["list"]
              if "test/busybox:latest" in r["tag"]]
    assert sorted(len(r["userACL"]) for r in listed) == [0, 3]
    assert imagefiles.get_access(os.path.join(gw.image_dir, f"{public['id']}.squashfs")) == \
        (0o644, (), ())


def _read_as(user: str, path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={UIDS[user]}", f"--regid={UIDS[user]}", "--init-groups",
                           "--", "cat", path], capture_output=True)


def test_private_image_files_are_readable_only_by_their_acl(fresh):
    """Item 3: a private image's .squashfs/.meta were 0644, so anyone could unsquashfs them."""
    gateway = fresh()
    api = Api(gateway)
    record = api.pull("test/busybox:oci", user=USER1, body={"allowed_uids": str(UIDS[USER1])})
    assert record["status"] == "READY" and record["userACL"] == [UIDS[USER1]]
    files = [os.path.join(gateway.image_dir, f"{record['id']}{ext}") for ext in (".squashfs", ".meta")]
    for path in files:
        assert imagefiles.get_access(path) == (0o640, (UIDS[USER1],), ()), path
        assert os.stat(path).st_uid == 0
        assert _read_as(USER1, path).returncode == 0
        refused = _read_as(USER2, path)
        assert refused.returncode != 0 and b"Permission denied" in refused.stderr
    # a second private record (a group ACL) widens the files to the union, and USER2 reads them
    api.pull("test/busybox:oci", user=USER2, body={"allowed_gids": str(GROUP)})
    for path in files:
        assert imagefiles.get_access(path) == (0o640, (UIDS[USER1],), tuple(sorted({GROUP, UIDS[USER2]})))
        assert _read_as(USER2, path).returncode == 0
    assert meta.read(files[1]).user_acl == (UIDS[USER1],)
    # a public record makes them world-readable; expiring it narrows them back
    api.pull("test/busybox:oci", user=USER2)
    for path in files:
        assert imagefiles.get_access(path) == (0o644, (), ())
    assert not meta.read(files[1]).private
    # files written world-readable by an older gateway are brought in step at start-up
    gateway.stop()
    for path in files:
        imagefiles.set_access(path, (), ())
    gateway.start()
    for path in files:
        assert imagefiles.get_access(path) == (0o644, (), ())  # still one public record
    assert api.ok("GET", "/api/expire/local/docker/test/busybox:oci/") == {"status": True}
    assert os.listdir(gateway.image_dir) == []


def test_expiring_the_public_record_narrows_the_files_to_the_private_ones(fresh):
    gateway = fresh()
    api = Api(gateway)
    private = api.pull("test/busybox:multiarch", user=USER1, body={"allowed_uids": str(UIDS[USER1])})
    public = api.pull("test/busybox:oci", user=USER2)  # the same image (the index's amd64 entry)
    assert public["id"] == private["id"] and public["userACL"] == []
    files = [os.path.join(gateway.image_dir, f"{private['id']}{ext}") for ext in (".squashfs", ".meta")]
    assert all(imagefiles.get_access(p) == (0o644, (), ()) for p in files)
    assert "also public" in api.lookup("test/busybox:multiarch", user=USER1).json()["status_message"]
    assert api.ok("GET", "/api/expire/local/docker/test/busybox:oci/") == {"status": True}
    for path in files:
        assert imagefiles.get_access(path) == (0o640, (UIDS[USER1],), ())
        assert _read_as(USER2, path).returncode != 0 and _read_as(USER1, path).returncode == 0
    assert meta.read(files[1]).user_acl == (UIDS[USER1],)
    mine = api.lookup("test/busybox:multiarch", user=USER1).json()
    assert mine["status_message"] == "" and mine["userACL"] == [UIDS[USER1]]
    assert api.lookup("test/busybox:oci", user=USER2).status_code == 404


def test_an_older_gateways_world_readable_private_image_is_restricted_at_start(fresh):
    gateway = fresh()
    api = Api(gateway)
    record = api.pull("test/busybox:oci", user=USER1, body={"allowed_uids": str(UIDS[USER1])})
    gateway.stop()
    files = [os.path.join(gateway.image_dir, f"{record['id']}{ext}") for ext in (".squashfs", ".meta")]
    for path in files:
        imagefiles.set_access(path, (), ())  # as version 1 left them
        assert _read_as(USER2, path).returncode == 0
    gateway.start()
    for path in files:
        assert imagefiles.get_access(path) == (0o640, (UIDS[USER1],), ())
        assert _read_as(USER2, path).returncode != 0
    assert "file access set to uids" in gateway.log_text()


# -- pull by digest (item 15) ------------------------------------------------------------------


def test_pull_by_digest_shares_the_tags_image(api, gw):
    tagged = api.pull("test/busybox:oci", user=USER2)
    digest = test_images.remote_digest(SITE, "test/busybox:oci")
    assert tagged["id"] == digest.split(":")[1]
    pinned = api.pull(f"test/busybox@{digest}", user=USER2)
    assert pinned["status"] == "READY" and pinned["id"] == tagged["id"]
    assert {"test/busybox:oci", f"test/busybox@{digest}"} <= set(pinned["tag"])
    assert api.lookup(f"test/busybox@{digest}", user=USER1).json()["id"] == tagged["id"]
    # a digest names content that never changes: asking again is immediate, no new pull
    queued = gw.log_text().count(f"pull of docker:test/busybox@{digest} queued")
    again = api.ok("POST", f"/api/pull/local/docker/test/busybox@{digest}/", user=USER2)
    assert again["status"] == "READY" and gw.log_text().count(
        f"pull of docker:test/busybox@{digest} queued") == queued
    # an index digest resolves to this system's platform manifest: the same image again
    index = test_images.remote_digest(SITE, "test/busybox:multiarch")
    assert index != digest
    by_index = api.pull(f"test/busybox@{index}", user=USER2)
    assert by_index["status"] == "READY" and by_index["id"] == tagged["id"]


def test_pull_by_an_unknown_or_malformed_digest(api):
    missing = api.pull("test/busybox@sha256:" + "0" * 64, user=USER1)
    assert missing["status"] == "FAILURE" and "not in the registry" in missing["status_message"]
    bad = api.call("POST", "/api/pull/local/docker/test/busybox@sha256:abc/", user=USER1)
    assert bad.status_code == 400 and "sha256:<64 lowercase hex digits>" in bad.json()["error"]


def test_registry_logins_travel_in_the_credential(api):
    tag = f"{SITE.registry_url(auth=True)}/test/busybox:latest"
    missing = api.pull(tag, user=USER2)
    assert missing["status"] == "FAILURE" and "requires a login" in missing["status_message"]
    wrong = json.dumps({"authorized_locations": {SITE.registry_url(auth=True): "shifter:wrong"}})
    refused = api.pull(tag, user=USER1, payload=wrong)
    assert refused["status"] == "FAILURE" and "refused access" in refused["status_message"]
    right = json.dumps({"authorized_locations": {
        "default": f"{SITE.registry_user}:{SITE.registry_password}"}})
    record = api.pull(tag, user=USER1, payload=right)  # new logins: not the failure just seen
    assert record["status"] == "READY", record
    assert SITE.registry_password not in api.call("GET", "/api/queue/local/").text
    bad_payload = api.call("POST", f"/api/pull/local/docker/{tag}/", user=USER1, payload="not json")
    assert bad_payload.status_code == 400


# -- import ----------------------------------------------------------------------------------


@pytest.fixture
def squashfs_file():
    """A squashfs image in a directory the test users can reach, owned by USER1."""
    d = tempfile.mkdtemp(prefix="shifter-import-")
    os.chmod(d, 0o755)
    tree = os.path.join(d, "tree")
    os.makedirs(os.path.join(tree, "etc"))
    with open(os.path.join(tree, "etc", "imported"), "w") as f:
        f.write(f"imported {time.time()}\n")
    path = os.path.join(d, "image.squashfs")
    subprocess.run(["mksquashfs", tree, path, "-all-root", "-no-xattrs", "-comp", "lz4", "-quiet"],
                   check=True, capture_output=True)
    os.chown(path, UIDS[USER1], UIDS[USER1])
    yield path
    shutil.rmtree(d)


def test_import_by_an_allowed_and_a_refused_user(api, gw, squashfs_file):
    body = {"filepath": squashfs_file, "format": "squashfs"}
    refused = api.call("POST", "/api/doimport/local/custom/imported:v1/", user=USER2, body=body)
    assert refused.status_code == 403 and "may not import" in refused.json()["error"]
    record = api.pull("imported:v1", user=USER1, body=body, op="doimport", itype="custom")
    assert record["status"] == "READY", record
    with open(squashfs_file, "rb") as f:
        assert record["id"] == hashlib.sha256(f.read()).hexdigest()
    assert api.lookup("imported:v1", user=USER2, itype="custom").json()["id"] == record["id"]
    with open(os.path.join(gw.image_dir, f"{record['id']}.squashfs"), "rb") as f, \
            open(squashfs_file, "rb") as g:
        assert f.read() == g.read()
    # a file that is not yours, or not a squashfs, is refused at once
    os.chown(squashfs_file, 0, 0)
    theirs = api.call("POST", "/api/doimport/local/custom/imported:v2/", user=USER1, body=body)
    assert theirs.status_code == 403 and "not owned" in theirs.json()["error"]
    notsq = os.path.join(os.path.dirname(squashfs_file), "not.squashfs")
    with open(notsq, "w") as f:
        f.write("hello")
    os.chown(notsq, UIDS[USER1], UIDS[USER1])
    failed = api.call("POST", "/api/doimport/local/custom/imported:v3/", user=USER1, body={"filepath": notsq})
    assert failed.status_code == 400 and failed.json()["error"] == f"can't import {notsq}: not a squashfs image"
    link = os.path.join(os.path.dirname(squashfs_file), "link.squashfs")
    os.symlink(squashfs_file, link)
    sym = api.call("POST", "/api/doimport/local/custom/imported:v4/", user=USER1, body={"filepath": link})
    assert sym.status_code == 400 and "not a regular file that sftest1 can open" in sym.json()["error"]


# -- expiry, queue, metrics ------------------------------------------------------------------


def test_expire_then_lookup(api, gw):
    record = api.pull("test/layers:latest")
    assert api.ok("GET", "/api/expire/local/docker/test/layers/") == {"status": True}
    assert api.lookup("test/layers:latest").status_code == 404
    assert not os.path.exists(os.path.join(gw.image_dir, f"{record['id']}.squashfs"))
    assert not os.path.exists(os.path.join(gw.image_dir, f"{record['id']}.meta"))
    again = api.pull("test/layers:latest")  # an expired image can be pulled again
    assert again["status"] == "READY" and again["id"] == record["id"]


def test_metrics_record_lookups_for_admins(api):
    api.pull("test/layers:latest")
    assert api.lookup("test/layers:latest", user=USER2).status_code == 200
    rows = api.ok("GET", "/api/metrics/local/?limit=1")
    assert len(rows) == 1 and rows[0]["user"] == USER2 and rows[0]["tag"] == "test/layers:latest"
    assert set(rows[0]) == {"user", "uid", "system", "type", "tag", "id", "time"}


def test_autoexpire_removes_unused_images(fresh):
    gateway = fresh(expiration_timeout="0:00:00:01")
    api = Api(gateway)
    record = api.pull("test/busybox:latest")
    time.sleep(1.5)
    assert api.ok("GET", "/api/autoexpire/local/") == {"status": [record["id"]]}
    assert api.lookup("test/busybox:latest").status_code == 404
    assert os.listdir(gateway.image_dir) == []


# -- concurrency, crashes, restarts -----------------------------------------------------------


def test_two_concurrent_pulls_of_one_tag_make_one_conversion(fresh):
    gateway = fresh()
    api = Api(gateway)
    results = {}

    def pull(user):
        results[user] = api.pull("test/debian:latest", user=user)

    threads = [threading.Thread(target=pull, args=(u,)) for u in (USER1, USER2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[USER1]["status"] == results[USER2]["status"] == "READY"
    assert results[USER1]["id"] == results[USER2]["id"]
    assert gateway.log_text().count("converting docker:test/debian:latest") == 1
    # two tags of the same image, at the same time: one conversion, both tags
    threads = [threading.Thread(target=lambda t=t: results.setdefault(t, api.pull(t)))
               for t in ("test/busybox:oci", "test/busybox:multiarch")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["test/busybox:oci"]["id"] == results["test/busybox:multiarch"]["id"]
    assert gateway.log_text().count("converting") == 2
    assert {"test/busybox:oci", "test/busybox:multiarch"} <= api.tags()


def _mksquashfs_of(directory: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"mksquashfs") and any(directory.encode() in a for a in argv):
            pids.append(int(pid))
    return pids


@pytest.mark.parametrize("when", ["PULLING", "CONVERSION"])
def test_gateway_killed_mid_pull_then_restarted(fresh, when):
    gateway = fresh()
    api = Api(gateway)
    api.ok("POST", "/api/pull/local/docker/test/debian:latest/", user=USER1)
    deadline = time.monotonic() + 120
    while True:  # watch through the public queue (no credential needed)
        states = [i["status"] for i in api.ok("GET", "/api/queue/local/", cred=None)["list"]]
        if when in states:
            break
        assert states and time.monotonic() < deadline, (states, gateway.log_text()[-2000:])
        time.sleep(0.02)
    gateway.kill()
    time.sleep(0.3)
    assert _mksquashfs_of(gateway.dir) == []  # nothing converts behind a dead gateway
    assert not [f for f in os.listdir(gateway.image_dir) if f.endswith((".squashfs", ".meta"))]
    gateway.start()
    record = api.pull("test/debian:latest", user=USER1)
    assert record["status"] == "READY", record
    log = gateway.log_text()
    assert "resuming pull of docker:test/debian:latest" in log
    assert sorted(os.listdir(gateway.image_dir)) == [f"{record['id']}.meta", f"{record['id']}.squashfs"]
    assert os.listdir(os.path.join(gateway.state_dir, "expand")) == []


def test_images_survive_a_restart(fresh):
    gateway = fresh()
    api = Api(gateway)
    record = api.pull("test/busybox:latest")
    gateway.stop()
    gateway.start()
    assert api.lookup("test/busybox:latest").json()["id"] == record["id"]
    assert api.ok("GET", "/api/queue/local/", cred=None) == {"list": []}


def test_one_gateway_per_catalog(gw):
    second = new_gateway(state_dir=gw.state_dir)
    try:
        with pytest.raises(ShifterError, match="another gateway .* is using it"):
            second.start()
    finally:
        shutil.rmtree(second.dir, ignore_errors=True)


# -- hostile input: logs, bodies, paths, the HTTP layer, import paths, limits ---------------------


def assert_error(resp: requests.Response, status: int) -> dict:
    """An answer in Shifter's error shape, as JSON, with this status."""
    assert resp.status_code == status, (resp.status_code, resp.headers, resp.text[:300])
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    data = resp.json()
    assert set(data) == ERROR_KEYS and data["status"] == status, data
    assert isinstance(data["error"], str) and data["error"] and data["message"].startswith(data["error"])
    return data


def raw_request(gateway: gwtool.Instance, data: bytes) -> requests.Response:
    """Send bytes as they are (what requests would refuse to send); parse the answer."""
    import http.client

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        out = requests.Response()
        out.status_code, out.headers, out._content = resp.status, requests.structures.CaseInsensitiveDict(
            resp.getheaders()), resp.read()
        return out


def test_a_request_cannot_forge_log_lines(api, gw):
    """Without a credential: %0A in the path would end the log line and start a forged one."""
    before = len(gw.log_text())
    forged = "2026-01-01 00:00:00,000 INFO FORGED-LINE"
    quoted = forged.replace(" ", "%20")
    for path in (f"/api/lookup/local/docker/y%0A{quoted}%0A/", f"/api/lookup/local/docker/y%0D{quoted}/",
                 f"/api/list/local%0A{quoted}/", "/api/lookup/local/docker/y%00z/",
                 f"/api/nosuchop/%0A{quoted}/"):
        resp = api.call("GET", path, cred=None, allow_redirects=False)
        assert resp.status_code in (401, 404) and assert_error(resp, resp.status_code)
    # with a credential, request data reaches messages of the manager too
    bad = api.call("POST", "/api/doimport/local/custom/x:1/", user=USER1,
                   body={"filepath": f"/tmp/nothing\n{forged}"})
    assert_error(bad, 400)
    time.sleep(0.2)
    new = gw.log_text()[before:]
    assert "\0" not in new and "\r" not in new
    lines = new.splitlines()
    assert not [line for line in lines if line.startswith(forged) or line.startswith("FORGED")], lines
    assert sum("\\x0a" + forged in line for line in lines) >= 3, lines
    assert any("y\\x00z" in line for line in lines), lines


def test_a_deeply_nested_body_is_a_400_not_a_500(api, gw):
    resp = api.call("POST", "/api/pull/local/docker/test/busybox/", body="[" * 20000)
    assert "nested too deeply" in assert_error(resp, 400)["error"]
    resp = api.call("POST", "/api/pull/local/docker/test/busybox/", payload="[" * 5000)  # munge payload
    assert "payload" in assert_error(resp, 400)["error"]
    assert "RecursionError" not in gw.log_text() and "internal error" not in gw.log_text()


@pytest.mark.parametrize("method, path, expect", [
    ("GET", "/api/list/..%2f/", 404),
    ("GET", "/api/list/local%2F/", 200),  # a %2F that is just the final '/'
    ("GET", "/api/list/local", 200),  # no final '/': answered, not redirected
    ("POST", "/api/pull/local/docker/x%3Brm%20-rf%20%2F/", 404),
    ("POST", "/api/pull/local/docker/test%2F%2Fbusybox/", 400),
    ("GET", "/api/lookup/local/docker/..%2F..%2Fetc%2Fpasswd/", 400),
    ("GET", "/api/lookup/local/docker/test%2Fbusybox%2F%2F/", 404),
    ("GET", "/api//list/local/", 404),
    ("DELETE", "/api/list/local/", 405),
    ("PUT", "/api/pull/local/docker/test/busybox/", 405),
    ("GET", "/api/nosuchop/local/", 404),
    ("GET", "/nothing", 404),
])
def test_paths_are_answered_as_sent_and_always_in_json(api, method, path, expect):
    resp = api.call(method, path, allow_redirects=False)
    if expect == 200:
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
        assert "list" in resp.json()
    else:
        assert_error(resp, expect)


def test_errors_of_the_http_layer_are_json_too(gw):
    """414, 431, 413, 400, 505 come from the HTTP server itself (or werkzeug), before Flask."""
    url = gw.url + "/api/list/local/"
    long_uri = requests.get(gw.url + "/api/lookup/local/docker/" + "a" * 70000 + "/", proxies=NO_PROXY,
                            timeout=30)
    assert "longer than 65536" in assert_error(long_uri, 414)["error"]
    long_header = requests.get(url, headers={"X-Big": "a" * 70000}, proxies=NO_PROXY, timeout=30)
    assert assert_error(long_header, 431)["error"] == "the request headers are too large: line too long"
    many = requests.get(url, headers={f"X-H{i}": "1" for i in range(120)}, proxies=NO_PROXY, timeout=30)
    assert assert_error(many, 431)["error"] == "the request headers are too large: too many headers"
    big_body = requests.post(gw.url + "/api/pull/local/docker/test/busybox/", data="x" * 70000,
                             headers={"authentication": credential()}, proxies=NO_PROXY, timeout=30)
    assert "larger than 65536" in assert_error(big_body, 413)["error"]
    syntax = raw_request(gw, b"GET /api/list/local/ and-more HTTP/1.1\r\nHost: x\r\n\r\n")
    assert "Bad request syntax" in assert_error(syntax, 400)["error"]
    bad_version = raw_request(gw, b"GET /api/list/local/ HTTP/1.1 more\r\nHost: x\r\n\r\n")
    assert "Bad request version" in assert_error(bad_version, 400)["error"]
    version = raw_request(gw, b"GET /api/list/local/ HTTP/2.0\r\nHost: x\r\n\r\n")
    assert "Invalid HTTP version" in assert_error(version, 505)["error"]
    nul = raw_request(gw, b"GET /api/lookup/local/docker/a\x00b/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert nul.status_code in (400, 401, 404) and set(nul.json()) == ERROR_KEYS
    assert "<html" not in gw.log_text().lower()


@pytest.fixture
def behind_a_symlink():
    """As root: a directory of USER1's, a 0700 root directory beside it holding a squashfs
    file USER1 owns, and in USER1's directory a symlink to the root directory."""
    base = tempfile.mkdtemp(prefix="shifter-import-attack-")
    os.chmod(base, 0o755)
    mine, secret, tree = (os.path.join(base, d) for d in ("mine", "secret", "tree"))
    os.mkdir(mine)
    os.chown(mine, UIDS[USER1], UIDS[USER1])
    os.mkdir(secret, 0o700)
    os.makedirs(os.path.join(tree, "etc"))
    with open(os.path.join(tree, "etc", "root-only"), "w") as f:
        f.write("root's data\n")
    image = os.path.join(secret, "image.squashfs")
    subprocess.run(["mksquashfs", tree, image, "-all-root", "-no-xattrs", "-quiet"], check=True,
                   capture_output=True)
    os.chown(image, UIDS[USER1], UIDS[USER1])
    os.symlink(secret, os.path.join(mine, "link"))
    yield os.path.join(mine, "link", "image.squashfs"), image
    shutil.rmtree(base)


def test_doimport_opens_the_file_as_the_user_and_every_refusal_looks_alike(api, gw, behind_a_symlink):
    """The attack: root followed USER1's symlink into a 0700 directory and imported what it
    found there.  Now the file is opened with USER1's rights, and the refusal is the one a
    missing file gets, byte for byte."""
    via_link, real = behind_a_symlink
    attempt = api.call("POST", "/api/doimport/local/custom/stolen:v1/", user=USER1,
                       body={"filepath": via_link})
    refused = assert_error(attempt, 400)
    assert "not a regular file that sftest1 can open" in refused["error"]
    os.unlink(real)
    missing = api.call("POST", "/api/doimport/local/custom/stolen:v1/", user=USER1,
                       body={"filepath": via_link})
    assert missing.status_code == attempt.status_code and missing.json() == refused
    assert api.lookup("stolen:v1", user=USER1, itype="custom").status_code == 404
    # what exists in /root can't be told apart from what does not
    answers = set()
    for name in sorted(os.listdir("/root"))[:3] + ["no-such-file-here"]:
        path = f"/root/{name}"
        resp = api.call("POST", "/api/doimport/local/custom/probe:v1/", user=USER1, body={"filepath": path})
        data = assert_error(resp, 400)
        answers.add((resp.status_code, data["error"].replace(path, "PATH"), data["message"].replace(path, "PATH")))
    assert len(answers) == 1, answers


def test_image_limits_refuse_clearly_and_early(fresh, squashfs_file):
    gateway = fresh(image_size_limit="64K", image_layer_limit=3, import_users=(USER1,))
    api = Api(gateway)
    layers = api.pull("test/layers:latest", user=USER1)  # four layers
    assert layers["status"] == "FAILURE" and layers["status_message"] == (
        "can't pull docker:test/layers:latest: the image has 4 layers, more than this gateway's "
        "ImageLayerLimit of 3 (hint: ask the site to raise ImageLayerLimit in imagemanager.json, or "
        "squash the image)")
    blobs = os.path.join(gateway.state_dir, "cache", "blobs")
    assert os.listdir(blobs) == []  # refused before any download
    big = api.pull("test/busybox:latest", user=USER1)  # ~2 MB expanded
    assert big["status"] == "FAILURE" and "the image expands to more than 65536 bytes (this gateway's " \
        "ImageSizeLimit" in big["status_message"], big
    assert os.listdir(os.path.join(gateway.state_dir, "expand")) == []
    assert os.listdir(gateway.image_dir) == []
    # an import larger than the limit is refused at once
    d = os.path.dirname(squashfs_file)
    with open(os.path.join(d, "tree", "random"), "wb") as f:
        f.write(os.urandom(100 * 1024))
    path = os.path.join(d, "big.squashfs")
    subprocess.run(["mksquashfs", os.path.join(d, "tree"), path, "-all-root", "-quiet"], check=True,
                   capture_output=True)
    os.chown(path, UIDS[USER1], UIDS[USER1])
    resp = api.call("POST", "/api/doimport/local/custom/big:v1/", user=USER1, body={"filepath": path})
    assert "more than this gateway's ImageSizeLimit of 65536 bytes" in assert_error(resp, 400)["error"]
    small = api.pull("small:v1", user=USER1, body={"filepath": squashfs_file}, op="doimport", itype="custom")
    assert small["status"] == "READY", small
