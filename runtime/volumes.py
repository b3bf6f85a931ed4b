"""Volume maps: ``--volume`` values and udiRoot.conf ``siteFs`` / ``module_<name>_siteFs``.

Grammar (Shifter's; docs/volumes.md has the details and every difference)::

    SPEC  := MAP (';' MAP)*               empty maps are skipped
    MAP   := SOURCE ':' DESTINATION (':' FLAG)* [':']
           | SOURCE [':']                 (site maps only: DESTINATION = SOURCE)
    FLAG  := ''                           skipped
           | 'ro' ['=']                   read-only bind mount
           | 'perNodeCache=' OPT (',' OPT)*
           | 'rec' | 'slave' | 'private'  (site maps only)
    OPT   := 'size=' SIZE | 'bs=' SIZE | 'fs=xfs' | 'method=loop' | anything else (ignored)
    SIZE  := what C's strtod reads, then one letter of b k m g t p e (powers of 1024)

Whitespace around a map, a path or a flag is ignored, and so is a double quote at
either end of a map (``#SBATCH --volume="/a:/b;/c:/d"``, which Shifter reads so too).  Paths are
normalized as Shifter's ``realpath`` does (``//``, ``/./`` and a trailing ``/`` go).
Shifter silently drops path characters other than ``A-Z a-z 0-9 / _ . + -``; such a
path is refused here rather than altered (except the source of a perNodeCache map,
which is never used).  Where Shifter accepts something and then ignores part of it
(``ro`` on a per-node cache, an unknown perNodeCache option, ``bs``, a strtod-only
size spelling), the map is accepted with Shifter's meaning and one warning line per
oddity goes to ``warn``.  Every refusal is one line naming the map (1-based index and
text), the part and the reason, with a hint: ``UsageError`` for users' maps,
``ConfigError`` for site maps.

The checks here are lexical.  The mounting code must re-check the destination after
resolving symlinks inside the container (``check_destination``), as Shifter does.
"""

from __future__ import annotations

import functools
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable
from shifter.frozen import frozen

from shifter.errors import ConfigError, ShifterError, UsageError

PATH_MAX = 4096  # bytes, with the terminating NUL
MAX_SIZE = 2**63 - 1  # Shifter keeps sizes in an ssize_t

Warn = Callable[[str], None]

_WS = " \t\n\r\v\f"  # C's isspace in the C locale
_UNITS = "KMGTPE"  # powers of 1024: K = 1024**1 ... E = 1024**6


@functools.cache
def _size_re():
    """Compiled at first use, as the other size patterns below: together ~1 ms that every
    cold start importing this module would pay, and a job without a per-node cache never
    needs."""
    return re.compile(r"([0-9]{1,30}(?:\.[0-9]{1,30})?)(?:([kmgtpe])(?:i?b)?|b)?", re.IGNORECASE | re.ASCII)


# The characters Shifter keeps in a volume path (it silently drops all others).
_PATH_CHARS = re.compile(r"[A-Za-z0-9_.+/-]*", re.ASCII)
_PATH_CHAR = re.compile(r"[A-Za-z0-9_.+/-]", re.ASCII)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

_USER_FLAGS = ("ro", "perNodeCache")
_SITE_FLAGS = ("ro", "rec", "slave", "private", "perNodeCache")
_FLAGS_HINT = {
    False: "the flags are ro and perNodeCache=size=SIZE",
    True: "the flags are ro, rec, slave, private and perNodeCache=size=SIZE",
}

# Users may not mount on or under these trees (compared by path component) ...
_USER_FORBIDDEN_TREES = {
    "/etc": "where shifter writes the container's configuration",
    "/var": "where shifter keeps its own state",
    "/opt/udiImage": "where shifter keeps its own tools",
}
_USER_ALLOWED_EXACT = ("/var/tmp",)  # ... except exactly on these (as Shifter) ...
# ... nor exactly on these.
_USER_FORBIDDEN_EXACT = {
    "/": "would replace the container's root directory",
    "/opt": "would hide /opt/udiImage, shifter's own tools",
}
# Site maps may go anywhere except exactly on these.
_SITE_FORBIDDEN_EXACT = {
    "/": "would replace the container's root directory",
    "/opt": "would hide /opt/udiImage, shifter's own tools",
    "/etc": "would hide the container's configuration, which shifter writes",
    "/var": "would hide shifter's own state",
    "/etc/passwd": "is written by shifter",
    "/etc/group": "is written by shifter",
    "/etc/nsswitch.conf": "is written by shifter",
}
_USER_DESTINATION_HINT = ("choose a destination outside /etc, /var and /opt/udiImage, and other than "
                          "/ and /opt, e.g. /data (/var/tmp itself is allowed)")
