"""Apply image layers, in order, to one directory tree: safely, with OCI whiteouts.

Every tar member is hostile until proven otherwise:

* names: a leading ``/`` or ``./`` is stripped (tar's own behaviour); a ``..`` component
  fails the layer; empty and ``.`` components are dropped;
* every parent directory is resolved *inside* the tree: a symlink met on the way is
  followed as if the tree were ``/`` (absolute targets restart at the tree's root, ``..``
  stops there), so no member — nor a whiteout — can reach outside the tree.  The final
  component is never followed: an existing symlink there is replaced, not written through;
* files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` after removing what was there, so
  a file hard-linked from a lower layer is never modified in place;
* hard links must point to a regular file already in the tree (resolved the same way);
  the link entry's mode is *not* applied to the shared inode (tarfile does that, and it
  drops or adds set-id bits of the other names);
* device nodes are skipped (reported), fifos are kept; no xattrs, owners or ACLs are
  applied (mksquashfs ``-all-root -no-xattrs`` makes everything root's anyway);
* directory modes and times are applied at the very end, deepest first, so a layer's
  read-only directory never stops a later member from being written.

With a size limit, each regular file's size (from its tar header) is checked before it is
written: the layer fails as soon as the bytes expanded so far (every layer's files, also
those a later layer replaces or removes) would pass the limit, so an image far over it is
refused after writing at most the limit, never expanded in full.

Whiteouts (OCI image spec, "Representing Changes"): ``DIR/.wh.NAME`` removes NAME of the
lower layers, ``DIR/.wh..wh..opq`` removes everything the lower layers put in DIR.  Both
apply to lower layers only: what the same layer adds is kept whatever the member order.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

from shifter.gateway.errors import PullError
from shifter.runtime import linux

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINKS = 40
COPY_CHUNK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class LayerError(PullError):
    pass


@dataclass
class Report:
    """What flattening did; ``skipped`` names members left out (device nodes, unknown types)."""

    members: int = 0
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    size_limit: int | None = None  # bytes ``bytes`` may reach

    def skip(self, layer: str, name: str, why: str) -> None:
        if len(self.skipped) < 100:
            self.skipped.append(f"{layer}: {name} ({why})")


def member_parts(name: str, layer: str) -> list[str]:
    """The components of member ``name`` inside the tree ([] is the tree's root)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{layer}: member {name[:200]!r} has a '..' component",
                         "the layer is corrupt or hostile; it was not applied")
    return parts


