"""The gateway's workers: pull (registry -> layers -> flatten -> squashfs) and import.

A pull record moves PENDING -> PULLING (resolve the manifest, download layers into the
cache) -> CONVERSION (flatten into ``ExpandDirectory``, mksquashfs into a temporary file
in ``imageDir``) -> TRANSFER (write ``<id>.meta``, rename ``<id>.squashfs`` into place) ->
READY.  An import runs PENDING -> HASHING -> TRANSFER -> READY.  Any failure ends it in
FAILURE with the reason in ``status_message``; temporary files and directories are
removed on every path (and, after a crash, at the next start).

One conversion per image: work on an image id holds that id's lock, and a pull whose
manifest names an image that is already READY (same id) only adds its tag (and ACL).

Who may read the files follows ``runtime.imagefiles``: the union of the ACLs of the id's
READY records (public as soon as one is), set on the temporary file before it is renamed
into place, and again on the files whenever the id's records change (a new record, an
expiry, and at start-up, so files written by an older gateway come into step).

Registry credentials of a pull live in memory only, with the queued job.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from shifter.gateway import flatten, squashfs
from shifter.gateway.catalog import IN_FLIGHT, Catalog, ImageFields, Record
from shifter.gateway.config import GatewayConfig, Location, Platform
from shifter.gateway.errors import NotFound, PullError
from shifter.gateway.registry import Registry
from shifter.gateway.userfile import open_import_file
from shifter.errors import ShifterError
from shifter.runtime import imagefiles
from shifter.runtime import meta as image_meta

log = logging.getLogger("shifter.gateway")

EXPAND_PREFIX = "shifter-expand-"
HASH_CHUNK = 4 * 1024 * 1024
MAX_ENV = 4096
MAX_LABELS = 1024


class Stopping(Exception):
    """The gateway is shutting down: leave the record in flight, it resumes at the next start."""


@dataclass(frozen=True)
class Source:
    """Where a docker tag comes from."""

    location: Location
    repo: str
    reference: str  # a tag, or a digest ``sha256:<hex>``

    @property
    def pinned(self) -> bool:
        """A digest reference: its content never changes."""
        return self.reference.startswith("sha256:")

    def __str__(self) -> str:
        return f"{self.location.url}/{self.repo}{'@' if self.pinned else ':'}{self.reference}"


def image_source(config: GatewayConfig, tag: str) -> Source:
    """``[HOST[:PORT]/]REPO:TAG`` or ``...REPO@sha256:<hex>`` (normalised) -> registry
    location, repository, tag or digest.

    The first component names the registry when it looks like a host (has a '.' or ':' or
    is ``localhost``), as in Docker; else the image comes from ``DefaultImageLocation``.
    """
    if "@" in tag:
        name, _, reference = tag.partition("@")
    else:
        name, _, reference = tag.rpartition(":")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        location_name, repo = first, rest
    else:
        location_name, repo = config.default_location, name
    location = config.locations.get(location_name)
    if location is None:
        raise NotFound(f"can't pull docker:{tag}: registry {location_name!r} is not one of this "
                       f"gateway's Locations ({', '.join(config.locations)})",
                       "ask the site to add it to imagemanager.json, or use a configured registry")
    if location.url.endswith("registry-1.docker.io") and "/" not in repo:
        repo = f"library/{repo}"
    return Source(location, repo, reference)


def check_layer_count(config: GatewayConfig, record: Record, layers: int) -> None:
    """Refuse an image of more layers than ImageLayerLimit, before anything is downloaded."""
    limit = config.image_layer_limit
    if limit and layers > limit:
        raise PullError(f"can't pull {record.itype}:{record.pulltag}: the image has {layers} layers, "
                        f"more than this gateway's ImageLayerLimit of {limit}",
                        "ask the site to raise ImageLayerLimit in imagemanager.json, or squash the image")


def credentials_for(tokens: dict[str, tuple[str, str]], location: str) -> tuple[str, str] | None:
    """The user's registry login for ``location`` (from ``shifterimg login``), else their default."""
    return tokens.get(location) or tokens.get("default")


def _clean_str(value, limit: int = 4096) -> str | None:
    if isinstance(value, str) and len(value) <= limit and not any(c in value for c in "\n\r\0"):
        return value
    return None


