import random

import pytest

from shifter.errors import ConfigError, UsageError
from shifter.runtime.volumes import (
    PerNodeCache,
    VolumeMap,
    check_destination,
    destination_conflicts,
    format_volumes,
    parse_volume_list,
    parse_volumes,
)
from helpers.volume_model import CRASH, shifter_parse

G = 1024**3


def refused(spec, *, site=False):
    """The error parse_volumes raises for spec; checks the error's shape on the way."""
    with pytest.raises(ConfigError if site else UsageError) as exc:
        parse_volumes(spec, site=site)
    error = exc.value
    assert "\n" not in error.message and error.hint and "\n" not in error.hint
    return error


def parsed(spec, *, site=False):
    """(maps, warnings) for spec."""
    warnings = []
    maps = parse_volumes(spec, site=site, warn=warnings.append)
    for line in warnings:
        assert "\n" not in line and line.startswith("warning: ")
    return maps, warnings


def cache(source, destination, size):
    return VolumeMap(source, destination, per_node_cache=PerNodeCache(size))


# --- Shifter's inputs -------------------------------------------------------------------
# Every row: a spec NERSC Shifter's parser accepts (checked against the model of it in
# tests/helpers/volume_model.py), the maps it means, and how many warning lines we print.

SHIFTER_ACCEPTS = [
    # user maps
    (False, "/global/data:/data", (VolumeMap("/global/data", "/data"),), 0),
    (False, "/scratch1/test:/input:ro", (VolumeMap("/scratch1/test", "/input", read_only=True),), 0),
    (False, "/a:/b:RO", (VolumeMap("/a", "/b", read_only=True),), 0),
    (False, "/a:/b:ro=", (VolumeMap("/a", "/b", read_only=True),), 0),
    (False, "/a:/b;/c:/d:ro", (VolumeMap("/a", "/b"), VolumeMap("/c", "/d", read_only=True)), 0),
    (False, '"/a:/b:ro"', (VolumeMap("/a", "/b", read_only=True),), 0),
    (False, '"/a:/b";"/c:/d"', (VolumeMap("/a", "/b"), VolumeMap("/c", "/d")), 0),
    (False, '"/a:/b:ro;/c:/d"', (VolumeMap("/a", "/b", read_only=True), VolumeMap("/c", "/d")), 0),
    (False, '"/a:/b;/c:/d;/e:/f"', (VolumeMap("/a", "/b"), VolumeMap("/c", "/d"), VolumeMap("/e", "/f")), 0),
    (False, ' "/a:/b" ', (VolumeMap("/a", "/b"),), 0),
    (False, "/x-1/y_2/z+3/v.4:/w", (VolumeMap("/x-1/y_2/z+3/v.4", "/w"),), 0),
    # Shifter's realpath: a trailing '/', '//', '/./' mean the normal path
    (False, "/global/cscratch1/sd/me/:/mnt", (VolumeMap("/global/cscratch1/sd/me", "/mnt"),), 0),
    (False, "/a//b/./c/:/d/", (VolumeMap("/a/b/c", "/d"),), 0),
    (False, "//a:/x//y/.", (VolumeMap("/a", "/x/y"),), 0),
    (False, "/a/.:/b", (VolumeMap("/a", "/b"),), 0),
    (False, "/:/mnt", (VolumeMap("/", "/mnt"),), 0),
    (False, "/:/host:ro", (VolumeMap("/", "/host", read_only=True),), 0),
    (False, "/src:/var/tmp", (VolumeMap("/src", "/var/tmp"),), 0),
    (False, "/src:/tmp", (VolumeMap("/src", "/tmp"),), 0),
    (False, "/src:/dev/shm/x", (VolumeMap("/src", "/dev/shm/x"),), 0),
    (False, "/src:/opt/app", (VolumeMap("/src", "/opt/app"),), 0),
    (False, "/src:/home/etc", (VolumeMap("/src", "/home/etc"),), 0),
    # empty maps and empty flags are skipped
    (False, "", (), 0),
    (False, ";;", (), 0),
    (False, "/a:/b;", (VolumeMap("/a", "/b"),), 0),
    (False, ";/a:/b;;/c:/d;", (VolumeMap("/a", "/b"), VolumeMap("/c", "/d")), 0),
    (False, "/a:/b:", (VolumeMap("/a", "/b"),), 0),
    (False, "/a:/b::ro", (VolumeMap("/a", "/b", read_only=True),), 0),
    (False, "/a:/b:ro:", (VolumeMap("/a", "/b", read_only=True),), 0),
    (False, "/a:/b:::", (VolumeMap("/a", "/b"),), 0),
    # per-node caches
    (False, "/tmp:/cache:perNodeCache=size=100G", (cache("/tmp", "/cache", 100 * G),), 0),
    (False, "/global/cscratch1/sd/me/:/mnt:perNodeCache=size=50G",
     (cache("/global/cscratch1/sd/me", "/mnt", 50 * G),), 0),
    (False, "/x:/tmp:perNodeCache=size=1G:ro", (cache("/x", "/tmp", G),), 1),
    (False, "/x:/tmp:ro:perNodeCache=size=1G", (cache("/x", "/tmp", G),), 1),
    (False, "/x:/c:pernodecache=SIZE=1g,FS=XFS,Method=LOOP", (cache("/x", "/c", G),), 0),
    (False, "/x:/c:perNodeCache=size=4T,bs=4M", (cache("/x", "/c", 4 * 1024**4),), 1),
    (False, "/x:/c:perNodeCache=size=1G,bs=1", (cache("/x", "/c", G),), 1),
    (False, "/x:/c:perNodeCache=size=1.5g", (cache("/x", "/c", 3 * G // 2),), 0),
    (False, "/x:/c:perNodeCache=size=500KB", (cache("/x", "/c", 500 * 1024),), 0),
    (False, "/x:/c:perNodeCache=size=500kib", (cache("/x", "/c", 500 * 1024),), 0),
    (False, "/x:/c:perNodeCache=size=7E", (cache("/x", "/c", 7 * 1024**6),), 0),
    (False, "/x:/c:perNodeCache=size=1000", (cache("/x", "/c", 1000),), 0),
    (False, "/x:/c:perNodeCache=size=1e3", (cache("/x", "/c", 1000),), 1),
    (False, "/x:/c:perNodeCache=size=0x10", (cache("/x", "/c", 16),), 1),
    (False, "/x:/c:perNodeCache=size=0x1p4k", (cache("/x", "/c", 16 * 1024),), 1),
    (False, "/x:/c:perNodeCache=size=10gigs", (cache("/x", "/c", 10 * G),), 1),
    (False, "/x:/c:perNodeCache=size=1e", (cache("/x", "/c", 1024**6),), 0),
    (False, "/x:/c:perNodeCache=size=0.1k", (cache("/x", "/c", 102),), 1),
    (False, "/x:/c:perNodeCache=size=1.9", (cache("/x", "/c", 1),), 1),
    (False, "/x:/c:perNodeCache=size=+1G", (cache("/x", "/c", G),), 1),
    (False, "/x:/c:perNodeCache=size= 1G", (cache("/x", "/c", G),), 1),
    (False, "/x:/c:perNodeCache=size=1G=2", (cache("/x", "/c", G),), 1),
    (False, "/x:/c:perNodeCache=size=1G,size=2G", (cache("/x", "/c", 2 * G),), 1),
    (False, "/x:/c:perNodeCache=size=1G,fstype=xfs", (cache("/x", "/c", G),), 1),
    (False, "/x:/c:perNodeCache=size=1G,sise=2G,foo", (cache("/x", "/c", G),), 1),
    (False, "/x:/c:perNodeCache=size=1G,,", (cache("/x", "/c", G),), 0),
    (False, "/x:/c:perNodeCache=size=1G,", (cache("/x", "/c", G),), 0),
    (False, "/x:/c:perNodeCache=size,x=10G", (cache("/x", "/c", 10 * G),), 2),
    (False, "/x:/c:perNodeCache=size=1G,bs=1M,fs=xfs,method=loop,extra=1:ro",
     (cache("/x", "/c", G),), 3),
    # site maps
    (True, "/global/cscratch1", (VolumeMap("/global/cscratch1", "/global/cscratch1"),), 0),
    (True, "/global/cscratch1:", (VolumeMap("/global/cscratch1", "/global/cscratch1"),), 0),
    (True, "/global/cscratch1/", (VolumeMap("/global/cscratch1", "/global/cscratch1"),), 0),
    (True, "/global/cscratch1:/global/cscratch1:rec",
     (VolumeMap("/global/cscratch1", "/global/cscratch1", recursive=True),), 0),
    (True, "/a:/b:ro:REC:Slave;/c:/d:private",
     (VolumeMap("/a", "/b", read_only=True, recursive=True, propagation="slave"),
      VolumeMap("/c", "/d", propagation="private")), 0),
    (True, "/var/opt/cray/alps:/var/opt/cray/alps:rec:slave",
     (VolumeMap("/var/opt/cray/alps", "/var/opt/cray/alps", recursive=True, propagation="slave"),), 0),
    (True, "/etc/opt/cray/wlm_detect:/etc/opt/cray/wlm_detect",
     (VolumeMap("/etc/opt/cray/wlm_detect", "/etc/opt/cray/wlm_detect"),), 0),
    (True, "/:/etc/hosts", (VolumeMap("/", "/etc/hosts"),), 0),
    (True, "/none:/tmp:perNodeCache=size=100M:ro", (cache("/none", "/tmp", 100 * 1024**2),), 1),
    (True, "/a:/c:rec:perNodeCache=size=100M:ro", (cache("/a", "/c", 100 * 1024**2),), 1),
    (True, "/a:/b;/c:/d:rec;/e:/f:rec;/none:/tmp:perNodeCache=size=100M:ro;/qq:/uu",
     (VolumeMap("/a", "/b"), VolumeMap("/c", "/d", recursive=True), VolumeMap("/e", "/f", recursive=True),
      cache("/none", "/tmp", 100 * 1024**2), VolumeMap("/qq", "/uu")), 1),
    (True, "/x:/c:perNodeCache=size=1G:slave:rec", (cache("/x", "/c", G),), 1),
]


@pytest.mark.parametrize("site, spec, expected, nwarnings", SHIFTER_ACCEPTS)
def test_shifter_accepts_and_so_do_we(site, spec, expected, nwarnings):
    assert shifter_parse(spec, site) not in (None, CRASH)  # the row is true of Shifter
    maps, warnings = parsed(spec, site=site)
    assert maps == expected
    assert len(warnings) == nwarnings, warnings


def _meaning(maps):
    """Our maps in the model's terms (see helpers.volume_model)."""
    out = []
    for m in maps:
        if m.per_node_cache is not None:
            out.append((None, m.destination, frozenset([("cache", m.per_node_cache.size)])))
        else:
            flags = {f for f, on in (("ro", m.read_only), ("rec", m.recursive)) if on}
            out.append((m.source, m.destination, frozenset(flags | ({m.propagation} - {None}))))
    return out


_SOURCES = ["/a", "/a/", "//a", "/a/./b", "/", "/global/cscratch1/sd/$USER/", "/a b", "a", "", "/a..b",
            "/a/../b", " /a", "/x-1_2+3.4", "/a/.", "/caf\u00e9", "/a\tb", '"/a']
_DESTINATIONS = ["/b", "/b/", "/var/tmp", "/var/tmp/", "/var//tmp", "/var/tmp/x", "/variable", "/etc",
                 "//etc", "/./etc", "/opt", "/opt/", "/opt/udiImage", "/opt/x", "/", "/mnt", "", "b",
                 "/tmp", "/etc/passwd", "/var", "/etc/hosts", "/opt/udiImageX", "/c d", "/var/tmp/.",
                 "/etc/group/", "/dev", "/b$X"]
_FLAGS = ["", "ro", "RO", "ro=", "ro=1", " ro", "rec", "slave", "private", "Private", "bogus", "/c",
          "perNodeCache=size=1G", "perNodeCache=size=50G,bs=1M", "perNodeCache=size=1e3",
          "perNodeCache=SIZE=0x10", "perNodeCache=size=10gigs", "perNodeCache=size=1.5k",
          "perNodeCache=size=0.1k", "perNodeCache=size,x=1G", "perNodeCache=foo,size=1G",
          "perNodeCache=size=1G,foo", "perNodeCache=size=1G,fs=XFS,method=loop", "perNodeCache=size=1G,fs=ext4",
          "perNodeCache", "perNodeCache=", "perNodeCache=size=1G,size=2G", "perNodeCache=size=1G,,",
          "perNodeCache=size=1G,bs=0", "perNodeCache=size= 2G", "perNodeCache=size=1G=3", "perNodeCache=size=-1",
          "perNodeCache=size=8E", "perNodeCache=size=7.99E", "perNodeCache=size=inf", "perNodeCache=size=G",
          "perNodeCache=size=1G,method=", "perNodeCache=,size=1G", "perNodeCache=size=1G,bs"]


def _random_specs(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        maps = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            parts = [rng.choice(_SOURCES)]
            if rng.random() < 0.9:
                parts.append(rng.choice(_DESTINATIONS))
            parts += [rng.choice(_FLAGS) for _ in range(rng.choice((0, 1, 1, 2, 3)))]
            text = ":".join(parts) + (":" if rng.random() < 0.1 else "")
            maps.append(f'"{text}"' if rng.random() < 0.1 else text)
        spec = ";".join(maps) + (";" if rng.random() < 0.1 else "")
        yield rng.random() < 0.4, f'"{spec}"' if rng.random() < 0.1 else spec


def _forbidden(destination, site):
    """Shifter's forbidden destinations, compared by component (its string-prefix
    accidents such as /variable aside)."""
    if site:
        return destination in ("/", "/opt", "/etc", "/var", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
    if destination in ("/", "/opt"):
        return True
    if destination == "/var/tmp":
        return False
    return any(destination == t or destination.startswith(t + "/") for t in ("/etc", "/var", "/opt/udiImage"))


def test_against_shifter_model():
    """Random maps built from tricky parts: whatever Shifter accepts we accept with the
    same meaning, unless Shifter would have altered a bind path (then: refused, naming
    the character); whatever we accept never mounts on a destination Shifter forbids."""
    accepted = altered = 0
    for site, spec in _random_specs(7, 12000):
        shifter = shifter_parse(spec, site)
        try:
            ours = parse_volumes(spec, site=site)
        except (UsageError, ConfigError) as e:
            if shifter not in (None, CRASH):
                assert "which is not allowed in a volume path" in e.message, (site, spec, e.message)
                altered += 1
            continue
        for m in ours:
            assert not _forbidden(m.destination, site), (site, spec, m)
        if shifter not in (None, CRASH):
            assert _meaning(ours) == shifter, (site, spec)
            accepted += 1
    assert accepted > 400 and altered > 100  # the generator reaches both cases


# --- warnings ---------------------------------------------------------------------------

def test_warning_lines_say_what_happened():
    _, warnings = parsed("/a:/b;/x:/tmp:perNodeCache=size=1e3,bs=1M,sise=5G:ro")
    assert warnings == [
        "warning: volume map 2 '/x:/tmp:perNodeCache=size=1e3,bs=1M,sise=5G:ro': "
        "perNodeCache size '1e3' is read as 1000 bytes, as Shifter reads it",
        "warning: volume map 2 '/x:/tmp:perNodeCache=size=1e3,bs=1M,sise=5G:ro': "
        "perNodeCache bs=1M is ignored: the cache gets mkfs.xfs's default block size (Shifter ignores bs too)",
        "warning: volume map 2 '/x:/tmp:perNodeCache=size=1e3,bs=1M,sise=5G:ro': "
        "unknown perNodeCache option 'sise=5G' ignored (as in Shifter); the options are size, bs, fs=xfs "
        "and method=loop",
        "warning: volume map 2 '/x:/tmp:perNodeCache=size=1e3,bs=1M,sise=5G:ro': "
        "'ro' ignored: a per-node cache is a new, writable filesystem of its own, not a bind mount "
        "(Shifter ignores it too)",
    ]


def test_site_warnings_name_the_site_map():
    _, warnings = parsed("/g;/x:/tmp:rec:slave:perNodeCache=size=1G", site=True)
    assert warnings == [
        "warning: site volume map 2 '/x:/tmp:rec:slave:perNodeCache=size=1G': 'rec' and 'slave' ignored: "
        "a per-node cache is a new, writable filesystem of its own, not a bind mount (Shifter ignores them too)"]


def test_fractions_and_huge_numbers_are_named_in_bytes():
    _, warnings = parsed("/x:/c:perNodeCache=size=0.1k")
    assert warnings[0].endswith("perNodeCache size '0.1k' is read as 102 bytes, as Shifter reads it")
    _, warnings = parsed("/x:/c:perNodeCache=size=10gigs")
    assert warnings[0].endswith("size '10gigs' is read as 10737418240 bytes (10G), as Shifter reads it")


def test_borrowed_value_is_explained():
    maps, warnings = parsed("/x:/c:perNodeCache=size,x=10G")
    assert maps == (cache("/x", "/c", 10 * G),)
    assert "perNodeCache option 'size' has no '=': read as Shifter reads it, with the value '10G'" in warnings[0]


def test_warnings_are_optional_and_plain_maps_make_none():
    assert parse_volumes("/x:/tmp:perNodeCache=size=1G:ro") == (cache("/x", "/tmp", G),)
    assert parsed("/a/:/b//c:ro;/d:/e;;")[1] == []


def test_cache_source_is_never_used_so_a_dollar_is_dropped_with_a_warning():
    """#SBATCH --volume=/global/cscratch1/sd/$USER/:/mnt:perNodeCache=size=50G: Slurm
    leaves $USER as it is; the source of a cache is not used, so Shifter's reading
    (drop the '$') is harmless and taken, with a warning."""
    spec = "/global/cscratch1/sd/$USER/:/mnt:perNodeCache=size=50G"
    maps, warnings = parsed(spec)
    assert maps == (cache("/global/cscratch1/sd/USER", "/mnt", 50 * G),)
    assert warnings == [
        f"warning: volume map 1 {spec!r}: the source of a perNodeCache map is not used; its characters '$' "
        "are dropped as Shifter does, giving '/global/cscratch1/sd/USER/'"]
    assert shifter_parse(spec) == [(None, "/mnt", frozenset([("cache", 50 * G)]))]


# --- refused: structure -----------------------------------------------------------------

def test_message_names_map_index_and_text():
    error = refused("/a:/b;/c:/etc/x:ro;/e:/f")
    assert error.message.startswith("invalid volume map 2 '/c:/etc/x:ro': destination '/etc/x' ")


def test_skipped_empty_maps_do_not_count():
    error = refused(";;/a:/b;;/c:/etc")
    assert error.message.startswith("invalid volume map 2 '/c:/etc': ")


def test_site_errors_are_config_errors():
    error = refused("/a:/b;/c:/opt", site=True)
    assert error.message.startswith("invalid site volume map 2 '/c:/opt': destination '/opt' ")


@pytest.mark.parametrize("spec", ['""', '"', '" "'])
def test_quotes_around_nothing_are_refused(spec):
    assert shifter_parse(spec) is None
    assert refused(spec).message.endswith(f"{spec!r}: the map is empty")


@pytest.mark.parametrize("spec", ["/no/to/specified", "/a:", ":"])
def test_user_map_needs_a_destination(spec):
    assert shifter_parse(spec) is None
    error = refused(spec)
    assert error.message.endswith(f"{spec!r}: the map has no destination")
    assert "SOURCE:DESTINATION" in error.hint


def test_long_map_text_is_shortened_in_the_message():
    error = refused("/a" * 300 + ":/etc")
    assert "..." in error.message and len(error.message) < 400


# --- refused: paths ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, reason", [
    (":/b", "source is empty"),
    ("/a::ro", "destination is empty"),
    ("a:/b", "source 'a' is not an absolute path"),
    ("/a:b", "destination 'b' is not an absolute path"),
    ("./a:/b", "source './a' is not an absolute path"),
    ("/a/../b:/c", "source '/a/../b' contains a '..' component"),
    ("/a:/b/..", "destination '/b/..' contains a '..' component"),
    ("/a:/../etc", "destination '/../etc' contains a '..' component"),
    ("../x:/c:perNodeCache=size=1G", "source '../x' is not an absolute path"),
    ("/x/..:/c:perNodeCache=size=1G", "source '/x/..' contains a '..' component"),
])
def test_paths_must_be_absolute_without_dotdot(spec, reason):
    assert shifter_parse(spec) is None
    assert reason in refused(spec).message


@pytest.mark.parametrize("spec, what", [
    ("/a\0b:/c", "a NUL byte"),
    ("/a\nb:/c", "a newline"),
    ("/a b:/c", "a space"),
    ("/a:/c\td", "a tab"),
    ("/a\x07:/c", "the control character '\\x07'"),
    ("/a:/c\x7f", "the control character '\\x7f'"),
    ("/a@b:/c", "the character '@'"),
    ("/a,b:/c", "the character ','"),
    ("/a=b:/c", "the character '='"),
    ("/~user:/c", "the character '~'"),
    ("/caf\u00e9:/c", "the character '\u00e9'"),
    ("/a\u00a0:/c", "the character '\\xa0'"),
    ('/a":/c', "the character '\"'"),
    ("/a b:/c:ro", "a space"),
    ("/a:/c d:perNodeCache=size=1G", "a space"),
])
def test_characters_shifter_would_drop_are_refused(spec, what):
    """Shifter mounts '/a b' as '/ab': refused here, naming the character."""
    assert shifter_parse(spec) not in (None, CRASH)
    error = refused(spec)
    assert f"contains {what}, which is not allowed in a volume path" in error.message
    assert "ASCII letters, digits and / _ . + -" in error.hint and "dropped" in error.hint


def test_a_quote_left_on_a_flag_is_ignored_too():
    """Shifter refuses the flag 'ro"' of '"/a:/b;/c:/d:ro"'; the quote is not part of it."""
    assert shifter_parse('"/a:/b;/c:/d:ro"') is None
    assert parse_volumes('"/a:/b;/c:/d:ro"') == (VolumeMap("/a", "/b"), VolumeMap("/c", "/d", read_only=True))


def test_white_space_around_maps_paths_and_flags_is_ignored():
    assert parse_volumes(" /a : /b : ro ;\t/c:/d\r\n") == (
        VolumeMap("/a", "/b", read_only=True), VolumeMap("/c", "/d"))


@pytest.mark.parametrize("spec, shifter_mounts", [
    ("/scratch/$USER/out:/out", [("/scratch/USER/out", "/out", frozenset())]),
    ("/a:/data/${SLURM_JOB_ID}", [("/a", "/data/SLURM_JOB_ID", frozenset())]),
    ("$SCRATCH:/s", None),
])
def test_unexpanded_variables_are_refused_with_the_slurm_hint(spec, shifter_mounts, monkeypatch):
    monkeypatch.delenv("SCRATCH", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert shifter_parse(spec) == shifter_mounts  # Shifter silently drops the '$'
    error = refused(spec)
    assert "'$'" in error.message
    assert error.hint.startswith("Slurm does not expand $VARIABLES in #SBATCH lines")
    assert "write the path out in full" in error.hint


def test_variable_hint_shows_the_path_to_write(monkeypatch):
    monkeypatch.setenv("USER", "sftest1")
    error = refused("/scratch/$USER/out:/out")
    assert error.hint.endswith("write the path out in full, e.g. '/scratch/sftest1/out'")


def test_path_max():
    ok = "/" + "a" * 4094
    assert parse_volumes(f"{ok}:/b") == (VolumeMap(ok, "/b"),)
    assert parse_volumes(f"{ok}/:/b") == (VolumeMap(ok, "/b"),)
    error = refused(f"/a:{ok}b")
    assert "destination is longer than 4095 bytes (PATH_MAX)" in error.message


# --- destinations -----------------------------------------------------------------------

@pytest.mark.parametrize("destination", [
    "/variable", "/etcetera", "/opt/udiImageX", "/opt/udiImage2/x", "/var/tmp/", "/var//tmp",
])
def test_destinations_shifter_refuses_only_by_string_accident_are_allowed(destination):
    assert shifter_parse(f"/src:{destination}") is None
    (volume,) = parse_volumes(f"/src:{destination}")
    assert volume.destination == destination.replace("//", "/").rstrip("/")


@pytest.mark.parametrize("destination, reason", [
    ("/", "would replace the container's root directory"),
    ("//", "would replace the container's root directory"),
    ("/opt", "would hide /opt/udiImage"),
    ("/opt/", "would hide /opt/udiImage"),
    ("/etc", "is /etc, where shifter writes the container's configuration"),
    ("//etc", "is /etc, where shifter writes the container's configuration"),
    ("/./etc/", "is /etc, where shifter writes the container's configuration"),
    ("/etc/passwd", "is inside /etc"),
    ("/etc/ssh/x", "is inside /etc"),
    ("/var", "is /var, where shifter keeps its own state"),
    ("/var/log", "is inside /var"),
    ("/var/tmpx", "is inside /var"),
    ("/var/tmp/x", "is inside /var"),
    ("/var/spool/tmp", "is inside /var"),
    ("/opt/udiImage", "is /opt/udiImage, where shifter keeps its own tools"),
    ("/opt/udiImage/bin", "is inside /opt/udiImage"),
])
def test_user_destinations_refused(destination, reason):
    assert shifter_parse(f"/src:{destination}") is None  # at parse or at mount time
    normal = "/" + "/".join(n for n in destination.split("/") if n not in ("", "."))
    error = refused(f"/src:{destination}")
    assert f"destination {normal!r} {reason}" in error.message
    assert "(/var/tmp itself is allowed)" in error.hint


@pytest.mark.parametrize("destination", [
    "/", "/opt", "/etc", "/var", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/group/", "//var",
])
def test_site_destinations_refused(destination):
    assert shifter_parse(f"/src:{destination}", True) is None
    error = refused(f"/src:{destination}", site=True)
    assert "destination '/" in error.message


def test_site_one_path_form_is_checked_as_destination():
    assert "destination '/etc'" in refused("/etc", site=True).message


# --- refused: flags ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, reason, hint", [
    ("/a:/b:rw", "flag 'rw' is unknown", "the flags are ro and perNodeCache"),
    ("/a:/b:bind", "flag 'bind' is unknown", "the flags are ro and perNodeCache"),
    ("/a:/b:/c", "flag '/c' is unknown", "a path cannot contain ':'"),
    ("/a:/b:rec", "flag 'rec' is only for the site configuration (siteFs)", "the flags are ro and"),
    ("/a:/b:slave", "flag 'slave' is only for the site configuration", "perNodeCache"),
    ("/a:/b:PRIVATE", "flag 'PRIVATE' is only for the site configuration", "perNodeCache"),
    ("/a:/b:rec:perNodeCache=size=1G", "flag 'rec' is only for the site configuration", "perNodeCache"),
    ("/a:/b:ro:ro", "flag 'ro' is given twice", "give each flag once"),
    ("/a:/b:ro:RO", "flag 'ro' is given twice", "give each flag once"),
    ("/a:/b:ro=1", "flag 'ro' takes no value, got 'ro=1'", "write just ro"),
    ("/a:/b:ro=,", "flag 'ro' takes no value, got 'ro=,'", "write just ro"),
])
def test_user_flags_refused(spec, reason, hint):
    assert shifter_parse(spec) is None
    error = refused(spec)
    assert reason in error.message
    assert hint in error.hint


@pytest.mark.parametrize("spec, reason, hint", [
    ("/a:/b:slave:private", "flags 'slave' and 'private' contradict each other", "slave or private"),
    ("/a:/b:private:slave", "flags 'private' and 'slave' contradict each other", "slave or private"),
    ("/a:/b:rec:rec", "flag 'rec' is given twice", "once"),
    ("/a:/b:slave:slave", "flag 'slave' is given twice", "once"),
    ("/a:/b:rec=1", "flag 'rec' takes no value", "write just rec"),
    ("/a:/b:shared", "flag 'shared' is unknown", "ro, rec, slave, private and perNodeCache"),
])
def test_site_flags_refused(spec, reason, hint):
    assert shifter_parse(spec, True) is None
    error = refused(spec, site=True)
    assert reason in error.message
    assert hint in error.hint


@pytest.mark.parametrize("flag, reason, hint", [
    ("perNodeCache", "flag 'perNodeCache' needs a size", "perNodeCache=size=SIZE"),
    ("perNodeCache=", "flag 'perNodeCache=' needs a size", "perNodeCache=size=SIZE"),
    ("perNodeCache=bs=4k", "flag 'perNodeCache=bs=4k' has no size", "add size=SIZE"),
    ("perNodeCache=foo=1", "flag 'perNodeCache=foo=1' has no size", "add size=SIZE"),
    ("perNodeCache=size=", "perNodeCache option 'size' has no value", "size=VALUE"),
    ("perNodeCache=size=0", "perNodeCache size '0' must be at least 1 byte", "e.g. 100G"),
    ("perNodeCache=size=0.0G", "perNodeCache size '0.0G' must be at least 1 byte", "e.g. 100G"),
    ("perNodeCache=size=0.5", "perNodeCache size '0.5' must be at least 1 byte", "e.g. 100G"),
    ("perNodeCache=size=-1G", "perNodeCache size '-1G' must be at least 1 byte", "powers of 1024"),
    ("perNodeCache=size=-inf", "perNodeCache size '-inf' must be at least 1 byte", "powers of 1024"),
    ("perNodeCache=size=10x", "perNodeCache size '10x' is not a size", "powers of 1024"),
    ("perNodeCache=size=G", "perNodeCache size 'G' is not a size", "powers of 1024"),
    ("perNodeCache=size=10 G", "perNodeCache size '10 G' is not a size", "powers of 1024"),
    ("perNodeCache=size=nan", "perNodeCache size 'nan' is not a size", "powers of 1024"),
    ("perNodeCache=size=8E", "perNodeCache size '8E' is too large", "100G"),
    ("perNodeCache=size=inf", "perNodeCache size 'inf' is too large", "100G"),
    ("perNodeCache=size=1e19", "perNodeCache size '1e19' is too large", "100G"),
    ("perNodeCache=size=1G,bs=0", "perNodeCache bs '0' must be at least 1 byte", "100G"),
    ("perNodeCache=size=1G,bs=4q", "perNodeCache bs '4q' is not a size", "100G"),
    ("perNodeCache=size=1G,fs=ext4", "perNodeCache fs 'ext4' is not supported", "the only fs is xfs"),
    ("perNodeCache=size=1G,method=dd", "perNodeCache method 'dd' is not supported", "the only method is loop"),
    ("perNodeCache=size=1G,method=", "perNodeCache option 'method' has no value", "method=VALUE"),
    ("perNodeCache=size=1G:perNodeCache=size=2G", "flag 'perNodeCache' is given twice", "once"),
])
def test_per_node_cache_refused(flag, reason, hint):
    assert shifter_parse(f"/a:/cache:{flag}") is None
    error = refused(f"/a:/cache:{flag}")
    assert error.message.startswith(f"invalid volume map 1 '/a:/cache:{flag}': ")
    assert reason in error.message
    assert hint in error.hint


@pytest.mark.parametrize("flag, reason", [
    ("perNodeCache=size", "perNodeCache option 'size' has no value"),
    ("perNodeCache=size=1G,bs", "perNodeCache option 'bs' has no value"),
    ("perNodeCache=foo,size=1G", "perNodeCache option 'size' loses its value"),
])
def test_per_node_cache_inputs_that_crash_shifter_are_refused(flag, reason):
    assert shifter_parse(f"/a:/cache:{flag}") is CRASH
    assert reason in refused(f"/a:/cache:{flag}").message


# --- canonical text ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, canonical", [
    ("/a:/b", "/a:/b"),
    ("/a/:/b/", "/a:/b"),
    ("/a:/b:RO", "/a:/b:ro"),
    ("/a:/b:ro=", "/a:/b:ro"),
    ('"/a:/b"', "/a:/b"),
    ("/a:/b:perNodeCache=size=1.5g", "/a:/b:perNodeCache=size=1536M"),
    ("/a:/b:perNodeCache=bs=4096,SIZE=1073741824,fs=XFS,method=loop", "/a:/b:perNodeCache=size=1G"),
    ("/a:/b:perNodeCache=size=1000", "/a:/b:perNodeCache=size=1000"),
    ("/a:/b:perNodeCache=size=3072k", "/a:/b:perNodeCache=size=3M"),
    ("/a:/b:perNodeCache=size=1G:ro", "/a:/b:perNodeCache=size=1G"),
])
def test_spec_is_canonical(spec, canonical):
    (volume,) = parse_volumes(spec)
    assert volume.spec() == canonical