class Tree:
    """The directory being built, and the bookkeeping of the layer being applied."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.dir_meta: dict[str, tuple[int, int]] = {}  # real path -> (mode, mtime)
        self._parents: dict[tuple[str, ...], str] = {}  # resolved parent dirs, this layer
        self.created: set[str] = set()  # real paths this layer wrote
        self.touched: set[str] = set()  # their ancestors
        # every path ever created here: the tree starts empty and only we write to it, so a
        # path not in it does not exist (saves an lstat per member; stale entries are harmless)
        self.known: set[str] = set()

    # -- paths ------------------------------------------------------------------------------
    def new_layer(self) -> None:
        self.created.clear()
        self.touched.clear()
        self._parents.clear()

    def resolve_dir(self, parts: list[str], create: bool, layer: str, name: str) -> str | None:
        """The real path of directory ``parts``, symlinks followed inside the tree.

        Missing directories are created (``create``) or None is returned.
        """
        key = tuple(parts)
        cached = self._parents.get(key)
        if cached is not None:
            return cached
        done: list[str] = []  # resolved components below the root
        todo = list(parts)
        links = 0
        while todo:
            comp = todo.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if done:
                    done.pop()
                continue
            path = os.path.join(self.root, *done, comp)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(path, 0o755)
                self.known.add(path)
                done.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise LayerError(f"{layer}: member {name[:200]!r}: too many levels of symlinks")
                target = os.readlink(path)
                if target.startswith("/"):
                    done = []
                todo = target.split("/") + todo
                continue
            if not stat.S_ISDIR(st.st_mode):
                if not create:
                    return None
                raise LayerError(f"{layer}: member {name[:200]!r}: "
                                 f"/{'/'.join(done + [comp])} is not a directory")
            done.append(comp)
        real = os.path.join(self.root, *done)
        self._parents[key] = real
        return real

    def locate(self, parts: list[str], layer: str, name: str, create: bool = True) -> str | None:
        """Real path of member ``parts``: parent resolved, last component not followed."""
        parent = self.resolve_dir(parts[:-1], create, layer, name)
        return None if parent is None else os.path.join(parent, parts[-1])

    def mark(self, path: str) -> None:
        self.created.add(path)
        self.known.add(path)
        parent = os.path.dirname(path)
        while len(parent) > len(self.root) and parent not in self.touched:
            self.touched.add(parent)
            parent = os.path.dirname(parent)

    # -- removal ----------------------------------------------------------------------------
    def remove(self, path: str) -> None:
        """Remove whatever is at ``path`` (never following a symlink)."""
        if path not in self.known:
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            self._parents.clear()
            prefix = path + "/"
            for key in [k for k in self.dir_meta if k == path or k.startswith(prefix)]:
                del self.dir_meta[key]
        else:
            os.unlink(path)
            if stat.S_ISLNK(st.st_mode):
                self._parents.clear()

    def purge(self, path: str) -> None:
        """Remove what the lower layers put at ``path``, keeping what this layer created."""
        if path not in self.created and path not in self.touched:
            self.remove(path)
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            for child in os.listdir(path):
                self.purge(os.path.join(path, child))

    # -- final pass -------------------------------------------------------------------------
    def finish(self) -> None:
        """Apply directory modes and times, deepest first; the root is 0755."""
        for path in sorted(self.dir_meta, key=len, reverse=True):
            mode, mtime = self.dir_meta[path]
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                os.chmod(path, mode)
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        os.chmod(self.root, 0o755)


class _Zstd:
    """The output of ``zstd -dc BLOB``, read as it comes: a layer is never decompressed in
    full before it is applied (the size limit stops it early)."""

    def __init__(self, path: str, layer: str):
        self.layer = layer
        self.errors = tempfile.TemporaryFile()
        parent = os.getpid()
        try:
            self.proc = subprocess.Popen(["zstd", "-dcq", "--", path], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=self.errors,
                                         preexec_fn=lambda: linux.die_with_parent(parent))
        except OSError as e:
            self.errors.close()
            raise LayerError(f"can't decompress {layer} (zstd): {e.strerror}", "apt-get install zstd") from None

    def read(self, size: int = -1) -> bytes:
        return self.proc.stdout.read(size)

    def failure(self) -> str | None:
        """zstd's complaint if it failed (a corrupt layer), else None."""
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return None
        if self.proc.returncode == 0:
            return None
        self.errors.seek(0)
        text = self.errors.read(2000).decode(errors="replace").strip().splitlines()
        return text[-1] if text else f"exit status {self.proc.returncode}"

    def close(self) -> None:
        self.proc.stdout.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.errors.close()


def _open_layer(path: str, layer: str):
    """(binary stream of the uncompressed tar in blob ``path``, underlying file);
    gzip and zstd are decompressed on the fly."""
    f = open(path, "rb")
    magic = f.read(4)
    f.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=f, mode="rb"), f
    if magic == _ZSTD_MAGIC:
        f.close()
        z = _Zstd(path, layer)
        return z, z
    return f, f


def apply_layer(tree: Tree, blob: str, layer: str, report: Report,
                check_stop: Callable[[], None] | None = None) -> None:
    """Apply one layer blob to ``tree``."""
    tree.new_layer()
    stream, raw = _open_layer(blob, layer)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:
            for n, member in enumerate(tar):
                if check_stop and n % 256 == 0:
                    check_stop()
                report.members += 1
                _apply_member(tree, tar, member, layer, report)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        why = raw.failure() if isinstance(raw, _Zstd) else None
        raise LayerError(f"{layer}: not a valid (compressed) tar stream: {why or e}") from None
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise LayerError(f"{layer}: can't unpack: {e.strerror or e}{where}") from None
    finally:
        stream.close()
        raw.close()


