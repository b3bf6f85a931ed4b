"""The registry client (shifter.gateway.registry) without the site: challenges, a hostile
registry serving crafted answers (on 127.0.0.1, started here), an unreachable registry, image
names to registries.  The site's real registries (open, htpasswd, token mode) and a proxy are
tests/root/test_gateway_registry_site.py."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest

from helpers.gateway import free_port
from shifter.gateway import registry as reg
from shifter.gateway.config import parse as parse_config
from shifter.gateway.errors import NotFound, PullError
from shifter.gateway.worker import credentials_for, image_fields, image_source


def test_challenge_parsing():
    scheme, params = reg.parse_challenge('Bearer realm="https://auth.example/token",'
                                         'service="registry.example",scope="repository:a/b:pull,push"')
    assert scheme == "bearer" and params == {"realm": "https://auth.example/token",
                                             "service": "registry.example",
                                             "scope": "repository:a/b:pull,push"}
    assert reg.parse_challenge('Basic realm="x \\"quoted\\""') == ("basic", {"realm": 'x "quoted"'})


# -- a hostile registry --------------------------------------------------------------------------


class Hostile(http.server.BaseHTTPRequestHandler):
    """Serves whatever ``routes`` maps a path to: (status, headers, body)."""

    routes: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        status, headers, body = self.routes.get(self.path, (404, {}, b"{}"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def hostile():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _serve_manifest(ref: str, body: bytes, media_type: str, digest: str | None = None) -> None:
    digest = digest or "sha256:" + hashlib.sha256(body).hexdigest()
    Hostile.routes[f"/v2/evil/manifests/{ref}"] = (
        200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, body)


@pytest.mark.parametrize("name, body, media_type, digest, message", [
    ("digest-lie", b'{"schemaVersion": 2}', reg.DOCKER_MANIFEST, "sha256:" + "a" * 64,
     "content does not match its digest"),
    ("bad-digest-header", b"{}", reg.DOCKER_MANIFEST, "md5:abc", "invalid digest"),
    ("schema1", json.dumps({"schemaVersion": 1, "name": "evil"}).encode(), reg.SCHEMA1[1], None,
     "schema 1 manifests are not supported"),
    ("not-json", b"\x00\xff garbage", reg.DOCKER_MANIFEST, None, "not valid JSON"),
    ("list", b"[1, 2]", reg.DOCKER_MANIFEST, None, "not a JSON object"),
    ("huge", b" " * (reg.MAX_MANIFEST + 1), reg.DOCKER_MANIFEST, None, "larger than"),
    ("no-layers", json.dumps({"schemaVersion": 2, "mediaType": reg.DOCKER_MANIFEST, "config": {
        "mediaType": "x", "digest": "sha256:" + "b" * 64, "size": 2}, "layers": []}).encode(),
     reg.DOCKER_MANIFEST, None, "'layers' must be a list"),
    ("bad-layer", json.dumps({"schemaVersion": 2, "mediaType": reg.DOCKER_MANIFEST, "config": {
        "mediaType": "x", "digest": "sha256:" + "b" * 64, "size": 2}, "layers": [{
            "mediaType": "application/x-evil", "digest": "sha256:" + "c" * 64, "size": 1}]}).encode(),
     reg.DOCKER_MANIFEST, None, "unsupported media type 'application/x-evil'"),
    ("negative-size", json.dumps({"schemaVersion": 2, "mediaType": reg.DOCKER_MANIFEST, "config": {
        "mediaType": "x", "digest": "sha256:" + "b" * 64, "size": -5}, "layers": [{}]}).encode(),
     reg.DOCKER_MANIFEST, None, "invalid size -5"),
])
def test_hostile_manifests_are_refused(hostile, name, body, media_type, digest, message):
    _serve_manifest(name, body, media_type, digest)
    with pytest.raises(PullError, match=message):
        reg.Registry(hostile, "evil").resolve(name)


def test_a_digest_pull_gets_exactly_that_manifest(hostile):
    """Item 15: a registry (or proxy) answering a digest with other bytes is refused, even
    when its Docker-Content-Digest header agrees with the request (the real registry's
    answer is tests/root/test_gateway_registry_site.py)."""
    real = json.dumps({"schemaVersion": 2, "mediaType": reg.OCI_MANIFEST}).encode()
    asked = "sha256:" + hashlib.sha256(real).hexdigest()
    other = json.dumps({"schemaVersion": 2, "mediaType": reg.OCI_MANIFEST, "x": 1}).encode()
    _serve_manifest(asked, other, reg.OCI_MANIFEST, digest=asked)
    with pytest.raises(PullError, match=f"content does not match its digest {asked[:19]}"):
        reg.Registry(hostile, "evil").resolve(asked)


def test_index_entry_must_match_the_manifest_it_names(hostile):
    manifest = json.dumps({"schemaVersion": 2, "mediaType": reg.OCI_MANIFEST}).encode()
    real = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "mediaType": reg.OCI_INDEX, "manifests": [
        {"mediaType": reg.OCI_MANIFEST, "digest": real, "size": len(manifest) + 1,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    _serve_manifest("idx", index, reg.OCI_INDEX)
    _serve_manifest(real, manifest, reg.OCI_MANIFEST)
    with pytest.raises(PullError, match="differs from the index's"):
        reg.Registry(hostile, "evil").resolve("idx")


def test_hostile_token_realm_and_unsupported_challenges(hostile):
    Hostile.routes["/v2/evil/manifests/auth"] = (401, {"WWW-Authenticate": 'Bearer realm="file:///etc/passwd"'}, b"")
    with pytest.raises(PullError, match="invalid token realm"):
        reg.Registry(hostile, "evil").resolve("auth")
    Hostile.routes["/v2/evil/manifests/neg"] = (401, {"WWW-Authenticate": "Negotiate"}, b"")
    with pytest.raises(PullError, match="unsupported authentication"):
        reg.Registry(hostile, "evil").resolve("neg")


def test_unreachable_registry_is_one_clear_error():
    port = free_port()
    with pytest.raises(PullError, match=rf"can't reach registry http://127.0.0.1:{port}: connection refused"):
        reg.Registry(f"http://127.0.0.1:{port}", "x").resolve("latest")


# -- image names -> registries -------------------------------------------------------------------


def test_image_source_and_credentials():
    config = parse_config(json.dumps({
        "DefaultImageLocation": "127.0.0.1:5000",
        "Locations": {"127.0.0.1:5000": {"remotetype": "dockerv2", "url": "http://127.0.0.1:5000"},
                      "registry.example.org": {"remotetype": "dockerv2"},
                      "index.docker.io": {"remotetype": "dockerv2"}},
        "Platforms": {"s": {"local": {"imageDir": "/i"}}}}))
    src = image_source(config, "test/busybox:latest")
    assert (src.location.name, src.repo, src.reference) == ("127.0.0.1:5000", "test/busybox", "latest")
    src = image_source(config, "registry.example.org/team/app:1.0")
    assert (src.location.url, src.repo) == ("https://registry.example.org", "team/app")
    src = image_source(config, "index.docker.io/ubuntu:22.04")
    assert (src.location.url, src.repo) == ("https://registry-1.docker.io", "library/ubuntu")
    with pytest.raises(NotFound, match="registry 'quay.io' is not one of this gateway's Locations"):
        image_source(config, "quay.io/x/y:1")
    digest = "sha256:" + "a" * 64
    src = image_source(config, f"127.0.0.1:5000/test/busybox@{digest}")
    assert (src.location.name, src.repo, src.reference, src.pinned) == \
        ("127.0.0.1:5000", "test/busybox", digest, True)
    assert str(src) == f"http://127.0.0.1:5000/test/busybox@{digest}"
    src = image_source(config, f"index.docker.io/ubuntu@{digest}")
    assert (src.repo, src.reference) == ("library/ubuntu", digest)
    assert not image_source(config, "test/busybox:latest").pinned
    tokens = {"default": ("d", "1"), "registry.example.org": ("r", "2")}
    assert credentials_for(tokens, "registry.example.org") == ("r", "2")
    assert credentials_for(tokens, "127.0.0.1:5000") == ("d", "1")
    assert credentials_for({}, "x") is None


def test_image_fields_drop_malformed_values():
    fields = image_fields("1" * 64, {"config": {
        "Env": ["OK=1", "BAD\nNEWLINE=1", 5, "NOEQUALS", "=empty"], "Entrypoint": "not-a-list",
        "Cmd": ["/bin/sh", "-c", "x"], "WorkingDir": "/w\n", "Labels": {"a": "b", "n": 1}}})
    assert fields.env == ("OK=1",) and fields.entry is None and fields.cmd == ["/bin/sh", "-c", "x"]
    assert fields.workdir is None and fields.labels == {"a": "b"}
    assert image_fields("1" * 64, {"config": None}).env == ()
