"""The OCI image-layout writer of the test images (``tools.images``): media types, tar entries
of synthetic files, gzip layers written with their digests, canonical JSON, image configs.

A layout is ``oci-layout``, ``index.json`` and ``blobs/sha256/`` (the OCI image-layout spec);
every synthetic entry's mtime is ``EPOCH``, so the same recipe gives the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Iterable, Iterator

# -- media types and fixed values ------------------------------------------------------------

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: Accept header for manifest requests: without it the registry 404s OCI manifests and turns
#: v2s2 into schema1 (docs/gateway.md).
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
REF_NAME = "org.opencontainers.image.ref.name"


#: mtime of every synthetic entry (2023-06-10, Debian 12's release): stable digests.
EPOCH = 1686355200
CREATED = "2023-06-10T00:00:00Z"
GZIP_LEVEL = 6


# -- OCI layout writer ---------------------------------------------------------------------------


def canonical_json(obj) -> bytes:
    """The one JSON encoding of every manifest, index and config we write (stable digests)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    platform: dict | None = None
    annotations: dict | None = None

    def to_json(self) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = self.platform
        if self.annotations:
            d["annotations"] = self.annotations
        return d

    @classmethod
    def from_json(cls, d: dict) -> Descriptor:
        return cls(d["mediaType"], d["digest"], d["size"], d.get("platform"), d.get("annotations"))


@dataclass(frozen=True)
class Layer:
    """A layer blob: its descriptor, the digest of its uncompressed tar and that tar's size."""

    descriptor: Descriptor
    diff_id: str
    tar_size: int = 0


@dataclass
class Entry:
    """One tar member: its header and, for a regular file, its content (bytes or a host path)."""

    info: tarfile.TarInfo
    source: bytes | str | None = None


def member_name(path: str) -> str:
    """A safe tar member name for image path ``path`` ("/etc/x" or "etc/x" -> "etc/x").

    Rejects empty names and ``.``/``..`` components, so no member can land outside the root.
    """
    name = path.lstrip("/")
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe tar member name: {path!r}")
    return name