def test_canonical_text_round_trips_without_warnings():
    for site, spec in _random_specs(11, 4000):
        try:
            maps = parse_volumes(spec, site=site)
        except (UsageError, ConfigError):
            continue
        text = format_volumes(maps)
        again, warnings = parsed(text, site=site)
        assert warnings == [] and again == tuple(sorted(maps, key=VolumeMap.spec)), spec
        assert format_volumes(again) == text


def test_site_spec_order_is_shifters():
    (volume,) = parse_volumes("/a:/b:slave:rec:ro", site=True)
    assert volume.spec() == "/a:/b:ro:rec:slave"


def test_per_node_cache_spec_writes_non_defaults():
    assert PerNodeCache(G, fs="other", method="other").spec() == "perNodeCache=size=1G,fs=other,method=other"


def test_format_volumes_is_sorted_and_round_trips():
    request = "/q:/r;/d:/c;/a/:/b:RO;/e:/f:perNodeCache=size=100m"
    maps = parse_volumes(request)
    text = format_volumes(maps)
    assert text == "/a:/b:ro;/d:/c;/e:/f:perNodeCache=size=100M;/q:/r"
    assert parse_volumes(text) == tuple(sorted(maps, key=VolumeMap.spec))
    assert format_volumes(reversed(maps)) == text
    assert format_volumes(()) == ""
    assert parse_volumes(format_volumes(())) == ()


