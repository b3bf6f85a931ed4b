"""Volume maps: ``--volume`` values and udiRoot.conf ``siteFs`` / ``module_<name>_siteFs``.

Grammar (Shifter's)::

    SPEC  := MAP (';' MAP)* [';']
    MAP   := SOURCE ':' DESTINATION (':' FLAG)*
           | SOURCE                       (site maps only: DESTINATION = SOURCE)
    FLAG  := 'ro'                         read-only bind mount
           | 'perNodeCache=' OPT (',' OPT)*
           | 'rec' | 'slave' | 'private'  (site maps only)
    OPT   := 'size=' SIZE | 'bs=' SIZE | 'fs=xfs' | 'method=loop'
    SIZE  := digits ['.' digits] [K|M|G|T|P|E [B|iB] | B]   (powers of 1024, any case)

Spaces and tabs around a map are ignored, and so is one pair of double quotes around a
map (Shifter's quirk for ``#SBATCH --volume="..."``).  Everything else is taken exactly as
written: a path that is not already in normal form, or holds a character Shifter would
have silently dropped, is refused rather than altered.  Every refusal is one line naming
the map (1-based index and text), the part (source, destination, flag) and the reason,
with a hint: ``UsageError`` for users' maps, ``ConfigError`` for site maps.

The checks here are lexical.  The mounting code must re-check the destination after
resolving symlinks inside the container (``check_destination``), as Shifter does.
See docs/volumes.md for the rules and where they differ from Shifter's.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from collections.abc import Iterable

from shifter.errors import ConfigError, ShifterError, UsageError

PATH_MAX = 4096  # bytes, with the terminating NUL
MAX_SIZE = 2**63 - 1  # Shifter keeps sizes in an ssize_t
XFS_BLOCK_SIZES = tuple(2**n for n in range(9, 17))  # 512 .. 64K

_UNITS = "KMGTPE"  # powers of 1024: K = 1024**1 ... E = 1024**6
_SIZE_RE = re.compile(r"([0-9]{1,30}(?:\.[0-9]{1,30})?)(?:([kmgtpe])(?:i?b)?|b)?",
                      re.IGNORECASE | re.ASCII)
# The characters Shifter keeps in a volume path (it silently drops all others).
_PATH_CHARS = re.compile(r"[A-Za-z0-9_.+/-]*", re.ASCII)

_USER_FLAGS = ("ro", "perNodeCache")
_SITE_FLAGS = ("ro", "rec", "slave", "private", "perNodeCache")
_FLAGS_HINT = {
    False: "the flags are ro and perNodeCache=size=SIZE[,bs=SIZE]",
    True: "the flags are ro, rec, slave, private and perNodeCache=size=SIZE[,bs=SIZE]",
}
_CACHE_KEYS = ("size", "bs", "fs", "method")

# Users may not mount on or under these trees (compared by path component) ...
_USER_FORBIDDEN_TREES = {
    "/etc": "where shifter writes the container's configuration",
    "/var": "where shifter keeps its own state",
    "/opt/udiImage": "where shifter keeps its own tools",
}
_USER_ALLOWED_TREES = ("/var/tmp",)  # ... except under these ...
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
_USER_DESTINATION_HINT = ("choose a destination outside /etc, /var (/var/tmp is allowed) and "
                          "/opt/udiImage, and other than / and /opt, e.g. /data")
_SITE_DESTINATION_HINT = "choose another destination (not /, /opt, /etc, /var or shifter's /etc files)"


@dataclass(frozen=True)
class PerNodeCache:
    """A private, node-local scratch filesystem (``perNodeCache=``)."""

    size: int  # bytes
    fs: str = "xfs"
    block_size: int | None = None  # bytes; None: mkfs.xfs's default
    method: str = "loop"

    def spec(self) -> str:
        """The canonical ``perNodeCache=...`` flag text (defaults left out)."""
        opts = [f"size={_format_size(self.size)}"]
        if self.block_size is not None:
            opts.append(f"bs={_format_size(self.block_size)}")
        if self.fs != "xfs":
            opts.append(f"fs={self.fs}")
        if self.method != "loop":
            opts.append(f"method={self.method}")
        return "perNodeCache=" + ",".join(opts)


@dataclass(frozen=True)
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
        (ro, rec, perNodeCache, slave|private); ``parse_volumes`` gives this map back."""
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


def _map_error(site: bool, index: int, text: str, why: str, hint: str) -> ShifterError:
    kind = "site volume map" if site else "volume map"
    return _error(site)(f"invalid {kind} {index} {_show(text)}: {why}", hint)


