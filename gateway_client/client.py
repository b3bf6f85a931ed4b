"""A client of the image gateway's REST API (ours or Shifter's): one HTTP session, munge
credentials, failover across the gateways of udiRoot.conf, typed errors.

``imageGateway`` in udiRoot.conf lists one or more base URLs, space-separated.  Each request
goes to the first that answers; a connection error, a timeout (``gatewayTimeout`` seconds)
or an HTTP 502/503/504 moves on to the next.  Every attempt carries a fresh munge
credential (the gateway refuses replayed ones).  A pull's credential carries the user's
registry logins for this system (``shifterimg login``, stored in ``~/.udiRoot/.cred``).

Errors (all ``GatewayError``, a ``ShifterError``): ``GatewayUnavailable`` (no gateway
answered), ``ImageNotFound`` (404: unknown image or system, or not visible to you),
``AuthenticationFailed`` (401), ``PermissionDenied`` (403), ``RequestRefused`` (400),
``PullFailed`` (the pull or import ended in FAILURE).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import time
from collections.abc import Callable
from urllib.parse import quote

from shifter.errors import ShifterError, UsageError
from shifter.files import atomic_file
from shifter.frozen import field, frozen
from shifter import http, munge
from shifter.gateway_client import lite
from shifter.runtime.config import UdiRootConfig
from shifter.runtime.image import ImageRef, parse_image

FAILOVER_STATUSES = (502, 503, 504)
TERMINAL = ("READY", "FAILURE", "EXPIRED")
MAX_RESPONSE = 64 * 1024 * 1024
_ID = re.compile(r"^[0-9a-f]{64}$")


class GatewayError(ShifterError):
    pass


class GatewayUnavailable(GatewayError):
    pass


class ImageNotFound(GatewayError):
    pass


class AuthenticationFailed(GatewayError):
    pass


class PermissionDenied(GatewayError):
    pass


class RequestRefused(GatewayError):
    pass


class PullFailed(GatewayError):
    pass


_STATUS_ERRORS = {400: RequestRefused, 401: AuthenticationFailed, 403: PermissionDenied,
                  404: ImageNotFound}


@frozen
class ImageRecord:
    """An image record as the gateway returns it (``raw`` is the JSON object itself)."""

    id: str | None
    system: str
    itype: str
    tags: tuple[str, ...]
    status: str
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    env: tuple[str, ...] = ()
    entry: object = None
    workdir: str | None = None
    labels: dict = field(default_factory=dict)
    last_pull: float = 0.0
    status_message: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data) -> ImageRecord:
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise GatewayError(f"the gateway sent an invalid image record: {str(data)[:120]}")

        def strings(value) -> tuple:
            if isinstance(value, str):
                return (value,)
            return tuple(str(x) for x in value) if isinstance(value, list) else ()

        def ids(value) -> tuple:
            out = []
            for x in value if isinstance(value, list) else []:
                try:
                    out.append(int(x))
                except (TypeError, ValueError):
                    pass
            return tuple(out)

        image_id = data.get("id")
        last_pull = data.get("last_pull")
        return cls(
            id=image_id if isinstance(image_id, str) and image_id != "MISSING" else None,
            system=str(data.get("system", "")), itype=str(data.get("itype", "")),
            tags=strings(data.get("tag")), status=data["status"],
            user_acl=ids(data.get("userACL", data.get("userAcl"))),
            group_acl=ids(data.get("groupACL", data.get("groupAcl"))),
            env=strings(data.get("ENV")), entry=data.get("ENTRY"),
            workdir=data.get("WORKDIR") if isinstance(data.get("WORKDIR"), str) else None,
            labels=data.get("LABELS") if isinstance(data.get("LABELS"), dict) else {},
            last_pull=float(last_pull) if isinstance(last_pull, (int, float)) else 0.0,
            status_message=str(data.get("status_message") or ""), raw=data)


def image_ref(spec: str, config: UdiRootConfig | None = None, allow_custom: bool = True) -> ImageRef:
    """Parse an image argument for the gateway: a docker image, or (unless
    ``allow_custom`` is false: pulls) an imported ``custom:NAME[:TAG]`` image (the docker
    tag grammar; no tag means ``latest``, as Shifter's gateway has it)."""
    ref = parse_image(spec, config)
    if ref.type == "custom" and not allow_custom:
        raise UsageError(f"invalid image {spec!r}: custom images are imported, not pulled",
                         "shifterimg import FILE custom:NAME:TAG")
    if ref.type not in ("docker", "custom"):
        raise UsageError(f"invalid image {spec!r}: the gateway knows docker images (and imported "
                         "custom ones), not ids", "use docker:REPO:TAG")
    return ref


# -- registry logins (shifterimg login) -------------------------------------------------------


class CredentialStore:
    """``~/.udiRoot/.cred``: ``SYSTEM:LOCATION=MUNGE_CREDENTIAL`` lines (Shifter's format), 0600.

    Each credential is munge-encoded ``user:password``: only this munge realm can read it,
    and only a credential encoded by the calling uid is used.
    """

    def __init__(self, path: str | None = None):
        if path is None:
            path = os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".udiRoot", ".cred")
        self.path = path

    def entries(self) -> dict[tuple[str, str], str]:
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise GatewayError(f"can't read your registry logins: {self.path}: {e.strerror}") from None
        entries = {}
        for line in lines:
            key, sep, cred = line.partition("=")
            system, colon, location = key.partition(":")
            if sep and colon and system and location and cred.startswith("MUNGE:"):
                entries[(system, location)] = cred.strip()
        return entries

    def store(self, system: str, location: str, cred: str) -> None:
        entries = self.entries()
        entries[(system, location)] = cred
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        with atomic_file(self.path, mode=0o600, text=True) as f:
            for (sys_, loc), value in sorted(entries.items()):
                f.write(f"{sys_}:{loc}={value}\n")

    def logins(self, system: str, socket: str | None) -> dict[str, str]:
        """``{location: "user:password"}`` of this user for ``system``."""
        out = {}
        for (sys_, location), cred in self.entries().items():
            if sys_ != system:
                continue
            try:
                decoded = munge.decode(cred, socket, accept=(munge.EXPIRED, munge.REPLAYED))
            except munge.MungeError:
                continue  # another realm's, or damaged: not ours to use
            if decoded.uid == os.getuid():
                out[location] = decoded.payload
        return out