_SITE_DESTINATION_HINT = "choose another destination (not /, /opt, /etc, /var or shifter's /etc files)"


@frozen
class PerNodeCache:
    """A private, node-local scratch filesystem (``perNodeCache=``)."""

    size: int  # bytes
    fs: str = "xfs"
    method: str = "loop"

    def spec(self) -> str:
        """The canonical ``perNodeCache=...`` flag text (defaults left out)."""
        opts = [f"size={_format_size(self.size)}"]
        if self.fs != "xfs":
            opts.append(f"fs={self.fs}")
        if self.method != "loop":
            opts.append(f"method={self.method}")
        return "perNodeCache=" + ",".join(opts)


@frozen
class VolumeMap:
    """One volume map.  Build them with ``parse_volumes``, which checks every rule."""

    source: str
    destination: str
    read_only: bool = False
    per_node_cache: PerNodeCache | None = None
    recursive: bool = False  # site 'rec'
    propagation: str | None = None  # site 'slave' | 'private'

    def spec(self) -> str:
        """Canonical text: ``SOURCE:DESTINATION`` then flags in Shifter's order
        (ro, rec, perNodeCache, slave|private); ``parse_volumes`` gives this map back,
        without a warning."""
        parts = [self.source, self.destination]
        if self.read_only:
            parts.append("ro")
        if self.recursive:
            parts.append("rec")
        if self.per_node_cache is not None:
            parts.append(self.per_node_cache.spec())
        if self.propagation is not None:
            parts.append(self.propagation)
        return ":".join(parts)


class _Refusal(Exception):
    """Why one part of a map is refused; turned into the user-facing error by the caller."""

    def __init__(self, why: str, hint: str):
        super().__init__(why)
        self.why = why
        self.hint = hint


