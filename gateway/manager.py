"""The gateway's operations behind the REST API: sessions, lookup, list, pull, import, expire.

Each request names a system (a ``Platforms`` key) and carries a munge credential in the
``authentication`` header, verified against that system's munge socket.  The credential's
uid is the caller; its payload may hold registry logins:
``{"authorized_locations": {"<location>|default": "user:password"}}``.

Pulling (Shifter's semantics, made precise; imports follow rules 1, 2 and 4):

1. a pull of a tag already in flight joins it (one conversion however many ask);
2. a caller re-asking right after *their* pull of that tag finished (a polling client:
   Shifter's and ours ask again every 0.5 s) gets that outcome, READY or FAILURE, for
   ``POLL_HOLD`` seconds;
3. a READY record of the tag with the requested ACL, pulled less than ``PullUpdateTimeout``
   ago (or pinned by digest: its content cannot change), is returned as it is;
4. anything else starts a new pull.  If the registry serves an image that is already here
   (same id), nothing is converted: the record of that id with the requested ACL gets the
   tag (a new record if there is none).

ACLs (Shifter's): a pull or import with ``allowed_uids`` adds the caller's uid to them, one
with ``allowed_gids`` the caller's gid, so the caller keeps access to what they asked for.
The requested ACL (sorted, distinct) identifies the request: a private pull of a tag that is
public here makes a private record beside the public one (no user can take a public tag
away from the others), and asking again with the same ids in another order is the same
request.  ``lookup`` gives the caller their own private record first, else the public one
(``catalog.pick``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import threading
import time
from dataclasses import dataclass, field

from shifter.errors import UsageError
from shifter import munge
from shifter.gateway.catalog import Catalog, Record, Requester
from shifter.gateway.config import GatewayConfig, Platform
from shifter.gateway.errors import BadRequest, Forbidden, NotFound, Unauthorized
from shifter.gateway.userfile import open_import_file
from shifter.gateway.worker import Worker, image_source, image_files_after_expiry
from shifter.runtime.image import parse_image

log = logging.getLogger("shifter.gateway")

POLL_HOLD = 10.0  # seconds a finished pull answers its requester's polls
TYPES = ("docker", "custom")
MAX_IDS = 1024
MAX_ID = 2**32 - 2
MAX_LOCATIONS = 64


@dataclass(frozen=True)
class Session:
    system: str
    requester: Requester
    tokens: dict = field(default_factory=dict)  # location -> (user, password)


def normalize_tag(itype: str, tag: str) -> str:
    """Validate an image type and tag from a URL; a docker tag without ':' means ':latest'."""
    if itype not in TYPES:
        raise BadRequest(f"image type {itype[:40]!r} is not supported here (known: {', '.join(TYPES)})")
    try:
        normal = parse_image(f"docker:{tag}").tag
    except UsageError as e:
        raise BadRequest(e.what.replace("'docker:", "'", 1), e.hint) from None
    if itype != "docker" and "@" in normal:
        raise BadRequest(f"invalid image {itype}:{tag[:200]!r}: a digest names a registry's image, "
                         "not an imported one", f"use {itype}:NAME:TAG")
    return normal


def parse_ids(value, what: str) -> tuple[int, ...]:
    """``allowed_uids``/``allowed_gids``: "1000,1001" (Shifter) or a JSON list of numbers."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = [x.strip() for x in value.split(",") if x.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise BadRequest(f"{what} must be a comma-separated string of numeric ids")
    ids = []
    for item in items[:MAX_IDS + 1]:
        if isinstance(item, bool) or not (isinstance(item, int) or (isinstance(item, str) and item.isdigit())):
            raise BadRequest(f"{what}: {str(item)[:40]!r} is not a numeric id")
        number = int(item)
        if not 0 <= number <= MAX_ID:
            raise BadRequest(f"{what}: {number} is out of range")
        ids.append(number)
    if len(ids) > MAX_IDS:
        raise BadRequest(f"{what}: more than {MAX_IDS} ids")
    return tuple(sorted(set(ids)))


def request_acl(who: Requester, users: tuple[int, ...], groups: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ACL a request asks for: the caller's uid joins a user ACL, their gid a group ACL."""
    if users:
        users = tuple(sorted(set(users) | {who.uid}))
    if groups and who.gid >= 0:
        groups = tuple(sorted(set(groups) | {who.gid}))
    return tuple(sorted(set(users))), tuple(sorted(set(groups)))


def _parse_tokens(payload: bytes) -> dict:
    if not payload.strip():
        return {}
    try:
        data = json.loads(payload)
        locations = data["authorized_locations"]
        if not isinstance(locations, dict) or len(locations) > MAX_LOCATIONS:
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the munge credential's payload is not "
                         '{"authorized_locations": {"LOCATION": "USER:PASSWORD"}}') from None
    tokens = {}
    for location, cred in locations.items():
        if not isinstance(location, str) or not isinstance(cred, str) or ":" not in cred:
            raise BadRequest(f"authorized_locations: the login for {str(location)[:60]!r} is not USER:PASSWORD")
        user, _, password = cred.partition(":")
        tokens[location] = (user, password)
    return tokens


