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

The layout is ``shifter.runtime.builder.planner``'s (the same planner lays out private
containers), run by ``shifter.runtime.builder.execute``.  ``teardown`` is idempotent: it unmounts everything under udiMount and loopMount (loop
devices free themselves: autoclear) and removes per-node cache files, after a full,
partial or crashed setup.
"""

from __future__ import annotations

import os
import time
from shifter.frozen import field, frozen

from shifter import files
from shifter.errors import ConfigError, ShifterError, UsageError
from shifter.runtime.builder import cache, execute, planner
from shifter.runtime import etcfiles, jobpath, linux, meta, plan, volumes
from shifter.runtime.config import EnvRules
from shifter.runtime.builder.destinations import SetupError, open_source, open_sources_as_user
from shifter.runtime.modules import select_modules
from shifter.runtime.builder import teardown as _teardown
from shifter.runtime.image import ImageRef

STATE_DIR = planner.STATE_DIR
STATE_FILE = planner.STATE_FILE
USERNS_FILE = planner.USERNS_FILE
fault_point = execute.fault_point  # the prolog's fault-injection point (tests)
__all__ = ["SetupError", "fault_point", "open_source", "setup_root", "teardown"]


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
    sshd: object = None  # shifter.runtime.builder.sshd.Setup: prepare the container for the job's sshd


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


def teardown_job(config, job_id, log=lambda msg: None) -> bool:
    """Remove job ``job_id``'s prepared container on this node (idempotent; after a full,
    failed or killed setup): its mounts, its per-node cache files (also those a crash left
    unrecorded), its directories.  Nothing of other jobs is touched."""
    # start-up: sshd (~2 ms: base64, select and its own code); the epilog needs it here, while
    # setupRoot, the launcher and the submission's checks import this module without a job
    from shifter.runtime.builder import sshd

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


def setup_root(config, req: Request, log=lambda msg: None, private: bool = False, job: bool = False,
               on_built=None) -> plan.Plan:
    """Build the UDI for ``req``.  On any failure everything done is undone, then the
    error is raised.  ``private``: the caller is in its own private mount namespace (a
    launcher building a container for one process), where it may stack over a UDI.
    ``on_built(executor)``: called once it is built (the records of what was done:
    ``execute.Executor.done``)."""
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
        return _build(config, req, image_path, image_meta, gids, modules, fds, log, t0, private, paths, job,
                      on_built)
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


def _build(config, req, image_path, image_meta, gids, modules, fds, log, t0, private, paths, job,
           on_built) -> plan.Plan:
    """Plan the UDI (``planner``), then run the plan (``execute``: the prolog and setupRoot
    have Python running already; the compiled executor would only add an exec)."""
    udi, loop = paths
    local = req.image.type == "local"
    launch = _launch_plan(config, req, image_meta, modules, udi)
    target = planner.Target("root", udi, loop=loop, image=image_path if local else None, prepared=not private,
                            job=job)
    ops = planner.plan(config, req, target, image_path, modules, gids, created=time.time(),
                       hide=hidden_host_paths(config) if local else frozenset(), launch=launch)
    ex = execute.Executor("root", config, req.uid, req.gid, gids, sources=fds, share=private, t0=t0,
                          records=on_built is not None)
    ex.run(ops)
    if on_built is not None:
        on_built(ex)
    log(f"UDI ready at {udi} in {time.perf_counter() - t0:.3f} s")
    return launch


def _launch_plan(config, req, image_meta, modules, udi: str) -> plan.Plan:
    env_rules = [m.env for m in modules] + [config.siteEnv]
    if req.sshd is not None:  # the injected ssh client on PATH
        from shifter.runtime.builder import sshd  # start-up: only jobs with the job's sshd (see teardown_job)

        env_rules.append(EnvRules(append=(("PATH", sshd.IN_UDI + "/bin"),)))
    return plan.Plan(
        uid=req.uid, gid=req.gid, jobid=req.job_id, image_type=req.image.type, image_id=req.image.tag,
        volumes=volumes.format_volumes(req.volumes), modules=",".join(sorted(m.name for m in modules)),
        modules_default="1" if req.modules is None else "0", udi=udi, workdir=image_meta.workdir or "",
        userhook=tuple(m.userhook for m in modules if m.userhook),
        gpudev=tuple(p for m in modules for p in m.gpu_devices),
        entry=command_argv(image_meta.entry), cmd=command_argv(image_meta.cmd),
        env=tuple(plan.env_ops(env_rules, image_meta.env_dict())),
    )


def command_argv(value) -> tuple[str, ...]:
    """An image ENTRYPOINT/CMD as argv: exec form as is, shell form through /bin/sh -c."""
    if value is None:
        return ()
    if isinstance(value, tuple):
        return value
    return ("/bin/sh", "-c", value)


# --------------------------------------------------------------------------- teardown
def remove_anchors(config) -> None:
    """Unmount the (empty) anchors too, after teardown: for tests and benchmarks that
    delete their udiMount directories."""
    for path in (config.udiMount, config.loopMount):
        while any(mp == path and src == linux.ANCHOR for mp, _, src in linux.mountinfo()):
            linux.umount(path)


def teardown(config, log=lambda msg: None) -> bool:
    """Remove the UDI (see ``shifter.runtime.builder.teardown``); idempotent."""
    return _teardown.teardown(config.udiMount, config.loopMount, config.perNodeCachePath, log)