def _show(text: str, limit: int = 120) -> str:
    """Quote a value for a one-line message (repr escapes newlines and control characters)."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _error(site: bool) -> type[ShifterError]:
    return ConfigError if site else UsageError


def _map_label(site: bool, index: int, text: str) -> str:
    return f"{'site volume map' if site else 'volume map'} {index} {_show(text)}"


def _map_error(site: bool, index: int, text: str, why: str, hint: str) -> ShifterError:
    return _error(site)(f"invalid {_map_label(site, index, text)}: {why}", hint)


# --- sizes -----------------------------------------------------------------------------

def _parse_size(text: str, what: str) -> int:
    """Bytes from a plain size: a decimal number, optionally with a fraction that makes
    whole bytes, and a K/M/G/T/P/E suffix; 1 .. 2**63-1.  (udiRoot.conf's limits.)"""
    hint = ("write a number with an optional K, M, G, T, P or E suffix "
            "(powers of 1024), e.g. 100G")
    m = _size_re().fullmatch(text)
    if not m:
        raise _Refusal(f"{what} {_show(text)} is not a size", hint)
    number, unit = m.groups()
    scale = 1024 ** (_UNITS.index(unit.upper()) + 1 if unit else 0)
    whole, _, frac = number.partition(".")
    value, rest = divmod(int(frac or "0") * scale, 10 ** len(frac))
    if rest:
        raise _Refusal(f"{what} {_show(text)} is not a whole number of bytes", hint)
    value += int(whole) * scale
    if value <= 0:
        raise _Refusal(f"{what} {_show(text)} must be greater than 0", hint)
    if value > MAX_SIZE:
        raise _Refusal(f"{what} {_show(text)} is too large (the limit is 8E minus one byte)", hint)
    return int(value)


def parse_size(text: str) -> int:
    """Bytes from a size text such as ``100G`` (a plain number and a K..E suffix);
    raises ``ValueError`` with the reason (used for udiRoot.conf's perNodeCacheSizeLimit)."""
    try:
        return _parse_size(text.strip(), "size")
    except _Refusal as e:
        raise ValueError(f"{e.why} ({e.hint})") from None


# What C's strtod reads: leading white space, a sign, then a hexadecimal or decimal
# floating-point number, or inf/infinity/nan.  Nothing read: the whole text is left.
@functools.cache
def _strtod_re():
    return re.compile(
        r"[ \t\n\r\v\f]*([+-]?)(?:"
        r"(0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)"
        r"|((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
        r"|(inf(?:inity)?|nan(?:\([0-9A-Za-z_]*\))?))",
        re.IGNORECASE | re.ASCII)


_SHIFTER_SCALE = "bkmgtpe"


# A size written the plain way: no warning when it also means whole bytes.
@functools.cache
def _plain_size_re():
    return re.compile(r"([0-9]+(?:\.[0-9]+)?)(?:([kmgtpe])(?:i?b?)|b)?", re.IGNORECASE | re.ASCII)


def _strtod(text: str) -> tuple[float, int]:
    """(value, characters read) as C's strtod reads ``text`` (0.0, 0 when nothing)."""
    m = _strtod_re().match(text)
    if not m:
        return 0.0, 0
    sign, hexa, dec, special = m.groups()
    try:
        if hexa:
            value = float.fromhex(hexa)
        elif dec:
            value = float(dec)
        else:
            value = math.nan if special.lower().startswith("nan") else math.inf
    except OverflowError:  # float.fromhex of a huge exponent; strtod gives HUGE_VAL
        value = math.inf
    return (-value if sign == "-" else value), m.end()


def _shifter_size(text: str, what: str) -> tuple[int, str | None]:
    """Bytes from a perNodeCache size as Shifter reads it (strtod, then the first letter
    after the number picks the power of 1024, a whole number by truncation), and a note
    when that differs from the plain reading of the text."""
    hint = ("write a number with an optional K, M, G, T, P or E suffix "
            "(powers of 1024), e.g. 100G")
    value, end = _strtod(text)
    letter = text[end].lower() if end < len(text) else "b"
    if letter not in _SHIFTER_SCALE or end == 0:
        raise _Refusal(f"{what} {_show(text)} is not a size", hint)
    value *= 1024 ** _SHIFTER_SCALE.index(letter)
    if math.isnan(value):
        raise _Refusal(f"{what} {_show(text)} is not a size", hint)
    if value >= 2**63:
        raise _Refusal(f"{what} {_show(text)} is too large (the limit is 8E minus one byte)", hint)
    size = int(value) if value > -1 else 0  # C's (ssize_t) cast truncates
    if size <= 0:
        raise _Refusal(f"{what} {_show(text)} must be at least 1 byte", hint)
    plain = _plain_size_re().fullmatch(text)
    if plain:
        number, unit = plain.groups()
        from fractions import Fraction  # start-up: 3.6 ms of import, paid only when a size is given

        exact = Fraction(number) * 1024 ** (_UNITS.index(unit.upper()) + 1 if unit else 0)
        if exact == size:
            return size, None
    short = _format_size(size)
    bytes_ = f"{size} bytes" + (f" ({short})" if short != str(size) else "")
    return size, f"{what} {_show(text)} is read as {bytes_}, as Shifter reads it"


def _format_size(size: int) -> str:
    """Canonical text for a byte count: the largest exact unit, e.g. 1536M, 4K, 1000."""
    for power in range(len(_UNITS), 0, -1):
        if size % 1024**power == 0:
            return f"{size // 1024**power}{_UNITS[power - 1]}"
    return str(size)


# --- paths -----------------------------------------------------------------------------

def _components(path: str) -> tuple[str, ...]:
    """The components of a normal absolute path: '/' -> (), '/a/b' -> ('a', 'b')."""
    return tuple(path.split("/")[1:]) if path != "/" else ()


def _within(path: str, tree: str) -> bool:
    """Whether ``path`` is ``tree`` or below it, by component (``/variable`` is not in ``/var``)."""
    p, t = _components(path), _components(tree)
    return p[:len(t)] == t


def _describe(char: str) -> str:
    """Name a refused character for a message."""
    named = {"\0": "a NUL byte", "\n": "a newline", " ": "a space", "\t": "a tab"}
    if char in named:
        return named[char]
    if unicodedata.category(char) == "Cc":
        return f"the control character {char!r}"
    return f"the character {char!r}"


def _variables_hint(path: str) -> str:
    """The hint for a path holding a ``$``: Slurm leaves ``#SBATCH`` lines unexpanded."""
    why = ("Slurm does not expand $VARIABLES in #SBATCH lines (Shifter silently dropped the '$' "
           "and used another path)")
    names = [a or b for a, b in _VARIABLE.findall(path)]
    if names and all(os.environ.get(n) for n in names):
        full = _VARIABLE.sub(lambda m: os.environ[m.group(1) or m.group(2)], path)
        if "$" not in full and _PATH_CHARS.fullmatch(full):
            return f"{why}: write the path out in full, e.g. {full!r}"
    return (f"{why}: write the path out in full, or give --volume on the command line, "
            "where the shell expands it")


def _normal(path: str, part: str) -> str:
    """The normal form of an absolute path made of allowed characters: ``//``, ``.``
    components and a trailing ``/`` removed (as Shifter's realpath does); ``..`` refused."""
    label = f"{part} {_show(path)}"
    if not path.startswith("/"):
        raise _Refusal(f"{label} is not an absolute path",
                       _variables_hint(path) if "$" in path else "give the full path, starting with '/'")
    names = path.split("/")[1:]
    if ".." in names:
        raise _Refusal(f"{label} contains a '..' component",
                       "give the full path without '..' (Shifter refuses '..' too)")
    normal = "/" + "/".join(n for n in names if n not in ("", "."))
    if len(normal) >= PATH_MAX:  # only ASCII is left: characters are bytes
        raise _Refusal(f"{part} is longer than {PATH_MAX - 1} bytes (PATH_MAX)", "use a shorter path")
    return normal


def _check_path(path: str, part: str) -> str:
    """The normal form of a source or destination; refuses what Shifter would alter."""
    if path == "":
        raise _Refusal(f"{part} is empty",
                       "write SOURCE:DESTINATION with two absolute paths, e.g. /global/data:/data")
    if not _PATH_CHARS.fullmatch(path):
        bad = next(c for c in path if not _PATH_CHAR.fullmatch(c))
        hint = ("volume paths may hold only ASCII letters, digits and / _ . + - (Shifter silently "
                "dropped other characters); a symlink with such a name can point at the real path")
        if bad == "$":
            hint = _variables_hint(path)
        raise _Refusal(f"{part} {_show(path)} contains {_describe(bad)}, which is not allowed in a volume path",
                       hint)
    return _normal(path, part)


def _check_unused_source(path: str) -> tuple[str, str | None]:
    """The source of a perNodeCache map: never used (the cache is a new filesystem), so
    read as Shifter reads it, dropping the characters it drops, with a note if any."""
    if path == "":
        raise _Refusal("source is empty", "write any absolute path, e.g. /tmp:/cache:perNodeCache=size=10G")
    kept = "".join(_PATH_CHAR.findall(path))
    if not kept.startswith("/"):
        raise _Refusal(f"source {_show(path)} is not an absolute path",
                       _variables_hint(path) if "$" in path else "give the full path, starting with '/'")
    note = None
    if kept != path:
        dropped = "".join(sorted(set(path) - set(kept)))
        note = (f"the source of a perNodeCache map is not used; its characters {dropped!r} are "
                f"dropped as Shifter does, giving {kept!r}")
    return _normal(kept, "source"), note


def _check_destination_rules(path: str, site: bool) -> None:
    """Refuse a (normal, absolute) destination that the user or the site may not use."""
    label = f"destination {_show(path)}"
    if site:
        if path in _SITE_FORBIDDEN_EXACT:
            raise _Refusal(f"{label} {_SITE_FORBIDDEN_EXACT[path]}", _SITE_DESTINATION_HINT)
        return
    if path in _USER_FORBIDDEN_EXACT:
        raise _Refusal(f"{label} {_USER_FORBIDDEN_EXACT[path]}", _USER_DESTINATION_HINT)
    if path in _USER_ALLOWED_EXACT:
        return
    for tree, reason in _USER_FORBIDDEN_TREES.items():
        if _within(path, tree):
            where = "is" if path == tree else "is inside"
            raise _Refusal(f"{label} {where} {tree}, {reason}", _USER_DESTINATION_HINT)


def check_destination(path: str, *, site: bool = False) -> None:
    """Refuse a destination the user (or, with ``site``, the site) may not mount on.

    For the mounting code: call it again with the destination as resolved inside the
    container (symlinks followed), since an image may make ``/data`` a link to ``/etc``.
    Raises ``UsageError`` (``ConfigError`` with ``site``).
    """
    try:
        _check_destination_rules(_check_path(path, "destination"), site)
    except _Refusal as r:
        raise _error(site)(f"can't mount a volume: {r.why}", r.hint) from None


# --- flags -----------------------------------------------------------------------------

def _shifter_options(text: str) -> list[tuple[str, str | None, bool, bool]]:
    """``KEY=VALUE,...`` split exactly as Shifter's flag parser splits it:
    [(key, value or None, borrowed, lost)].

    Shifter cuts each ',' item at the first '=' it finds *from the item's start to the end
    of the text*, so an item without '=' takes the value of a later one (``borrowed``),
    and that later key is left without a value (``lost``: its value is None)."""
    ends: set[int] = set()  # the positions Shifter overwrites with NUL

    def find(char: str, start: int) -> int | None:
        for j in range(start, len(text)):
            if j in ends:
                return None
            if text[j] == char:
                return j
        return None

    def string(start: int) -> str:
        j = start
        while j < len(text) and j not in ends:
            j += 1
        return text[start:j]

    pairs: list[tuple[int, int | None, bool, bool]] = []
    i = 0
    while i < len(text):
        eq, comma = find("=", i), find(",", i)
        comma = len(text) if comma is None else comma
        lost = eq is None and "=" in text[i:comma]
        ends.add(comma)
        if eq is not None:
            ends.add(eq)
        pairs.append((i, None if eq is None else eq + 1, eq is not None and eq > comma, lost))
        i = comma + 1
    return [(string(k), None if v is None else string(v), borrowed, lost) for k, v, borrowed, lost in pairs]


def _parse_per_node_cache(token: str, value: str) -> tuple[PerNodeCache, list[str]]:
    example = "e.g. perNodeCache=size=100G"
    notes: list[str] = []
    size: int | None = None
    ignored: list[str] = []
    block: str | None = None
    if len(value) > 4096:  # Shifter's PATH_MAX-sized buffers; keeps the option scan quick
        raise _Refusal(f"flag {_show(token)} is longer than 4096 characters", f"write it shorter, {example}")
    for key, val, borrowed, lost in _shifter_options(value):
        name = key.lower()
        if lost and name in ("size", "bs", "fs", "method"):
            raise _Refusal(f"perNodeCache option {key!r} loses its value to an option before it that "
                           "has no '=' (Shifter reads it so, and fails)",
                           f"give every option as KEY=VALUE, {example}")
        if borrowed:
            notes.append(f"perNodeCache option {key!r} has no '=': read as Shifter reads it, "
                         f"with the value {val!r} of a later option")
        if name in ("size", "bs", "fs", "method") and not val:
            raise _Refusal(f"perNodeCache option {key!r} has no value", f"write {name}=VALUE, {example}")
        if name == "size":
            if size is not None:
                notes.append(f"perNodeCache size is given more than once: the last one, {val!r}, "
                             "is used (as in Shifter)")
            size, note = _shifter_size(val, "perNodeCache size")
            if note:
                notes.append(note)
        elif name == "bs":
            _shifter_size(val, "perNodeCache bs")  # Shifter refuses a bs it can't read, then ignores it
            block = val
        elif name in ("fs", "method"):
            only = "xfs" if name == "fs" else "loop"
            if val.lower() != only:
                raise _Refusal(f"perNodeCache {name} {_show(val)} is not supported",
                               f"the only {name} is {only}; leave {name} out")
        elif key or val is not None:  # an empty item (',,') means nothing
            ignored.append(key if val is None or borrowed else f"{key}={val}")
    if size is None:
        raise _Refusal(f"flag {_show(token)} has no size", f"add size=SIZE, {example}")
    if block is not None:
        notes.append(f"perNodeCache bs={block} is ignored: the cache gets mkfs.xfs's default block "
                     "size (Shifter ignores bs too)")
    if ignored:
        names = ", ".join(_show(k, 40) for k in ignored[:5])
        if len(ignored) > 5:
            names += f" and {len(ignored) - 5} more"
        notes.append(f"unknown perNodeCache option{'s' if len(ignored) > 1 else ''} {names} ignored (as in Shifter); "
                     "the options are size, bs, fs=xfs and method=loop")
    return PerNodeCache(size=size), notes


def _parse_flags(tokens: list[str], site: bool) -> tuple[dict, list[str]]:
    """The VolumeMap keyword arguments for a map's flag tokens, and notes."""
    known = _SITE_FLAGS if site else _USER_FLAGS
    fields: dict = {}
    notes: list[str] = []
    seen: list[str] = []  # canonical names of the flags given so far
    for raw in tokens:
        token = raw.strip(_WS)
        if token == "":
            continue  # an empty flag ('::', a trailing ':') is skipped, as Shifter does
        name, sep, value = token.partition("=")
        canonical = next((f for f in _SITE_FLAGS if f.lower() == name.lower()), None)
        if canonical is None:
            hint = _FLAGS_HINT[site]
            if token.startswith("/"):
                hint = "':' separates source, destination and flags, so a path cannot contain ':'"
            raise _Refusal(f"flag {_show(token)} is unknown", hint)
        if canonical not in known:
            raise _Refusal(f"flag {_show(token)} is only for the site configuration (siteFs)",
                           _FLAGS_HINT[False])
        if canonical in seen:
            raise _Refusal(f"flag {canonical!r} is given twice", "give each flag once")
        seen.append(canonical)
        if canonical == "perNodeCache":
            if not value:
                raise _Refusal(f"flag {_show(token)} needs a size",
                               "write perNodeCache=size=SIZE, e.g. perNodeCache=size=100G")
            fields["per_node_cache"], more = _parse_per_node_cache(token, value)
            notes.extend(more)
        elif value:  # 'ro=' is 'ro' to Shifter
            raise _Refusal(f"flag {canonical!r} takes no value, got {_show(token)}",
                           f"write just {canonical}")
        elif canonical == "ro":
            fields["read_only"] = True
        elif canonical == "rec":
            fields["recursive"] = True
        else:
            if "propagation" in fields:
                raise _Refusal(f"flags {fields['propagation']!r} and {canonical!r} contradict each other",
                               "choose one mount propagation: slave or private")
            fields["propagation"] = canonical
    if "per_node_cache" in fields:
        dropped = [f for f in seen if f != "perNodeCache"]
        if dropped:
            for key in ("read_only", "recursive", "propagation"):
                fields.pop(key, None)
            notes.append(f"{' and '.join(repr(f) for f in dropped)} ignored: a per-node cache is a new, "
                         "writable filesystem of its own, not a bind mount (Shifter ignores "
                         f"{'them' if len(dropped) > 1 else 'it'} too)")
    return fields, notes


# --- maps ------------------------------------------------------------------------------

def _parse_map(text: str, site: bool) -> tuple[VolumeMap, list[str]]:
    """One map (not empty, white space already stripped), and notes for warnings."""
    # Quotes around the map; also one at either end alone, which is what a quoted value
    # of several maps ("/a:/b;/c:/d") leaves on its first and last map (Shifter drops them).
    body = text[1:] if text.startswith('"') else text
    body = (body[:-1] if body.endswith('"') else body).strip(_WS)
    if body == "":
        raise _Refusal("the map is empty", "write SOURCE:DESTINATION[:ro], e.g. /global/data:/data:ro")
    tokens = body.split(":")
    if len(tokens) > 1 and tokens[-1] == "":
        tokens.pop()  # Shifter's tokenizer makes no token after a trailing ':'
    fields, notes = _parse_flags(tokens[2:], site)
    raw_source = tokens[0].strip(_WS)
    if len(tokens) == 1:
        if not site:
            raise _Refusal("the map has no destination",
                           "write SOURCE:DESTINATION[:ro], e.g. /global/data:/data:ro")
        raw_destination = raw_source
    else:
        raw_destination = tokens[1].strip(_WS)
    if "per_node_cache" in fields:
        source, note = _check_unused_source(raw_source)
        if note:
            notes.insert(0, note)
    else:
        source = _check_path(raw_source, "source")
    destination = _check_path(raw_destination, "destination")
    _check_destination_rules(destination, site)
    return VolumeMap(source, destination, **fields), notes


def _parse_into(maps: list[VolumeMap], spec: str, site: bool, warn: Warn | None) -> None:
    if not isinstance(spec, str):
        raise TypeError(f"a volume spec is a str, not {type(spec).__name__}")
    for piece in spec.split(";"):
        text = piece.strip(_WS)
        if text == "":
            continue  # empty maps (';;', a leading or trailing ';') are skipped, as Shifter does
        index = len(maps) + 1
        try:
            volume, notes = _parse_map(text, site)
        except _Refusal as r:
            raise _map_error(site, index, text, r.why, r.hint) from None
        maps.append(volume)
        if warn is not None:
            for note in notes:
                warn(f"warning: {_map_label(site, index, text)}: {note}")


def parse_volumes(spec: str, *, site: bool = False, warn: Warn | None = None) -> tuple[VolumeMap, ...]:
    """Parse ``MAP;MAP;...`` (see the grammar).  ``site`` selects the site's rules
    (udiRoot.conf ``siteFs``), which allow more flags and destinations.  An empty spec
    gives no maps.  ``warn`` gets one line (``warning: ...``) for each part of a map
    that is accepted and ignored as Shifter does.  Raises ``UsageError``
    (``ConfigError`` with ``site``)."""
    maps: list[VolumeMap] = []
    _parse_into(maps, spec, site, warn)
    return tuple(maps)


def parse_volume_list(specs: Iterable[str], *, site: bool = False,
                      warn: Warn | None = None) -> tuple[VolumeMap, ...]:
    """Parse several specs (e.g. repeated ``--volume`` options) as one list of maps,
    numbered 1, 2, ... across all of them in messages."""
    if isinstance(specs, str):
        raise TypeError("parse_volume_list takes an iterable of specs; use parse_volumes for one")
    maps: list[VolumeMap] = []
    for spec in specs:
        _parse_into(maps, spec, site, warn)
    return tuple(maps)


def format_volumes(maps: Iterable[VolumeMap]) -> str:
    """Canonical text of a set of maps: their ``spec()`` sorted and joined with ';'.

    Sorted (as Shifter's volume signature is) so that the same request in another order
    compares equal; order cannot change the result once ``destination_conflicts`` passed.
    ``parse_volumes`` of the text gives the maps back, in this sorted order, with no warning.
    """
    return ";".join(sorted(m.spec() for m in maps))


def destination_conflicts(maps: Iterable[VolumeMap], *, site: bool = False) -> None:
    """Refuse two maps on the same destination, or one inside another's destination.

    Shifter refuses a destination on or below an earlier map's (it is not on the
    container's own file system), and lets a later map on a parent directory hide an
    earlier one; both are refused here, whatever the order.  Pass site and user maps
    together to check them against each other.  Raises ``UsageError`` (``ConfigError``
    with ``site``), naming both maps by their 1-based position.
    """
    maps = tuple(maps)
    for j, later in enumerate(maps):
        for i, earlier in enumerate(maps[:j]):
            if later.destination == earlier.destination:
                why = f"both mount on {earlier.destination!r}"
            elif _within(later.destination, earlier.destination):
                why = (f"the destination of map {j + 1} is inside the destination "
                       f"{earlier.destination!r} of map {i + 1}")
            elif _within(earlier.destination, later.destination):
                why = (f"the destination of map {i + 1} is inside the destination "
                       f"{later.destination!r} of map {j + 1}, which would hide it")
            else:
                continue
            raise _error(site)(
                f"conflicting volume maps {i + 1} {_show(earlier.spec())} and "
                f"{j + 1} {_show(later.spec())}: {why}",
                "give each map its own destination, none inside another")
