"""A model of what NERSC Shifter's volume-map parser accepts and what it then mounts.

Written from reading Shifter's src/VolumeMap.c (``_parseVolumeMap``, ``_parseFlag``,
``parseBytes``, ``_validateVolumeMap``, user and site rules with ``/var/tmp`` allowed
exactly -- Shifter PR #264; its code was not at hand, so the model assumes the exact
allowance skips only the destination lists, not the flag checks) and utility.c (``userInputPathFilter``), plus the destination check that
``setupVolumeMapMounts`` repeats on the realpath of the destination (so ``//etc`` or
``/b/`` are judged as ``/etc`` and ``/b``).  Sizes go through the C library's own
``strtod``.  It is a test oracle: deliberately written in C's shape (NUL bytes in a
buffer), not sharing code with shifter.runtime.volumes.

``shifter_parse(spec, site)`` returns a list of maps, ``None`` when Shifter refuses the
spec, or ``CRASH`` when Shifter's parser would dereference NULL (``size`` or ``bs``
without a value).  A map is ``(source, destination, flags)``: paths as realpath would
make them (no symlinks assumed), flags a frozenset of ``ro rec slave private``; for a
per-node cache ``source`` is None and flags is ``{("cache", size)}`` (Shifter's loop
mount ignores every other flag and never uses the source).
"""

from __future__ import annotations

import ctypes
import ctypes.util

CRASH = "crash"

_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.strtod.restype = ctypes.c_double
_libc.strtod.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]

_SCALE = b"bkmgtpe"
_FLAGS = {"ro": "ro", "rec": "rec", "slave": "slave", "private": "private"}


def parse_bytes(value: bytes) -> int:
    """Shifter's parseBytes: strtod, then the next letter picks the power of 1024."""
    buf = ctypes.create_string_buffer(value)
    end = ctypes.c_char_p()
    number = _libc.strtod(buf, ctypes.byref(end))
    offset = ctypes.cast(end, ctypes.c_void_p).value - ctypes.addressof(buf)
    letter = value[offset:offset + 1].lower() or b"b"
    if letter not in _SCALE:
        return -1
    for _ in range(_SCALE.index(letter)):
        number *= 1024
    if number != number or number >= 2.0**63 or number < -(2.0**63):
        return -(2**63)  # x86-64's cvttsd2si answer for out-of-range values
    return int(number)


def _cstr(buf: bytearray, start: int) -> bytes:
    end = buf.index(0, start)
    return bytes(buf[start:end])


def _strchr(buf: bytearray, start: int, char: int) -> int | None:
    i = start
    while buf[i] != 0:
        if buf[i] == char:
            return i
        i += 1
    return None


def parse_flag(text: bytes):
    """None (an empty flag: skipped), the flag, False (refused) or CRASH."""
    if text == b"":
        return None
    buf = bytearray(text) + b"\0\0"
    limit = len(text)
    eq = _strchr(buf, 0, ord("="))
    ptr = limit if eq is None else eq
    buf[ptr] = 0
    name = _cstr(buf, 0).decode("latin-1")
    kv: list[tuple[int, int | None]] = []
    s = ptr + 1
    while s < limit:
        v = _strchr(buf, s, ord("="))
        c = _strchr(buf, s, ord(","))
        if c is None:
            c = limit
        buf[c] = 0
        if v is not None:
            buf[v] = 0
            v += 1
        kv.append((s, v))
        s = c + 1
    lname = name.lower()
    if lname in _FLAGS:
        return False if kv else _FLAGS[lname]
    if lname != "pernodecache":
        return False
    size, bs = 0, 1 << 20
    for k, v in kv:
        key = _cstr(buf, k).lower()
        value = None if v is None else _cstr(buf, v)
        if key == b"size":
            if value is None:
                return CRASH
            size = parse_bytes(value)
            if size <= 0:
                return False
        elif key == b"bs":
            if value is None:
                return CRASH
            bs = parse_bytes(value)
            if bs <= 0:
                return False
        elif key == b"fs":
            if value is None or value.lower() != b"xfs":
                return False
        elif key == b"method":
            if value is None or value.lower() != b"loop":
                return False
    if size <= 0 or bs <= 0:
        return False
    return ("cache", size)


def path_filter(text: str) -> str:
    """userInputPathFilter(text, allowSlash=1) in the C locale."""
    return "".join(c for c in text if (c.isascii() and c.isalnum()) or c in "_:.+-/")


def realnorm(path: str) -> str:
    names = [n for n in path.split("/") if n not in ("", ".")]
    return "/" + "/".join(names)


def _destination_ok(to: str, site: bool) -> bool:
    if site:
        return to not in ("/opt", "opt", "/etc", "etc", "/var", "var", "/etc/passwd", "etc/passwd",
                          "/etc/group", "etc/group", "/etc/nsswitch.conf", "etc/nsswitch.conf")
    if to == "/var/tmp":
        return True
    if any(to.startswith(p) for p in ("/etc", "/var", "etc", "var", "/opt/udiImage", "opt/udiImage")):
        return False
    return to not in ("/opt", "opt")


def _validate(frm, to, flags, site: bool) -> bool:
    if frm is None or to is None:
        return False
    if ".." in frm or ".." in to or not frm.startswith("/") or not to.startswith("/"):
        return False
    allowed = {"ro", "rec", "slave", "private", "cache"} if site else {"ro", "cache"}
    kinds = [f if isinstance(f, str) else "cache" for f in flags]
    if any(k not in allowed for k in kinds) or len(set(kinds)) != len(kinds):
        return False
    if "slave" in kinds and "private" in kinds:
        return False
    return _destination_ok(to, site)


def shifter_parse(spec: str, site: bool = False):
    maps = []
    for segment in spec.split(";"):
        if segment == "":
            continue
        text = segment
        if text[0] == '"' and text[-1] == '"':
            text = text[1:-1] if len(text) > 1 else ""
        if text == "":
            return None
        tokens = text.split(":")
        if len(tokens) > 1 and tokens[-1] == "":
            tokens.pop()
        frm = path_filter(tokens[0])
        to = path_filter(tokens[1]) if len(tokens) > 1 else None
        flags = []
        for token in tokens[2:]:
            flag = parse_flag(token.encode("utf-8", "surrogateescape"))
            if flag is CRASH:
                return CRASH
            if flag is False:
                return None
            if flag is not None:
                flags.append(flag)
        if len(tokens) == 1 and site:
            to = frm
        if not _validate(frm, to, flags, site):
            return None
        # setupVolumeMapMounts: the destination's realpath must be below the UDI and pass again
        real_to = realnorm(to)
        if real_to == "/" or not _validate(frm, real_to, flags, site):
            return None
        cache = next((f for f in flags if not isinstance(f, str)), None)
        if cache is not None:
            maps.append((None, real_to, frozenset([cache])))
        else:
            maps.append((realnorm(frm), real_to, frozenset(flags)))
    return maps
