"""Per-node caches: ``--volume=/any:/dst:perNodeCache=size=10G[,fs=xfs]``.

A sparse file in the site's ``perNodeCachePath`` gets a fresh XFS (``mkfsXfsPath``), is
attached to a loop device (autoclear) and mounted at the destination, owned by the
user.  ``perNodeCacheSizeLimit`` and ``perNodeCacheAllowedFsType`` are enforced before
anything is created.  The backing file is removed at teardown.
"""

from __future__ import annotations

import os

from shifter.errors import UsageError
from shifter.runtime import linux


def check(config, volume) -> None:
    cache = volume.per_node_cache
    if cache.fs not in config.perNodeCacheAllowedFsType:
        raise UsageError(
            f"can't create the per-node cache at {volume.destination}: filesystem {cache.fs!r} is not "
            f"allowed here", f"allowed: {', '.join(config.perNodeCacheAllowedFsType)}")
    if config.perNodeCacheSizeLimit is not None and cache.size > config.perNodeCacheSizeLimit:
        raise UsageError(
            f"can't create the per-node cache at {volume.destination}: size {cache.size} bytes is over "
            f"the site limit of {config.perNodeCacheSizeLimit} bytes",
            "ask for less (perNodeCache=size=...)")


def backing_path(config, tag: str, index: int) -> str:
    return os.path.join(config.perNodeCachePath, f"shifter-cache.{tag}.{index}.xfs")


def create(config, volume, backing: str, target: str, uid: int, gid: int, reopen=None) -> None:
    """Make the filesystem in ``backing`` and mount it on ``target`` (an existing dir),
    then give its root to the user.  ``reopen()`` opens the target again after the mount
    (lookups cross into the new file system); what it opens must be the new file system's
    root, or nothing is changed: root never follows a path a user could swap meanwhile."""
    from shifter.runtime import proc  # start-up: subprocess (~6 ms), only jobs with a per-node cache

    cache = volume.per_node_cache
    os.makedirs(config.perNodeCachePath, mode=0o755, exist_ok=True)
    fd = os.open(backing, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, cache.size)
    finally:
        os.close(fd)
    argv = [config.mkfsXfsPath, "-q", "-f"]
    proc.run(argv + [backing], f"make the per-node cache filesystem for {volume.destination}", timeout=120)
    fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        with linux.loop_device(fd, read_only=False) as dev:
            # the mount holds the loop device; with autoclear it is freed at umount
            linux.mount(dev, target, cache.fs, linux.MS_NOSUID | linux.MS_NODEV)
            device = os.stat(dev).st_rdev
    finally:
        os.close(fd)
    if reopen is None:
        root_fd = os.open(linux.mounted_path(target), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    else:
        root_fd = reopen()
    try:
        if os.fstat(root_fd).st_dev != device:
            raise UsageError(f"can't create the per-node cache at {volume.destination}: the destination "
                             "changed while it was being mounted", "don't move the destination during setup")
        os.fchown(root_fd, uid, gid)
        os.fchmod(root_fd, 0o700)
    finally:
        os.close(root_fd)


def remove(backing: str) -> None:
    try:
        os.unlink(backing)
    except FileNotFoundError:
        pass
