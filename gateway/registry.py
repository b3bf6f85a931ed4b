"""A Docker Registry HTTP API v2 client: resolve a tag to one image manifest, fetch blobs.

Everything the registry sends is treated as hostile:

* manifests are read up to ``MAX_MANIFEST`` bytes, their sha256 must equal the digest they
  were asked by (or the ``Docker-Content-Digest`` header when asked by tag), and their
  structure is checked field by field;
* an image index / manifest list is resolved to the configured platform (linux/amd64 by
  default); the chosen manifest's digest and size must match the index entry;
* blobs are streamed to a temporary file, never beyond their declared size, and renamed
  into the cache only when size and digest match;
* authentication follows the registry's ``WWW-Authenticate`` challenge: HTTP Basic, or a
  Bearer token from the realm it names (with the user's credentials, if any).

Media types: Docker v2 schema 2 manifest and manifest list, OCI manifest and index.
Docker schema 1 is refused (the registry converts v2s2 to it only when asked wrongly).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

import requests

from shifter import files
from shifter import http
from shifter.gateway.errors import PullError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)
MAX_MANIFEST = 4 * 1024 * 1024
MAX_CONFIG = 16 * 1024 * 1024
MAX_TOKEN_RESPONSE = 1024 * 1024
MAX_LAYERS = 1000
CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class Image:
    """A resolved image: the manifest used, its digest, its config and layers (in order)."""

    digest: str  # of the image manifest (for an index: the selected platform's manifest)
    media_type: str
    config: dict
    layers: tuple[Descriptor, ...]

    @property
    def id(self) -> str:
        """The image id: the hex of the manifest digest."""
        return self.digest.split(":", 1)[1]


def check_digest(value, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise PullError(f"{what}: invalid digest {str(value)[:80]!r} (only sha256/sha512)")
    return value


def _json_object(body: bytes, what: str) -> dict:
    try:
        value = json.loads(body)
    except ValueError:
        raise PullError(f"{what}: not valid JSON") from None
    if not isinstance(value, dict):
        raise PullError(f"{what}: not a JSON object")
    return value


def _hasher(digest: str):
    return hashlib.new(digest.split(":", 1)[0])


def _descriptor(obj, what: str, types: tuple[str, ...] | None = None) -> Descriptor:
    if not isinstance(obj, dict):
        raise PullError(f"{what}: not a descriptor object")
    media_type, size = obj.get("mediaType"), obj.get("size")
    digest = check_digest(obj.get("digest"), what)
    if not isinstance(media_type, str) or len(media_type) > 255:
        raise PullError(f"{what}: missing or invalid mediaType")
    if types is not None and media_type not in types:
        raise PullError(f"{what}: unsupported media type {media_type!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise PullError(f"{what}: invalid size {size!r}")
    return Descriptor(media_type, digest, size)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for key, value in _CHALLENGE_PARAM.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return scheme.lower(), params


class Registry:
    """One repository of one registry, with the credentials of one pull."""

    def __init__(self, base_url: str, repo: str, credentials: tuple[str, str] | None = None,
                 verify: bool | str = True, session: requests.Session | None = None,
                 platform: tuple[str, str, str | None] = ("linux", "amd64", None)):
        self.base_url = base_url.rstrip("/")
        self.repo = repo
        self.credentials = credentials
        self.verify = verify
        self.session = session or http.new_session()
        self.platform = platform
        self._auth_header: str | None = None
        self.where = f"{self.base_url}/{repo}"

    # -- transport ------------------------------------------------------------------------
    def _get(self, url: str, headers: dict | None = None, stream: bool = False) -> requests.Response:
        try:
            return self.session.get(url, headers=headers, stream=stream, verify=self.verify,
                                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                                    proxies=http.proxies_for(url))
        except requests.RequestException as e:
            raise PullError(f"can't reach registry {self.base_url}: {http.reason(e)}",
                            "is the registry up, and http_proxy/no_proxy right for it?") from None

    def request(self, path: str, headers: dict | None = None, stream: bool = False) -> requests.Response:
        """GET ``/v2/<repo>/<path>``, answering one authentication challenge if needed."""
        url = f"{self.base_url}/v2/{self.repo}/{path}"
        hdrs = dict(headers or {})
        if self._auth_header:
            hdrs["Authorization"] = self._auth_header
        resp = self._get(url, hdrs, stream)
        if resp.status_code != 401:
            return resp
        resp.close()
        self._authenticate(resp.headers.get("WWW-Authenticate", ""))
        hdrs["Authorization"] = self._auth_header
        resp = self._get(url, hdrs, stream)
        if resp.status_code == 401:
            resp.close()
            who = f" for user {self.credentials[0]!r}" if self.credentials else ""
            raise PullError(f"registry {self.base_url} refused access to {self.repo}{who}",
                            "check the image name and your registry login (shifterimg login)")
        return resp

    def _authenticate(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not self.credentials:
                raise PullError(f"registry {self.base_url} requires a login for {self.repo}",
                                "run 'shifterimg login' for this registry location, then pull again")
            user, password = self.credentials
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._auth_header = f"Basic {token}"
        elif scheme == "bearer":
            self._auth_header = "Bearer " + self._token(params)
        else:
            raise PullError(f"registry {self.base_url} asks for unsupported authentication "
                            f"{challenge[:60]!r}")

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm", "")
        if not re.match(r"^https?://[^\s]+$", realm):
            raise PullError(f"registry {self.base_url}: invalid token realm {realm[:80]!r}")
        query = {"scope": params.get("scope") or f"repository:{self.repo}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        auth = self.credentials if self.credentials else None
        try:
            resp = self.session.get(realm, params=query, auth=auth, verify=self.verify,
                                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                                    proxies=http.proxies_for(realm), stream=True)
        except requests.RequestException as e:
            raise PullError(f"can't reach the token server {realm}: {http.reason(e)}") from None
        with resp:
            if resp.status_code in (401, 403):
                who = f"user {self.credentials[0]!r}" if self.credentials else "anonymous access"
                raise PullError(f"token server {realm} refused {who} for {self.repo}",
                                "check your registry login (shifterimg login)")
            if resp.status_code != 200:
                raise PullError(f"token server {realm} answered HTTP {resp.status_code}")
            body = _read_capped(resp, MAX_TOKEN_RESPONSE, f"token server {realm}")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or len(token) > 64 * 1024 or \
                not re.match(r"^[\x21-\x7e]+$", token):
            raise PullError(f"token server {realm} sent no usable token")
        return token

    # -- manifests --------------------------------------------------------------------------
    def _manifest(self, reference: str, expect: Descriptor | None = None) -> tuple[str, str, dict]:
        """(digest, media type, parsed body) of manifest ``reference`` (a tag or a digest)."""
        resp = self.request(f"manifests/{reference}", {"Accept": ACCEPT}, stream=True)
        with resp:
            if resp.status_code == 404:
                raise PullError(f"image not found: {self.where}:{reference} is not in the registry "
                                "(MANIFEST_UNKNOWN)", "check the repository name and tag")
            if resp.status_code != 200:
                raise PullError(f"registry {self.base_url} answered HTTP {resp.status_code} for "
                                f"the manifest of {self.repo}:{reference}")
            body = _read_capped(resp, MAX_MANIFEST, f"manifest {self.repo}:{reference}")
            header_digest = resp.headers.get("Docker-Content-Digest")
            content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        what = f"manifest {self.repo}@{reference}"
        if expect is not None:
            digest = expect.digest
            if len(body) != expect.size:
                raise PullError(f"{what}: size {len(body)} differs from the index's {expect.size}")
        elif reference.startswith(("sha256:", "sha512:")):
            digest = reference
        else:
            if header_digest is None:
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
            else:
                digest = check_digest(header_digest, f"{what}: Docker-Content-Digest")
        hasher = _hasher(digest)
        hasher.update(body)
        if f"{digest.split(':')[0]}:{hasher.hexdigest()}" != digest:
            raise PullError(f"{what}: content does not match its digest {digest[:19]}...",
                            "the registry or a proxy altered the manifest")
        manifest = _json_object(body, what)
        media_type = manifest.get("mediaType") or content_type
        if media_type in SCHEMA1 or manifest.get("schemaVersion") == 1:
            raise PullError(f"{what}: Docker schema 1 manifests are not supported",
                            "push the image again with a current docker/skopeo")
        if manifest.get("schemaVersion") != 2:
            raise PullError(f"{what}: unsupported schemaVersion {manifest.get('schemaVersion')!r}")
        if media_type not in INDEX_TYPES + MANIFEST_TYPES:
            raise PullError(f"{what}: unsupported media type {media_type!r}")
        if expect is not None and expect.media_type in INDEX_TYPES + MANIFEST_TYPES \
                and media_type != expect.media_type:
            raise PullError(f"{what}: media type {media_type!r} differs from the index's")
        return digest, media_type, manifest

    def _select(self, index: dict, what: str) -> Descriptor:
        entries = index.get("manifests")
        if not isinstance(entries, list):
            raise PullError(f"{what}: 'manifests' is not a list")
        want_os, want_arch, want_variant = self.platform
        available = []
        for i, entry in enumerate(entries[:MAX_LAYERS]):
            platform = entry.get("platform") if isinstance(entry, dict) else None
            if not isinstance(platform, dict):
                continue
            p_os, p_arch, p_variant = (platform.get(k) for k in ("os", "architecture", "variant"))
            available.append("/".join(str(x) for x in (p_os, p_arch, p_variant) if x))
            if p_os == want_os and p_arch == want_arch and (want_variant is None or p_variant == want_variant):
                return _descriptor(entry, f"{what}: manifests[{i}]", MANIFEST_TYPES)
        wanted = "/".join(x for x in self.platform if x)
        raise PullError(f"{what}: no image for platform {wanted} (the index has: "
                        f"{', '.join(available) or 'no platforms'})")

    def resolve(self, tag: str) -> Image:
        """Resolve ``tag`` to the manifest of this system's platform, with its config."""
        digest, media_type, manifest = self._manifest(tag)
        if media_type in INDEX_TYPES:
            chosen = self._select(manifest, f"index {self.repo}:{tag}")
            digest, media_type, manifest = self._manifest(chosen.digest, expect=chosen)
            if media_type in INDEX_TYPES:
                raise PullError(f"index {self.repo}:{tag}: points to another index (nested indexes "
                                "are not supported)")
        what = f"manifest {self.repo}@{digest[:19]}"
        config_desc = _descriptor(manifest.get("config"), f"{what}: config")
        layers_raw = manifest.get("layers")
        if not isinstance(layers_raw, list) or not layers_raw or len(layers_raw) > MAX_LAYERS:
            raise PullError(f"{what}: 'layers' must be a list of 1..{MAX_LAYERS} descriptors")
        layers = tuple(_descriptor(layer, f"{what}: layers[{i}]", LAYER_TYPES)
                       for i, layer in enumerate(layers_raw))
        config = self._config(config_desc)
        self._check_platform(config, what)
        return Image(digest, media_type, config, layers)

    def _config(self, desc: Descriptor) -> dict:
        if desc.size > MAX_CONFIG:
            raise PullError(f"image config {desc.digest[:19]}: {desc.size} bytes is too large")
        resp = self.request(f"blobs/{desc.digest}", stream=True)
        with resp:
            if resp.status_code != 200:
                raise PullError(f"registry {self.base_url} answered HTTP {resp.status_code} for "
                                f"the image config {desc.digest[:19]}")
            body = _read_capped(resp, desc.size, f"image config {desc.digest[:19]}")
        hasher = _hasher(desc.digest)
        hasher.update(body)
        if len(body) != desc.size or hasher.hexdigest() != desc.hex:
            raise PullError(f"image config {desc.digest[:19]}: content does not match its "
                            "digest and size")
        return _json_object(body, f"image config {desc.digest[:19]}")

    def _check_platform(self, config: dict, what: str) -> None:
        want_os, want_arch, _ = self.platform
        c_os, c_arch = config.get("os"), config.get("architecture")
        if (c_os and c_os != want_os) or (c_arch and c_arch != want_arch):
            raise PullError(f"{what}: the image is {c_os}/{c_arch}, this system runs "
                            f"{want_os}/{want_arch}")

    # -- blobs ------------------------------------------------------------------------------
    def fetch_blob(self, desc: Descriptor, dest: str,
                   progress: Callable[[int], None] | None = None) -> None:
        """Download blob ``desc`` to ``dest`` (atomically, verified); no-op if ``dest`` exists."""
        if os.path.exists(dest):
            return
        with files.atomic_file(dest, 0o644) as out:
            self._download(desc, out, progress)

    def _download(self, desc: Descriptor, out, progress) -> None:
        what = f"layer {desc.digest[:19]}"
        resp = self.request(f"blobs/{desc.digest}", stream=True)
        with resp:
            if resp.status_code != 200:
                raise PullError(f"registry {self.base_url} answered HTTP {resp.status_code} for {what}")
            hasher = _hasher(desc.digest)
            size = 0
            last = 0.0
            try:
                for chunk in resp.iter_content(CHUNK):
                    size += len(chunk)
                    if size > desc.size:
                        raise PullError(f"{what}: the registry sent more than its declared "
                                        f"{desc.size} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
                    if progress and time.monotonic() - last >= 1.0:
                        last = time.monotonic()
                        progress(size)
            except requests.RequestException as e:
                raise PullError(f"{what}: download interrupted: {http.reason(e)}") from None
        if size != desc.size:
            raise PullError(f"{what}: got {size} bytes, the manifest declares {desc.size}")
        if hasher.hexdigest() != desc.hex:
            raise PullError(f"{what}: content does not match its digest",
                            "the registry or a proxy altered the layer")
        if progress:
            progress(size)


def _read_capped(resp: requests.Response, limit: int, what: str) -> bytes:
    data = bytearray()
    try:
        for chunk in resp.iter_content(65536):
            data += chunk
            if len(data) > limit:
                raise PullError(f"{what}: larger than {limit} bytes")
    except requests.RequestException as e:
        raise PullError(f"{what}: transfer interrupted: {http.reason(e)}") from None
    return bytes(data)
