"""A step sees only its own GPUs: per-GPU device files of the loaded modules
(``module_<name>_gpuDevices``) that are not the step's are covered, in the step's own
mount namespace, by an empty file nobody may open.

The step's GPUs are Slurm's: ``SLURM_STEP_GPUS``, else ``SLURM_JOB_GPUS`` (the numbers
of the device files gres.conf ``File=`` lists, not ``CUDA_VISIBLE_DEVICES``, which
``ConstrainDevices`` renumbers); neither set means no GPU.  A device file's number is
its trailing number (``/dev/nvidia3`` -> 3), as Slurm reads it.

Where: every way into a container with such a module.  A step enters a prepared
container in a mount namespace of its own (the compiled fast path's ``cover_gpus``, or
``restrict`` here), and a private container has one anyway; the covering mounts are
made after the chroot, inside the container, and are gone with the step.  It is
a view, not an enforcement: the variables are the user's, and outside a container the
user opens what the device files' modes allow.  Slurm's device cgroup
(``ConstrainDevices=yes``) is what enforces a job's devices (docs/modules.md).
"""

from __future__ import annotations

import os
import re
import stat

from shifter.errors import ShifterError

#: in every container with a module that has gpuDevices: the empty, mode-0 file that covers
#: the devices a step may not open (made by setupRoot and the private builders)
BLANK = "/var/shifter/nodevice"

_GPU_DEVICE_RE = re.compile(r"^/.*[^0-9/]([0-9]+)$", re.S)
MAX_RANGES = 4096


def gpu_id(path: str) -> int | None:
    """The GPU number of a per-GPU device file: its trailing number (``/dev/nvidia3`` ->
    3), as Slurm's gres.conf ``File=`` reads it; None if it has none."""
    m = _GPU_DEVICE_RE.match(path)
    return int(m.group(1)) if m else None


def step_gpus(env) -> frozenset[int]:
    """The GPU numbers the step was given: ``SLURM_STEP_GPUS``, else ``SLURM_JOB_GPUS``
    (comma-separated numbers or ranges ``a-b`` of 1 to 6 ASCII digits, spaces around
    them allowed, ``b - a`` at most 4096, at most 4096 of them).  None of them set, an
    empty or a malformed value: no GPU at all.  The compiled launcher's ``step_gpus`` is
    the twin (tests/data/contracts/gpu_steps.json runs through both)."""
    value = env.get("SLURM_STEP_GPUS")
    if value is None:
        value = env.get("SLURM_JOB_GPUS")
    if not value:
        return frozenset()
    out: set[int] = set()
    items = value.split(",")
    if len(items) > MAX_RANGES:
        return frozenset()
    for item in items:
        m = re.fullmatch(r"[ \t\n\v\f\r]*([0-9]{1,6})(?:-([0-9]{1,6}))?[ \t\n\v\f\r]*", item)
        if not m:
            return frozenset()
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi - lo > 4096:
            return frozenset()
        out.update(range(lo, hi + 1))
    return frozenset(out)


def covered(modules, env) -> list[str]:
    """The loaded modules' per-GPU device files that are not the step's, in order."""
    mine = step_gpus(env)
    return [p for m in modules for p in getattr(m, "gpu_devices", ()) if gpu_id(p) not in mine]


def visible(modules, env) -> list[str]:
    mine = step_gpus(env)
    return [p for m in modules for p in getattr(m, "gpu_devices", ()) if gpu_id(p) in mine]


def needs_blank(modules) -> bool:
    return any(getattr(m, "gpu_devices", ()) for m in modules)


def make_blank(root: str) -> None:
    """The covering file, in the container's own state directory (``BLANK``): made by
    root, a character device 0:0 of mode 0 (nobody, root included, can open it: the
    container's tmpfs is nodev, and no driver has major 0); made by a user in a private
    container, an empty file of mode 0 (a user without capabilities can't open it)."""
    path = os.path.join(root, BLANK.lstrip("/"))
    if os.geteuid() == 0:
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        os.chmod(path, 0, follow_symlinks=False)
        return
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0)
    os.fchmod(fd, 0)
    os.close(fd)


def restrict(paths, new_namespace: bool) -> None:
    """Cover ``paths`` (container paths; the caller is chrooted in the container) with
    ``BLANK``.  ``new_namespace``: first make a mount namespace of this process's own
    (a prepared container is shared by the job's tasks), whose mounts receive the
    container's but send nothing back.  A device file the container lacks is skipped."""
    # start-up: linux loads libc through ctypes (~3 ms); config imports this module (gpu_id)
    # while the submission's image lookup reads the config, which loads no ctypes
    from shifter.runtime import linux

    if not paths:
        return
    try:
        if new_namespace:
            linux.unshare(linux.CLONE_NEWNS)
            linux.make_propagation("/", linux.MS_SLAVE, recursive=True)
        for path in paths:
            if os.path.lexists(path):
                linux.mount(BLANK, path, None, linux.MS_BIND)  # keeps the flags of BLANK's mount
    except OSError as e:
        raise ShifterError(f"can't limit the container to the step's GPUs: {e.strerror or e}"
                           + (f": {e.filename}" if e.filename else "")) from None
