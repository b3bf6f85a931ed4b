"""Preparing site modules from what the host has (``shifter-admin module prepare``).

``prepare_mpich``: the host's MPICH-ABI MPI (``libmpi.so.12``/``libmpich.so.12``, its
Fortran and C++ companions, every library they need except glibc's, and the plugin
directories they load with ``dlopen``, such as UCX's ``ucx/``) copied into
``<dir>/<name>/lib64``.  A library whose soname is not the MPICH ABI's is refused.

``prepare_gpu``: the GPU driver's user-space libraries (found in the host's ldconfig
cache or listed by the site) and tools, with what they need, into ``<dir>/<name>/lib64``
and ``bin``, plus the list of per-GPU device files (``module_<name>_gpuDevices``).

Both write the module atomically (a new directory renamed into place; an unchanged
source is not copied again) and return the ``module_<name>_*`` lines for udiRoot.conf
(``templates/module.conf.j2``).  In the container the module directory is bound
read-only at ``/opt/udiImage/modules/<name>``.  See docs/modules.md.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil

from shifter import templates
from shifter.errors import UsageError
from shifter.runtime.siteprep import elfdeps
from shifter.runtime import volumes
from shifter.runtime.devices import gpu_id

CONTAINER_BASE = "/opt/udiImage/modules"
MANIFEST = "manifest.json"

#: sonames of the MPICH ABI (MPICH, Cray MPICH, Intel MPI, MVAPICH2 ...)
MPICH_ABI = ("libmpi.so.12", "libmpich.so.12")
#: companions of the C library, each known by both names (MPICH's and the ABI's)
MPICH_ALIASES = (("libmpi.so.12", "libmpich.so.12"), ("libmpifort.so.12", "libmpichfort.so.12"),
                 ("libmpicxx.so.12", "libmpichcxx.so.12"))
#: directories next to a library that it loads plugins from with dlopen
PLUGIN_DIRS = ("ucx", "libfabric")

#: the NVIDIA driver's user-space libraries, looked up in the ldconfig cache
GPU_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1", "libnvidia-nvvm.so.4",
            "libcudadebugger.so.1", "libnvidia-opencl.so.1", "libnvidia-allocator.so.1", "libnvidia-cfg.so.1",
            "libnvidia-gpucomp.so", "libnvidia-pkcs11.so")
GPU_BINS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
            "nvidia-cuda-mps-server")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name) or name == "none":
        raise UsageError(f"invalid module name {name!r}", "letters, digits, '_', '.', '-'; not 'none'")


def _copy_lib(src: str, lib64: str, name: str) -> None:
    dst = os.path.join(lib64, name)
    if not os.path.lexists(dst):
        shutil.copy2(os.path.realpath(src), dst)
        os.chmod(dst, 0o755)


def _copy_plugin_dir(src_dir: str, dst_dir: str) -> list[str]:
    """A plugin directory's shared objects (not static archives): symlinks kept when they
    point inside it, files copied.  Returns the copied files' host paths."""
    os.makedirs(dst_dir, 0o755, exist_ok=True)
    copied = []
    for entry in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, entry)
        if ".so" not in entry or entry.endswith((".a", ".la")):
            continue
        if os.path.islink(path) and os.path.dirname(os.path.realpath(path)) == os.path.realpath(src_dir):
            os.symlink(os.readlink(path), os.path.join(dst_dir, entry))
        elif os.path.isfile(path):
            shutil.copy2(os.path.realpath(path), os.path.join(dst_dir, entry))
            os.chmod(os.path.join(dst_dir, entry), 0o755)
            copied.append(path)
    return copied


