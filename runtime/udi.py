"""Build and remove the container tree (the "UDI") at ``udiMount``: what setupRoot does.

Layout of a UDI (every mount nosuid,nodev except /dev; the image read-only)::

    <udiMount>/                 tmpfs (rootfsType), read-only at the end unless
                                mountUdiRootWritable=1; a shared mount, so that
                                namespaces made later get slave copies and teardown
                                reaches them
      bin usr lib ...           the image's top-level entries: directories bound from
                                the loop-mounted squashfs at loopMount, symlinks copied
      etc                       read-only overlayfs: site files (etcPath, passwd/group
                                filtered to the user) over the image's /etc
      var, opt                  tmpfs directories holding the image's entries (bound)
      var/tmp                   empty, 1777
      var/shifter/              udi.json (inputs, cleanup record), launch.plan, etc/
      opt/udiImage              copy of optUdiImage; modules/<name> from copyPath
      dev proc sys tmp          the host's (rbind; /tmp bind)
      siteFs, module siteFs     site binds with their flags
      user volumes              sources opened as the user (fd passing), bound by fd
      per-node caches           XFS on a loop device, owned by the user

``teardown`` is idempotent: it unmounts everything under udiMount and loopMount (loop
devices free themselves: autoclear) and removes per-node cache files, after a full,
partial or crashed setup.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from shifter.frozen import field, frozen

from shifter import asuser, files
from shifter.errors import ConfigError, ShifterError, UsageError
from shifter.runtime import cache, devices, etcfiles, jobpath, linux, meta, plan, record, volumes
from shifter.runtime.modules import select_modules
from shifter.runtime import teardown as _teardown
from shifter.runtime.image import ImageRef

RO = linux.MS_RDONLY
SAFE = linux.MS_NOSUID | linux.MS_NODEV
STATE_DIR = "var/shifter"
STATE_FILE = "var/shifter/udi.json"
#: the job user's shared user namespace (an nsfs bind mount) that launchers setns() into
USERNS_FILE = "var/shifter/userns"
#: image top-level names the UDI provides itself
_SPECIAL = {"etc", "dev", "proc", "sys", "tmp", "var", "opt", "run"}


class SetupError(ShifterError):
    """setupRoot failed; everything it had done is undone."""


@frozen
class Request:
    image: ImageRef  # id or local (docker and custom tags are resolved to ids before)
    uid: int
    gid: int
    username: str
    volumes: tuple = ()  # tuple[VolumeMap, ...] (user maps)
    modules: tuple[str, ...] | None = None  # None: the site's defaultModules
    job_id: str = ""
    ssh_pubkey: str | None = None
    hostlist: str | None = None
    gids: tuple[int, ...] = field(default=())  # filled by setup_root when empty
    sshd: object = None  # shifter.runtime.sshd.Setup: prepare the container for the job's sshd


# --------------------------------------------------------------------------- helpers
def _ensure_dir(path: str, mode: int = 0o755) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    os.chmod(path, mode)
    record.op("mkdir", record.P(path), f"{mode:o}")
    record.op("chmod", record.P(path), f"{mode:o}")


def _mkdir_p(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)
    record.op("mkdirp", record.P(path))


def resolve_image(config, image: ImageRef) -> tuple[str, meta.ImageMeta]:
    """(path of the squashfs or directory, its metadata) for an id/local image."""
    if image.type == "local":
        if not config.allowLocalChroot:
            raise UsageError(f"can't use image {image}: local images are not allowed (allowLocalChroot=0)")
        if not os.path.isdir(image.tag):
            raise UsageError(f"can't use image {image}: {image.tag} is not a directory")
        return image.tag, meta.ImageMeta(format="vfs")
    if image.type != "id":
        raise UsageError(f"can't set up image {image}: docker and custom images must be resolved to an id first",
                         "pass 'id <image id>' (shifterimg lookup IMAGE prints it)")
    base = os.path.join(config.imagePath, image.tag)
    squashfs = base + ".squashfs"
    if not os.path.isfile(squashfs):
        raise UsageError(f"can't set up image {image}: {squashfs} does not exist",
                         "pull it first (shifterimg pull IMAGE) or check the id")
    m = meta.read(base + ".meta")
    if m.format != "squashfs":
        raise ConfigError(f"can't set up image {image}: format {m.format!r} is not supported here (squashfs only)")
    return squashfs, m


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


NOT_YOURS_HINT = "'shifterimg images' lists the images you may use; 'shifterimg lookup IMAGE' prints an id"


def check_image_usable(config, image: ImageRef, uid: int, gids) -> None:
    """Refuse an ``id:`` image the caller (not root) may not use: its files must be
    readable by them and its metadata's ACL must allow them.  One message whether the
    image is missing, unreadable or private to others, so that it never tells a user
    whether an image they may not use exists.  Reads as the calling process."""
    if image.type != "id" or uid == 0:
        return
    base = os.path.join(config.imagePath, image.tag)
    try:
        usable = meta.read(base + ".meta").allows(uid, set(gids)) and os.access(base + ".squashfs", os.R_OK)
    except ShifterError:
        usable = False
    if not usable:
        raise UsageError(f"can't use image {image}: there is no such image, or it is not yours to use",
                         NOT_YOURS_HINT)


def check_user_volumes(config, maps, uid: int) -> None:
    """What setupRoot will refuse in the user's volume maps, checked by the calling
    process (the user): a source that is not a directory or regular file they can read
    (``open_source``); a per-node cache over the site's limits.  The source of a
    perNodeCache map is not read (as in Shifter), so not checked."""
    for v in maps:
        if v.per_node_cache is not None:
            cache.check(config, v)
            continue
        try:
            os.close(open_source(v.source))
        except OSError as e:
            raise UsageError(f"can't mount volume source {v.source}: {(e.strerror or str(e)).lower()} "
                             f"(as uid {uid})", "use a directory or file you can read") from None


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
    for fd, path in zip(fds, paths):
        record.register_fd(fd, path)
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


def resolve_destination(udi: str, dest: str, *, is_dir: bool, create: bool, what: str) -> int:
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
                        record.op("touch", record.P(record.at(fd, part)), "644")
                    else:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        record.op("mkdir", record.P(record.at(fd, part)), "755")
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


def resolve_user_destinations(udi: str, wanted, uid: int, gid: int, gids) -> list[tuple[int, str, int]]:
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

        def walk():
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

        answer, fds = asuser.call(uid, gid, gids, walk)
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
    out: list[tuple[int, str, int]] = []
    queue = list(fds)
    try:
        for (v, is_dir), entry in zip(wanted, answer["ok"]):
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
                    f"or the host), where shifter could create it",
                    f"use a destination that exists, or one whose missing directories start at the top "
                    f"level (e.g. /data/...), which shifter creates")
            for i in range(depth, len(parts)):
                last = i == len(parts) - 1
                if last and not is_dir:
                    os.close(os.open(parts[i], os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=fd))
                    record.op("touch", record.P(record.at(fd, parts[i])), "644")
                else:
                    os.mkdir(parts[i], 0o755, dir_fd=fd)
                    record.op("mkdir", record.P(record.at(fd, parts[i])), "755")
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


def _close_state_dir(path: str, uid: int) -> None:
    """The UDI's state directory (udi.json, the launch plan, the user namespace handle):
    root's, searchable by the job's user alone (POSIX ACL), by no one else."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        files.set_acl(fd, 0o700, uids=(uid,) if uid else (), perm=1)
    finally:
        os.close(fd)
    if uid:
        record.fail("the build gave its state directory to a user")
    record.op("chmod", record.P(path), "700")


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _run_hook(script: str, cwd: str, what: str, env: dict[str, str]) -> None:
    from shifter.runtime import proc

    record.fail(f"the build ran a site hook ({what})")
    proc.run(["/bin/sh", script], what, cwd=cwd, timeout=300,
             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env})


