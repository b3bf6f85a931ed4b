"""The registry client (shifter.gateway.registry) against real registries: the site's open
(5000) and htpasswd (5001) registries, a registry in token mode with a small token issuer on
127.0.0.1:5002 (fixture), a hostile registry serving crafted answers, and an HTTP proxy."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
import requests

from conftest import require
from shifter.gateway import registry as reg
from shifter.gateway.config import parse as parse_config
from shifter.gateway.errors import NotFound, PullError
from shifter.gateway.worker import credentials_for, image_fields, image_source
from shifter.tools import images as test_images
from shifter.tools import registry as site_registry
from shifter.tools.site import Site

SITE = Site()
OPEN = f"http://{SITE.registry_url()}"
AUTH = f"http://{SITE.registry_url(auth=True)}"
CREDS = (SITE.registry_user, SITE.registry_password)
ISSUER_PORT = 5002  # the token issuer
TOKEN_REGISTRY_PORT = 5003  # the registry in token mode
TOKEN_USER = ("tokenuser", "token-pw")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registries():
    require(site_registry.probe(SITE.registry_url()) == 200, "the site's registry 127.0.0.1:5000 is not up "
            "(tools/cluster up)")
    require(site_registry.probe(SITE.registry_url(auth=True)) == 401, "the site's registry 127.0.0.1:5001 is not up")
    require(test_images.remote_digest(SITE, "test/layers:latest") is not None, "test images not pushed")


def test_v2s2_image_resolves_with_config_and_layers(registries):
    image = reg.Registry(OPEN, "test/layers").resolve("latest")
    assert image.media_type == reg.DOCKER_MANIFEST
    assert image.digest == test_images.remote_digest(SITE, "test/layers:latest")
    assert image.id == image.digest.split(":")[1] and len(image.layers) == 4
    fields = image_fields(image.id, image.config)
    assert "SHIFTER_TEST_IMAGE=layers" in fields.env and fields.cmd == ["/bin/sh"]


def test_oci_manifest_and_index_pick_linux_amd64(registries):
    oci = reg.Registry(OPEN, "test/busybox").resolve("oci")
    assert oci.media_type == reg.OCI_MANIFEST
    multi = reg.Registry(OPEN, "test/busybox").resolve("multiarch")
    assert multi.digest == oci.digest  # the index's amd64 entry IS the oci image
    arm = reg.Registry(OPEN, "test/busybox", platform=("linux", "arm64", "v8")).resolve("multiarch")
    assert arm.digest != oci.digest and arm.config["architecture"] == "arm64"
    with pytest.raises(PullError, match=r"no image for platform linux/s390x \(the index has: "
                                        r"linux/amd64, linux/arm64/v8\)"):
        reg.Registry(OPEN, "test/busybox", platform=("linux", "s390x", None)).resolve("multiarch")
    with pytest.raises(PullError, match="the image is linux/amd64, this system runs linux/arm64"):
        reg.Registry(OPEN, "test/busybox", platform=("linux", "arm64", None)).resolve("oci")


def test_unknown_tag_and_repository(registries):
    with pytest.raises(PullError, match=r"image not found: .*test/busybox:no-such-tag is not in the registry"):
        reg.Registry(OPEN, "test/busybox").resolve("no-such-tag")
    with pytest.raises(PullError, match="not in the registry"):
        reg.Registry(OPEN, "test/no-such").resolve("latest")


def test_blobs_are_verified_and_cached_atomically(registries, tmp_path):
    r = reg.Registry(OPEN, "test/busybox")
    image = r.resolve("latest")
    layer = image.layers[0]
    dest = tmp_path / "blob"
    seen = []
    r.fetch_blob(layer, str(dest), seen.append)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == layer.hex and seen[-1] == layer.size
    assert os.listdir(tmp_path) == ["blob"]
    lie = reg.Descriptor(layer.media_type, layer.digest, layer.size - 1)
    with pytest.raises(PullError, match="more than its declared"):
        r.fetch_blob(lie, str(tmp_path / "lie"))
    wrong = reg.Descriptor(layer.media_type, "sha256:" + "0" * 64, layer.size)
    with pytest.raises(PullError):
        r.fetch_blob(wrong, str(tmp_path / "wrong"))
    assert os.listdir(tmp_path) == ["blob"]  # no partial files left


def test_basic_auth(registries):
    image = reg.Registry(AUTH, "test/busybox", CREDS).resolve("latest")
    assert image.digest == test_images.remote_digest(SITE, "test/busybox:latest", auth=True)
    with pytest.raises(PullError, match="requires a login"):
        reg.Registry(AUTH, "test/busybox").resolve("latest")
    with pytest.raises(PullError, match="refused access to test/busybox for user 'shifter'"):
        reg.Registry(AUTH, "test/busybox", (CREDS[0], "wrong")).resolve("latest")


# -- token mode ----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer(http.server.BaseHTTPRequestHandler):
    """Docker's token protocol: Basic-authenticated GET /token?service=&scope= -> a JWT (RS256,
    x5c) granting the scope's actions to TOKEN_USER; anonymous callers get a token granting nothing."""

    key = cert_der = None
    issued: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        header = self.headers.get("Authorization", "")
        user = None
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if (name, password) != TOKEN_USER:
                self.send_response(401)
                self.end_headers()
                return
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            if user:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        head = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": "shifter-test-issuer", "sub": user or "", "aud": query["service"][0],
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                  "access": access}
        signing_input = f"{_b64url(json.dumps(head).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                                   input=signing_input.encode(), capture_output=True, check=True).stdout
        token = f"{signing_input}.{_b64url(signature)}"
        self.issued.append(user)
        body = json.dumps({"token": token, "access_token": token}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def token_registry(registries, tmp_path_factory):
    """docker-registry in token mode on 127.0.0.1:5003 (same storage as 5000), issuer on 5002."""
    require(os.path.exists(site_registry.REGISTRY_BIN), "docker-registry is not installed")
    d = tmp_path_factory.mktemp("token")
    key, cert = str(d / "key.pem"), str(d / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=shifter-test-token-issuer"],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    TokenIssuer.key, TokenIssuer.cert_der = key, der
    issuer = http.server.ThreadingHTTPServer(("127.0.0.1", ISSUER_PORT), TokenIssuer)
    threading.Thread(target=issuer.serve_forever, daemon=True).start()
    # the site registry's config, with the listen address and auth overridden by environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(REGISTRY_HTTP_ADDR=f"127.0.0.1:{TOKEN_REGISTRY_PORT}", REGISTRY_HTTP_SECRET="test",
               REGISTRY_AUTH_TOKEN_REALM=f"http://127.0.0.1:{ISSUER_PORT}/token",
               REGISTRY_AUTH_TOKEN_SERVICE="shifter-test-registry",
               REGISTRY_AUTH_TOKEN_ISSUER="shifter-test-issuer",
               REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE=cert)
    log = open(d / "registry.log", "wb")
    proc = subprocess.Popen([site_registry.REGISTRY_BIN, "serve",
                             os.path.join(SITE.etc, "registry-5000.yml")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while site_registry.probe(f"127.0.0.1:{TOKEN_REGISTRY_PORT}") != 401:
            assert proc.poll() is None and time.monotonic() < deadline, (d / "registry.log").read_text()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{TOKEN_REGISTRY_PORT}"
    finally:
        proc.terminate()
        proc.wait(10)
        issuer.shutdown()
        log.close()


def test_bearer_token_auth(token_registry):
    TokenIssuer.issued.clear()
    image = reg.Registry(token_registry, "test/busybox", TOKEN_USER).resolve("latest")
    assert image.digest == test_images.remote_digest(SITE, "test/busybox:latest")
    assert TokenIssuer.issued == ["tokenuser"]  # one token, reused for manifest and config


def test_bearer_token_refusals(token_registry):
    with pytest.raises(PullError, match=r"token server http://127.0.0.1:5002/token refused user "
                                        r"'tokenuser' for test/busybox"):
        reg.Registry(token_registry, "test/busybox", ("tokenuser", "wrong")).resolve("latest")
    with pytest.raises(PullError, match="refused access to test/busybox"):  # anonymous: no grant
        reg.Registry(token_registry, "test/busybox").resolve("latest")


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


def test_a_digest_pull_gets_exactly_that_manifest(hostile, registries):
    """Item 15: a registry (or proxy) answering a digest with other bytes is refused, even
    when its Docker-Content-Digest header agrees with the request."""
    real = json.dumps({"schemaVersion": 2, "mediaType": reg.OCI_MANIFEST}).encode()
    asked = "sha256:" + hashlib.sha256(real).hexdigest()
    other = json.dumps({"schemaVersion": 2, "mediaType": reg.OCI_MANIFEST, "x": 1}).encode()
    _serve_manifest(asked, other, reg.OCI_MANIFEST, digest=asked)
    with pytest.raises(PullError, match=f"content does not match its digest {asked[:19]}"):
        reg.Registry(hostile, "evil").resolve(asked)
    # the real registry: the digest of a tag's manifest resolves to the same image
    digest = test_images.remote_digest(SITE, "test/layers:latest")
    by_digest = reg.Registry(OPEN, "test/layers").resolve(digest)
    assert by_digest.digest == digest and by_digest.id == digest.split(":")[1]
    assert by_digest.layers == reg.Registry(OPEN, "test/layers").resolve("latest").layers


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


# -- proxies ---------------------------------------------------------------------------------


class Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy for plain http that sends every request to the site's open registry."""

    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        self.seen.append(f"{url.hostname}{url.path}")
        req = urllib.request.Request(f"{OPEN}{url.path}?{url.query}",
                                     headers={k: v for k, v in self.headers.items() if k.lower() == "accept"})
        try:
            resp = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30)
            status, headers, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, headers, body = e.code, e.headers, e.read()
        self.send_response(status)
        for k in ("Content-Type", "Docker-Content-Digest"):
            if headers.get(k):
                self.send_header(k, headers[k])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_http_proxy_is_honoured_and_loopback_never_proxied(registries, monkeypatch):
    expected = test_images.remote_digest(SITE, "test/busybox:latest")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        # a registry name only the proxy can reach
        image = reg.Registry("http://registry.shifter-test.invalid:5000", "test/busybox",
                             session=requests.Session()).resolve("latest")
        assert image.digest == expected
        assert "registry.shifter-test.invalid/v2/test/busybox/manifests/latest" in Proxy.seen
        # a dead proxy does not matter for 127.0.0.1
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
        assert reg.Registry(OPEN, "test/busybox").resolve("latest").digest == image.digest
        # ... and no_proxy is honoured for other hosts
        monkeypatch.setenv("no_proxy", "registry.shifter-test.invalid")
        with pytest.raises(PullError, match="can't reach registry"):
            reg.Registry("http://registry.shifter-test.invalid:5000", "test/busybox").resolve("latest")
    finally:
        server.shutdown()


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
