"""The gateway's catalog of images, in SQLite (Shifter keeps it in MongoDB).

Tables::

    images   one row per image record: a pull or import request while it runs, then the
             image itself once READY (or its FAILURE / EXPIRED end).  At most one READY row
             per (system, image id).
    tags     (system, itype, tag) -> the READY row it names.  A tag names one image; pulling
             it again moves it.  A record's ``tag`` list in the API is the tags naming it.
    metrics  one row per lookup, when the gateway's ``Metrics`` is on.

States (Shifter's): INIT -> PENDING -> PULLING -> CONVERSION -> TRANSFER -> READY, or
FAILURE; an import runs PENDING -> HASHING -> TRANSFER -> READY; expiry EXPIRING -> EXPIRED.

One connection, serialised by a lock, in WAL mode with ``synchronous=FULL``: a state that
was reported to a client survives a crash.  ``Catalog`` also holds an exclusive lock file
next to the database, so two gateways never share (and "recover") one catalog.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from shifter.errors import ConfigError

IN_FLIGHT = ("INIT", "PENDING", "PULLING", "CONVERSION", "TRANSFER", "HASHING", "EXPIRING")
STATES = IN_FLIGHT + ("READY", "FAILURE", "EXPIRED")
API_FIELDS = ("id", "system", "itype", "tag", "status", "userACL", "groupACL", "ENV", "ENTRY",
              "WORKDIR", "LABELS", "last_pull", "status_message")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    system TEXT NOT NULL,
    itype TEXT NOT NULL,
    pulltag TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'pull',
    image_id TEXT,
    status TEXT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    user_acl TEXT NOT NULL DEFAULT '[]',
    group_acl TEXT NOT NULL DEFAULT '[]',
    env TEXT NOT NULL DEFAULT '[]',
    entry TEXT NOT NULL DEFAULT 'null',
    cmd TEXT NOT NULL DEFAULT 'null',
    workdir TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    format TEXT NOT NULL DEFAULT 'squashfs',
    filepath TEXT,
    requester TEXT NOT NULL DEFAULT '',
    requester_uid INTEGER NOT NULL DEFAULT -1,
    requester_gids TEXT NOT NULL DEFAULT '[]',
    requester_admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_pull REAL NOT NULL,
    heartbeat REAL NOT NULL,
    expiration REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_ready_per_id ON images(system, image_id) WHERE status = 'READY';
CREATE INDEX IF NOT EXISTS by_pulltag ON images(system, itype, pulltag);
CREATE TABLE IF NOT EXISTS tags (
    system TEXT NOT NULL,
    itype TEXT NOT NULL,
    tag TEXT NOT NULL,
    rid INTEGER NOT NULL REFERENCES images(rid) ON DELETE CASCADE,
    PRIMARY KEY (system, itype, tag)
);
CREATE TABLE IF NOT EXISTS metrics (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL, uid INTEGER NOT NULL, system TEXT NOT NULL, type TEXT NOT NULL,
    tag TEXT NOT NULL, id TEXT NOT NULL, time REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Requester:
    """Who asked for a pull/import (kept with the request: ACL decisions happen at its end)."""

    user: str
    uid: int
    gids: frozenset[int] = frozenset()
    admin: bool = False


@dataclass(frozen=True)
class Record:
    rid: int
    system: str
    itype: str
    pulltag: str
    kind: str
    image_id: str | None
    status: str
    status_message: str
    user_acl: tuple[int, ...]
    group_acl: tuple[int, ...]
    env: tuple[str, ...]
    entry: list | str | None
    cmd: list | str | None
    workdir: str | None
    labels: dict
    format: str
    filepath: str | None
    requester: Requester
    created: float
    last_pull: float
    heartbeat: float
    expiration: float | None
    tags: tuple[str, ...] = field(default=())

    @property
    def private(self) -> bool:
        return bool(self.user_acl or self.group_acl)

    def readable_by(self, who: Requester) -> bool:
        """May ``who`` see and use this image?  Public images, root and admins: always."""
        if not self.private or who.uid == 0 or who.admin:
            return True
        return who.uid in self.user_acl or bool(who.gids & set(self.group_acl))

    def api(self) -> dict:
        """The record as Shifter's API returns it: exactly ``API_FIELDS``."""
        return {
            "id": self.image_id,
            "system": self.system,
            "itype": self.itype,
            "tag": list(self.tags),
            "status": self.status,
            "userACL": list(self.user_acl),
            "groupACL": list(self.group_acl),
            "ENV": list(self.env),
            "ENTRY": self.entry,
            "WORKDIR": self.workdir,
            "LABELS": self.labels,
            "last_pull": self.last_pull,
            "status_message": self.status_message,
        }