class ImageManager:
    def __init__(self, config: GatewayConfig, catalog: Catalog):
        self.config = config
        self.catalog = catalog
        self.worker = Worker(config, catalog, on_done=self._remember)
        self._recent: dict[tuple, tuple[int, float]] = {}
        self._recent_lock = threading.Lock()

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    # -- sessions ---------------------------------------------------------------------------
    def platform(self, system: str) -> Platform:
        platform = self.config.platforms.get(system)
        if platform is None:
            raise NotFound(f"unknown system {system[:60]!r} (this gateway serves: "
                           f"{', '.join(self.config.platforms)})",
                           "check 'system' in udiRoot.conf")
        return platform

    def session(self, system: str, credential: str | None) -> Session:
        platform = self.platform(system)
        if not credential:
            raise Unauthorized("no credential: the request has no 'authentication' header",
                               "send a munge credential (munge -n) in the 'authentication' header")
        try:
            cred = munge.decode(credential.strip(), platform.munge_socket)
        except munge.MungeError as e:
            raise Unauthorized(f"munge credential refused: {e.what}",
                               "make a new credential for every request (munge -n)") from None
        try:
            user = pwd.getpwuid(cred.uid).pw_name
            gids = frozenset(os.getgrouplist(user, cred.gid))
        except KeyError:
            user, gids = f"uid{cred.uid}", frozenset({cred.gid})
        requester = Requester(user, cred.uid, gids | {cred.gid}, user in platform.admins, cred.gid)
        return Session(system, requester, _parse_tokens(cred.payload))

    def public_session(self, system: str) -> Session:
        """For the unauthenticated queue view: sees public requests only."""
        self.platform(system)
        return Session(system, Requester("", -1))

    # -- queries ----------------------------------------------------------------------------
    def lookup(self, session: Session, itype: str, tag: str) -> Record:
        tag = normalize_tag(itype, tag)
        record = self.catalog.ready_by_tag(session.system, itype, tag, session.requester)
        if record is None:
            raise NotFound(f"image not found: {itype}:{tag} is not on system {session.system}",
                           f"pull it first: shifterimg pull {itype}:{tag}")
        self.catalog.touch_expiration(record.rid, time.time() + self.config.expiration_timeout)
        if self.config.metrics:
            self.catalog.add_metric(session.requester.user, session.requester.uid, session.system,
                                    itype, tag, record.image_id)
        return record

    def images(self, session: Session) -> list[Record]:
        return [r for r in self.catalog.list_ready(session.system) if r.readable_by(session.requester)]

    def queue(self, session: Session) -> list[dict]:
        return [{"status": r.status, "image": r.pulltag} for r in self.catalog.list_queue(session.system)
                if r.readable_by(session.requester)]

    def metrics(self, session: Session, limit: int) -> list[dict]:
        self._admin(session, "read the metrics")
        if not self.config.metrics:
            return []
        return self.catalog.metrics(session.system, limit)

    # -- pull and import --------------------------------------------------------------------
    @staticmethod
    def _poll_key(system: str, itype: str, tag: str, uid: int, users: tuple, groups: tuple,
                  tokens: dict) -> tuple:
        """Identifies "the same request again": same caller, image, ACL and registry logins."""
        logins = hashlib.sha256(json.dumps(sorted(tokens.items())).encode()).hexdigest()
        return (system, itype, tag, uid, tuple(users), tuple(groups), logins)

    def _remember(self, request: Record, outcome: Record, key: tuple) -> None:
        with self._recent_lock:
            now = time.time()
            for old in [k for k, (_, t) in self._recent.items() if now - t > POLL_HOLD]:
                del self._recent[old]
            self._recent[key] = (outcome.rid, now)

    def _recent_outcome(self, key: tuple) -> Record | None:
        with self._recent_lock:
            found = self._recent.get(key)
        if found is None or time.time() - found[1] > POLL_HOLD:
            return None
        record = self.catalog.get(found[0])
        return record if record is not None and record.status in ("READY", "FAILURE") else None

    def pull(self, session: Session, itype: str, tag: str, users: tuple[int, ...] = (),
             groups: tuple[int, ...] = ()) -> Record:
        tag = normalize_tag(itype, tag)
        if itype != "docker":
            raise BadRequest(f"can't pull {itype}:{tag}: only docker images are pulled "
                             "(custom images are imported)")
        source = image_source(self.config, tag)  # an unknown registry is refused now, not in a worker
        who = session.requester
        users, groups = request_acl(who, users, groups)
        with self.catalog.lock:
            running = self.catalog.request_for_tag(session.system, itype, tag, users, groups)
            if running is not None and running.readable_by(who):
                return running
            key = self._poll_key(session.system, itype, tag, who.uid, users, groups, session.tokens)
            recent = self._recent_outcome(key)
            if recent is not None:
                return recent
            ready = self.catalog.ready_for_acl(session.system, itype, tag, users, groups)
            if ready is not None and ready.readable_by(who) and (
                    source.pinned or time.time() - ready.last_pull < self.config.pull_update_timeout):
                return ready
            record = self.catalog.create_request(session.system, itype, tag, who, users, groups)
        log.info("pull of %s:%s queued for %s (uid %d)", itype, tag, who.user, who.uid)
        self.worker.submit(record.rid, session.tokens, key)
        return record

    def doimport(self, session: Session, itype: str, tag: str, filepath, fmt,
                 users: tuple[int, ...] = (), groups: tuple[int, ...] = ()) -> Record:
        tag = normalize_tag(itype, tag)
        who = session.requester
        if not (who.admin or who.uid == 0 or self.config.may_import(who.user)):
            raise Forbidden(f"can't import {itype}:{tag}: user {who.user} may not import images "
                            f"on system {session.system}", "ask the site to add you to ImportUsers")
        if fmt != "squashfs":
            raise BadRequest(f"can't import {itype}:{tag}: format {str(fmt)[:20]!r} is not supported "
                             "(only squashfs)")
        if not isinstance(filepath, str) or not filepath.startswith("/") or "\0" in filepath \
                or len(filepath) > 4096:
            raise BadRequest("can't import: filepath must be an absolute path")
        os.close(open_import_file(filepath, who, self.config.image_size_limit))  # as the user
        users, groups = request_acl(who, users, groups)
        with self.catalog.lock:
            running = self.catalog.request_for_tag(session.system, itype, tag, users, groups)
            if running is not None and running.readable_by(who):
                return running
            key = self._poll_key(session.system, itype, tag, who.uid, users, groups, {})
            recent = self._recent_outcome(key)
            if recent is not None:
                return recent
            record = self.catalog.create_request(session.system, itype, tag, who, users, groups,
                                                 kind="import", filepath=filepath)
        log.info("import of %s as %s:%s queued for %s", filepath, itype, tag, who.user)
        self.worker.submit(record.rid, None, key)
        return record

    # -- expiry -----------------------------------------------------------------------------
    def _admin(self, session: Session, what: str) -> None:
        who = session.requester
        if not (who.admin or who.uid == 0):
            raise Forbidden(f"can't {what}: user {who.user} is not an admin of system {session.system}",
                            "admins are listed in imagemanager.json (Platforms.SYSTEM.admins)")

    def _expire(self, record: Record) -> Record:
        platform = self.platform(record.system)
        with self.worker.id_lock(record.image_id):
            expired = self.catalog.expire(record.rid,
                                          lambda r, access: image_files_after_expiry(platform, r, access))
        log.info("expired %s:%s (%s)", record.itype, record.pulltag, record.image_id)
        return expired

    def expire(self, session: Session, itype: str, tag: str) -> bool:
        tag = normalize_tag(itype, tag)
        self._admin(session, f"expire {itype}:{tag}")
        records = self.catalog.tag_records(session.system, itype, tag)
        if not records:
            raise NotFound(f"image not found: {itype}:{tag} is not on system {session.system}")
        for record in records:  # the public record and the private ones the tag names
            self._expire(record)
        return True

    def autoexpire(self, session: Session) -> list[str]:
        """Expire images unused for ImageExpirationTimeout; drop stale failed/stuck requests."""
        self._admin(session, "autoexpire images")
        now = time.time()
        expired = []
        for record in self.catalog.list_ready(session.system):
            if record.expiration is not None and record.expiration < now:
                self._expire(record)
                expired.append(record.image_id)
        stale = max(self.config.pull_update_timeout, 3600)
        for record in self.catalog.list_queue(session.system):
            if record.status == "FAILURE" and now - record.heartbeat > self.config.pull_update_timeout:
                self.catalog.delete(record.rid)
            elif record.status != "FAILURE" and now - record.heartbeat > stale:
                self.catalog.fail(record.rid, f"no progress for {stale} s: abandoned")
        return expired