def _apply_member(tree: Tree, tar: tarfile.TarFile, m: tarfile.TarInfo, layer: str,
                  report: Report) -> None:
    parts = member_parts(m.name, layer)
    if not parts:  # the root itself
        return
    base = parts[-1]
    if base.startswith(WHITEOUT):
        parent = tree.resolve_dir(parts[:-1], False, layer, m.name)
        if parent is None:
            return
        if base == OPAQUE:
            for child in os.listdir(parent):
                tree.purge(os.path.join(parent, child))
        elif base.startswith(WHITEOUT + WHITEOUT[:-1]):  # .wh..wh.* : other aufs metadata
            report.skip(layer, m.name, "aufs metadata")
        else:
            target = base[len(WHITEOUT):]
            if target in ("", ".", ".."):
                raise LayerError(f"{layer}: invalid whiteout {m.name[:200]!r}")
            tree.purge(os.path.join(parent, target))
        return
    if m.ischr() or m.isblk():
        report.skip(layer, m.name, "device node")
        return
    if not (m.isdir() or m.isreg() or m.issym() or m.islnk() or m.isfifo()):
        report.skip(layer, m.name, f"unsupported member type {m.type!r}")
        return
    path = tree.locate(parts, layer, m.name)
    mode = m.mode & 0o7777
    if m.isdir():
        try:
            if path not in tree.known:
                raise FileNotFoundError(path)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                tree.remove(path)
                os.mkdir(path, 0o755)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
        tree.dir_meta[path] = (mode, int(m.mtime))
        tree.mark(path)
        return
    if m.islnk():
        target_parts = member_parts(m.linkname, layer)
        target = tree.locate(target_parts, layer, m.linkname, create=False) if target_parts else None
        if target is None or not os.path.lexists(target) or \
                not stat.S_ISREG(os.lstat(target).st_mode):
            raise LayerError(f"{layer}: hard link {m.name[:200]!r} -> {m.linkname[:200]!r}: the "
                             "target is not a regular file of the image")
        if target == path:
            return
        tree.remove(path)
        os.link(target, path, follow_symlinks=False)  # no chmod: the inode is shared
        tree.mark(path)
        return
    tree.remove(path)
    if m.issym():
        os.symlink(m.linkname, path)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
    elif m.isfifo():
        os.mkfifo(path, 0o600)
        os.chmod(path, mode)
        os.utime(path, (m.mtime, m.mtime))
    else:
        if report.size_limit is not None and report.bytes + m.size > report.size_limit:
            raise LayerError(f"{layer}: the image expands to more than {report.size_limit} bytes "
                             f"(this gateway's ImageSizeLimit; {report.bytes} bytes before "
                             f"{m.name[:200]!r} of {m.size} bytes); it was not converted",
                             "ask the site to raise ImageSizeLimit in imagemanager.json, or use a "
                             "smaller image")
        _write_file(tar, m, path, mode)
        report.files += 1
        report.bytes += m.size
    tree.mark(path)


def _write_file(tar: tarfile.TarFile, m: tarfile.TarInfo, path: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        src = tar.extractfile(m)
        if src is not None:
            shutil.copyfileobj(src, out, COPY_CHUNK)
        out.flush()  # before fchmod: a write by a non-root owner clears set-id bits
        os.fchmod(out.fileno(), mode)
        os.utime(out.fileno(), (m.mtime, m.mtime))


def flatten(layers: Iterable[tuple[str, str]], root: str,
            check_stop: Callable[[], None] | None = None, size_limit: int | None = None) -> Report:
    """Apply ``layers`` ((label, blob path), lowest first) to the empty directory ``root``;
    fail (``LayerError``) before the regular files written would pass ``size_limit`` bytes."""
    tree = Tree(root)
    report = Report(size_limit=size_limit)
    for label, blob in layers:
        apply_layer(tree, blob, label, report, check_stop)
    tree.finish()
    return report