def _stamp(sources) -> str:
    h = hashlib.sha256()
    for path in sorted(set(sources)):
        st = os.stat(path)
        h.update(f"{path}\0{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class _Staging:
    """A new module directory made beside the old one and renamed into place."""

    def __init__(self, base: str, name: str):
        if not os.path.isabs(base):
            raise UsageError(f"invalid --dir {base!r}: must be an absolute path")
        check_dir(base)  # before anything is made there
        os.makedirs(base, 0o755, exist_ok=True)
        check_dir(base)
        self.final = os.path.join(base, name)
        self.path = os.path.join(base, f".{name}.new.{os.getpid()}")
        shutil.rmtree(self.path, ignore_errors=True)
        os.mkdir(self.path, 0o755)

    def commit(self, manifest: dict) -> None:
        with open(os.path.join(self.path, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        for root, dirs, files in os.walk(self.path):
            os.chmod(root, 0o755)
            for f in files:
                p = os.path.join(root, f)
                if not os.path.islink(p):
                    os.chmod(p, 0o755 if os.stat(p).st_mode & 0o111 else 0o644)
        # the version before stays beside it until the next prepare: running jobs bind it
        # (their bind keeps the directory, not its files, which deleting would take away)
        previous = os.path.join(os.path.dirname(self.final), f".{os.path.basename(self.final)}.previous")
        if os.path.lexists(self.final):
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(self.final, previous)
        os.rename(self.path, self.final)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def check_dir(base: str) -> None:
    """The module directory and every directory above it must be the caller's (root's)
    and writable by nobody else: root writes there, and a user who could rename a
    component could make it write elsewhere."""
    path = target = os.path.realpath(base)
    while not os.path.lexists(path):  # what exists of it
        path = os.path.dirname(path)
    while True:
        st = os.stat(path)
        # a sticky directory such as /var/tmp is fine above it: no one else can rename ours
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022 and not (st.st_mode & 0o1000 and path != target):
            raise UsageError(f"refusing --dir {base}: {path} is writable by others or not ours",
                             "use a directory that only root can write, e.g. <prefix>/modules")
        if path == "/":
            return
        path = os.path.dirname(path)


def _unchanged(final: str, stamp: str) -> dict | None:
    try:
        with open(os.path.join(final, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("stamp") == stamp else None


def _render(kind: str, name: str, module_dir: str, source: str, summary: str, env_prepend, *,
            site_fs=(), env_set=(), userhook=None, gpu_devices=()) -> str:
    mount = f"{CONTAINER_BASE}/{name}"
    return templates.render(
        "module.conf", kind=kind, module=name, module_dir=module_dir, mount=mount, source=source, summary=summary,
        site_fs=[f"{module_dir}:{mount}:ro", *site_fs], env_prepend=list(env_prepend), env_set=list(env_set),
        userhook=userhook, conflict=[], gpu_devices=list(gpu_devices))


# --------------------------------------------------------------------------- MPICH
def find_mpi(source: str | None, cache: dict[str, str]) -> str:
    """The host's MPI C library: ``source`` (a library, or a directory holding one of
    the MPICH-ABI sonames), else the ldconfig cache's libmpi.so.12 / libmpich.so.12."""
    if source:
        if os.path.isdir(source):
            for soname in MPICH_ABI:
                if os.path.exists(os.path.join(source, soname)):
                    return os.path.join(source, soname)
            found = sorted(glob.glob(os.path.join(source, "libmpi*.so.*")))
            if found:
                return found[0]
            raise UsageError(f"no MPI library (libmpi.so.12 or libmpich.so.12) in {source}",
                             "give the MPI's library directory or the library itself with --from")
        if not os.path.isfile(source):
            raise UsageError(f"invalid --from {source!r}: no such file or directory")
        return source
    for soname in MPICH_ABI:
        if soname in cache:
            return cache[soname]
    raise UsageError("no MPICH-ABI MPI library (libmpi.so.12 or libmpich.so.12) in the host's ldconfig cache",
                     "install the host's MPI, or give its library with --from PATH")


def check_mpich_abi(path: str) -> str:
    """The soname of ``path`` if it is the MPICH ABI's; else one clear refusal."""
    soname = elfdeps.read(path).soname
    if soname not in MPICH_ABI:
        raise UsageError(f"{path} has soname {soname or 'none'}, not the MPICH ABI's (libmpi.so.12 or "
                         "libmpich.so.12): an image's MPICH can't use it",
                         "give an MPICH-ABI MPI (MPICH, Cray MPICH, Intel MPI, MVAPICH2) with --from")
    return soname


def prepare_mpich(module_dir: str, name: str = "mpich", source: str | None = None, env=(), userhook=None,
                  cache: dict[str, str] | None = None, log=lambda m: None) -> str:
    """Prepare module ``name`` in ``module_dir``; returns its udiRoot.conf lines."""
    _check_name(name)
    cache = elfdeps.ldconfig_cache() if cache is None else cache
    main = find_mpi(source, cache)
    check_mpich_abi(main)
    libdir = os.path.dirname(os.path.realpath(main))
    tops = [main]
    for pair in MPICH_ALIASES[1:]:
        for soname in pair:
            path = os.path.join(os.path.dirname(main), soname)
            if os.path.exists(path) and elfdeps.read(path).soname in pair:
                tops.append(path)
                break
    plugin_dirs = []
    libs = elfdeps.closure(tops, cache)
    for path in list(libs.values()):
        for plugin in PLUGIN_DIRS:
            d = os.path.join(os.path.dirname(os.path.realpath(path)), plugin)
            if os.path.isdir(d) and d not in plugin_dirs:
                plugin_dirs.append(d)
    plugin_files = [os.path.join(d, f) for d in plugin_dirs for f in sorted(os.listdir(d))
                    if ".so" in f and not f.endswith((".a", ".la")) and not os.path.islink(os.path.join(d, f))]
    if plugin_files:  # what the plugins need, too
        libs.update(elfdeps.closure(plugin_files, cache))
        for f in plugin_files:
            libs.pop(elfdeps.read(f).soname or os.path.basename(f), None)
    if userhook is not None and not os.path.isfile(userhook):
        raise UsageError(f"invalid --userhook {userhook!r}: no such file")
    sources = [*libs.values(), *plugin_files, *([userhook] if userhook else [])]
    stamp = _stamp(sources) + f":{name}:{sorted(env)}"
    final = os.path.join(module_dir, name)
    mount = f"{CONTAINER_BASE}/{name}"
    hook = f"{mount}/userhook.sh" if userhook else None
    summary = f"soname {elfdeps.read(main).soname}, {_count(len(libs), 'library', 'libraries')}"
    lines = _render("mpich", name, final, main, summary, [f"LD_LIBRARY_PATH={mount}/lib64"],
                    env_set=env, userhook=hook)
    if _unchanged(final, stamp):
        log(f"module {name}: {final} is up to date")
        return lines
    staging = _Staging(module_dir, name)
    try:
        lib64 = os.path.join(staging.path, "lib64")
        os.mkdir(lib64, 0o755)
        for soname, path in sorted(libs.items()):
            _copy_lib(path, lib64, soname)
        for pair in MPICH_ALIASES:  # an ABI name for MPICH's and the reverse
            have = [s for s in pair if os.path.lexists(os.path.join(lib64, s))]
            for s in pair:
                if have and s not in have:
                    os.symlink(have[0], os.path.join(lib64, s))
        for d in plugin_dirs:
            _copy_plugin_dir(d, os.path.join(lib64, os.path.basename(d)))
        if userhook:
            shutil.copyfile(userhook, os.path.join(staging.path, "userhook.sh"))
        staging.commit({"stamp": stamp, "kind": "mpich", "source": main, "libdir": libdir,
                        "libraries": sorted(libs), "plugins": [os.path.basename(d) for d in plugin_dirs]})
    except BaseException:
        staging.abort()
        raise
    log(f"module {name}: {len(libs)} libraries from {libdir} into {final}")
    return lines


# --------------------------------------------------------------------------- GPU
def _find_bin(spec: str) -> str | None:
    if "/" in spec:
        return spec if os.path.isfile(spec) else None
    return shutil.which(spec, path="/usr/bin:/bin:/usr/sbin:/sbin")


def prepare_gpu(module_dir: str, name: str = "gpu", libs=(), bins=(), gpu_devices=(), site_fs=(),
                cache: dict[str, str] | None = None, log=lambda m: None) -> str:
    """Prepare module ``name`` from the GPU driver: libraries (``libs``: paths or sonames;
    default: the NVIDIA driver's found in the ldconfig cache; libcuda.so.1 is required),
    tools (``bins``: paths or names on the system PATH; default: nvidia-smi & co. that
    exist), per-GPU device files (``gpu_devices``, container paths each ending in its GPU
    number; default /dev/nvidia<N>) and extra site maps (``site_fs``: the devices'
    directory when it is not under /dev).  Returns the module's udiRoot.conf lines."""
    _check_name(name)
    cache = elfdeps.ldconfig_cache() if cache is None else cache
    found, sonames = _gpu_libraries(libs, cache)
    tools = _gpu_tools(bins)
    devices = _gpu_devices(gpu_devices)
    for spec in site_fs:
        try:
            volumes.parse_volumes(spec, site=True)
        except UsageError as e:
            raise UsageError(f"invalid --site-fs {spec!r}: {e.what}", e.hint) from None
    closure = elfdeps.closure([*found, *tools], cache)
    for t in tools:
        closure.pop(elfdeps.read(t).soname or os.path.basename(t), None)
    stamp = _stamp([*closure.values(), *tools]) + f":{name}:{devices}:{list(site_fs)}"
    final = os.path.join(module_dir, name)
    mount = f"{CONTAINER_BASE}/{name}"
    lines = _render("gpu", name, final, os.path.dirname(sonames["libcuda.so.1"]),
                    ", ".join((_count(len(closure), "library", "libraries"), _count(len(tools), "tool", "tools"),
                               _count(len(devices), "GPU", "GPUs"))),
                    [f"LD_LIBRARY_PATH={mount}/lib64", f"PATH={mount}/bin"], site_fs=site_fs, gpu_devices=devices)
    if _unchanged(final, stamp):
        log(f"module {name}: {final} is up to date")
        return lines
    staging = _Staging(module_dir, name)
    try:
        lib64, bindir = os.path.join(staging.path, "lib64"), os.path.join(staging.path, "bin")
        os.mkdir(lib64, 0o755)
        os.mkdir(bindir, 0o755)
        for soname, path in sorted(closure.items()):
            _copy_lib(path, lib64, soname)
        for t in tools:
            shutil.copy2(os.path.realpath(t), os.path.join(bindir, os.path.basename(t)))
            os.chmod(os.path.join(bindir, os.path.basename(t)), 0o755)
        staging.commit({"stamp": stamp, "kind": "gpu", "libraries": sorted(closure),
                        "tools": [os.path.basename(t) for t in tools], "gpu_devices": devices})
    except BaseException:
        staging.abort()
        raise
    log(f"module {name}: {_count(len(closure), 'library', 'libraries')}, {_count(len(tools), 'tool', 'tools')} "
        f"into {final}")
    return lines



def _gpu_libraries(libs, cache: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The driver's libraries (``libs``, else the NVIDIA ones of the ldconfig cache) and
    soname -> path: one driver version, libcuda.so.1 among them."""
    found: list[str] = []
    if libs:
        for spec in libs:
            path = spec if "/" in spec else cache.get(spec)
            if not path or not os.path.isfile(path):
                raise UsageError(f"invalid --lib {spec!r}: no such library on this host",
                                 "give a path, or a soname from `ldconfig -p`")
            found.append(path)
    else:
        found = [cache[s] for s in GPU_LIBS if s in cache]
    sonames = {elfdeps.read(p).soname: p for p in found}
    for p in found:
        if elfdeps.read(p).soname is None:
            raise UsageError(f"{p} has no soname: not a driver library", "list only shared libraries with --lib")
    if "libcuda.so.1" not in sonames:
        bad = [f"{os.path.basename(p)} ({elfdeps.read(p).soname})" for p in found if "libcuda" in os.path.basename(p)]
        raise UsageError("no libcuda.so.1 (the CUDA driver library, soname libcuda.so.1) among "
                         + (", ".join(bad) if bad else "the host's libraries"),
                         "install the NVIDIA driver, or list its libcuda.so.1 with --lib")
    versions = {}
    for p in found:
        m = re.search(r"\.so\.(\d+\.\d+(?:\.\d+)?)$", os.path.realpath(p))
        if m:
            versions[os.path.basename(p)] = m.group(1)
    if len(set(versions.values())) > 1:
        raise UsageError("the driver libraries are of different versions: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
                         "list the libraries of the one installed driver with --lib")
    return found, sonames


def _gpu_tools(bins) -> list[str]:
    """The driver's tools: ``bins`` (each must exist), else those of GPU_BINS the host has."""
    tools = []
    for spec in bins or GPU_BINS:
        path = _find_bin(spec)
        if path is None:
            if bins:
                raise UsageError(f"invalid --bin {spec!r}: no such program on this host")
            continue
        tools.append(path)
    return tools


def _gpu_devices(gpu_devices) -> list[str]:
    """The per-GPU device files (``gpu_devices``, else /dev/nvidia<N>), each a distinct GPU."""
    devices = list(gpu_devices) or sorted(glob.glob("/dev/nvidia[0-9]*"), key=lambda p: gpu_id(p) or 0)
    if not devices:
        raise UsageError("no GPU device files (/dev/nvidia<N>) on this host",
                         "name them with --gpu-device PATH (each ends in its GPU number, as gres.conf File=)")
    seen = {}
    for d in devices:
        n = gpu_id(d)
        if n is None or not d.startswith("/"):
            raise UsageError(f"invalid --gpu-device {d!r}: a GPU device file is an absolute path ending in "
                             "its GPU number", "e.g. /dev/nvidia0")
        if n in seen:
            raise UsageError(f"--gpu-device {seen[n]} and {d} are both GPU {n}")
        seen[n] = d
    return devices