# -- the client --------------------------------------------------------------------------------


class GatewayClient:
    def __init__(self, config: UdiRootConfig, system: str | None = None,
                 session=None, credentials: CredentialStore | None = None,
                 trace: Callable[[str], None] | None = None):
        if not config.imageGateway:
            raise GatewayError(f"no image gateway configured: imageGateway is not set in {config.path}",
                               "set imageGateway=http://HOST:PORT in udiRoot.conf")
        self.urls = tuple(u.rstrip("/") for u in config.imageGateway)
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise GatewayError(f"imageGateway in {config.path}: {url!r} is not an http(s) URL")
        self.system = system or config.system
        self.timeout = config.gatewayTimeout if config.gatewayTimeout > 0 else None
        self.munge_socket = config.mungeSocketPath
        self.session = session or http.new_session()
        self._credentials = credentials
        self._logins: dict[str, str] | None = None
        self.trace = trace

    @property
    def credentials(self) -> CredentialStore:
        if self._credentials is None:
            self._credentials = CredentialStore()
        return self._credentials

    # -- transport --------------------------------------------------------------------------
    def _credential(self, with_logins: bool) -> str:
        payload = None
        if with_logins:
            if self._logins is None:  # decoded once per client: a pull polls many times
                self._logins = self.credentials.logins(self.system, self.munge_socket)
            if self._logins:
                payload = json.dumps({"authorized_locations": self._logins})
        try:
            return munge.encode(payload, self.munge_socket)
        except munge.MungeError as e:
            raise GatewayError(e.what, e.hint) from None

    def request(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
                with_logins: bool = False):
        """Send ``method path`` to the first gateway that answers; return its decoded JSON."""
        timeout_errors, errors = _errors(self.session)
        failures = []
        for base in self.urls:
            url = f"{base}{path}"
            headers = {"authentication": self._credential(with_logins)}
            data = json.dumps(body) if body is not None else ("" if method == "POST" else None)
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                resp = self.session.request(method, url, headers=headers, data=data, params=params,
                                            timeout=self.timeout, proxies=http.proxies_for(url),
                                            allow_redirects=False)
            except timeout_errors:
                failures.append(f"{base}: no answer within {self.timeout} s")
                self._trace(f"{method} {url}: timed out")
                continue
            except errors as e:
                failures.append(f"{base}: {http.reason(e)}")
                self._trace(f"{method} {url}: {http.reason(e)}")
                continue
            self._trace(f"{method} {url} -> {resp.status_code} {resp.text[:2000].strip()}")
            if resp.status_code in FAILOVER_STATUSES:
                failures.append(f"{base}: HTTP {resp.status_code}")
                continue
            return self._decode(resp, base)
        raise GatewayUnavailable("can't reach the image gateway: " + "; ".join(failures),
                                 f"start shifter-gateway, or check imageGateway={' '.join(self.urls)} "
                                 "in udiRoot.conf; images given as id:<id> need no gateway")

    def _decode(self, resp, base: str):
        try:
            data = json.loads(resp.content[:MAX_RESPONSE])
        except ValueError:
            data = None
        if resp.status_code == 200 and data is not None:
            return data
        hint = None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            error = data["error"][:2000]
            message = data.get("message")
            # our gateway's message is "ERROR (hint: HINT): URL" (shifter.errors.describe, then the URL)
            if isinstance(message, str) and message.startswith(error + " (hint: "):
                hint = message[len(error) + 8:].rsplit("): ", 1)[0][:500]
        else:
            error = f"the gateway {base} answered HTTP {resp.status_code}" + \
                ("" if resp.status_code != 200 else " with a body that is not JSON")
        if resp.status_code == 401 and hint is None:
            hint = "is munge running, with the same key as the gateway's?"
        raise _STATUS_ERRORS.get(resp.status_code, GatewayError)(error, hint)

    def _trace(self, line: str) -> None:
        if self.trace:
            self.trace(line)

    def _path(self, op: str, ref: ImageRef | None = None) -> str:
        system = quote(self.system, safe="")
        if ref is None:
            return f"/api/{op}/{system}/"
        return f"/api/{op}/{system}/{quote(ref.type, safe='')}/{quote(ref.tag, safe='/:')}/"

    # -- operations -------------------------------------------------------------------------
    def lookup(self, ref: ImageRef) -> ImageRecord:
        return ImageRecord.from_json(self.request("GET", self._path("lookup", ref)))

    def images(self) -> list[ImageRecord]:
        data = self.request("GET", self._path("list"))
        items = data.get("list") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise GatewayError("the gateway's image list is not {\"list\": [...]}")
        return [ImageRecord.from_json(item) for item in items]

    @staticmethod
    def _acl_body(users: tuple[int, ...], groups: tuple[int, ...]) -> dict:
        body = {}
        if users:
            body["allowed_uids"] = ",".join(str(u) for u in users)
        if groups:
            body["allowed_gids"] = ",".join(str(g) for g in groups)
        return body

    def pull(self, ref: ImageRef, users: tuple[int, ...] = (), groups: tuple[int, ...] = ()) -> ImageRecord:
        """Ask for a pull (or its progress: asking again returns the same request)."""
        body = self._acl_body(users, groups)
        return ImageRecord.from_json(self.request("POST", self._path("pull", ref), body or None,
                                                  with_logins=True))

    def doimport(self, path: str, ref: ImageRef, fmt: str = "squashfs", users: tuple[int, ...] = (),
                 groups: tuple[int, ...] = ()) -> ImageRecord:
        body = {"filepath": path, "format": fmt, **self._acl_body(users, groups)}
        return ImageRecord.from_json(self.request("POST", self._path("doimport", ref), body))

    def expire(self, ref: ImageRef) -> bool:
        data = self.request("GET", self._path("expire", ref))
        return bool(data.get("status")) if isinstance(data, dict) else False

    def autoexpire(self) -> list:
        data = self.request("GET", self._path("autoexpire"))
        status = data.get("status") if isinstance(data, dict) else None
        return status if isinstance(status, list) else []

    def queue(self) -> list[dict]:
        data = self.request("GET", self._path("queue"))
        items = data.get("list") if isinstance(data, dict) else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def metrics(self, limit: int = 10) -> list[dict]:
        data = self.request("GET", self._path("metrics"), params={"limit": str(limit)})
        return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []

    def wait(self, start: Callable[[], ImageRecord], on_status: Callable[[ImageRecord], None],
             interval: float = 0.5, sleep: Callable[[float], None] | None = None) -> ImageRecord:
        """Call ``start`` (a pull or import) until its record is READY or FAILURE."""
        sleep = sleep or time.sleep
        while True:
            record = start()
            on_status(record)
            if record.status in TERMINAL:
                return record
            sleep(interval)


def _errors(session) -> tuple[tuple, tuple]:
    """(timeout exceptions, transport exceptions) of ``session``'s kind."""
    if isinstance(session, lite.LiteSession):
        return (lite.LiteTimeout,), (lite.LiteError,)
    import requests  # start-up: ~90 ms; a plain-http lookup (the submission's) never gets here

    return (requests.Timeout,), (requests.RequestException,)


def lookup_id(config: UdiRootConfig, ref: ImageRef) -> str:
    """The id of docker image ``ref`` (what setupRoot and the SPANK plugin pin a job to).
    One request: over http.client when no proxy applies (see gateway_client.lite)."""
    session = lite.LiteSession() if lite.usable(config.imageGateway) else None
    record = GatewayClient(config, session=session).lookup(ref)
    if record.status != "READY" or not record.id or not _ID.match(record.id):
        raise GatewayError(f"can't resolve {ref}: the gateway gave no image id (status "
                           f"{record.status})", f"shifterimg pull {ref}")
    return record.id
