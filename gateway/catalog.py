"""The gateway's catalog of images, in SQLite (Shifter keeps it in MongoDB).

Tables::

    images   one row per image record: a pull or import request while it runs, then the
             image itself once READY (or its FAILURE / EXPIRED end).  At most one READY row
             per (system, image id, user ACL, group ACL): a public record and private ones
             (each with its own ACL) may share one image id, and so one pair of files.
    tags     (system, itype, tag, ACL) -> the READY row it names.  A tag names at most one
             record per ACL: the public record other users see, beside the private records
             of those who pulled it with an ACL.  Pulling a tag again with the same ACL moves
             that entry only.  A record's ``tag`` list in the API is the tags naming it.
    metrics  one row per lookup, when the gateway's ``Metrics`` is on.

ACLs are stored as JSON lists of sorted, distinct numbers (``[]`` for none), so "the same
ACL in another order" is the same text.  A lookup picks, among the records a tag names,
one the caller may read: the caller's own private record first (one whose ACL names the
caller's uid or one of their groups; the newest), then the public one.

Schema versions (``PRAGMA user_version``): 1 allowed one READY row per image id and one
row per tag; 2 is the above.  Opening a version-1 catalog first copies it to
``<CatalogFile>.v1`` (what an older gateway can open again), then migrates it in one
transaction (each tag keeps naming its record, under that record's ACL).

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
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from shifter.errors import ConfigError, ShifterError
from shifter.runtime import imagefiles
from shifter.runtime.imagefiles import Access

log = logging.getLogger("shifter.gateway")

IN_FLIGHT = ("INIT", "PENDING", "PULLING", "CONVERSION", "TRANSFER", "HASHING", "EXPIRING")
STATES = IN_FLIGHT + ("READY", "FAILURE", "EXPIRED")
API_FIELDS = ("id", "system", "itype", "tag", "status", "userACL", "groupACL", "ENV", "ENTRY",
              "WORKDIR", "LABELS", "last_pull", "status_message")
SCHEMA_VERSION = 2
PUBLIC_SHARED_NOTE = ("the same image (same id) is also public on this system: its content is "
                      "readable by every user, your record and its ACL stay as asked")

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
CREATE UNIQUE INDEX IF NOT EXISTS one_ready_per_acl ON images(system, image_id, user_acl, group_acl)
    WHERE status = 'READY';
CREATE INDEX IF NOT EXISTS by_pulltag ON images(system, itype, pulltag);
CREATE INDEX IF NOT EXISTS by_image_id ON images(system, image_id);
CREATE TABLE IF NOT EXISTS tags (
    system TEXT NOT NULL,
    itype TEXT NOT NULL,
    tag TEXT NOT NULL,
    acl TEXT NOT NULL,
    rid INTEGER NOT NULL REFERENCES images(rid) ON DELETE CASCADE,
    PRIMARY KEY (system, itype, tag, acl)
);
CREATE TABLE IF NOT EXISTS metrics (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL, uid INTEGER NOT NULL, system TEXT NOT NULL, type TEXT NOT NULL,
    tag TEXT NOT NULL, id TEXT NOT NULL, time REAL NOT NULL
);
"""

# version 1 -> 2: several READY rows per image id (one per ACL); tags keyed by ACL too
_MIGRATE_1_TO_2 = """
DROP INDEX IF EXISTS one_ready_per_id;
CREATE UNIQUE INDEX one_ready_per_acl ON images(system, image_id, user_acl, group_acl)
    WHERE status = 'READY';
CREATE INDEX IF NOT EXISTS by_image_id ON images(system, image_id);
CREATE TABLE tags_v2 (
    system TEXT NOT NULL,
    itype TEXT NOT NULL,
    tag TEXT NOT NULL,
    acl TEXT NOT NULL,
    rid INTEGER NOT NULL REFERENCES images(rid) ON DELETE CASCADE,
    PRIMARY KEY (system, itype, tag, acl)
);
INSERT INTO tags_v2 (system, itype, tag, acl, rid)
    SELECT tags.system, tags.itype, tags.tag, images.user_acl || '|' || images.group_acl, tags.rid
    FROM tags JOIN images USING (rid);
DROP TABLE tags;
ALTER TABLE tags_v2 RENAME TO tags;
"""


def acl_json(ids) -> str:
    """The stored form of an ACL: sorted distinct numbers as JSON."""
    return json.dumps(sorted({int(i) for i in ids}))


def acl_key(users, groups) -> str:
    """The tags table's key of an ACL (``[]|[]`` for public)."""
    return f"{acl_json(users)}|{acl_json(groups)}"


