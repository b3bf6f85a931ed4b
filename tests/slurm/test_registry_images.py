"""The site's registries serve every test image with the right media types and digests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
import requests

from tools import images, registry
from tools import oci
from tools.site import Site

pytestmark = pytest.mark.slurm

SITE = Site()
OPEN = f"http://{SITE.registry_url()}"
AUTH = f"http://{SITE.registry_url(auth=True)}"
CREDS = (SITE.registry_user, SITE.registry_password)


@pytest.fixture(scope="module")
def pushed(cluster) -> dict[str, str]:
    # the cluster fixture brought the registries up with the images pushed: this is a no-op
    return images.ensure(SITE, log=print)


def get_manifest(base: str, repo: str, ref: str, auth=None) -> requests.Response:
    return requests.get(f"{base}/v2/{repo}/manifests/{ref}", auth=auth, timeout=30,
                        headers={"Accept": oci.MANIFEST_ACCEPT})


def manifest(base: str, repo: str, ref: str, media_type: str, auth=None) -> dict:
    """The manifest ``repo:ref``, checked: media type, digest header = sha256 of the body."""
    resp = get_manifest(base, repo, ref, auth)
    assert resp.status_code == 200, (repo, ref, resp.status_code)
    assert resp.headers["Content-Type"] == media_type
    assert resp.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(
        resp.content).hexdigest()
    body = resp.json()
    assert body["mediaType"] == media_type and body["schemaVersion"] == 2
    return body


def blob(repo: str, digest: str) -> bytes:
    resp = requests.get(f"{OPEN}/v2/{repo}/blobs/{digest}", timeout=60)
    assert resp.status_code == 200, (repo, digest)
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == digest
    return resp.content


def test_ensure_reports_every_pushed_reference(pushed):
    assert set(pushed) == {
        "127.0.0.1:5000/test/busybox:latest", "127.0.0.1:5000/test/busybox:oci",
        "127.0.0.1:5001/test/busybox:latest", "127.0.0.1:5000/test/debian:latest",
        "127.0.0.1:5000/test/debian:oci", "127.0.0.1:5000/test/layers:latest",
        "127.0.0.1:5000/test/busybox:multiarch"}
    for ref, digest in pushed.items():
        host, _, repo_tag = ref.partition("/")
        auth = host == SITE.registry_url(auth=True)
        assert images.remote_digest(SITE, repo_tag, auth) == digest


@pytest.mark.parametrize("repo", ["test/busybox", "test/debian", "test/layers"])
def test_latest_is_docker_v2s2(pushed, repo):
    body = manifest(OPEN, repo, "latest", oci.DOCKER_MANIFEST)
    assert body["config"]["mediaType"] == oci.DOCKER_CONFIG
    assert {layer["mediaType"] for layer in body["layers"]} == {oci.DOCKER_LAYER_GZIP}


@pytest.mark.parametrize("repo", ["test/busybox", "test/debian"])
def test_oci_tag_is_an_oci_manifest(pushed, repo):
    body = manifest(OPEN, repo, "oci", oci.OCI_MANIFEST)
    assert body["config"]["mediaType"] == oci.OCI_CONFIG
    assert {layer["mediaType"] for layer in body["layers"]} == {oci.OCI_LAYER_GZIP}
    # Same layer blobs as the v2s2 tag: the conversion only changes the manifest.
    v2s2 = manifest(OPEN, repo, "latest", oci.DOCKER_MANIFEST)
    assert [d["digest"] for d in body["layers"]] == [d["digest"] for d in v2s2["layers"]]


def test_multiarch_is_an_index_of_amd64_and_arm64(pushed):
    index = manifest(OPEN, "test/busybox", "multiarch", oci.OCI_INDEX)
    platforms = {m["platform"]["architecture"]: m for m in index["manifests"]}
    assert set(platforms) == {"amd64", "arm64"}
    assert all(m["platform"]["os"] == "linux" for m in index["manifests"])
    assert platforms["amd64"]["digest"] == pushed["127.0.0.1:5000/test/busybox:oci"]
    for arch, desc in platforms.items():
        body = manifest(OPEN, "test/busybox", desc["digest"], oci.OCI_MANIFEST)
        config = blob("test/busybox", body["config"]["digest"])
        assert json.loads(config)["architecture"] == arch


@pytest.mark.parametrize("repo,ref", [("test/busybox", "latest"), ("test/busybox", "oci"),
                                      ("test/debian", "latest"), ("test/layers", "latest")])
def test_blobs_match_their_digests_and_diff_ids(pushed, repo, ref):
    body = get_manifest(OPEN, repo, ref).json()
    config = json.loads(blob(repo, body["config"]["digest"]))
    assert len(config["rootfs"]["diff_ids"]) == len(body["layers"])
    for desc, diff_id in zip(body["layers"], config["rootfs"]["diff_ids"]):
        data = blob(repo, desc["digest"])
        assert len(data) == desc["size"]
        assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == diff_id


def test_layers_image_carries_its_whiteouts(pushed):
    body = manifest(OPEN, "test/layers", "latest", oci.DOCKER_MANIFEST)
    assert len(body["layers"]) >= 3
    names = []
    for desc in body["layers"]:
        with tarfile.open(fileobj=io.BytesIO(blob("test/layers", desc["digest"])), mode="r:gz") as t:
            names.append(t.getnames())
    assert "bin/busybox" in names[0] and "bin/sh" in names[0]
    assert {"data/.wh.remove-me.txt", "data/.wh.subdir-gone",
            "data/opaque/.wh..wh..opq"} <= set(names[2])
    assert "usr/share/doc/.wh.busybox-static" in names[3]


def test_debian_image_has_python_mpich_and_mpi_hello(pushed):
    body = manifest(OPEN, "test/debian", "latest", oci.DOCKER_MANIFEST)
    with tarfile.open(fileobj=io.BytesIO(blob("test/debian", body["layers"][0]["digest"])),
                      mode="r:gz") as t:
        members = {m.name: m for m in t.getmembers()}
    assert members["app/mpi-hello"].isreg() and members["app/mpi-hello"].mode & 0o111
    assert "usr/bin/python3" in members and "usr/bin/mpiexec" in members
    assert not [m.name for m in members.values() if m.ischr() or m.isblk() or m.isfifo()]
    assert not [n for n in members if n.startswith("var/cache/apt/archives/") and
                n.endswith(".deb")]
    assert not [n for n in members if n.startswith(("/", "../")) or "/../" in n]


def test_auth_registry_needs_credentials(pushed):
    resp = requests.get(f"{AUTH}/v2/", timeout=10)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert get_manifest(AUTH, "test/busybox", "latest").status_code == 401
    assert get_manifest(AUTH, "test/busybox", "latest",
                        auth=(SITE.registry_user, "wrong")).status_code == 401
    assert requests.get(f"{AUTH}/v2/", auth=CREDS, timeout=10).status_code == 200
    body = manifest(AUTH, "test/busybox", "latest", oci.DOCKER_MANIFEST, auth=CREDS)
    assert body == manifest(OPEN, "test/busybox", "latest", oci.DOCKER_MANIFEST)


def test_registries_report_running_and_ensure_is_idempotent(pushed):
    state = registry.status(SITE)
    assert {s["url"]: s["http"] for s in state.values()} == {
        SITE.registry_url(): 200, SITE.registry_url(auth=True): 401}
    assert all(s["pid"] for s in state.values())
    registry.start(SITE)  # running: no restart
    assert {n: s["pid"] for n, s in registry.status(SITE).items()} == \
        {n: s["pid"] for n, s in state.items()}
    lines: list[str] = []
    assert images.ensure(SITE, log=lines.append) == pushed
    assert all(": cached" in line or ": up to date" in line for line in lines), lines