def test_format_volumes_site():
    maps = parse_volumes("/d:/c;/a:/b;/q:/r;/a:/c2:rec:ro", site=True)
    text = format_volumes(maps)
    assert text == "/a:/b;/a:/c2:ro:rec;/d:/c;/q:/r"
    assert format_volumes(parse_volumes(text, site=True)) == text


# --- lists ------------------------------------------------------------------------------

def test_volume_list_joins_and_numbers_across_items():
    warnings = []
    assert parse_volume_list(["/a:/b;", "/c:/d;/e:/f:ro", "", "/g:/h:perNodeCache=size=1G:ro"],
                             warn=warnings.append) == (
        VolumeMap("/a", "/b"), VolumeMap("/c", "/d"), VolumeMap("/e", "/f", read_only=True), cache("/g", "/h", G))
    assert len(warnings) == 1 and warnings[0].startswith("warning: volume map 4 ")
    with pytest.raises(UsageError) as exc:
        parse_volume_list(["/a:/b", "/c:/d;/e:/etc"])
    assert exc.value.message.startswith("invalid volume map 3 '/e:/etc': destination '/etc'")


def test_volume_list_site():
    assert parse_volume_list(["/global", "/a:/b:rec", ";"], site=True) == (
        VolumeMap("/global", "/global"), VolumeMap("/a", "/b", recursive=True))


