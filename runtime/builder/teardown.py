"""Removing a UDI, and the ``unsetupRoot`` command — kept free of heavy imports so the
epilog's teardown costs little more than starting Python.

Idempotent: every mount at or below udiMount and loopMount is detached (deepest first;
stacked mounts from a crashed setup need several passes), loop devices free themselves
(autoclear), and the per-node cache files the UDI recorded in ``var/shifter/caches``
are removed.
"""

from __future__ import annotations

import errno
import os
import sys

from shifter import command, paths
from shifter.errors import ConfigError, ShifterError, UsageError
from shifter.runtime import confsyntax, linux

CACHES_FILE = "var/shifter/caches"


def record_cache(udi: str, backing: str) -> None:
    """Note a per-node cache file before creating it, so teardown finds it after a crash."""
    with open(os.path.join(udi, CACHES_FILE), "a") as f:
        f.write(backing + "\n")


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _cut_from_outside(found: list[str], roots) -> None:
    """Make slave every mount about to be unmounted that is a peer of a mount outside the
    UDI (a host bind a crashed setup left before making it slave): its unmount must not
    propagate to the host's own /sys, /dev, ..."""
    rows = linux.peer_groups()
    outside = {g for mp, g in rows if g is not None and not _under(mp, roots)}
    if not outside:
        return
    top = {mp: g for mp, g in rows if mp in found}  # later rows are stacked over earlier ones
    for mp, group in top.items():
        if group in outside:
            linux.make_propagation(mp, linux.MS_SLAVE)


def teardown(udi: str, loop: str, cache_dir: str, log=lambda msg: None) -> bool:
    """Remove the UDI at ``udi``; True if anything was there to remove."""
    caches = []
    try:
        with open(os.path.join(udi, CACHES_FILE)) as f:
            caches = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        pass
    removed = False
    for root in (udi, loop):
        for _ in range(64):
            found = linux.mounts_under(root)
            if not found:
                break
            _cut_from_outside(found, (udi, loop))
            for mp in dict.fromkeys(found):  # the top of each stack; what it hid, next pass
                try:
                    removed |= linux.umount(mp)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOENT):
                        raise ShifterError(f"can't unmount {mp}: {e.strerror}") from None
        else:
            raise ShifterError(f"can't tear down {root}: mounts keep reappearing")
    for backing in caches:
        # only files we create: <perNodeCachePath>/shifter-cache.*
        if os.path.dirname(backing) == cache_dir and os.path.basename(backing).startswith("shifter-cache."):
            try:
                os.unlink(backing)
                removed = True
            except FileNotFoundError:
                pass
    if removed:
        log(f"removed the UDI at {udi}")
    return removed


def main(argv: list[str] | None = None) -> int:
    """``unsetupRoot [-V]``: clean environment, fixed PATH, one line on failure
    (``shifter.command.run``)."""
    return command.run("unsetupRoot", _main, argv)


def _main(argv: list[str]) -> int:
    config_path = os.environ.get("SHIFTER_CONFIG") or os.environ.get("shifter_config")
    os.environ.clear()
    os.environ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    verbose = "-V" in argv
    extra = [a for a in argv if a != "-V"]
    if extra:
        raise UsageError(f"unexpected argument {extra[0]!r}", "usage: unsetupRoot [-V]")
    if os.geteuid() != 0:
        raise ShifterError("unsetupRoot must run as root")
    path = config_path or paths.DEFAULT_CONFIG
    values = dict(confsyntax.DEFAULTS)
    for lineno, key, value in confsyntax.entries(confsyntax.read(path), path):
        if key in values:
            if not value.startswith("/"):
                raise ConfigError(f"{path}:{lineno}: {key} must be an absolute path, not {value!r}")
            values[key] = value
    log = (lambda m: print(f"unsetupRoot: {m}", file=sys.stderr)) if verbose else (lambda m: None)
    teardown(values["udiMount"], values["loopMount"], values["perNodeCachePath"], log)
    return 0
