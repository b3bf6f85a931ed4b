"""Volume sources and destinations, looked up with the user's rights.

A user's volume source is opened as the user (O_PATH, in a child with their
credentials, or by the user's own process in a private container) and bound from that
fd: what is bound is exactly what the user could reach then.  A destination inside the
container is resolved without following any symlink; what is missing is created only in
the container's own tmpfs.  ``on_create(kind, dir_fd, name)`` (``kind``: ``mkdir`` or
``touch``) tells the executor what was made, for the private plan it writes.
"""

from __future__ import annotations

import errno
import os
import stat

from shifter import asuser
from shifter.errors import ShifterError, UsageError


class SetupError(ShifterError):
    """setupRoot failed; everything it had done is undone."""


def _none(kind: str, dir_fd: int, name: str) -> None:
    pass


def open_source(path: str) -> int:
    """An O_PATH fd of a volume source the caller (already the user) may read: only a
    readable directory or regular file.  Raises OSError with the reason."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise OSError(errno.EINVAL, "not a directory or regular file")
        want = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
        if not os.access(f"/proc/self/fd/{fd}", want):
            raise OSError(errno.EACCES, "permission denied")
    except BaseException:
        os.close(fd)
        raise
    return fd



def open_sources_as_user(paths: list[str], uid: int, gid: int, gids: tuple[int, ...]) -> list[int]:
    """Open each path as the user (O_PATH), in a child with the user's credentials, and
    pass the fds back: what is bound later is exactly what the user could reach then,
    whatever they swap afterwards.  Only readable directories and regular files."""
    if not paths:
        return []

    def work():
        fds = []
        try:
            for path in paths:
                try:
                    fds.append(open_source(path))
                except OSError as e:
                    return {"error": path, "why": e.strerror or str(e)}, []
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return {"ok": len(fds)}, fds

    answer, fds = asuser.call(uid, gid, gids, work)
    if "error" in answer:
        for fd in fds:
            os.close(fd)
        raise UsageError(f"can't mount volume source {answer['error']}: {answer['why']} (as uid {uid})",
                         "use a directory or file you can read")
    if len(fds) != len(paths):
        for fd in fds:
            os.close(fd)
        raise SetupError("can't open the volume sources as the user (the helper process failed)")
    return fds



def resolve_destination(udi: str, dest: str, *, is_dir: bool, create: bool, what: str, on_create=_none) -> int:
    """Open ``dest`` inside the UDI without following any symlink (an image may make
    /data a link to /etc or to the host); create missing parts where the UDI is
    writable.  Returns an O_PATH fd of the destination."""
    fd = os.open(udi, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    parts = [p for p in dest.split("/") if p]
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nfd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise UsageError(f"can't mount {what}: {dest} does not exist in the image") from None
                try:
                    if last and not is_dir:
                        os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                         | os.O_CLOEXEC, 0o644, dir_fd=fd))
                        on_create("touch", fd, part)
                    else:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        on_create("mkdir", fd, part)
                except OSError as e:
                    if e.errno == errno.EROFS:
                        raise UsageError(
                            f"can't mount {what}: {dest} does not exist in the image and can't be created "
                            f"there ({'/' + '/'.join(parts[:i]) or '/'} is read-only)",
                            "choose a destination that exists in the image, or a new top-level directory") from None
                    raise
                nfd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            st = os.fstat(nfd)
            if stat.S_ISLNK(st.st_mode):
                os.close(nfd)
                raise UsageError(f"can't mount {what}: {'/' + '/'.join(parts[:i + 1])} is a symbolic link "
                                 f"in the image", "mount on the link's target path instead")
            if (not last or is_dir) and not stat.S_ISDIR(st.st_mode):
                os.close(nfd)
                raise UsageError(f"can't mount {what}: {'/' + '/'.join(parts[:i + 1])} is not a directory")
            if last and not is_dir and not stat.S_ISREG(st.st_mode):
                os.close(nfd)
                raise UsageError(f"can't mount {what}: {dest} is not a regular file in the image")
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise



def resolve_user_destinations(udi: str, wanted, uid: int, gid: int, gids,
                              on_create=_none) -> list[tuple[int, str, int]]:
    """For each (volume map, is_dir) of a user's request: (fd of the destination's parent
    directory, the destination's last name, O_PATH fd of the destination).

    The destination is looked up inside the UDI with the user's own rights (in a child
    process with the user's credentials), never following a symlink: a refusal tells
    the user only what they could see themselves.  A missing destination, or missing
    parent directories, are then made by root only where they would be in the UDI's
    own tmpfs, which vanishes with it; never on a host or image file system bound into
    the UDI (the host's /dev, /tmp, a site directory, the image): that map is refused."""
    if not wanted:
        return []
    top = os.open(udi, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        own_dev = os.fstat(top).st_dev
        answer, fds = asuser.call(uid, gid, gids, lambda: _walk(top, wanted))
    finally:
        os.close(top)
    if "ok" not in answer:
        for fd in fds:
            os.close(fd)
        if "refused" in answer:
            raise UsageError(answer["refused"], answer.get("hint"))
        if "error" in answer:
            raise UsageError(f"can't mount a volume: {answer['error']}: {answer['why']} (as uid {uid})")
        raise SetupError("can't look up the volume destinations as the user (the helper process failed)")
    return _make_missing(wanted, answer["ok"], list(fds), own_dev, on_create)


def _walk(top: int, wanted):
    """In the child with the user's credentials: each destination's deepest existing
    part, opened without following a symlink (a refusal says what the user could see)."""
    answer, fds = [], []
    for v, is_dir in wanted:
        what = f"volume {v.spec()}"
        parts = [p for p in v.destination.split("/") if p]
        fd = os.dup(top)
        depth = 0
        try:
            while depth < len(parts):
                try:
                    nfd = os.open(parts[depth], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    break
                except PermissionError:
                    raise asuser.Refusal(
                        f"can't mount {what}: {'/' + '/'.join(parts[:depth]) or '/'} in the container: "
                        "permission denied", "choose a destination you can reach") from None
                st = os.fstat(nfd)
                shown = "/" + "/".join(parts[:depth + 1])
                last = depth == len(parts) - 1
                problem = None
                if stat.S_ISLNK(st.st_mode):
                    problem = (f"{shown} is a symbolic link in the container",
                               "mount on the link's target path instead")
                elif (not last or is_dir) and not stat.S_ISDIR(st.st_mode):
                    problem = (f"{shown} is not a directory", None)
                elif last and not is_dir and not stat.S_ISREG(st.st_mode):
                    problem = (f"{shown} is not a regular file", None)
                if problem:
                    os.close(nfd)
                    raise asuser.Refusal(f"can't mount {what}: {problem[0]}", problem[1])
                if last:  # keep the parent: fd stays, nfd is the destination
                    answer.append({"depth": depth})
                    fds += [fd, nfd]
                    fd = None
                    break
                os.close(fd)
                fd = nfd
                depth += 1
            else:  # pragma: no cover - the loop breaks on the last part
                pass
            if fd is not None:  # parts[depth:] are missing; fd is the deepest directory
                answer.append({"depth": depth, "missing": True})
                fds.append(fd)
                fd = None
        finally:
            if fd is not None:
                os.close(fd)
    return {"ok": answer}, fds


def _make_missing(wanted, found, queue: list[int], own_dev: int, on_create) -> list[tuple[int, str, int]]:
    """As root: make what is missing of each destination, only in the UDI's own tmpfs."""
    out: list[tuple[int, str, int]] = []
    try:
        for (v, is_dir), entry in zip(wanted, found):
            parts = [p for p in v.destination.split("/") if p]
            depth = entry["depth"]
            if not entry.get("missing"):
                out.append((queue.pop(0), parts[-1], queue.pop(0)))
                continue
            fd = queue.pop(0)
            if os.fstat(fd).st_dev != own_dev:
                os.close(fd)
                where = "/" + "/".join(parts[:depth])
                raise UsageError(
                    f"can't mount volume {v.spec()}: {'/' + '/'.join(parts[:depth + 1])} does not exist in the "
                    f"container, and {where} is not the container's own file system (it comes from the image "
                    "or the host), where shifter could create it",
                    "use a destination that exists, or one whose missing directories start at the top "
                    "level (e.g. /data/...), which shifter creates")
            for i in range(depth, len(parts)):
                last = i == len(parts) - 1
                if last and not is_dir:
                    os.close(os.open(parts[i], os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=fd))
                    on_create("touch", fd, parts[i])
                else:
                    os.mkdir(parts[i], 0o755, dir_fd=fd)
                    on_create("mkdir", fd, parts[i])
                nfd = os.open(parts[i], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                if last:
                    out.append((fd, parts[i], nfd))
                else:
                    os.close(fd)
                    fd = nfd
    except BaseException:
        for fd in queue:
            os.close(fd)
        for parent_fd, _, dst_fd in out:
            os.close(parent_fd)
            os.close(dst_fd)
        raise
    return out