def image_fields(image_id: str, config: dict) -> ImageFields:
    """ENV, ENTRY, CMD, WORKDIR, LABELS of an image config; malformed values are dropped."""
    cfg = config.get("config") if isinstance(config.get("config"), dict) else {}
    env = []
    for item in cfg.get("Env") or []:
        item = _clean_str(item)
        if item and "=" in item and not item.startswith("=") and len(env) < MAX_ENV:
            env.append(item)

    def command(value):
        if isinstance(value, list) and value and all(isinstance(x, str) and "\0" not in x for x in value):
            return value
        return None

    labels = cfg.get("Labels") if isinstance(cfg.get("Labels"), dict) else {}
    labels = {k: v for k, v in list(labels.items())[:MAX_LABELS]
              if isinstance(k, str) and isinstance(v, str) and len(k) + len(v) < 8192}
    return ImageFields(image_id=image_id, env=tuple(env), entry=command(cfg.get("Entrypoint")),
                       cmd=command(cfg.get("Cmd")), workdir=_clean_str(cfg.get("WorkingDir")) or None,
                       labels=labels)


def image_paths(platform: Platform, image_id: str) -> tuple[str, str]:
    """(squashfs, meta) paths of image ``image_id`` in the platform's imageDir."""
    base = os.path.join(platform.image_dir, image_id)
    return base + ".squashfs", base + ".meta"


def write_meta(platform: Platform, record: Record, access: imagefiles.Access) -> None:
    """``<id>.meta`` of ``record``'s image, with the files' ``access`` (the union of the id's
    records' ACLs) as its USERACL/GROUPACL: the runtime admits exactly who may read it."""
    entry = tuple(record.entry) if isinstance(record.entry, list) else record.entry
    cmd = tuple(record.cmd) if isinstance(record.cmd, list) else record.cmd
    meta = image_meta.ImageMeta(format="squashfs", entry=entry, cmd=cmd, workdir=record.workdir,
                                env=record.env, user_acl=access[0], group_acl=access[1])
    image_meta.write(image_paths(platform, record.image_id)[1], meta)


def sync_image_files(platform: Platform, record: Record, access: imagefiles.Access) -> None:
    """Bring an image's files in step with ``access``: .meta rewritten, squashfs mode/ACL set."""
    try:
        write_meta(platform, record, access)
        imagefiles.apply([image_paths(platform, record.image_id)[0]], *access)
    except ShifterError as e:
        raise PullError(e.what, e.hint) from None


def image_files_after_expiry(platform: Platform, record: Record, access: imagefiles.Access | None) -> None:
    """``Catalog.expire``'s file step: remove the files (``access`` None: no record left),
    else narrow them to the remaining records' ``access``."""
    if access is None:
        remove_image_files(platform, record)
    else:
        sync_image_files(platform, record, access)