def test_types_are_checked():
    with pytest.raises(TypeError):
        parse_volume_list("/a:/b")
    with pytest.raises(TypeError):
        parse_volumes(None)
    with pytest.raises(TypeError):
        parse_volume_list(["/a:/b", None])


# --- destination conflicts --------------------------------------------------------------

def test_distinct_destinations_do_not_conflict():
    destination_conflicts(parse_volumes("/x:/data;/y:/data2;/z:/dat;/w:/other/data;/v:/var/tmp"))
    destination_conflicts(())


def test_same_destination_conflicts():
    maps = parse_volumes("/x:/data;/y:/other;/z:/data/:ro")
    with pytest.raises(UsageError) as exc:
        destination_conflicts(maps)
    assert exc.value.message == (
        "conflicting volume maps 1 '/x:/data' and 3 '/z:/data:ro': both mount on '/data'")
    assert "its own destination" in exc.value.hint


def test_nested_destination_conflicts():
    with pytest.raises(UsageError) as exc:
        destination_conflicts(parse_volumes("/x:/data;/y:/data/sub"))
    assert exc.value.message == (
        "conflicting volume maps 1 '/x:/data' and 2 '/y:/data/sub': "
        "the destination of map 2 is inside the destination '/data' of map 1")


def test_parent_after_child_conflicts():
    with pytest.raises(UsageError) as exc:
        destination_conflicts(parse_volumes("/y:/data/sub/deeper;/x:/data"))
    assert exc.value.message == (
        "conflicting volume maps 1 '/y:/data/sub/deeper' and 2 '/x:/data': "
        "the destination of map 1 is inside the destination '/data' of map 2, which would hide it")


def test_user_map_inside_site_map_conflicts():
    site = parse_volumes("/global", site=True)
    user = parse_volumes("/global/u1/me:/global/u1")
    with pytest.raises(UsageError, match="map 2 is inside the destination '/global' of map 1"):
        destination_conflicts(site + user)


def test_site_conflicts_are_config_errors():
    with pytest.raises(ConfigError, match="both mount on '/global'"):
        destination_conflicts(parse_volumes("/global;/other:/global/", site=True), site=True)


# --- check_destination ------------------------------------------------------------------

def test_check_destination():
    check_destination("/data")
    check_destination("/var/tmp")
    check_destination("/etc/hosts", site=True)
    with pytest.raises(UsageError) as exc:
        check_destination("/etc/shadow")
    assert exc.value.message == (
        "can't mount a volume: destination '/etc/shadow' is inside /etc, "
        "where shifter writes the container's configuration")
    with pytest.raises(UsageError, match="is inside /var"):
        check_destination("/var/tmp/x")
    with pytest.raises(UsageError, match="contains a '..' component"):
        check_destination("/data/../etc")
    with pytest.raises(ConfigError, match="destination '/' would replace"):
        check_destination("/", site=True)
