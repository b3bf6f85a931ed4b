"""The executor's site maps (siteFs, a module's siteFs) and user volumes.

Their destinations are resolved in the container at execution time, without following
a symlink; what is missing is made only in the container's own storage.  Each step
goes through the executor (``shifter.runtime.builder.execute.Executor``), which writes the
private-plan records of what was done.
"""

from __future__ import annotations

import os
import stat

from shifter.errors import ConfigError, ShifterError
from shifter.runtime.builder import cache, destinations, teardown
from shifter.runtime import linux

RO = linux.MS_RDONLY
SAFE = linux.MS_NOSUID | linux.MS_NODEV
_OR_PREPARED = "or use a container that setupRoot prepares as root"


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def site(ex, udi: str, v, what: str, image_root: str, style: str | None) -> None:
    """One site map: the source is the site's, the destination resolved in the UDI.
    Propagation: the map's own ``slave``/``private`` flag, else ``style`` (the site's
    mountPropagationStyle: with ``slave``, mounts the host makes below the source later
    appear in the container)."""
    if ex.kind == "user":
        try:
            os.stat(v.source)
        except PermissionError:
            raise ShifterError(f"can't mount {what} {v.spec()}: permission denied (as uid {ex.uid})",
                               "a private container mounts site filesystems as the user: ask the site to open it "
                               "up, " + _OR_PREPARED) from None
        except OSError:
            pass  # said below
    if v.per_node_cache is None:
        make_room(ex, udi, image_root, v.destination)
    if v.per_node_cache is not None:  # setupRoot makes them; never bind the (unused) source instead
        raise ConfigError(f"can't mount {what} {v.spec()}: a per-node cache needs a container that "
                          "setupRoot builds as root", "remove the map from the site's configuration, "
                          "or use a job whose container setupRoot builds")
    if not os.path.exists(v.source):
        raise ConfigError(f"can't mount {what} {v.spec()}: source {v.source} does not exist")
    is_dir = os.path.isdir(v.source)
    dst_fd = destinations.resolve_destination(ex.real(udi), v.destination, is_dir=is_dir, create=True,
                                              what=f"{what} {v.spec()}", on_create=ex._created)
    try:
        target = _fdpath(dst_fd)
        ex.bind(v.source, target, SAFE | (RO if v.read_only else 0), recursive=v.recursive)
        kind = linux.MS_PRIVATE if (v.propagation or style) == "private" else linux.MS_SLAVE
        ex.one(("mount", "", ex.name(target), "", str(kind | (linux.MS_REC if v.recursive else 0)), ""))
    finally:
        os.close(dst_fd)


def make_room(ex, udi: str, image_root: str, dest: str) -> None:
    """A site map whose destination's missing part lies below a directory bound read-only
    from the image (``/var/lib`` of a Debian image, say): that bind is replaced by the UDI
    tmpfs directory beneath it, holding the image's entries bound one by one (as ``/var``
    and ``/opt`` are), so the missing directories are made in the UDI's own storage."""
    parts = [p for p in dest.split("/") if p]
    image_dev = os.stat(ex.real(image_root)).st_dev
    for i in range(1, len(parts)):
        here = os.path.join(udi, *parts[:i])
        real = ex.real(here)
        if os.path.islink(real) or not os.path.isdir(real):
            return
        if os.path.lexists(os.path.join(real, parts[i])):
            continue
        if os.stat(real).st_dev == image_dev and linux.umount(real):
            ex.done.append(("umount", here, str(linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)))
            ex.op_merge(os.path.join(image_root, *parts[:i]), here, frozenset(), frozenset())
        return


def volumes(ex, udi: str, plain, caches, job_id: str) -> None:
    """The user's volumes (bound from ``ex.sources``, opened as the user) and the
    per-node caches, their destinations looked up with the user's rights."""
    if ex.kind == "user":
        _user_volumes(ex, udi, plain)
        return
    fds = ex.sources
    wanted = [(v, stat.S_ISDIR(os.fstat(fd).st_mode)) for v, fd in zip(plain, fds)] + [(v, True) for v in caches]
    targets = destinations.resolve_user_destinations(ex.real(udi), wanted, ex.uid, ex.gid, ex.gids,
                                                     on_create=ex._created)
    try:
        for v, src_fd, (_, _, dst_fd) in zip(plain, fds, targets):
            ex.bind(_fdpath(src_fd), _fdpath(dst_fd), SAFE | (RO if v.read_only else 0), src_name=v.source)
        for index, (v, (parent_fd, name, dst_fd)) in enumerate(zip(caches, targets[len(plain):])):
            _cache(ex, udi, v, index, parent_fd, name, dst_fd, job_id)
    finally:
        for parent_fd, _, dst_fd in targets:
            os.close(parent_fd)
            os.close(dst_fd)


def _cache(ex, udi: str, v, index: int, parent_fd: int, name: str, dst_fd: int, job_id: str) -> None:
    ex.cannot_save("the build made a per-node cache")
    backing = cache.backing_path(ex.config, f"{os.uname().nodename}.{job_id or 'nojob'}.{ex.uid}", index)
    teardown.record_cache(udi, backing)
    cache.create(ex.config, v, backing, _fdpath(dst_fd), ex.uid, ex.gid,
                 reopen=lambda: os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                        dir_fd=parent_fd))


def _user_volumes(ex, udi: str, plain) -> None:
    for v, src_fd in zip(plain, ex.sources):
        is_dir = stat.S_ISDIR(os.fstat(src_fd).st_mode)
        dst_fd = destinations.resolve_destination(ex.real(udi), v.destination, is_dir=is_dir, create=True,
                                                  what=f"volume {v.spec()}", on_create=ex._created)
        try:
            ex.bind(_fdpath(src_fd), _fdpath(dst_fd), SAFE | (RO if v.read_only else 0), src_name=v.source)
        finally:
            os.close(dst_fd)
            os.close(src_fd)

