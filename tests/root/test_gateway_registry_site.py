"""The registry client (shifter.gateway.registry) against the site's real registries: the
open (5000) and htpasswd (5001) ones, one in token mode with a small token issuer on
127.0.0.1:5002 (fixture), and an HTTP proxy in front of them.  Without the site (crafted
answers, names, challenges): tests/unit/test_gateway_registry.py."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
import requests

from helpers.gateway import free_port
from helpers.prereq import require
from shifter.gateway import registry as reg
from shifter.gateway.errors import PullError
from shifter.gateway.worker import image_fields
from tools import images as test_images
from tools import registry as site_registry
from tools.site import Site

pytestmark = pytest.mark.root  # the site's registries

SITE = Site()
OPEN = f"http://{SITE.registry_url()}"
AUTH = f"http://{SITE.registry_url(auth=True)}"
CREDS = (SITE.registry_user, SITE.registry_password)
ISSUER_PORT = 5002  # the token issuer
TOKEN_REGISTRY_PORT = 5003  # the registry in token mode
TOKEN_USER = ("tokenuser", "token-pw")


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


def test_the_digest_of_a_tags_manifest_resolves_to_the_same_image(registries):
    """Item 15, the real registry: a pull by the digest of a tag's manifest gets that image."""
    digest = test_images.remote_digest(SITE, "test/layers:latest")
    by_digest = reg.Registry(OPEN, "test/layers").resolve(digest)
    assert by_digest.digest == digest and by_digest.id == digest.split(":")[1]
    assert by_digest.layers == reg.Registry(OPEN, "test/layers").resolve("latest").layers


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