def _tarinfo(path: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0,
             mtime: int = EPOCH, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(member_name(path))
    info.type = kind
    info.mode = mode & 0o7777
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = int(mtime)
    info.size = size
    info.linkname = linkname
    return info


def file_entry(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(_tarinfo(path, tarfile.REGTYPE, mode, uid, gid, size=len(data)), data)


def dir_entry(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(_tarinfo(path, tarfile.DIRTYPE, mode, uid, gid))


def symlink_entry(path: str, target: str) -> Entry:
    return Entry(_tarinfo(path, tarfile.SYMTYPE, 0o777, linkname=target))


def whiteout_entry(path: str) -> Entry:
    """The entry deleting ``path`` (file or directory) of the lower layers: ``dir/.wh.name``."""
    parent, _, base = member_name(path).rpartition("/")
    return file_entry(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"", mode=0o600)


def opaque_entry(directory: str) -> Entry:
    """The marker hiding everything lower layers put in ``directory``: ``dir/.wh..wh..opq``."""
    return file_entry(member_name(directory) + "/.wh..wh..opq", b"", mode=0o600)


def tree_entries(root: str, mtime: int | None = None,
                 skipped: list[str] | None = None) -> Iterator[Entry]:
    """Entries for everything under ``root`` (not ``root`` itself), depth first, sorted by name.

    Owners are numeric, hard links become link entries to the first name seen, ``mtime`` (if
    given) replaces every timestamp.  Device nodes, fifos and sockets are left out, and so is the
    content of directories on another filesystem (mount points): their names go to ``skipped``.
    """
    root_dev = os.lstat(root).st_dev
    first_name: dict[tuple[int, int], str] = {}

    def walk(directory: str, prefix: str) -> Iterator[Entry]:
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            member = f"{prefix}{name}"
            st = os.lstat(path)
            when = st.st_mtime if mtime is None else mtime
            if stat.S_ISDIR(st.st_mode):
                yield Entry(_tarinfo(member, tarfile.DIRTYPE, st.st_mode, st.st_uid, st.st_gid,
                                     when))
                if st.st_dev == root_dev:
                    yield from walk(path, member + "/")
                elif skipped is not None:
                    skipped.append(member + "/ (mount point)")
            elif stat.S_ISLNK(st.st_mode):
                yield Entry(_tarinfo(member, tarfile.SYMTYPE, 0o777, st.st_uid, st.st_gid, when,
                                     linkname=os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in first_name:
                    yield Entry(_tarinfo(member, tarfile.LNKTYPE, st.st_mode, st.st_uid,
                                         st.st_gid, when, linkname=first_name[key]))
                    continue
                first_name[key] = member
                yield Entry(_tarinfo(member, tarfile.REGTYPE, st.st_mode, st.st_uid, st.st_gid,
                                     when, size=st.st_size), path)
            elif skipped is not None:
                skipped.append(member)

    yield from walk(root, "")


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``target``."""

    def __init__(self, target):
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.target.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


class OciLayout:
    """An OCI image layout directory: content-addressed blobs plus index.json naming refs."""

    def __init__(self, path: str):
        self.path = path
        self.blobs = os.path.join(path, "blobs", "sha256")

    @classmethod
    def create(cls, path: str) -> OciLayout:
        layout = cls(path)
        os.makedirs(layout.blobs, mode=0o755, exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "wb") as f:
            f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
        return layout

    def blob_path(self, digest: str) -> str:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64 or not all(
                c in "0123456789abcdef" for c in hexdigest):
            raise ValueError(f"bad digest: {digest!r}")
        return os.path.join(self.blobs, hexdigest)

    # writing -------------------------------------------------------------------------------
    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not os.path.exists(path):
            tmp = f"{path}.tmp.{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return Descriptor(media_type, digest, len(data))

    def put_json(self, obj, media_type: str) -> Descriptor:
        return self.put_bytes(canonical_json(obj), media_type)

    def put_layer(self, entries: Iterable[Entry], compresslevel: int = GZIP_LEVEL) -> Layer:
        """Write ``entries`` as a gzip'd PAX tar blob, streaming (constant memory)."""
        fd, tmp = tempfile.mkstemp(prefix=".layer-", dir=self.blobs)
        try:
            with os.fdopen(fd, "wb") as out:
                compressed = _HashingWriter(out)
                with gzip.GzipFile(filename="", mode="wb", compresslevel=compresslevel,
                                   fileobj=compressed, mtime=0) as gz:
                    raw = _HashingWriter(gz)
                    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                        for entry in entries:
                            _add_entry(tar, entry)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blob_path(compressed.digest))
        except BaseException:
            os.unlink(tmp)
            raise
        return Layer(Descriptor(OCI_LAYER_GZIP, compressed.digest, compressed.size),
                     raw.digest, raw.size)

    def put_image(self, layers: list[Layer], config: dict,
                  platform: dict | None = None) -> Descriptor:
        """Write ``config`` and the manifest of ``layers``; return the manifest's descriptor."""
        config_desc = self.put_json(config, OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [layer.descriptor.to_json() for layer in layers],
        }
        desc = self.put_json(manifest, OCI_MANIFEST)
        return Descriptor(desc.media_type, desc.digest, desc.size, platform=platform)

    def put_index(self, manifests: list[Descriptor]) -> Descriptor:
        """Write an image index blob (e.g. a multi-platform image) over ``manifests``."""
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [m.to_json() for m in manifests]}
        return self.put_json(index, OCI_INDEX)

    def write_index(self, refs: dict[str, Descriptor]) -> None:
        """Write index.json naming each descriptor by its ref (``oci:DIR:REF``)."""
        manifests = [Descriptor(d.media_type, d.digest, d.size, d.platform, {REF_NAME: ref})
                     for ref, d in sorted(refs.items())]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [m.to_json() for m in manifests]}
        tmp = os.path.join(self.path, "index.json.tmp")
        with open(tmp, "wb") as f:
            f.write(canonical_json(index))
        os.replace(tmp, os.path.join(self.path, "index.json"))

    def copy_blobs(self, other: OciLayout, descriptors: Iterable[Descriptor]) -> None:
        """Make ``other``'s blobs available here (hard links, copies across filesystems)."""
        for desc in descriptors:
            dst = self.blob_path(desc.digest)
            if os.path.exists(dst):
                continue
            src = other.blob_path(desc.digest)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)

    # reading -------------------------------------------------------------------------------
    def read_json(self, desc: Descriptor) -> dict:
        with open(self.blob_path(desc.digest), "rb") as f:
            return json.loads(f.read())

    def refs(self) -> dict[str, Descriptor]:
        with open(os.path.join(self.path, "index.json"), "rb") as f:
            index = json.load(f)
        return {m["annotations"][REF_NAME]: Descriptor.from_json(m)
                for m in index["manifests"] if REF_NAME in m.get("annotations", {})}

    def image(self, ref: str) -> tuple[Descriptor, list[Layer]]:
        """The manifest descriptor of image ``ref`` and its layers (for basing other images)."""
        desc = self.refs()[ref]
        manifest = self.read_json(desc)
        config = self.read_json(Descriptor.from_json(manifest["config"]))
        layers = [Layer(Descriptor.from_json(d), diff_id) for d, diff_id in
                  zip(manifest["layers"], config["rootfs"]["diff_ids"])]
        return desc, layers


def _check_member(name: str) -> None:
    if member_name(name) != name:
        raise ValueError(f"unsafe tar member name: {name!r}")


def _add_entry(tar: tarfile.TarFile, entry: Entry) -> None:
    """Append ``entry``; refuse names (and hard link targets) that are not canonical members."""
    info = entry.info
    _check_member(info.name)
    if info.islnk():
        _check_member(info.linkname)
    if not (info.isreg() and not info.islnk()):
        tar.addfile(info)
    elif isinstance(entry.source, bytes):
        tar.addfile(info, io.BytesIO(entry.source))
    else:
        with open(entry.source, "rb") as f:
            tar.addfile(info, f)


def image_config(layers: list[Layer], env: list[str], cmd: list[str], created_by: str,
                 architecture: str = "amd64", variant: str | None = None) -> dict:
    """An OCI image config for ``layers``."""
    config = {
        "created": CREATED,
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": env, "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": f"{created_by} (layer {i + 1})"}
                    for i in range(len(layers))],
    }
    if variant:
        config["variant"] = variant
    return config
