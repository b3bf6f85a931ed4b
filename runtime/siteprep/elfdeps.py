"""Shared libraries and what they need, read from the ELF files themselves (no ``ldd``,
which runs the dynamic loader on the file).

``read(path)`` gives a library's SONAME, DT_NEEDED entries and RUNPATH/RPATH;
``closure(paths, keep)`` follows DT_NEEDED through the RUNPATHs, the host's ``ldconfig``
cache and the default directories, leaving out the sonames in ``keep`` (the libraries
an image must keep: glibc's, see ``IMAGE_KEEPS``).  Used by ``shifter-admin module
prepare`` (``shifter.runtime.siteprep.modprep``).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
from dataclasses import dataclass

from shifter.errors import UsageError

#: glibc, the loader and the compiler's C/C++ runtime: an image keeps its own (a host
#: copy of libc, or an older libstdc++, ahead of the image's breaks the image's other
#: programs).  Sonames, and the prefixes of IMAGE_KEEPS_PREFIXES.
IMAGE_KEEPS = (
    "libc.so.6", "libm.so.6", "libmvec.so.1", "libpthread.so.0", "libdl.so.2", "librt.so.1",
    "libresolv.so.2", "libutil.so.1", "libanl.so.1", "libnsl.so.1", "libBrokenLocale.so.1",
    "libthread_db.so.1", "libcrypt.so.1", "libc_malloc_debug.so.0", "libgcc_s.so.1", "libstdc++.so.6",
)
IMAGE_KEEPS_PREFIXES = ("libnss_", "ld-linux", "ld64.so", "linux-vdso.so", "linux-gate.so")

DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")

_DT_NEEDED, _DT_STRTAB, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 5, 14, 15, 29
_PT_LOAD, _PT_DYNAMIC = 1, 2


@dataclass(frozen=True)
class Elf:
    path: str
    soname: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def image_keeps(soname: str) -> bool:
    """Whether ``soname`` is one the image keeps (never copied into a module)."""
    return soname in IMAGE_KEEPS or soname.startswith(IMAGE_KEEPS_PREFIXES)


def read(path: str) -> Elf:
    """SONAME, DT_NEEDED and RUNPATH/RPATH of a 64-bit little-endian ELF file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"can't read {path}: {e.strerror}") from None
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise UsageError(f"{path} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise UsageError(f"{path} is not a 64-bit little-endian ELF file")
    try:
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        loads, dynamic = [], None
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
            if p_type == _PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == _PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            return Elf(path, None, (), ())
        entries = []
        off, size = dynamic
        for i in range(0, size, 16):
            tag, val = struct.unpack_from("<qQ", data, off + i)
            if tag == 0:
                break
            entries.append((tag, val))

        def file_offset(vaddr: int) -> int:
            for v, o, sz in loads:
                if v <= vaddr < v + sz:
                    return vaddr - v + o
            raise ValueError("address outside the file")

        strtab = file_offset(next(v for t, v in entries if t == _DT_STRTAB))

        def string(at: int) -> str:
            end = data.index(b"\0", strtab + at)
            return data[strtab + at:end].decode(errors="surrogateescape")

        soname = next((string(v) for t, v in entries if t == _DT_SONAME), None)
        needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
        runpath = []
        for t, v in entries:
            if t in (_DT_RUNPATH, _DT_RPATH):
                origin = os.path.dirname(os.path.realpath(path))
                runpath += [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
                            for d in string(v).split(":") if d]
        return Elf(path, soname, needed, tuple(runpath))
    except (struct.error, ValueError, StopIteration):
        raise UsageError(f"{path}: malformed ELF dynamic section") from None


def ldconfig_cache(ldconfig: str = "/sbin/ldconfig") -> dict[str, str]:
    """soname -> path for the x86-64 libraries of the host's ``ldconfig -p`` cache."""
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise UsageError(f"can't read the host's library cache ({ldconfig} -p): {e}",
                         "list the libraries with --lib PATH") from None
    cache: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        m = re.match(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)$", line)
        if m and "x86-64" in m.group(2):
            cache.setdefault(m.group(1), m.group(3))
    return cache


def find(soname: str, runpath=(), cache: dict[str, str] | None = None) -> str | None:
    """Where the loader would find ``soname``: RUNPATH, the ldconfig cache, the default dirs."""
    for d in runpath:
        if os.path.exists(os.path.join(d, soname)):
            return os.path.join(d, soname)
    if cache and soname in cache and os.path.exists(cache[soname]):
        return cache[soname]
    for d in DEFAULT_DIRS:
        if os.path.exists(os.path.join(d, soname)):
            return os.path.join(d, soname)
    return None


def closure(paths, cache: dict[str, str], keep=image_keeps) -> dict[str, str]:
    """{soname or file name: host path} of ``paths`` and every library they need,
    transitively, except those ``keep`` says the image keeps.  A needed library that
    can't be found is an error naming it and who needs it.  A library among ``paths`` is
    what satisfies its soname (a driver the site lists outside the loader's paths)."""
    out: dict[str, str] = {}
    todo = list(paths)
    given = {}
    for path in paths:
        soname = read(path).soname
        if soname:
            given.setdefault(soname, path)
    while todo:
        path = todo.pop()
        elf = read(path)
        name = elf.soname or os.path.basename(path)
        if name in out:
            continue
        out[name] = path
        for need in elf.needed:
            if keep(need) or need in out:
                continue
            found = given.get(need) or find(need, elf.runpath, cache)
            if found is None:
                raise UsageError(f"{path} needs {need}, which is not installed on this host",
                                 "install it, or name its directory in the host's ldconfig cache")
            todo.append(found)
    return out