# --- sizes -----------------------------------------------------------------------------

def _parse_size(text: str, what: str) -> int:
    """Bytes from ``SIZE`` (see the grammar): a whole number of bytes in 1 .. 2**63-1."""
    hint = ("write a number with an optional K, M, G, T, P or E suffix "
            "(powers of 1024), e.g. 100G")
    m = _SIZE_RE.fullmatch(text)
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
    """Bytes from a size text such as ``100G`` (the same grammar as ``perNodeCache=size=``);
    raises ``ValueError`` with the reason (used for udiRoot.conf's perNodeCacheSizeLimit)."""
    try:
        return _parse_size(text.strip(), "size")
    except _Refusal as e:
        raise ValueError(f"{e.why} ({e.hint})") from None


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


def _check_path(path: str, part: str) -> None:
    """Refuse a source or destination that is not a plain, normal, absolute path."""
    label = f"{part} {_show(path)}"
    if path == "":
        raise _Refusal(f"{part} is empty",
                       "write SOURCE:DESTINATION with two absolute paths, e.g. /global/data:/data")
    if not _PATH_CHARS.fullmatch(path):
        bad = next(c for c in path if not _PATH_CHARS.fullmatch(c))
        raise _Refusal(
            f"{label} contains {_describe(bad)}, which is not allowed in a volume path",
            "volume paths may hold only ASCII letters, digits and / _ . + - (Shifter silently "
            "dropped other characters); a symlink with such a name can point at the real path")
    if len(path) >= PATH_MAX:  # only ASCII is left: characters are bytes
        raise _Refusal(f"{part} is longer than {PATH_MAX - 1} bytes (PATH_MAX)", "use a shorter path")
    if not path.startswith("/"):
        raise _Refusal(f"{label} is not an absolute path", "give the full path, starting with '/'")
    if path == "/":
        return
    names = path.split("/")[1:]
    if ".." in names:
        raise _Refusal(f"{label} contains a '..' component",
                       "give the full path without '..' (paths are used exactly as written)")
    if "." in names:
        why = "contains a '.' component"
    elif names[-1] == "":
        why = "ends with '/'"
    elif "" in names:
        why = "contains an empty component ('//')"
    else:
        return
    normal = "/" + "/".join(n for n in names if n not in ("", "."))
    raise _Refusal(f"{label} {why}", f"paths are used exactly as written: write {normal!r}")


def _check_destination_rules(path: str, site: bool) -> None:
    """Refuse a (normal, absolute) destination that the user or the site may not use."""
    label = f"destination {_show(path)}"
    if site:
        if path in _SITE_FORBIDDEN_EXACT:
            raise _Refusal(f"{label} {_SITE_FORBIDDEN_EXACT[path]}", _SITE_DESTINATION_HINT)
        return
    if path in _USER_FORBIDDEN_EXACT:
        raise _Refusal(f"{label} {_USER_FORBIDDEN_EXACT[path]}", _USER_DESTINATION_HINT)
    if any(_within(path, tree) for tree in _USER_ALLOWED_TREES):
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
        _check_path(path, "destination")
        _check_destination_rules(path, site)
    except _Refusal as r:
        raise _error(site)(f"can't mount a volume: {r.why}", r.hint) from None


# --- flags -----------------------------------------------------------------------------

def _parse_per_node_cache(token: str, value: str | None) -> PerNodeCache:
    example = "e.g. perNodeCache=size=100G"
    if not value:
        raise _Refusal(f"flag {_show(token)} needs a size", f"write perNodeCache=size=SIZE, {example}")
    opts: dict[str, str] = {}
    for item in value.split(","):
        if item == "":
            raise _Refusal(f"flag {_show(token)} has an empty option (an extra ',')",
                           f"separate options with single commas, {example},bs=4K")
        key, sep, val = item.partition("=")
        key = key.lower()
        if key not in _CACHE_KEYS:
            raise _Refusal(f"perNodeCache option {_show(item)} is unknown",
                           "the options are size=SIZE, bs=SIZE, fs=xfs and method=loop")
        if not sep or val == "":
            raise _Refusal(f"perNodeCache option {_show(item)} has no value", f"write {key}=VALUE, {example}")
        if key in opts:
            raise _Refusal(f"perNodeCache option {key!r} is given twice", "give each option once")
        opts[key] = val
    if "size" not in opts:
        raise _Refusal(f"flag {_show(token)} has no size", f"add size=SIZE, {example}")
    size = _parse_size(opts["size"], "perNodeCache size")
    block_size = None
    if "bs" in opts:
        block_size = _parse_size(opts["bs"], "perNodeCache bs")
        if block_size not in XFS_BLOCK_SIZES:
            raise _Refusal(
                f"perNodeCache bs {_show(opts['bs'])} ({block_size} bytes) is not an XFS block size",
                "use a power of two from 512 to 64K (e.g. bs=4K), or leave bs out "
                "(Shifter accepted any bs and ignored it)")
    for key, only in (("fs", "xfs"), ("method", "loop")):
        if key in opts and opts[key].lower() != only:
            raise _Refusal(f"perNodeCache {key} {_show(opts[key])} is not supported",
                           f"the only {key} is {only}; leave {key} out")
    return PerNodeCache(size=size, block_size=block_size)