def remove_image_files(platform: Platform, record: Record) -> None:
    for path in image_paths(platform, record.image_id):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class Worker:
    """A pool of threads running pull/import jobs from a queue."""

    def __init__(self, config: GatewayConfig, catalog: Catalog,
                 on_done: Callable[[Record, Record, tuple], None] | None = None):
        self.config = config
        self.catalog = catalog
        self.on_done = on_done  # (request, outcome, key given to submit) after every finished job
        self.jobs: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._id_locks: dict[str, threading.Lock] = {}
        self._id_locks_guard = threading.Lock()
        self.blob_dir = os.path.join(config.cache_dir, "blobs")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        for d in (self.config.cache_dir, self.blob_dir, self.config.expand_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        for platform in self.config.platforms.values():
            os.makedirs(platform.image_dir, mode=0o755, exist_ok=True)
        self._cleanup_leftovers()
        self._sync_access()
        self._recover()
        for i in range(self.config.worker_threads):
            thread = threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, rid: int, tokens: dict | None = None, key: tuple | None = None) -> None:
        """Queue record ``rid``; ``key`` comes back to ``on_done`` (the manager's poll key)."""
        self.jobs.put((rid, dict(tokens or {}), key))

    def check_stop(self) -> None:
        if self.stopping.is_set():
            raise Stopping()

    def id_lock(self, image_id: str) -> threading.Lock:
        with self._id_locks_guard:
            return self._id_locks.setdefault(image_id, threading.Lock())

    def _cleanup_leftovers(self) -> None:
        """Remove what a crash may have left: scratch trees, partial images and blobs."""
        for path in glob.glob(os.path.join(glob.escape(self.config.expand_dir), EXPAND_PREFIX + "*")):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed leftover scratch directory %s", path)
        for directory in [self.blob_dir] + [p.image_dir for p in self.config.platforms.values()]:
            for path in squashfs.cleanup_partials(directory):
                log.info("removed leftover temporary file %s", path)

    def _sync_access(self) -> None:
        """Give every READY image's files the access its records call for (files written by
        an older gateway were world-readable whatever their ACL)."""
        for system, platform in self.config.platforms.items():
            ids = {r.image_id for r in self.catalog.list_ready(system) if r.image_id}
            for image_id in sorted(ids):
                records = self.catalog.all_ready_by_id(system, image_id)
                access = imagefiles.union_access(r.acl for r in records)
                paths = image_paths(platform, image_id)
                try:
                    if all(imagefiles.get_access(p) == (imagefiles.mode_for(*access), *access)
                           for p in paths if os.path.lexists(p)):
                        continue
                    sync_image_files(platform, records[0], access)
                    log.info("image %s: file access set to %s", image_id,
                             f"uids {list(access[0])} gids {list(access[1])}" if access != ((), ())
                             else "public")
                except (OSError, PullError) as e:
                    log.error("image %s: can't set who may read its files: %s", image_id, e)

    def _recover(self) -> None:
        """Resume what was in flight when the gateway stopped (credentials are gone)."""
        for record in self.catalog.in_flight():
            platform = self.config.platforms.get(record.system)
            if platform is None:
                self.catalog.fail(record.rid, f"system {record.system!r} is no longer configured")
            elif record.status == "EXPIRING":
                self.catalog.expire(record.rid,
                                    lambda r, access: image_files_after_expiry(platform, r, access))
                log.info("finished expiring %s (%s)", record.pulltag, record.image_id)
            else:
                log.info("resuming %s of %s:%s (was %s)", record.kind, record.itype, record.pulltag,
                         record.status)
                self.catalog.set_status(record.rid, "PENDING", "resumed after a gateway restart")
                self.submit(record.rid)

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                rid, tokens, key = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            record = self.catalog.get(rid)
            if record is None or record.status not in IN_FLIGHT:
                continue
            try:
                if record.kind == "import":
                    self._import(record)
                else:
                    self._pull(record, tokens)
            except Stopping:
                log.info("stopping: %s:%s stays %s and resumes at the next start", record.itype,
                         record.pulltag, self.catalog.get(rid).status)
                continue
            except PullError as e:
                message = str(e)  # what (hint: ...): shifter.errors.describe
                log.warning("%s of %s:%s failed: %s", record.kind, record.itype, record.pulltag, message)
                self.catalog.fail(rid, message)
            except Exception as e:  # a bug: keep the gateway up, fail this job, log everything
                log.error("%s of %s:%s failed unexpectedly", record.kind, record.itype, record.pulltag,
                          exc_info=True)
                self.catalog.fail(rid, f"internal error: {type(e).__name__}: {e}")
            if self.on_done and key is not None:
                outcome = self.catalog.get(rid)
                if outcome is None:  # folded into the record it duplicates (same id and ACL)
                    outcome = self.catalog.ready_for_acl(record.system, record.itype, record.pulltag,
                                                         record.user_acl, record.group_acl)
                if outcome is not None:
                    self.on_done(record, outcome, key)

    def _expiration(self) -> float:
        return time.time() + self.config.expiration_timeout

    def _complete(self, record: Record, platform: Platform, fields: ImageFields,
                  partial: str | None) -> Record:
        squashfs_path = image_paths(platform, fields.image_id)[0]

        def publish(final: Record, access: imagefiles.Access, is_new: bool) -> None:
            try:
                write_meta(platform, final, access)
                if partial is not None:  # restricted before it gets its name
                    imagefiles.set_access(partial, *access)
                    squashfs.publish(partial, squashfs_path)
                else:
                    imagefiles.apply([squashfs_path], *access)
            except ShifterError as e:
                raise PullError(e.what, e.hint) from None

        final = self.catalog.complete(record.rid, fields, self._expiration(), publish)
        log.info("%s:%s is READY: %s%s", record.itype, record.pulltag, fields.image_id,
                 f" ({final.status_message})" if final.status_message else "")
        return final

    def _already_there(self, record: Record, platform: Platform, image_id: str) -> bool:
        existing = self.catalog.ready_by_id(record.system, image_id)  # any record (any ACL)
        return existing is not None and all(os.path.exists(p) for p in image_paths(platform, image_id))

    # -- pull -------------------------------------------------------------------------------
    def _pull(self, record: Record, tokens: dict) -> None:
        platform = self.config.platforms[record.system]
        try:
            source = image_source(self.config, record.pulltag)
        except NotFound as e:
            raise PullError(e.what, e.hint) from None
        registry = Registry(source.location.url, source.repo,
                            credentials_for(tokens, source.location.name),
                            source.location.verify, platform=self.config.image_platform)
        self.catalog.set_status(record.rid, "PULLING", f"resolving {source}")
        image = registry.resolve(source.reference)
        check_layer_count(self.config, record, len(image.layers))
        fields = image_fields(image.id, image.config)
        self.check_stop()
        with self.id_lock(image.id):
            if self._already_there(record, platform, image.id):
                log.info("%s:%s is image %s, already converted: adding the tag", record.itype,
                         record.pulltag, image.id)
                self.catalog.set_status(record.rid, "TRANSFER", "the image is already here")
                self._complete(record, platform, fields, None)
                return
            t0 = time.monotonic()
            blobs = self._download(record, registry, image.layers)
            t1 = time.monotonic()
            self.catalog.set_status(record.rid, "CONVERSION",
                                    f"flattening {len(blobs)} layer{'s' * (len(blobs) != 1)}")
            scratch = tempfile.mkdtemp(prefix=EXPAND_PREFIX, dir=self.config.expand_dir)
            partial = None
            try:
                root = os.path.join(scratch, "rootfs")
                os.mkdir(root, 0o700)
                log.info("converting %s:%s (image %s, %d layers)", record.itype, record.pulltag,
                         image.id, len(blobs))
                report = flatten.flatten(blobs, root, self.check_stop, self.config.image_size_limit)
                if report.skipped:
                    log.info("%s: left out %s", record.pulltag, "; ".join(report.skipped))
                self.catalog.set_message(record.rid, f"making the squashfs image "
                                                     f"({report.files} files, {report.bytes / 1e6:.0f} MB)")
                t2 = time.monotonic()
                partial = squashfs.make(root, image_paths(platform, image.id)[0], self.config.compression)
                t3 = time.monotonic()
                log.info("converted %s:%s: download %.2f s, flatten %.2f s (%d files, %.0f MB), "
                         "mksquashfs %.2f s", record.itype, record.pulltag, t1 - t0, t2 - t1,
                         report.files, report.bytes / 1e6, t3 - t2)
                shutil.rmtree(scratch, ignore_errors=True)
                self.check_stop()
                self.catalog.set_status(record.rid, "TRANSFER", "publishing the image")
                self._complete(record, platform, fields, partial)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
                if partial is not None and os.path.exists(partial):
                    os.unlink(partial)

    def _download(self, record: Record, registry: Registry, layers) -> list[tuple[str, str]]:
        total = sum(layer.size for layer in layers)
        done = 0
        blobs = []
        for i, layer in enumerate(layers, 1):
            dest = os.path.join(self.blob_dir, layer.digest.replace(":", "-"))

            def progress(size: int, i=i) -> None:
                self.check_stop()
                self.catalog.set_message(record.rid, f"downloading layer {i}/{len(layers)}: "
                                                     f"{(done + size) / 1e6:.1f} of {total / 1e6:.1f} MB")

            self.catalog.set_message(record.rid, f"downloading layer {i}/{len(layers)} "
                                                 f"({layer.size / 1e6:.1f} MB)")
            registry.fetch_blob(layer, dest, progress)
            done += layer.size
            blobs.append((f"layer {i} ({layer.digest[:19]})", dest))
        return blobs

    # -- import -----------------------------------------------------------------------------
    def _import(self, record: Record) -> None:
        platform = self.config.platforms[record.system]
        self.catalog.set_status(record.rid, "HASHING", f"hashing {record.filepath}")
        fd = open_import_file(record.filepath, record.requester, self.config.image_size_limit)
        with os.fdopen(fd, "rb") as f:
            image_id = _sha256(f, self.check_stop)
            fields = ImageFields(image_id=image_id)
            with self.id_lock(image_id):
                if self._already_there(record, platform, image_id):
                    self.catalog.set_status(record.rid, "TRANSFER", "the image is already here")
                    self._complete(record, platform, fields, None)
                    return
                self.catalog.set_status(record.rid, "TRANSFER", "copying the image")
                partial = squashfs.partial_name(image_paths(platform, image_id)[0])
                try:
                    f.seek(0)
                    with open(partial, "wb") as out:
                        copied = _sha256(f, self.check_stop, out)
                    if copied != image_id:
                        raise PullError(f"can't import {record.filepath}: the file changed while it "
                                        "was being imported")
                    self._complete(record, platform, fields, partial)
                finally:
                    if os.path.exists(partial):
                        os.unlink(partial)


def _sha256(f, check_stop: Callable[[], None], out=None) -> str:
    h = hashlib.sha256()
    while True:
        chunk = f.read(HASH_CHUNK)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        if out is not None:
            out.write(chunk)
        check_stop()
