"""Test images of the site, built without internet from Debian packages and pushed to the registries.

Each image is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``) under
``site.cache/oci/<name>``, written by the small OCI writer below (gzip layers, canonical JSON).
A layout is rebuilt only when its recipe changed (recipe version, input files, the images it is
based on) or with ``force``; ``site.cache/oci/<name>.json`` records the recipe stamp and what was
pushed where.  Pushes use ``skopeo copy`` and are skipped when the registry already serves the tag
with the digest recorded for this build.

Images (registry 127.0.0.1:5000 unless noted):

``busybox`` -> ``test/busybox:latest`` (docker v2s2), ``test/busybox:oci`` (OCI), and
    ``test/busybox:latest`` on the htpasswd registry 5001.  One layer: Debian's busybox-static with
    an absolute symlink ``-> /bin/busybox`` for every applet at its ``--list-full`` path and also
    in /bin (so /bin/sh, /bin/cat, /bin/id, /bin/env, /bin/hostname, /bin/true ... exist),
    /etc/os-release (``ID=busybox``), minimal /etc/passwd and /etc/group, /tmp (1777), /root (0700).
    Env ``PATH=...``, ``SHIFTER_TEST_IMAGE=busybox``; Cmd ``["/bin/sh"]``; WorkingDir ``/``.
    Every mtime is ``EPOCH``, so rebuilding gives the same digests.

``debian`` -> ``test/debian:latest`` (v2s2), ``test/debian:oci`` (OCI).  One layer:
    ``debootstrap --variant=minbase --include=python3,mpich bookworm`` from the machine's own apt
    mirror, plus ``/app/mpi-hello`` (``tools/mpi_hello.c`` compiled with the host's mpicc:
    prints ``hello from rank R of N on HOST``) and compiled .pyc files; apt caches removed,
    device nodes left out.  Env ``SHIFTER_TEST_IMAGE=debian``; Cmd ``["/bin/bash"]``.

``layers`` -> ``test/layers:latest`` (v2s2).  Four layers exercising whiteouts:

    1. the busybox layer (same blob);
    2. adds /data/keep.txt, /data/remove-me.txt, /data/subdir-gone/{a.txt,nested/b.txt},
       /data/opaque/{old1.txt,olddir/old2.txt}, /etc/layers-stage ("2");
    3. file whiteout /data/.wh.remove-me.txt; directory whiteout /data/.wh.subdir-gone;
       opaque directory /data/opaque/.wh..wh..opq plus the new /data/opaque/new.txt;
       /etc/layers-stage rewritten ("3");
    4. directory whiteout of a busybox-layer dir (/usr/share/doc/.wh.busybox-static) and
       /data/subdir-gone/ created again holding only fresh.txt.

    After flattening, the tree must contain every path of ``LAYERS_EXPECT["present"]`` (with the
    contents in ``LAYERS_EXPECT["contents"]``) and none of ``LAYERS_EXPECT["absent"]``; no
    ``.wh.`` name may remain anywhere.

``multiarch`` -> ``test/busybox:multiarch`` (OCI image index, pushed with ``--all``): linux/amd64
    is exactly the busybox manifest (same digest as ``test/busybox:oci``); linux/arm64/v8 is the
    busybox layer plus a layer with /etc/arch ("arm64") and an arm64 config (it does not run).

API: ``ensure(site, names=None, force=False, log=print) -> {pushed reference: manifest digest}``.
CLI: ``tools/images [--force] [busybox|debian|layers|multiarch ...]``.
The registries must be running (``tools/run-module registry start``).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from shifter import command
from shifter.errors import ShifterError, UsageError
from tools import registry
from tools.site import Site

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
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUITE = "bookworm"
GZIP_LEVEL = 6
MPI_HELLO_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_hello.c")

#: What the flattened test/layers:latest must (not) contain; paths inside the image's root.
LAYERS_EXPECT = {
    "present": [
        "/bin/sh",
        "/data/keep.txt",
        "/data/opaque/new.txt",
        "/data/subdir-gone/fresh.txt",
        "/etc/layers-stage",
        "/usr/share/doc",
    ],
    "absent": [
        "/data/remove-me.txt",
        "/data/.wh.remove-me.txt",
        "/data/.wh.subdir-gone",
        "/data/subdir-gone/a.txt",
        "/data/subdir-gone/nested",
        "/data/opaque/old1.txt",
        "/data/opaque/olddir",
        "/data/opaque/.wh..wh..opq",
        "/usr/share/doc/busybox-static",
        "/usr/share/doc/.wh.busybox-static",
    ],
    "contents": {
        "/data/keep.txt": "keep\n",
        "/data/opaque/new.txt": "new in layer 3\n",
        "/data/subdir-gone/fresh.txt": "fresh in layer 4\n",
        "/etc/layers-stage": "3\n",
    },
}


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


# -- host helpers ----------------------------------------------------------------------------------


def apt_mirror(suite: str = SUITE, apt_dir: str = "/etc/apt") -> tuple[str, str | None]:
    """The first apt source of this machine serving ``suite``: (URI, Signed-By keyring or None).

    Reads ``sources.list``, ``sources.list.d/*.list`` (one-line format) and
    ``sources.list.d/*.sources`` (deb822), so no mirror name is ever written in our code.
    """
    files = [os.path.join(apt_dir, "sources.list")]
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")))
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources")))
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        parse = _deb822_sources if path.endswith(".sources") else _one_line_sources
        for types, uris, suites, signed_by in parse(text):
            if "deb" in types and suite in suites and uris:
                return uris[0], signed_by
    raise ShifterError(f"can't find a Debian mirror: no apt source for {suite} in {apt_dir}",
                       f"add 'deb URI {suite} main' to {apt_dir}/sources.list")


def _one_line_sources(text: str):
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3:
            continue
        options: dict[str, str] = {}
        kind, rest = words[0], words[1:]
        if rest[0].startswith("["):
            opts = []
            while rest:
                word = rest.pop(0)
                opts.append(word.strip("[]"))
                if word.endswith("]"):
                    break
            options = dict(o.split("=", 1) for o in opts if "=" in o)
        if len(rest) >= 2:
            yield [kind], [rest[0]], [rest[1]], options.get("signed-by")


def _deb822_sources(text: str):
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in paragraph.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        if signed_by and ("\n" in signed_by or signed_by.startswith("-----")):
            signed_by = None  # an inline key, not a keyring file
        yield (fields.get("types", "").split(), fields.get("uris", "").split(),
               fields.get("suites", "").split(), signed_by)


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _busybox_deb(site: Site, log) -> str:
    """The cached busybox-static .deb, downloaded with ``apt-get download`` the first time."""
    debs = os.path.join(site.cache, "debs")
    os.makedirs(debs, mode=0o755, exist_ok=True)
    found = sorted(glob.glob(os.path.join(debs, "busybox-static_*.deb")))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory(dir=site.cache) as tmp:
        registry.run_tool(["apt-get", "download", "busybox-static"], "download busybox-static",
                          hint="apt-get update", cwd=tmp, timeout=300)
        (deb,) = glob.glob(os.path.join(tmp, "busybox-static_*.deb"))
        dst = os.path.join(debs, os.path.basename(deb))
        shutil.move(deb, dst)
    log(f"downloaded {os.path.basename(dst)}")
    return dst


def _mounts_under(path: str) -> list[str]:
    prefix = os.path.realpath(path) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


# -- recipes -------------------------------------------------------------------------------------


@dataclass
class BuildContext:
    site: Site
    layout: OciLayout  # the layout being written
    workdir: str  # scratch space, removed after the build
    base: dict[str, OciLayout]  # built layouts of the recipe's dependencies
    log: Callable[[str], None]


@dataclass(frozen=True)
class Push:
    ref: str  # ref inside the OCI layout
    repo_tag: str  # e.g. "test/busybox:latest"
    oci: bool  # push as OCI (else docker v2s2)
    auth: bool = False  # to the htpasswd registry
    all: bool = False  # an index: copy every manifest

    def dest(self, site: Site) -> str:
        return f"{site.registry_url(self.auth)}/{self.repo_tag}"


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int  # bump whenever the recipe's output changes
    build: Callable[[BuildContext], dict[str, Descriptor]]  # -> refs of the layout
    pushes: tuple[Push, ...]
    deps: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # host files whose content is part of the recipe


def _busybox_tree(ctx: BuildContext, root: str) -> None:
    deb = _busybox_deb(ctx.site, ctx.log)
    registry.run_tool(["dpkg-deb", "-x", deb, root], "unpack busybox-static")
    version = registry.run_tool(["dpkg-deb", "-f", deb, "Version"],
                                "read the busybox-static version").stdout.strip()
    busybox = os.path.join(root, "bin", "busybox")
    applets = registry.run_tool([busybox, "--list-full"], "list busybox applets").stdout.split()
    links = set(applets) | {"bin/" + os.path.basename(a) for a in applets}
    links.discard("bin/busybox")
    for link in sorted(links):
        path = os.path.join(root, member_name(link))
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.symlink("/bin/busybox", path)
    for d, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("run", 0o755),
                    ("home", 0o755), ("root", 0o700), ("tmp", 0o1777), ("var/tmp", 0o1777),
                    ("etc", 0o755)):
        os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(os.path.join(root, d), mode)
    files = {
        "etc/os-release": f'NAME="BusyBox"\nID=busybox\nVERSION_ID="{version}"\n'
                          f'PRETTY_NAME="Shifter test image: BusyBox {version}"\n',
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    }
    for name, text in files.items():
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(root, name), 0o644)


def build_busybox(ctx: BuildContext) -> dict[str, Descriptor]:
    root = os.path.join(ctx.workdir, "rootfs")
    os.mkdir(root)
    _busybox_tree(ctx, root)
    layer = ctx.layout.put_layer(tree_entries(root, mtime=EPOCH))
    config = image_config([layer], [PATH_ENV, "SHIFTER_TEST_IMAGE=busybox"], ["/bin/sh"],
                          "tools.images busybox")
    return {"latest": ctx.layout.put_image([layer], config)}


def build_debian(ctx: BuildContext) -> dict[str, Descriptor]:
    root = os.path.join(ctx.workdir, "rootfs")
    mirror, keyring = apt_mirror()
    debs = os.path.join(ctx.site.cache, "debootstrap-debs")
    os.makedirs(debs, mode=0o755, exist_ok=True)
    argv = ["debootstrap", "--variant=minbase", "--include=python3,mpich", f"--cache-dir={debs}"]
    if keyring:
        argv.append(f"--keyring={keyring}")
    t0 = time.monotonic()
    try:
        registry.run_tool(argv + [SUITE, root, mirror], f"debootstrap {SUITE}", timeout=1800)
    except ShifterError as e:  # keep debootstrap's own log: the scratch dir goes away
        saved = os.path.join(ctx.site.log, "debootstrap.log")
        with contextlib.suppress(OSError):
            shutil.copyfile(os.path.join(root, "debootstrap", "debootstrap.log"), saved)
            e.hint = f"see {saved}"
        raise
    finally:
        for point in _mounts_under(root):  # debootstrap mounts /proc and /sys while it works
            subprocess.run(["umount", "-l", point], capture_output=True)
    ctx.log(f"debian: debootstrap took {time.monotonic() - t0:.1f} s")
    app = os.path.join(root, "app")
    os.makedirs(app, mode=0o755, exist_ok=True)
    registry.run_tool(["mpicc", "-O2", "-Wall", "-o", os.path.join(app, "mpi-hello"),
                       MPI_HELLO_SRC], "compile mpi-hello", hint="apt-get install libmpich-dev")
    registry.run_tool(["chroot", root, "/usr/bin/python3", "-m", "compileall", "-q",
                       "/usr/lib/python3.11", "/usr/lib/python3/dist-packages"],
                      "compile the image's .pyc files")
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*"):
        for path in glob.glob(os.path.join(root, pattern)):
            os.unlink(path)
    for name in ("etc/hostname", "etc/resolv.conf"):  # debootstrap copied the host's
        with open(os.path.join(root, name), "w"):
            pass
    skipped: list[str] = []
    layer = ctx.layout.put_layer(tree_entries(root, skipped=skipped))
    if skipped:
        ctx.log(f"debian: left out of the layer: {', '.join(skipped)}")
    config = image_config([layer], [PATH_ENV, "SHIFTER_TEST_IMAGE=debian"], ["/bin/bash"],
                          "tools.images debian")
    return {"latest": ctx.layout.put_image([layer], config)}


def layers_entries() -> list[list[Entry]]:
    """Layers 2..4 of test/layers (see the module docstring and LAYERS_EXPECT)."""
    return [
        [
            dir_entry("data"),
            file_entry("data/keep.txt", b"keep\n"),
            file_entry("data/remove-me.txt", b"removed by layer 3\n"),
            dir_entry("data/subdir-gone"),
            file_entry("data/subdir-gone/a.txt", b"removed with its dir by layer 3\n"),
            dir_entry("data/subdir-gone/nested"),
            file_entry("data/subdir-gone/nested/b.txt", b"removed with its dir by layer 3\n"),
            dir_entry("data/opaque"),
            file_entry("data/opaque/old1.txt", b"hidden by the opaque dir of layer 3\n"),
            dir_entry("data/opaque/olddir"),
            file_entry("data/opaque/olddir/old2.txt", b"hidden by the opaque dir of layer 3\n"),
            dir_entry("etc"),
            file_entry("etc/layers-stage", b"2\n"),
        ],
        [
            dir_entry("data"),
            whiteout_entry("data/remove-me.txt"),
            whiteout_entry("data/subdir-gone"),
            dir_entry("data/opaque"),
            opaque_entry("data/opaque"),
            file_entry("data/opaque/new.txt", b"new in layer 3\n"),
            dir_entry("etc"),
            file_entry("etc/layers-stage", b"3\n"),
        ],
        [
            dir_entry("data"),
            dir_entry("data/subdir-gone"),
            file_entry("data/subdir-gone/fresh.txt", b"fresh in layer 4\n"),
            dir_entry("usr"),
            dir_entry("usr/share"),
            dir_entry("usr/share/doc"),
            whiteout_entry("usr/share/doc/busybox-static"),
        ],
    ]


def build_layers(ctx: BuildContext) -> dict[str, Descriptor]:
    busybox = ctx.base["busybox"]
    _, base_layers = busybox.image("latest")
    ctx.layout.copy_blobs(busybox, [layer.descriptor for layer in base_layers])
    layers = base_layers + [ctx.layout.put_layer(entries) for entries in layers_entries()]
    config = image_config(layers, [PATH_ENV, "SHIFTER_TEST_IMAGE=layers"], ["/bin/sh"],
                          "tools.images layers")
    return {"latest": ctx.layout.put_image(layers, config)}


def build_multiarch(ctx: BuildContext) -> dict[str, Descriptor]:
    busybox = ctx.base["busybox"]
    amd64, base_layers = busybox.image("latest")
    config_desc = Descriptor.from_json(busybox.read_json(amd64)["config"])
    ctx.layout.copy_blobs(busybox, [amd64, config_desc] + [lyr.descriptor for lyr in base_layers])
    arch_layer = ctx.layout.put_layer([dir_entry("etc"), file_entry("etc/arch", b"arm64\n")])
    layers = base_layers + [arch_layer]
    config = image_config(layers, [PATH_ENV, "SHIFTER_TEST_IMAGE=busybox-arm64"], ["/bin/sh"],
                          "tools.images multiarch", architecture="arm64", variant="v8")
    arm64 = ctx.layout.put_image(layers, config, platform={
        "architecture": "arm64", "os": "linux", "variant": "v8"})
    amd64 = Descriptor(amd64.media_type, amd64.digest, amd64.size,
                       platform={"architecture": "amd64", "os": "linux"})
    return {"multiarch": ctx.layout.put_index([amd64, arm64])}


RECIPES = {r.name: r for r in (
    Recipe("busybox", 1, build_busybox, (
        Push("latest", "test/busybox:latest", oci=False),
        Push("latest", "test/busybox:oci", oci=True),
        Push("latest", "test/busybox:latest", oci=False, auth=True),
    )),
    Recipe("debian", 1, build_debian, (
        Push("latest", "test/debian:latest", oci=False),
        Push("latest", "test/debian:oci", oci=True),
    ), inputs=(MPI_HELLO_SRC,)),
    Recipe("layers", 1, build_layers, (
        Push("latest", "test/layers:latest", oci=False),
    ), deps=("busybox",)),
    Recipe("multiarch", 1, build_multiarch, (
        Push("multiarch", "test/busybox:multiarch", oci=True, all=True),
    ), deps=("busybox",)),
)}


# -- build cache ---------------------------------------------------------------------------------


def _state_path(site: Site, name: str) -> str:
    return os.path.join(site.cache, "oci", f"{name}.json")


def _load_state(site: Site, name: str) -> dict:
    try:
        with open(_state_path(site, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_state(site: Site, name: str, state: dict) -> None:
    path = _state_path(site, name)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _stamp(recipe: Recipe, base: dict[str, OciLayout]) -> dict:
    """What a layout was built from: rebuilding is needed exactly when this changes."""
    return {
        "recipe": recipe.name,
        "version": recipe.version,
        "inputs": {os.path.basename(p): _file_sha256(p) for p in recipe.inputs},
        "base": {name: {ref: d.digest for ref, d in base[name].refs().items()}
                 for name in recipe.deps},
    }


def _layout_size(layout: OciLayout) -> int:
    return sum(e.stat().st_size for e in os.scandir(layout.blobs) if e.is_file())


def build(site: Site, recipe: Recipe, base: dict[str, OciLayout], force: bool = False,
          log=print) -> OciLayout:
    """The recipe's layout, (re)built unless the cached one has the same stamp."""
    path = os.path.join(site.cache, "oci", recipe.name)
    stamp = _stamp(recipe, base)
    state = _load_state(site, recipe.name)
    if not force and state.get("stamp") == stamp and os.path.exists(
            os.path.join(path, "index.json")):
        log(f"{recipe.name}: cached ({state.get('size', 0) / 1e6:.1f} MB, "
            f"built in {state.get('build_seconds', 0):.1f} s)")
        return OciLayout(path)
    t0 = time.monotonic()
    new = path + ".new"
    shutil.rmtree(new, ignore_errors=True)
    layout = OciLayout.create(new)
    with tempfile.TemporaryDirectory(prefix=f"build-{recipe.name}-", dir=site.cache) as work:
        refs = recipe.build(BuildContext(site, layout, work, base, log))
    layout.write_index(refs)
    shutil.rmtree(path, ignore_errors=True)
    os.rename(new, path)
    seconds = time.monotonic() - t0
    size = _layout_size(OciLayout(path))
    _save_state(site, recipe.name, {"stamp": stamp, "build_seconds": round(seconds, 2),
                                    "size": size, "refs": {r: d.digest for r, d in refs.items()},
                                    "pushed": state.get("pushed", {})})
    log(f"{recipe.name}: built in {seconds:.1f} s ({size / 1e6:.1f} MB compressed)")
    return OciLayout(path)


# -- pushing -------------------------------------------------------------------------------------


def remote_digest(site: Site, repo_tag: str, auth: bool = False) -> str | None:
    """The manifest digest the registry serves for ``repo:tag`` (None if it has none)."""
    import requests  # start-up: ~90 ms; the tests import this module for its constants (LAYERS_EXPECT)

    repo, _, tag = repo_tag.rpartition(":")
    url = f"http://{site.registry_url(auth)}/v2/{repo}/manifests/{tag}"
    try:
        resp = requests.head(url, headers={"Accept": MANIFEST_ACCEPT}, timeout=10,
                             auth=(site.registry_user, site.registry_password) if auth else None)
    except requests.RequestException as e:
        raise ShifterError(f"can't query registry: {url}: {e}",
                           "tools/run-module registry start") from None
    if resp.status_code != 200:
        return None
    return resp.headers.get("Docker-Content-Digest")


def push(site: Site, layout: OciLayout, target: Push, state: dict, log=print) -> str:
    """Push one ref of ``layout`` unless the registry already serves this build; return digest.

    ``state["pushed"][dest]`` records which layout manifest was pushed and the digest the
    registry gave it (a v2s2 conversion changes the digest; an OCI push keeps it).
    """
    dest = target.dest(site)
    source = layout.refs()[target.ref].digest
    record = state.setdefault("pushed", {}).get(dest, {})
    # Without a record of this build, an OCI push keeps the layout's digest; v2s2 converts it.
    expected = record.get("digest") if record.get("source") == source else (
        source if target.oci else None)
    remote = remote_digest(site, target.repo_tag, target.auth)
    if expected and remote == expected:
        log(f"{dest}: up to date ({remote[:19]})")
        return remote
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
            "--format", "oci" if target.oci else "v2s2"]
    if target.all:
        argv.append("--all")
    if target.auth:
        argv += ["--dest-creds", f"{site.registry_user}:{site.registry_password}"]
    t0 = time.monotonic()
    with tempfile.NamedTemporaryFile("r", prefix="digest-", dir=site.cache) as digestfile:
        registry.run_tool(argv + ["--digestfile", digestfile.name, f"oci:{layout.path}:{target.ref}",
                                  f"docker://{dest}"], f"push {dest}", secret=site.registry_password,
                          hint="tools/run-module registry status", timeout=900)
        digest = digestfile.read().strip()
    state["pushed"][dest] = {"source": source, "digest": digest}
    log(f"{dest}: pushed in {time.monotonic() - t0:.1f} s ({digest[:19]})")
    return digest


# -- public API ----------------------------------------------------------------------------------


def _closure(names: list[str]) -> list[Recipe]:
    """The recipes ``names`` need, dependencies first."""
    order: list[Recipe] = []

    def visit(name: str) -> None:
        recipe = RECIPES[name]
        for dep in recipe.deps:
            visit(dep)
        if recipe not in order:
            order.append(recipe)

    for name in names:
        visit(name)
    return order


def ensure(site: Site | None = None, names: Iterable[str] | None = None, force: bool = False,
           log: Callable[[str], None] = print) -> dict[str, str]:
    """Build (if needed) and push (if needed) the test images ``names`` (default: all).

    Returns ``{"127.0.0.1:5000/test/busybox:latest": "sha256:...", ...}``: every reference
    pushed for these images and the manifest digest the registry serves for it.
    """
    site = site or Site()
    wanted = list(names) if names else list(RECIPES)
    unknown = [n for n in wanted if n not in RECIPES]
    if unknown:
        raise UsageError(f"can't build image: {', '.join(unknown)}: no such test image",
                         f"choose from {', '.join(RECIPES)}")
    for auth in sorted({p.auth for n in wanted for p in RECIPES[n].pushes}):
        url = site.registry_url(auth)
        if registry.probe(url) not in (200, 401):
            raise ShifterError(f"can't push test images: registry {url} does not answer",
                               "tools/run-module registry start")
    for d in (os.path.join(site.cache, "oci"), site.log):
        os.makedirs(d, mode=0o755, exist_ok=True)
    pushed: dict[str, str] = {}
    with registry.file_lock(os.path.join(site.cache, "images.lock")):
        built: dict[str, OciLayout] = {}
        for recipe in _closure(wanted):
            built[recipe.name] = build(site, recipe, built, force and recipe.name in wanted, log)
        for name in wanted:
            state = _load_state(site, name)
            try:
                for target in RECIPES[name].pushes:
                    pushed[target.dest(site)] = push(site, built[name], target, state, log)
            finally:
                _save_state(site, name, state)
    return pushed


def main(argv: list[str] | None = None) -> int:
    return command.run("images", _main, argv)


def _main(argv: list[str]) -> int:
    parser = command.parser_class()(prog="tools/images",
                                     description="Build and push the site's test images.")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"images to build (default all): {', '.join(RECIPES)}")
    args = parser.parse_args(argv)
    for ref, digest in ensure(Site(), args.names, args.force).items():
        print(f"{ref} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