def _parse_flags(tokens: list[str], site: bool) -> dict:
    """The VolumeMap keyword arguments for a map's flag tokens."""
    known = _SITE_FLAGS if site else _USER_FLAGS
    seen: set[str] = set()  # canonical names of the flags given so far
    fields: dict = {}
    for number, token in enumerate(tokens, 1):
        if token == "":
            raise _Refusal(f"flag {number} is empty (an extra ':')", "remove the extra ':'")
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
        if canonical == "perNodeCache":
            fields["per_node_cache"] = _parse_per_node_cache(token, value if sep else None)
        elif sep:
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
        seen.add(canonical)
    if "per_node_cache" in fields:
        for other in ("ro", "rec", "slave", "private"):
            if other in seen:
                raise _Refusal(
                    f"flags 'perNodeCache' and {other!r} contradict each other: a per-node cache is "
                    "a new, writable, loop-mounted filesystem, not a bind mount",
                    f"leave {other} out")
    return fields


# --- maps ------------------------------------------------------------------------------

def _parse_map(text: str, site: bool) -> VolumeMap:
    body = text
    if len(body) >= 2 and body[0] == body[-1] == '"':
        body = body[1:-1]
    tokens = body.split(":")
    source = tokens[0]
    if len(tokens) == 1:
        if not site:
            raise _Refusal("the map has no destination",
                           "write SOURCE:DESTINATION[:ro], e.g. /global/data:/data:ro")
        destination = source
    else:
        destination = tokens[1]
    _check_path(source, "source")
    if not site and source == "/":
        raise _Refusal("source '/' is the whole file system",
                       "map the directory you need, e.g. /global/data:/data")
    _check_path(destination, "destination")
    _check_destination_rules(destination, site)
    return VolumeMap(source, destination, **_parse_flags(tokens[2:], site))


def _parse_into(maps: list[VolumeMap], spec: str, site: bool) -> None:
    if not isinstance(spec, str):
        raise TypeError(f"a volume spec is a str, not {type(spec).__name__}")
    pieces = [piece.strip(" \t") for piece in spec.split(";")]
    if pieces[-1] == "":
        pieces.pop()  # a trailing ';' (or an empty spec)
    for piece in pieces:
        index = len(maps) + 1
        if piece == "":
            raise _map_error(site, index, piece, f"the map is empty (an extra ';' in {_show(spec)})",
                             "remove the extra ';'")
        try:
            maps.append(_parse_map(piece, site))
        except _Refusal as r:
            raise _map_error(site, index, piece, r.why, r.hint) from None


def parse_volumes(spec: str, *, site: bool = False) -> tuple[VolumeMap, ...]:
    """Parse ``MAP;MAP;...`` (see the grammar).  ``site`` selects the site's rules
    (udiRoot.conf ``siteFs``), which allow more flags and destinations.  An empty spec
    gives no maps.  Raises ``UsageError`` (``ConfigError`` with ``site``)."""
    maps: list[VolumeMap] = []
    _parse_into(maps, spec, site)
    return tuple(maps)


def parse_volume_list(specs: Iterable[str], *, site: bool = False) -> tuple[VolumeMap, ...]:
    """Parse several specs (e.g. repeated ``--volume`` options) as one list of maps,
    numbered 1, 2, ... across all of them in messages."""
    if isinstance(specs, str):
        raise TypeError("parse_volume_list takes an iterable of specs; use parse_volumes for one")
    maps: list[VolumeMap] = []
    for spec in specs:
        _parse_into(maps, spec, site)
    return tuple(maps)


def format_volumes(maps: Iterable[VolumeMap]) -> str:
    """Canonical text of a set of maps: their ``spec()`` sorted and joined with ';'.

    Sorted (as Shifter's volume signature is) so that the same request in another order
    compares equal; order cannot change the result once ``destination_conflicts`` passed.
    ``parse_volumes`` of the text gives the maps back, in this sorted order.
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