@dataclass(frozen=True)
class ImageFields:
    """What a finished pull/import learned about the image."""

    image_id: str
    env: tuple[str, ...] = ()
    entry: list | str | None = None
    cmd: list | str | None = None
    workdir: str | None = None
    labels: dict = field(default_factory=dict)


def decide_acl(existing: Record | None, request: Record) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """The ACL an image gets when ``request`` completes on it: (users, groups, note).

    * A new image gets the requested ACL (none: public).
    * An existing image takes the requested ACL when the requester may change it: an admin,
      root, or someone the image's own (private) ACL already admits; or when nothing changes.
    * A public image stays public when a plain user asks for an ACL: the content is already
      available to everyone here (only an admin can make it private).
    * A private image the requester could not see: they fetched the same content from the
      registry with their own access, so they are added to its user ACL; nothing else changes.
    """
    return acl_for(existing, request.requester, request.user_acl, request.group_acl)


def acl_for(existing: Record | None, who: Requester, users: tuple[int, ...],
            groups: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """``decide_acl`` for requester ``who`` asking for ACL (``users``, ``groups``)."""
    wanted = (tuple(sorted(set(users))), tuple(sorted(set(groups))))
    if existing is None:
        return wanted[0], wanted[1], ""
    current = (existing.user_acl, existing.group_acl)
    if current == wanted or who.admin or who.uid == 0 or (existing.private and existing.readable_by(who)):
        return wanted[0], wanted[1], ""
    if not existing.private:
        return (), (), ("the image is already public on this system: the requested ACL was not "
                        "applied (only an admin can restrict it)")
    return (tuple(sorted(set(existing.user_acl) | {who.uid})), existing.group_acl,
            f"uid {who.uid} was added to the image's ACL")


class Catalog:
    def __init__(self, path: str, exclusive: bool = True):
        self.path = path
        self._lock = threading.RLock()
        self.lock = self._lock  # callers hold it to make a read-then-write atomic
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lockfile = None
        if exclusive:
            self._lockfile = open(path + ".lock", "a+")
            try:
                fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lockfile.seek(0)
                holder = self._lockfile.read().strip() or "?"
                self._lockfile.close()
                raise ConfigError(f"can't open the catalog {path}: another gateway (pid {holder}) "
                                  "is using it", "stop it first, or give this one another CatalogFile") from None
            self._lockfile.seek(0)
            self._lockfile.truncate()
            self._lockfile.write(f"{os.getpid()}\n")
            self._lockfile.flush()
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            os.chmod(path, 0o600)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"can't open the catalog {path}: schema version {version} is newer "
                                  f"than this gateway's ({SCHEMA_VERSION})")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise ConfigError(f"can't open the catalog {path}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self.db.close()
            if self._lockfile:
                self._lockfile.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- reading --------------------------------------------------------------------------
    def _record(self, row: sqlite3.Row) -> Record:
        tags = tuple(r[0] for r in self.db.execute(
            "SELECT tag FROM tags WHERE rid = ? ORDER BY tag", (row["rid"],)))
        return Record(
            rid=row["rid"], system=row["system"], itype=row["itype"], pulltag=row["pulltag"],
            kind=row["kind"], image_id=row["image_id"], status=row["status"],
            status_message=row["status_message"], user_acl=tuple(json.loads(row["user_acl"])),
            group_acl=tuple(json.loads(row["group_acl"])), env=tuple(json.loads(row["env"])),
            entry=json.loads(row["entry"]), cmd=json.loads(row["cmd"]), workdir=row["workdir"],
            labels=json.loads(row["labels"]), format=row["format"], filepath=row["filepath"],
            requester=Requester(row["requester"], row["requester_uid"],
                                frozenset(json.loads(row["requester_gids"])), bool(row["requester_admin"])),
            created=row["created"], last_pull=row["last_pull"], heartbeat=row["heartbeat"],
            expiration=row["expiration"], tags=tags)

    def _one(self, sql: str, args: tuple) -> Record | None:
        with self._lock:
            row = self.db.execute(sql, args).fetchone()
            return self._record(row) if row else None

    def _many(self, sql: str, args: tuple) -> list[Record]:
        with self._lock:
            return [self._record(row) for row in self.db.execute(sql, args).fetchall()]

    def get(self, rid: int) -> Record | None:
        return self._one("SELECT * FROM images WHERE rid = ?", (rid,))

    def ready_by_tag(self, system: str, itype: str, tag: str) -> Record | None:
        return self._one("SELECT images.* FROM tags JOIN images USING (rid) WHERE tags.system = ? "
                         "AND tags.itype = ? AND tags.tag = ? AND images.status = 'READY'",
                         (system, itype, tag))

    def ready_by_id(self, system: str, image_id: str) -> Record | None:
        return self._one("SELECT * FROM images WHERE system = ? AND image_id = ? AND status = 'READY'",
                         (system, image_id))

    def request_for_tag(self, system: str, itype: str, tag: str) -> Record | None:
        """The pull/import of ``tag`` in flight, if any."""
        return self._one("SELECT * FROM images WHERE system = ? AND itype = ? AND pulltag = ? AND "
                         "status IN ('INIT', 'PENDING', 'PULLING', 'CONVERSION', 'TRANSFER', "
                         "'HASHING') ORDER BY rid DESC LIMIT 1", (system, itype, tag))

    def list_ready(self, system: str) -> list[Record]:
        return self._many("SELECT * FROM images WHERE system = ? AND status = 'READY' ORDER BY rid",
                          (system,))

    def list_queue(self, system: str) -> list[Record]:
        return self._many("SELECT * FROM images WHERE system = ? AND status NOT IN ('READY', "
                          "'EXPIRED') ORDER BY rid", (system,))

    def in_flight(self) -> list[Record]:
        marks = ",".join("?" * len(IN_FLIGHT))
        return self._many(f"SELECT * FROM images WHERE status IN ({marks}) ORDER BY rid", IN_FLIGHT)

    # -- writing --------------------------------------------------------------------------
    def create_request(self, system: str, itype: str, tag: str, requester: Requester,
                       user_acl: tuple[int, ...] = (), group_acl: tuple[int, ...] = (),
                       kind: str = "pull", filepath: str | None = None,
                       fmt: str = "squashfs") -> Record:
        """A new request record (PENDING); earlier unfinished records of the tag are dropped."""
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM images WHERE system = ? AND itype = ? AND pulltag = ? AND "
                       "status = 'FAILURE'", (system, itype, tag))
            cur = db.execute(
                "INSERT INTO images (system, itype, pulltag, kind, status, user_acl, group_acl, "
                "format, filepath, requester, requester_uid, requester_gids, requester_admin, "
                "created, last_pull, heartbeat) VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (system, itype, tag, kind, json.dumps(sorted(set(user_acl))),
                 json.dumps(sorted(set(group_acl))), fmt, filepath, requester.user, requester.uid,
                 json.dumps(sorted(requester.gids)), int(requester.admin), now, now, now))
            rid = cur.lastrowid
        return self.get(rid)

    def set_status(self, rid: int, status: str, message: str | None = None) -> None:
        assert status in STATES, status
        with self._lock:
            if message is None:
                self.db.execute("UPDATE images SET status = ?, heartbeat = ? WHERE rid = ?",
                                (status, time.time(), rid))
            else:
                self.db.execute("UPDATE images SET status = ?, status_message = ?, heartbeat = ? "
                                "WHERE rid = ?", (status, message[:2000], time.time(), rid))

    def set_message(self, rid: int, message: str) -> None:
        with self._lock:
            self.db.execute("UPDATE images SET status_message = ?, heartbeat = ? WHERE rid = ?",
                            (message[:2000], time.time(), rid))

    def fail(self, rid: int, message: str) -> None:
        with self._lock:
            self.db.execute("UPDATE images SET status = 'FAILURE', status_message = ?, "
                            "heartbeat = ?, last_pull = ? WHERE rid = ?",
                            (message[:2000], time.time(), time.time(), rid))

    def delete(self, rid: int) -> None:
        with self._lock:
            self.db.execute("DELETE FROM images WHERE rid = ?", (rid,))

    def touch_expiration(self, rid: int, when: float) -> None:
        with self._lock:
            self.db.execute("UPDATE images SET expiration = ? WHERE rid = ?", (when, rid))

    def complete(self, rid: int, fields: ImageFields, expiration: float,
                 publish: Callable[[Record, bool], None]) -> Record:
        """Turn request ``rid`` into a READY image, or fold it into the READY image it duplicates.

        ``publish(final_record, is_new)`` runs inside the transaction, after the ACL decision:
        it writes the image's files (.meta always; the squashfs for a new image).  If it raises,
        nothing is committed.
        """
        with self.transaction() as db:
            request = self.get(rid)
            if request is None:
                raise LookupError(f"request {rid} vanished")
            existing = self.ready_by_id(request.system, fields.image_id)
            users, groups, note = decide_acl(existing, request)
            now = time.time()
            values = (json.dumps(list(users)), json.dumps(list(groups)), json.dumps(list(fields.env)),
                      json.dumps(fields.entry), json.dumps(fields.cmd), fields.workdir,
                      json.dumps(fields.labels), note, now, now, expiration)
            if existing is None:
                target = rid
                db.execute("UPDATE images SET status = 'READY', image_id = ?, user_acl = ?, "
                           "group_acl = ?, env = ?, entry = ?, cmd = ?, workdir = ?, labels = ?, "
                           "status_message = ?, last_pull = ?, heartbeat = ?, expiration = ? "
                           "WHERE rid = ?", (fields.image_id, *values, rid))
            else:
                target = existing.rid
                db.execute("UPDATE images SET user_acl = ?, group_acl = ?, env = ?, entry = ?, "
                           "cmd = ?, workdir = ?, labels = ?, status_message = ?, last_pull = ?, "
                           "heartbeat = ?, expiration = ? WHERE rid = ?", (*values, target))
                db.execute("DELETE FROM images WHERE rid = ?", (rid,))
            db.execute("INSERT OR REPLACE INTO tags (system, itype, tag, rid) VALUES (?, ?, ?, ?)",
                       (request.system, request.itype, request.pulltag, target))
            final = self.get(target)
            publish(final, existing is None)
        return final

    def expire(self, rid: int, remove_files: Callable[[Record], None]) -> Record:
        """READY -> EXPIRING -> (files removed) -> EXPIRED, tags dropped."""
        self.set_status(rid, "EXPIRING")
        record = self.get(rid)
        try:
            remove_files(record)
        except OSError as e:
            self.set_status(rid, "FAILURE", f"can't expire: {e}")
            raise
        with self.transaction() as db:
            db.execute("DELETE FROM tags WHERE rid = ?", (rid,))
            db.execute("UPDATE images SET status = 'EXPIRED', status_message = '', heartbeat = ? "
                       "WHERE rid = ?", (time.time(), rid))
        return replace(self.get(rid), tags=())

    # -- metrics --------------------------------------------------------------------------
    def add_metric(self, user: str, uid: int, system: str, itype: str, tag: str, image_id: str) -> None:
        with self._lock:
            self.db.execute("INSERT INTO metrics (user, uid, system, type, tag, id, time) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (user, uid, system, itype, tag, image_id, time.time()))

    def metrics(self, system: str, limit: int) -> list[dict]:
        with self._lock:
            rows = self.db.execute("SELECT user, uid, system, type, tag, id, time FROM metrics "
                                   "WHERE system = ? ORDER BY n DESC LIMIT ?", (system, limit)).fetchall()
        return [dict(row) for row in reversed(rows)]