@dataclass(frozen=True)
class Requester:
    """Who asked for a pull/import (kept with the request: ACL decisions happen at its end)."""

    user: str
    uid: int
    gids: frozenset[int] = frozenset()
    admin: bool = False
    gid: int = -1  # the credential's gid (Shifter adds it to a requested group ACL); not stored


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
        return self.names(who)

    def names(self, who: Requester) -> bool:
        """Does this record's (private) ACL name ``who``, by uid or by one of their groups?"""
        return who.uid in self.user_acl or bool((who.gids | {who.gid}) & set(self.group_acl))

    @property
    def acl(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.user_acl, self.group_acl

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


def pick(records: list[Record], who: Requester | None) -> Record | None:
    """The record of a tag that ``who`` gets: their own private record (the newest), else the
    public one, else (root, admins) any other, newest first.  ``who=None``: public first."""
    newest = sorted(records, key=lambda r: (r.last_pull, r.rid), reverse=True)
    if who is not None:
        newest = [r for r in newest if r.readable_by(who)]
        own = [r for r in newest if r.private and r.names(who)]
        if own:
            return own[0]
    public = [r for r in newest if not r.private]
    if public:
        return public[0]
    return newest[0] if newest else None


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
            self._migrate(path)
        except sqlite3.Error as e:
            raise ConfigError(f"can't open the catalog {path}: {e}") from None

    def _migrate(self, path: str) -> None:
        """Create the schema, or bring an older catalog to ``SCHEMA_VERSION`` (one transaction)."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] == 1:
            self._backup(path + ".v1")  # outside the transaction (the lock file keeps others out)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            has_images = self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                         "name = 'images'").fetchone() is not None
            if version == 0 and has_images:
                version = 1  # an early catalog that never recorded its version
            if version > SCHEMA_VERSION:
                raise ConfigError(f"can't open the catalog {path}: schema version {version} is newer "
                                  f"than this gateway's ({SCHEMA_VERSION})",
                                  "run the newer gateway, or give this one another CatalogFile")
            if version == 1:
                for statement in _MIGRATE_1_TO_2.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
            # executescript would COMMIT: run the (idempotent) schema one statement at a time
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        if version == 1:
            log.info("catalog %s migrated from schema version 1 to %d", path, SCHEMA_VERSION)

    def _backup(self, dest: str) -> None:
        """A consistent copy of the catalog as it is (mode 0600), for a rollback."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        copy = sqlite3.connect(dest)
        try:
            self.db.backup(copy)
        finally:
            copy.close()

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

    def tag_records(self, system: str, itype: str, tag: str) -> list[Record]:
        """Every READY record ``tag`` names (the public one and private ones)."""
        return self._many("SELECT images.* FROM tags JOIN images USING (rid) WHERE tags.system = ? "
                          "AND tags.itype = ? AND tags.tag = ? AND images.status = 'READY' "
                          "ORDER BY images.rid", (system, itype, tag))

    def ready_by_tag(self, system: str, itype: str, tag: str,
                     who: Requester | None = None) -> Record | None:
        """The record of ``tag`` that ``who`` gets (see ``pick``); None if none they may read."""
        return pick(self.tag_records(system, itype, tag), who)

    def ready_for_acl(self, system: str, itype: str, tag: str, users=(), groups=()) -> Record | None:
        """The READY record ``tag`` names under exactly this ACL."""
        return self._one("SELECT images.* FROM tags JOIN images USING (rid) WHERE tags.system = ? "
                         "AND tags.itype = ? AND tags.tag = ? AND tags.acl = ? AND "
                         "images.status = 'READY'", (system, itype, tag, acl_key(users, groups)))

    def ready_by_id(self, system: str, image_id: str, users=None, groups=()) -> Record | None:
        """The READY record of image ``image_id`` with this ACL; ``users=None``: any record."""
        if users is None:
            return self._one("SELECT * FROM images WHERE system = ? AND image_id = ? AND "
                             "status = 'READY' ORDER BY rid LIMIT 1", (system, image_id))
        return self._one("SELECT * FROM images WHERE system = ? AND image_id = ? AND status = 'READY' "
                         "AND user_acl = ? AND group_acl = ?",
                         (system, image_id, acl_json(users), acl_json(groups)))

    def all_ready_by_id(self, system: str, image_id: str) -> list[Record]:
        return self._many("SELECT * FROM images WHERE system = ? AND image_id = ? AND "
                          "status = 'READY' ORDER BY rid", (system, image_id))

    def request_for_tag(self, system: str, itype: str, tag: str, users=(), groups=()) -> Record | None:
        """The pull/import of ``tag`` for this ACL in flight, if any."""
        return self._one("SELECT * FROM images WHERE system = ? AND itype = ? AND pulltag = ? AND "
                         "user_acl = ? AND group_acl = ? AND "
                         "status IN ('INIT', 'PENDING', 'PULLING', 'CONVERSION', 'TRANSFER', "
                         "'HASHING') ORDER BY rid DESC LIMIT 1",
                         (system, itype, tag, acl_json(users), acl_json(groups)))

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
        """A new request record (PENDING); earlier failed records of the tag (this ACL) are dropped."""
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM images WHERE system = ? AND itype = ? AND pulltag = ? AND "
                       "status = 'FAILURE' AND user_acl = ? AND group_acl = ?",
                       (system, itype, tag, acl_json(user_acl), acl_json(group_acl)))
            cur = db.execute(
                "INSERT INTO images (system, itype, pulltag, kind, status, user_acl, group_acl, "
                "format, filepath, requester, requester_uid, requester_gids, requester_admin, "
                "created, last_pull, heartbeat) VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (system, itype, tag, kind, acl_json(user_acl), acl_json(group_acl), fmt, filepath, requester.user, requester.uid,
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
                 publish: Callable[[Record, Access, bool], None]) -> Record:
        """Turn request ``rid`` into a READY image record, or fold it into the READY record with
        the same image id and ACL.  Other records of the image id (other ACLs) stay.

        ``publish(final_record, file_access, is_new)`` runs inside the transaction: it writes
        the image's files (.meta always; the squashfs for a new image) with ``file_access``,
        the union of the id's records' ACLs (public if one is: ``imagefiles.union_access``).
        If it raises, nothing is committed.
        """
        with self.transaction() as db:
            request = self.get(rid)
            if request is None:
                raise LookupError(f"request {rid} vanished")
            existing = self.ready_by_id(request.system, fields.image_id, request.user_acl,
                                        request.group_acl)
            now = time.time()
            values = (json.dumps(list(fields.env)), json.dumps(fields.entry), json.dumps(fields.cmd),
                      fields.workdir, json.dumps(fields.labels), now, now, expiration)
            if existing is None:
                target = rid
                db.execute("UPDATE images SET status = 'READY', image_id = ?, env = ?, entry = ?, "
                           "cmd = ?, workdir = ?, labels = ?, status_message = '', last_pull = ?, "
                           "heartbeat = ?, expiration = ? WHERE rid = ?", (fields.image_id, *values, rid))
            else:
                target = existing.rid
                db.execute("UPDATE images SET env = ?, entry = ?, cmd = ?, workdir = ?, labels = ?, "
                           "last_pull = ?, heartbeat = ?, expiration = ? WHERE rid = ?",
                           (*values, target))
                db.execute("DELETE FROM images WHERE rid = ?", (rid,))
            db.execute("INSERT OR REPLACE INTO tags (system, itype, tag, acl, rid) VALUES (?, ?, ?, ?, ?)",
                       (request.system, request.itype, request.pulltag,
                        acl_key(request.user_acl, request.group_acl), target))
            access = self._sync_notes(request.system, fields.image_id)
            final = self.get(target)
            publish(final, access, existing is None)
        return final

    def _sync_notes(self, system: str, image_id: str) -> Access:
        """The files' access of ``image_id`` from its READY records; tell the private records
        when a public one shares their files (and stop telling them when it is gone)."""
        records = self.all_ready_by_id(system, image_id)
        access = imagefiles.union_access(r.acl for r in records)
        public = records and access == ((), ())
        for r in records:
            if r.private and public and r.status_message != PUBLIC_SHARED_NOTE:
                self.db.execute("UPDATE images SET status_message = ? WHERE rid = ?",
                                (PUBLIC_SHARED_NOTE, r.rid))
            elif r.private and not public and r.status_message == PUBLIC_SHARED_NOTE:
                self.db.execute("UPDATE images SET status_message = '' WHERE rid = ?", (r.rid,))
        return access

    def expire(self, rid: int, files: Callable[[Record, Access | None], None]) -> Record:
        """READY -> EXPIRING -> (files) -> EXPIRED, tags dropped.

        ``files(record, access)``: with ``None``, remove the image's files (no other READY
        record has its id); else the id's other records remain and the files get ``access``.
        """
        self.set_status(rid, "EXPIRING")
        record = self.get(rid)
        others = [r for r in self.all_ready_by_id(record.system, record.image_id) if r.rid != rid] \
            if record.image_id else []
        try:
            files(record, imagefiles.union_access(r.acl for r in others) if others else None)
        except (OSError, ShifterError) as e:
            self.set_status(rid, "FAILURE", f"can't expire: {e}")
            raise
        with self.transaction() as db:
            db.execute("DELETE FROM tags WHERE rid = ?", (rid,))
            db.execute("UPDATE images SET status = 'EXPIRED', status_message = '', heartbeat = ? "
                       "WHERE rid = ?", (time.time(), rid))
            if record.image_id:
                self._sync_notes(record.system, record.image_id)
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