# --------------------------------------------------------------------------- state
def _write_state(udi: str, state: dict) -> None:
    path = os.path.join(udi, STATE_FILE)
    text = json.dumps(state, indent=1, sort_keys=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.chmod(path + ".tmp", 0o600)
    os.replace(path + ".tmp", path)
    record.file(path, 0o600, text.encode())


def is_set_up(config, path: str | None = None) -> bool:
    path = path or config.udiMount
    return any(mp == path and source != linux.ANCHOR for mp, _, source in linux.mountinfo())


def job_paths(config, job_id) -> tuple[str, str]:
    """(UDI, image mount point) of job ``job_id``'s prepared container (``jobpath``)."""
    return jobpath.udi(config.udiMount, job_id), jobpath.loop(config.loopMount, job_id)


def prepare_job_dirs(config, job_id, uid: int) -> None:
    """The anchors ``<udiMount>.jobs`` and ``<loopMount>.jobs`` (one per node namespace,
    0711) and the job's directories in them: root's, 0700; the UDI's searchable by the job's
    user alone.  They are made in the anchors' own tmpfs, where no user can write."""
    for mount, sub, users in ((config.udiMount, "root", (uid,) if uid else ()), (config.loopMount, "image", ())):
        top = jobpath.jobs_root(mount)
        os.makedirs(top, mode=0o755, exist_ok=True)
        linux.ensure_anchor(top, mode=0o711)
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            name = str(job_id)
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            jfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                files.set_acl(jfd, 0o700, uids=users, perm=1)
                try:
                    os.mkdir(sub, 0o755, dir_fd=jfd)
                except FileExistsError:
                    pass
            finally:
                os.close(jfd)
        finally:
            os.close(fd)


FAULT_FILE = ".fault"


def fault_point(config, name: str) -> None:
    """The prolog's fault-injection point, for tests: if the node's jobs anchor holds a
    file ``.fault`` (root's: only root can write there) whose text is ``kill-NAME``, the
    process kills itself here with SIGKILL, as a prolog killed halfway (by Slurm's
    PrologTimeout, say) would be.  One failed stat otherwise."""
    import signal

    path = os.path.join(jobpath.jobs_root(config.udiMount), FAULT_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        wanted = os.fstat(fd).st_uid == 0 and os.read(fd, 64).decode(errors="replace").strip() == f"kill-{name}"
    finally:
        os.close(fd)
    if wanted:
        os.kill(os.getpid(), signal.SIGKILL)


def teardown_job(config, job_id, log=lambda msg: None) -> bool:
    """Remove job ``job_id``'s prepared container on this node (idempotent; after a full,
    failed or killed setup): its mounts, its per-node cache files (also those a crash left
    unrecorded), its directories.  Nothing of other jobs is touched."""
    from shifter.runtime import sshd

    udi_path, loop_path = job_paths(config, job_id)
    # first every process in the container (the job's sshd, its sessions: docs/sshd.md)
    removed = bool(sshd.stop(jobpath.job_dir(config.udiMount, job_id), udi_path, log))
    removed |= _teardown.teardown(udi_path, loop_path, config.perNodeCachePath, log)
    prefix = f"shifter-cache.{os.uname().nodename}.{job_id}."
    try:
        leftovers = [n for n in os.listdir(config.perNodeCachePath) if n.startswith(prefix)]
    except OSError:
        leftovers = []
    for name in leftovers:
        cache.remove(os.path.join(config.perNodeCachePath, name))
        removed = True
    for path in (jobpath.error_file(config.udiMount, job_id), udi_path, loop_path,
                 jobpath.job_dir(config.udiMount, job_id), jobpath.job_dir(config.loopMount, job_id)):
        try:
            (os.unlink if path.endswith("/error") else os.rmdir)(path)
        except FileNotFoundError:
            pass
    return removed


# --------------------------------------------------------------------------- build
def _merge_dir(image_dir: str, target: str, skip: set[str], bind=linux.bind, hide=frozenset()) -> None:
    """Put each entry of ``image_dir`` into the tmpfs dir ``target``: directories and
    files are bound read-only (with ``bind``), symlinks copied.  An image whose /var or
    /opt is a symlink gets an empty one: the link would resolve on the host.  Entries
    whose path is in ``hide`` are left out (a local image: shifter's own anchors)."""
    if os.path.islink(image_dir):
        return
    try:
        entries = list(os.scandir(image_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name in skip or os.path.normpath(entry.path) in hide:
            continue
        dst = os.path.join(target, entry.name)
        if entry.is_symlink():
            link = os.readlink(entry.path)
            os.symlink(link, dst)
            record.op("symlink", link, record.P(dst))
        elif entry.is_dir():
            os.mkdir(dst, 0o755)
            record.op("mkdir", record.P(dst), "755")
            bind(entry.path, dst, RO | SAFE)
        elif entry.is_file():
            os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            record.op("touch", record.P(dst), "644")
            bind(entry.path, dst, RO | SAFE)
        # sockets, fifos and device nodes of an image are left out


def hidden_host_paths(config) -> frozenset[str]:
    """What a container of a host directory (a ``local:`` image; ``--ccm``'s ``local:/``)
    must not show of the host: shifter's anchors, where every job's container and image
    are mounted (``udiMount``, ``loopMount`` and their ``.jobs`` anchors).  Directories
    are bound without their submounts, so an anchor deeper than the merged levels
    (``/``, ``/var``, ``/opt``) shows only as the empty directory below it."""
    paths = set()
    for mount in (config.udiMount, config.loopMount):
        for path in (mount, jobpath.jobs_root(mount)):
            paths.add(os.path.normpath(path))
            paths.add(os.path.realpath(path))
    return frozenset(paths)


def setup_root(config, req: Request, log=lambda msg: None, private: bool = False, job: bool = False) -> plan.Plan:
    """Build the UDI for ``req``.  On any failure everything done is undone, then the
    error is raised.  ``private``: the caller is in its own private mount namespace (a
    launcher building a container for one process), where it may stack over a UDI."""
    if os.geteuid() != 0:
        raise UsageError("setupRoot must run as root")
    t0 = time.perf_counter()
    image_path, image_meta = resolve_image(config, req.image)
    gids = req.gids or tuple(etcfiles.user_groups(req.username, req.gid, config.maxGroupCount))
    if not image_meta.allows(req.uid, set(gids)):
        raise UsageError(f"can't use image {req.image}: it is private and uid {req.uid} is not allowed",
                         "ask the image's owner to add you (shifterimg pull --user/--group)")
    modules = select_modules(config, req.modules)
    volumes.destination_conflicts(req.volumes)
    for v in req.volumes:
        if v.per_node_cache is not None:
            cache.check(config, v)
    paths = job_paths(config, req.job_id) if job else (config.udiMount, config.loopMount)
    if not private and is_set_up(config, paths[0]):
        raise SetupError(f"can't set up {paths[0]}: a UDI is already mounted there",
                         "run unsetupRoot first" if not job else "the job's epilog removes it")
    plain = [v for v in req.volumes if v.per_node_cache is None]
    fds = open_sources_as_user([v.source for v in plain], req.uid, req.gid, gids)
    try:
        if job:
            prepare_job_dirs(config, req.job_id, req.uid)
        return _build(config, req, image_path, image_meta, gids, modules, plain, fds, log, t0, private, paths, job)
    except BaseException as e:
        try:
            if job:
                teardown_job(config, req.job_id)
            else:
                teardown(config)
        except Exception as cleanup:  # noqa: BLE001 - report both
            log(f"cleanup after a failed setup also failed: {cleanup}")
        if isinstance(e, ShifterError):
            raise
        if isinstance(e, OSError):
            raise SetupError(f"can't set up the UDI: {e.strerror or e}"
                             + (f": {e.filename}" if e.filename else "")) from None
        raise
    finally:
        for fd in fds:
            os.close(fd)


def _build(config, req, image_path, image_meta, gids, modules, plain, fds, log, t0, private=False,
           paths=None, job=False) -> plan.Plan:
    udi, loop = paths or (config.udiMount, config.loopMount)
    if not job:  # a job's UDI and image sit in the shared anchors of jobpath
        _mkdir_p(udi)
        _mkdir_p(loop)
        linux.ensure_anchor(udi)
    linux.mount("shifter-udi", udi, config.rootfsType, SAFE, "mode=755")
    linux.make_propagation(udi, linux.MS_SHARED)
    _mkdir_p(os.path.join(udi, STATE_DIR))
    _close_state_dir(os.path.join(udi, STATE_DIR), req.uid)
    state = {"version": 1, "uid": req.uid, "gid": req.gid, "username": req.username, "job_id": req.job_id,
             "image": str(req.image), "image_path": image_path, "volumes": [v.spec() for v in req.volumes],
             "modules": [m.name for m in modules], "ssh_pubkey": req.ssh_pubkey, "hostlist": req.hostlist,
             "complete": False, "created": time.time()}
    _write_state(udi, state)

    # the image, read-only
    if req.image.type == "local":
        image_root = image_path
    else:
        if not job:
            linux.ensure_anchor(loop)
        linux.mount_image(image_path, loop, RO | SAFE, share=private)
        linux.make_propagation(loop, linux.MS_SHARED)
        if job:
            fault_point(config, "after-image")
        image_root = loop
    hook_env = {"SHIFTER_UDI": udi, "SHIFTER_USER": req.username, "SHIFTER_UID": str(req.uid)}
    if config.sitePreMountHook:
        _run_hook(config.sitePreMountHook, udi, "run sitePreMountHook", hook_env)

    hide = hidden_host_paths(config) if req.image.type == "local" else frozenset()
    _merge_dir(image_root, udi, _SPECIAL | {"shifter"}, hide=hide)
    for name in ("var", "opt", "run", "tmp", "dev", "proc", "sys", "etc"):
        _ensure_dir(os.path.join(udi, name))
    _merge_dir(os.path.join(image_root, "var"), os.path.join(udi, "var"), {"tmp", "shifter", "hostsfile"}, hide=hide)
    _ensure_dir(os.path.join(udi, "var", "tmp"), 0o1777)
    _merge_dir(os.path.join(image_root, "opt"), os.path.join(udi, "opt"), {"udiImage"}, hide=hide)

    # /etc: site files over the image's, one read-only overlay
    site_etc = os.path.join(udi, STATE_DIR, "etc")
    os.mkdir(site_etc, 0o755)
    record.op("mkdir", record.P(site_etc), "755")
    etcfiles.build(site_etc, config.etcPath, req.uid, req.username, list(gids),
                   shell_exists=lambda shell: _in_image(image_root, shell))
    record.files(site_etc)
    image_etc = os.path.join(image_root, "etc")
    if os.path.isdir(image_etc) and not os.path.islink(image_etc):
        linux.mount("shifter-etc", os.path.join(udi, "etc"), "overlay", RO | SAFE,
                    f"lowerdir={site_etc}:{image_etc}")
    else:
        linux.bind(site_etc, os.path.join(udi, "etc"), RO | SAFE)

    # the host's /dev, /proc, /sys and /tmp, each made a slave at once: a mount or unmount
    # in the UDI must never propagate to the host's own trees
    linux.bind("/dev", os.path.join(udi, "dev"), recursive=True)
    linux.make_propagation(os.path.join(udi, "dev"), linux.MS_SLAVE, recursive=True)
    linux.remount(os.path.join(udi, "dev"), linux.MS_NOSUID)
    linux.harden_tree(os.path.join(udi, "dev"), SAFE)  # /dev/shm, /dev/pts, ...
    for name in ("proc", "sys"):
        linux.bind(f"/{name}", os.path.join(udi, name), recursive=True)
        linux.make_propagation(os.path.join(udi, name), linux.MS_SLAVE, recursive=True)
        linux.remount(os.path.join(udi, name), SAFE | linux.MS_NOEXEC)
        linux.harden_tree(os.path.join(udi, name), SAFE | linux.MS_NOEXEC)
    linux.bind("/tmp", os.path.join(udi, "tmp"), SAFE)
    linux.make_propagation(os.path.join(udi, "tmp"), linux.MS_SLAVE)

    if req.sshd is not None:  # the OpenSSH bundle at /opt/udiImage/ssh, the job's keys (docs/sshd.md)
        from shifter.runtime import sshd

        record.fail("the build prepared a job's sshd")
        sshd.prepare(udi, req.sshd.bundle, req.uid, req.gid, req.sshd.pubkey, req.sshd.address,
                     list(req.sshd.allowed))
        if req.sshd.state_dir:  # as early as it can run: its start-up (~10 ms of
            # loading libraries) overlaps the rest of the build
            sshd.spawn(req.sshd.state_dir, udi, req.sshd.bundle, req.uid, req.gid, gids, req.sshd.username,
                       req.sshd.address, req.sshd.port)

    # From here on no mount made in the UDI may propagate out of it: the image's binds
    # are peers of the image's mount at loopMount, so a site map on /home of the image
    # would appear there too.  Every mount in the tree becomes a slave of the peer group
    # it came from and the master of a new one of its own (made again before the user's
    # volumes, for the site's maps).
    linux.make_propagation(udi, linux.MS_SLAVE, recursive=True)
    linux.make_propagation(udi, linux.MS_SHARED, recursive=True)

    # site filesystems, then the post-mount hook
    site_caches = [v for v in config.siteFs if v.per_node_cache is not None]  # made with the user's
    for v in config.siteFs:
        if v.per_node_cache is None:
            _make_room(udi, image_root, v.destination)
            _bind_site(udi, v, "siteFs", style=config.mountPropagationStyle)
    if config.sitePostMountHook:
        _run_hook(config.sitePostMountHook, udi, "run sitePostMountHook", hook_env)

    # /opt/udiImage and modules
    opt_udi = os.path.join(udi, "opt", "udiImage")
    _ensure_dir(opt_udi)
    if config.optUdiImage and os.path.isdir(config.optUdiImage):
        copytree(config.optUdiImage, opt_udi)
    for module in modules:
        if module.copy_path:
            copytree(module.copy_path, os.path.join(opt_udi, "modules", module.name))
        site_caches += [v for v in module.site_fs if v.per_node_cache is not None]
        for v in module.site_fs:
            if v.per_node_cache is None:
                _make_room(udi, image_root, v.destination)
                _bind_site(udi, v, f"module_{module.name}_siteFs of {config.path}",
                           style=config.mountPropagationStyle)
        if module.roothook:
            _run_hook(module.roothook, udi, f"run the roothook of module {module.name}",
                      {**hook_env, "SHIFTER_MODULE": module.name})
    if devices.needs_blank(modules):  # each step covers the GPUs that are not its own
        record.fail("a module has per-GPU devices (each step covers those not its own)")
        devices.make_blank(udi)

    if req.hostlist is not None:  # /var/hostsfile (docs/sshd.md)
        from shifter.runtime import hostsfile

        _write_root_file(os.path.join(udi, hostsfile.PATH), hostsfile.render(hostsfile.parse_option(req.hostlist)))

    # Nothing mounted from here on may reach a mount outside the UDI: every mount in the
    # tree (the host's /dev, /proc, /sys, /tmp, site and image binds) becomes a slave of
    # the peer group it came from (it still sees what the host mounts later) and the
    # master of a new one (namespaces made later get copies that teardown reaches).
    linux.make_propagation(udi, linux.MS_SLAVE, recursive=True)
    linux.make_propagation(udi, linux.MS_SHARED, recursive=True)

    # the user's volumes and per-node caches (the site's too): destinations looked up with
    # the user's rights, missing directories made only in the UDI's own tmpfs
    caches = site_caches + [v for v in req.volumes if v.per_node_cache is not None]
    targets = resolve_user_destinations(
        udi, [(v, stat.S_ISDIR(os.fstat(fd).st_mode)) for v, fd in zip(plain, fds)] + [(v, True) for v in caches],
        req.uid, req.gid, gids)
    try:
        for v, src_fd, (_, _, dst_fd) in zip(plain, fds, targets):
            linux.bind(_fdpath(src_fd), _fdpath(dst_fd), SAFE | (RO if v.read_only else 0))
        for index, (v, (parent_fd, name, dst_fd)) in enumerate(zip(caches, targets[len(plain):])):
            record.fail("the build made a per-node cache")
            backing = cache.backing_path(config, f"{os.uname().nodename}.{req.job_id or 'nojob'}.{req.uid}", index)
            _teardown.record_cache(udi, backing)
            cache.create(config, v, backing, _fdpath(dst_fd), req.uid, req.gid,
                         reopen=lambda p=parent_fd, n=name: os.open(
                             n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=p))
    finally:
        for parent_fd, _, dst_fd in targets:
            os.close(parent_fd)
            os.close(dst_fd)

    # the launch plan, then the root read-only
    env_rules = [m.env for m in modules] + [config.siteEnv]
    if req.sshd is not None:  # the injected ssh client on PATH
        from shifter.runtime import sshd
        from shifter.runtime.config import EnvRules

        env_rules.append(EnvRules(append=(("PATH", sshd.IN_UDI + "/bin"),)))
    launch = plan.Plan(
        uid=req.uid, gid=req.gid, jobid=req.job_id, image_type=req.image.type, image_id=req.image.tag,
        volumes=volumes.format_volumes(req.volumes), modules=",".join(sorted(m.name for m in modules)),
        modules_default="1" if req.modules is None else "0", udi=udi, workdir=image_meta.workdir or "",
        userhook=tuple(m.userhook for m in modules if m.userhook),
        gpudev=tuple(p for m in modules for p in m.gpu_devices),
        entry=command_argv(image_meta.entry), cmd=command_argv(image_meta.cmd),
        env=tuple(plan.env_ops(env_rules, image_meta.env_dict())),
    )
    if not private:  # a private UDI is entered only by the process that built it
        plan.write(udi, launch)
    if req.uid != 0:
        # one user namespace for all of this user's tasks in this UDI (see linux.persist_user_ns)
        userns = os.path.join(udi, USERNS_FILE)
        os.close(os.open(userns, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o444))
        linux.persist_user_ns(req.uid, req.gid, userns)
    state["complete"] = True
    state["setup_seconds"] = round(time.perf_counter() - t0, 4)
    _write_state(udi, state)
    if not config.mountUdiRootWritable:
        linux.remount(udi, RO | SAFE)
    log(f"UDI ready at {udi} in {time.perf_counter() - t0:.3f} s")
    return launch


def _write_root_file(path: str, text: str) -> None:
    """A new root-owned 0644 file in the UDI's own tmpfs."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    record.file(path, 0o644, text.encode())


def _in_image(image_root: str, path: str) -> bool:
    """Whether ``path`` (an absolute path in the image, e.g. a login shell) is there: a
    symbolic link counts (the image's /bin/sh often is one); nothing is followed."""
    if not path.startswith("/") or "\0" in path:
        return False
    try:
        os.lstat(os.path.join(image_root, path.lstrip("/")))
        return True
    except (OSError, ValueError):
        return False


def copytree(source: str, target: str) -> None:
    """Copy a site directory (optUdiImage, a module's copyPath) into the UDI."""
    import shutil

    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    record.op("copytree", source, record.P(target))


def command_argv(value) -> tuple[str, ...]:
    """An image ENTRYPOINT/CMD as argv: exec form as is, shell form through /bin/sh -c."""
    if value is None:
        return ()
    if isinstance(value, tuple):
        return value
    return ("/bin/sh", "-c", value)


def _make_room(udi: str, image_root: str, dest: str, bind=linux.bind) -> None:
    """A site map whose destination's missing part lies below a directory bound read-only
    from the image (``/var/lib`` of a Debian image, say): that bind is replaced by the UDI
    tmpfs directory beneath it, holding the image's entries bound one by one (as ``/var``
    and ``/opt`` are), so the missing directories are made in the UDI's own storage."""
    parts = [p for p in dest.split("/") if p]
    image_dev = os.stat(image_root).st_dev
    for i in range(1, len(parts)):
        here = os.path.join(udi, *parts[:i])
        if os.path.islink(here) or not os.path.isdir(here):
            return
        if os.path.lexists(os.path.join(here, parts[i])):
            continue
        if os.stat(here).st_dev == image_dev and linux.umount(here):
            _merge_dir(os.path.join(image_root, *parts[:i]), here, set(), bind=bind)
        return


def _bind_site(udi: str, v, what: str, bind=linux.bind, style: str | None = None) -> None:
    """A site map: the source is trusted (root), the destination resolved in the UDI.
    Propagation: the map's own ``slave``/``private`` flag, else ``style`` (the site's
    mountPropagationStyle: with ``slave``, mounts the host makes below the source later
    appear in the container)."""
    if v.per_node_cache is not None:  # setupRoot makes them; never bind the (unused) source instead
        raise ConfigError(f"can't mount {what} {v.spec()}: a per-node cache needs a container that "
                          "setupRoot builds as root", "remove the map from the site's configuration, "
                          "or use a job whose container setupRoot builds")
    if not os.path.exists(v.source):
        raise ConfigError(f"can't mount {what} {v.spec()}: source {v.source} does not exist")
    is_dir = os.path.isdir(v.source)
    dst_fd = resolve_destination(udi, v.destination, is_dir=is_dir, create=True, what=f"{what} {v.spec()}")
    try:
        target = _fdpath(dst_fd)
        bind(v.source, target, SAFE | (RO if v.read_only else 0), recursive=v.recursive)
        kind = linux.MS_PRIVATE if (v.propagation or style) == "private" else linux.MS_SLAVE
        linux.make_propagation(target, kind, recursive=v.recursive)
    finally:
        os.close(dst_fd)


# --------------------------------------------------------------------------- teardown
def remove_anchors(config) -> None:
    """Unmount the (empty) anchors too, after teardown: for tests and benchmarks that
    delete their udiMount directories."""
    for path in (config.udiMount, config.loopMount):
        while any(mp == path and src == linux.ANCHOR for mp, _, src in linux.mountinfo()):
            linux.umount(path)


def teardown(config, log=lambda msg: None) -> bool:
    """Remove the UDI (see ``shifter.runtime.teardown``); idempotent."""
    return _teardown.teardown(config.udiMount, config.loopMount, config.perNodeCachePath, log)
