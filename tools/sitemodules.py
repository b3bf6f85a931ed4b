"""The local site's modules, prepared at ``tools/cluster up`` (docs/local-site.md):

``mpich``  from Debian's mpich on this machine (``shifter-admin module prepare mpich``);
``gpu``    from a stand-in GPU driver, since the machine has no GPU: ``tools/gpu_standin.c``
           built into ``<site>/gpu`` (``lib/libcuda.so.1``, ``bin/nvidia-smi``) and
           ``GPUS`` empty files ``<site>/gpu/dev/nvidia<N>`` plus ``nvidiactl`` standing in
           for the device files.  Nothing is made in the machine's /dev or library
           directories.  In the container the module binds that directory at
           ``/gpu-standin`` (empty files, not device nodes: site maps are nodev).
           Slurm's gres.conf lists ``<site>/gpu/gres/nvidia<N>`` (each node has GPUs
           0..GPUS-1), character devices with /dev/null's numbers, mode 0600: slurmd
           takes only device nodes, and numbers the GPUs by these files' names.

Both are prepared again only when their sources changed, so ``up`` stays quick.  The
local site sets no ``defaultModules``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

from shifter.errors import ShifterError
from shifter.runtime.siteprep import modprep
from tools.site import Site

GPUS = 4
STANDIN_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_standin.c")
#: where the module binds the stand-in device files in the container
STANDIN_MOUNT = "/gpu-standin"


def gpu_dir(site: Site) -> str:
    return os.path.join(site.root, "gpu")


def modules_dir(site: Site) -> str:
    return os.path.join(site.root, "modules")


def gpu_device_files(site: Site) -> list[str]:
    """What gres.conf File= lists for the stand-in GPUs: device nodes slurmd accepts."""
    return [os.path.join(gpu_dir(site), "gres", f"nvidia{i}") for i in range(GPUS)]


def build_standin(site: Site) -> None:
    """The stand-in driver, library and tool, and its device files (idempotent)."""
    root = gpu_dir(site)
    for d in ("", "lib", "bin", "dev", "gres"):
        os.makedirs(os.path.join(root, d), 0o755, exist_ok=True)
        os.chmod(os.path.join(root, d), 0o755)
    for name in [f"nvidia{i}" for i in range(GPUS)] + ["nvidiactl"]:
        path = os.path.join(root, "dev", name)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        os.chmod(path, 0o666)
    null = os.stat("/dev/null").st_rdev
    for path in gpu_device_files(site):
        if not os.path.exists(path):
            os.mknod(path, 0o600 | stat.S_IFCHR, null)
        os.chmod(path, 0o600)
    with open(STANDIN_SRC, "rb") as f:
        stamp = hashlib.sha256(f.read() + STANDIN_MOUNT.encode()).hexdigest()
    stamp_file = os.path.join(root, "stamp")
    lib, smi = os.path.join(root, "lib", "libcuda.so.1"), os.path.join(root, "bin", "nvidia-smi")
    try:
        with open(stamp_file) as f:
            if f.read().strip() == stamp and os.path.exists(lib) and os.path.exists(smi):
                return
    except FileNotFoundError:
        pass
    define = f'-DSTANDIN_DEVDIR="{STANDIN_MOUNT}"'
    for argv in (["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", define, "-o", lib,
                  STANDIN_SRC],
                 ["gcc", "-O2", "-Wall", "-DSTANDIN_SMI", define, "-o", smi, STANDIN_SRC, lib]):
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            raise ShifterError(f"can't build the stand-in GPU driver: {res.stderr.strip()[-300:]}",
                               "apt-get install gcc")
    for path in (lib, smi):
        os.chmod(path, 0o755)
    with open(stamp_file, "w") as f:
        f.write(stamp + "\n")


def prepare(site: Site, log=lambda m: None) -> str:
    """Prepare both modules; returns their udiRoot.conf lines."""
    build_standin(site)
    mods = modules_dir(site)
    os.makedirs(mods, 0o755, exist_ok=True)
    os.chmod(mods, 0o755)
    lines = modprep.prepare_mpich(mods, "mpich", log=log)
    lines += modprep.prepare_gpu(
        mods, "gpu", libs=[os.path.join(gpu_dir(site), "lib", "libcuda.so.1")],
        bins=[os.path.join(gpu_dir(site), "bin", "nvidia-smi")],
        gpu_devices=[f"{STANDIN_MOUNT}/nvidia{i}" for i in range(GPUS)],
        site_fs=[f"{os.path.join(gpu_dir(site), 'dev')}:{STANDIN_MOUNT}:ro"], log=log)
    return lines
