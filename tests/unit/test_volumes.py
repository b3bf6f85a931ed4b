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

G = 1024**3


def refused(spec, *, site=False):
    """The error parse_volumes raises for spec; checks the error's shape on the way."""
    with pytest.raises(ConfigError if site else UsageError) as exc:
        parse_volumes(spec, site=site)
    error = exc.value
    assert "\n" not in error.message and error.hint and "\n" not in error.hint
    return error


# --- accepted ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("/global/data:/data", (VolumeMap("/global/data", "/data"),)),
    ("/path1/is/here:/target1", (VolumeMap("/path1/is/here", "/target1"),)),
    ("/scratch1/test:/input:ro", (VolumeMap("/scratch1/test", "/input", read_only=True),)),
    ("/a:/b:RO", (VolumeMap("/a", "/b", read_only=True),)),
    ("/a:/b;/c:/d:ro", (VolumeMap("/a", "/b"), VolumeMap("/c", "/d", read_only=True))),
    ("/a:/b;", (VolumeMap("/a", "/b"),)),
    ("/a:/b; /c:/d ;\t", (VolumeMap("/a", "/b"), VolumeMap("/c", "/d"))),
    ('"/a:/b:ro"', (VolumeMap("/a", "/b", read_only=True),)),
    ('"/a:/b";"/c:/d"', (VolumeMap("/a", "/b"), VolumeMap("/c", "/d"))),
    ("/x-1/y_2/z+3/v.4:/w", (VolumeMap("/x-1/y_2/z+3/v.4", "/w"),)),
    ("/a..b/.c/d.:/e", (VolumeMap("/a..b/.c/d.", "/e"),)),
    ("", ()),
    ("  ", ()),
])
def test_accepted(spec, expected):
    assert parse_volumes(spec) == expected


@pytest.mark.parametrize("destination", [
    "/variable", "/etcetera", "/optx", "/opt/app", "/opt/udiImageX", "/opt/udiImage2/x",
    "/var/tmp", "/var/tmp/x/y", "/home/etc", "/data/var", "/tmp", "/usr/local/etc",
])
def test_user_destinations_allowed_by_component(destination):
    assert parse_volumes(f"/src:{destination}") == (VolumeMap("/src", destination),)


@pytest.mark.parametrize("flag, cache", [
    ("perNodeCache=size=100G", PerNodeCache(100 * G)),
    ("perNodeCache=size=4T,bs=4K", PerNodeCache(4 * 1024**4, block_size=4096)),
    ("pernodecache=SIZE=1g,FS=XFS,Method=LOOP", PerNodeCache(G)),
    ("perNodeCache=method=loop,fs=xfs,bs=512,size=1.5g", PerNodeCache(3 * G // 2, block_size=512)),
    ("perNodeCache=size=64k,bs=64KiB", PerNodeCache(65536, block_size=65536)),
])
def test_per_node_cache(flag, cache):
    assert parse_volumes(f"/a:/cache:{flag}") == (VolumeMap("/a", "/cache", per_node_cache=cache),)


@pytest.mark.parametrize("text, size", [
    ("5", 5), ("5b", 5), ("5B", 5), ("5k", 5 * 1024), ("500K", 500 * 1024), ("500KB", 500 * 1024),
    ("500kib", 500 * 1024), ("2m", 2 * 1024**2), ("3g", 3 * G), ("1t", 1024**4), ("1p", 1024**5),
    ("7E", 7 * 1024**6), ("0.5k", 512), ("1.25M", 1310720), ("007", 7),
])
def test_sizes(text, size):
    (volume,) = parse_volumes(f"/a:/b:perNodeCache=size={text}")
    assert volume.per_node_cache.size == size


def test_site_maps():
    assert parse_volumes("/global/cscratch1", site=True) == (
        VolumeMap("/global/cscratch1", "/global/cscratch1"),)
    assert parse_volumes("/global/cscratch1:/global/cscratch1:rec", site=True) == (
        VolumeMap("/global/cscratch1", "/global/cscratch1", recursive=True),)
    assert parse_volumes("/a:/b:ro:REC:Slave;/c:/d:private", site=True) == (
        VolumeMap("/a", "/b", read_only=True, recursive=True, propagation="slave"),
        VolumeMap("/c", "/d", propagation="private"))
    assert parse_volumes("/a:/c:perNodeCache=size=100M", site=True) == (
        VolumeMap("/a", "/c", per_node_cache=PerNodeCache(100 * 1024**2)),)


@pytest.mark.parametrize("destination", [
    "/etc/hosts", "/etc/ssh", "/var/run", "/var/spool/alps", "/opt/udiImage/x", "/opt/site", "/usr/x",
])
def test_site_destinations_allowed(destination):
    assert parse_volumes(f"/:{destination}", site=True) == (VolumeMap("/", destination),)


# --- refused: structure -----------------------------------------------------------------

def test_message_names_map_index_and_text():
    error = refused("/a:/b;/c:/etc/x:ro;/e:/f")
    assert error.message.startswith("invalid volume map 2 '/c:/etc/x:ro': destination '/etc/x' ")


def test_site_errors_are_config_errors():
    error = refused("/a:/b;/c:/opt", site=True)
    assert error.message.startswith("invalid site volume map 2 '/c:/opt': destination '/opt' ")


@pytest.mark.parametrize("spec, index, text", [
    ("/a:/b;;/c:/d", 2, ""),
    (";/a:/b", 1, ""),
    (";", 1, ""),
    ("/a:/b; ;/c:/d", 2, ""),
])
def test_empty_maps_refused(spec, index, text):
    error = refused(spec)
    assert error.message == (
        f"invalid volume map {index} {text!r}: the map is empty (an extra ';' in {spec!r})")
    assert "';'" in error.hint


def test_user_map_needs_a_destination():
    error = refused("/no/to/specified")
    assert "'/no/to/specified': the map has no destination" in error.message
    assert "SOURCE:DESTINATION" in error.hint


def test_long_map_text_is_shortened_in_the_message():
    error = refused("/a" * 300 + ":/etc")
    assert "..." in error.message and len(error.message) < 400


# --- refused: paths ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, reason", [
    (":/b", "source is empty"),
    ("/a:", "destination is empty"),
    ("a:/b", "source 'a' is not an absolute path"),
    ("/a:b", "destination 'b' is not an absolute path"),
    ("./a:/b", "source './a' is not an absolute path"),
    ("/a/../b:/c", "source '/a/../b' contains a '..' component"),
    ("/a:/b/..", "destination '/b/..' contains a '..' component"),
    ("/a:/../etc", "destination '/../etc' contains a '..' component"),
    ("/a/./b:/c", "source '/a/./b' contains a '.' component"),
    ("/a:/.", "destination '/.' contains a '.' component"),
    ("/a//b:/c", "source '/a//b' contains an empty component ('//')"),
    ("//a:/c", "source '//a' contains an empty component ('//')"),
    ("/a/:/c", "source '/a/' ends with '/'"),
    ("/a:/c/", "destination '/c/' ends with '/'"),
])
def test_paths_must_be_absolute_and_normal(spec, reason):
    assert reason in refused(spec).message


@pytest.mark.parametrize("spec, normal", [
    ("/a/./b:/c", "/a/b"), ("/a//b:/c", "/a/b"), ("/a/:/c", "/a"), ("/a:/x//y/", "/x/y"),
])
def test_normal_form_is_suggested_not_applied(spec, normal):
    assert f"write {normal!r}" in refused(spec).hint


@pytest.mark.parametrize("spec, what", [
    ("/a\0b:/c", "a NUL byte"),
    ("/a\nb:/c", "a newline"),
    ("/a:/c\n", "a newline"),
    ("/a b:/c", "a space"),
    ("/a:/c\td", "a tab"),
    ("/a\x07:/c", "the control character '\\x07'"),
    ("/a\r:/c", "the control character '\\r'"),
    ("/a:/c\x7f", "the control character '\\x7f'"),
    ("/a@b:/c", "the character '@'"),
    ("/a,b:/c", "the character ','"),
    ("/a=b:/c", "the character '='"),
    ("/~user:/c", "the character '~'"),
    ("/a$(id):/c", "the character '$'"),
    ("/caf\u00e9:/c", "the character '\u00e9'"),
    ("/a\u00a0:/c", "the character '\\xa0'"),
    ('/a":/c', "the character '\"'"),
])
def test_refused_characters(spec, what):
    error = refused(spec)
    assert f"contains {what}, which is not allowed in a volume path" in error.message
    assert "ASCII letters, digits and / _ . + -" in error.hint


def test_path_max():
    ok = "/" + "a" * 4094
    assert parse_volumes(f"{ok}:/b") == (VolumeMap(ok, "/b"),)
    error = refused(f"/a:{ok}b")
    assert "destination is longer than 4095 bytes (PATH_MAX)" in error.message


def test_user_source_may_not_be_root():
    assert "source '/' is the whole file system" in refused("/:/host").message


# --- refused: destinations --------------------------------------------------------------

@pytest.mark.parametrize("destination, reason", [
    ("/", "would replace the container's root directory"),
    ("/opt", "would hide /opt/udiImage"),
    ("/etc", "is /etc, where shifter writes the container's configuration"),
    ("/etc/passwd", "is inside /etc"),
    ("/etc/ssh/x", "is inside /etc"),
    ("/var", "is /var, where shifter keeps its own state"),
    ("/var/log", "is inside /var"),
    ("/var/tmpx", "is inside /var"),
    ("/var/spool/tmp", "is inside /var"),
    ("/opt/udiImage", "is /opt/udiImage, where shifter keeps its own tools"),
    ("/opt/udiImage/bin", "is inside /opt/udiImage"),
])
def test_user_destinations_refused(destination, reason):
    error = refused(f"/src:{destination}")
    assert f"destination {destination!r} {reason}" in error.message
    assert "/var/tmp is allowed" in error.hint


@pytest.mark.parametrize("destination", [
    "/", "/opt", "/etc", "/var", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
])
def test_site_destinations_refused(destination):
    error = refused(f"/src:{destination}", site=True)
    assert f"destination {destination!r} " in error.message


def test_site_one_path_form_is_checked_as_destination():
    assert "destination '/etc'" in refused("/etc", site=True).message


# --- refused: flags ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, reason, hint", [
    ("/a:/b:rw", "flag 'rw' is unknown", "the flags are ro and perNodeCache"),
    ("/a:/b:bind", "flag 'bind' is unknown", "the flags are ro and perNodeCache"),
    ("/a:/b:/c", "flag '/c' is unknown", "a path cannot contain ':'"),
    ("/a:/b:", "flag 1 is empty (an extra ':')", "remove the extra ':'"),
    ("/a:/b::ro", "flag 1 is empty (an extra ':')", "remove the extra ':'"),
    ("/a:/b:ro:", "flag 2 is empty (an extra ':')", "remove the extra ':'"),
    ("/a:/b:rec", "flag 'rec' is only for the site configuration (siteFs)", "the flags are ro and"),
    ("/a:/b:slave", "flag 'slave' is only for the site configuration", "perNodeCache"),
    ("/a:/b:PRIVATE", "flag 'PRIVATE' is only for the site configuration", "perNodeCache"),
    ("/a:/b:ro:ro", "flag 'ro' is given twice", "give each flag once"),
    ("/a:/b:ro:RO", "flag 'ro' is given twice", "give each flag once"),
    ("/a:/b:ro=1", "flag 'ro' takes no value, got 'ro=1'", "write just ro"),
    ("/a:/b:ro:perNodeCache=size=1G", "flags 'perNodeCache' and 'ro' contradict each other",
     "leave ro out"),
])
def test_user_flags_refused(spec, reason, hint):
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
    ("/a:/b:rec:perNodeCache=size=1G", "flags 'perNodeCache' and 'rec' contradict", "leave rec out"),
    ("/a:/b:perNodeCache=size=1G:slave", "flags 'perNodeCache' and 'slave' contradict",
     "leave slave out"),
])
def test_site_flags_refused(spec, reason, hint):
    error = refused(spec, site=True)
    assert reason in error.message
    assert hint in error.hint


@pytest.mark.parametrize("flag, reason, hint", [
    ("perNodeCache", "flag 'perNodeCache' needs a size", "perNodeCache=size=SIZE"),
    ("perNodeCache=", "flag 'perNodeCache=' needs a size", "perNodeCache=size=SIZE"),
    ("perNodeCache=bs=4k", "flag 'perNodeCache=bs=4k' has no size", "add size=SIZE"),
    ("perNodeCache=size", "perNodeCache option 'size' has no value", "size=VALUE"),
    ("perNodeCache=size=", "perNodeCache option 'size=' has no value", "size=VALUE"),
    ("perNodeCache=size=1G,", "has an empty option (an extra ',')", "single commas"),
    ("perNodeCache=size=1G,,bs=4k", "has an empty option (an extra ',')", "single commas"),
    ("perNodeCache=size=1G,fstype=xfs", "perNodeCache option 'fstype=xfs' is unknown",
     "size=SIZE, bs=SIZE, fs=xfs and method=loop"),
    ("perNodeCache=size=1G,size=2G", "perNodeCache option 'size' is given twice", "once"),
    ("perNodeCache=size=1G,SIZE=2G", "perNodeCache option 'size' is given twice", "once"),
    ("perNodeCache=size=0", "perNodeCache size '0' must be greater than 0", "e.g. 100G"),
    ("perNodeCache=size=0.0G", "perNodeCache size '0.0G' must be greater than 0", "e.g. 100G"),
    ("perNodeCache=size=-1G", "perNodeCache size '-1G' is not a size", "powers of 1024"),
    ("perNodeCache=size=+1G", "perNodeCache size '+1G' is not a size", "powers of 1024"),
    ("perNodeCache=size=10x", "perNodeCache size '10x' is not a size", "powers of 1024"),
    ("perNodeCache=size=G", "perNodeCache size 'G' is not a size", "powers of 1024"),
    ("perNodeCache=size=1e3", "perNodeCache size '1e3' is not a size", "powers of 1024"),
    ("perNodeCache=size=0x10", "perNodeCache size '0x10' is not a size", "powers of 1024"),
    ("perNodeCache=size=10 G", "perNodeCache size '10 G' is not a size", "powers of 1024"),
    ("perNodeCache=size=10gigs", "perNodeCache size '10gigs' is not a size", "powers of 1024"),
    ("perNodeCache=size=5ib", "perNodeCache size '5ib' is not a size", "powers of 1024"),
    ("perNodeCache=size=0.1k", "perNodeCache size '0.1k' is not a whole number of bytes", "100G"),
    ("perNodeCache=size=1.5", "perNodeCache size '1.5' is not a whole number of bytes", "100G"),
    ("perNodeCache=size=8E", "perNodeCache size '8E' is too large", "100G"),
    ("perNodeCache=size=" + "9" * 40, "is not a size", "100G"),
    ("perNodeCache=size=1G,bs=1m", "perNodeCache bs '1m' (1048576 bytes) is not an XFS block size",
     "power of two from 512 to 64K"),
    ("perNodeCache=size=1G,bs=256", "perNodeCache bs '256' (256 bytes) is not an XFS block size",
     "leave bs out"),
    ("perNodeCache=size=1G,bs=3k", "perNodeCache bs '3k' (3072 bytes) is not an XFS block size",
     "bs=4K"),
    ("perNodeCache=size=1G,bs=0", "perNodeCache bs '0' must be greater than 0", "100G"),
    ("perNodeCache=size=1G,fs=ext4", "perNodeCache fs 'ext4' is not supported", "the only fs is xfs"),
    ("perNodeCache=size=1G,method=dd", "perNodeCache method 'dd' is not supported",
     "the only method is loop"),
    ("perNodeCache=size=1G:perNodeCache=size=2G", "flag 'perNodeCache' is given twice", "once"),
])
def test_per_node_cache_refused(flag, reason, hint):
    error = refused(f"/a:/cache:{flag}")
    assert error.message.startswith(f"invalid volume map 1 '/a:/cache:{flag}': ")
    assert reason in error.message
    assert hint in error.hint


# --- canonical text ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, canonical", [
    ("/a:/b", "/a:/b"),
    ("/a:/b:RO", "/a:/b:ro"),
    ('"/a:/b"', "/a:/b"),
    ("/a:/b:perNodeCache=size=1.5g", "/a:/b:perNodeCache=size=1536M"),
    ("/a:/b:perNodeCache=bs=4096,SIZE=1073741824,fs=XFS,method=loop", "/a:/b:perNodeCache=size=1G,bs=4K"),
    ("/a:/b:perNodeCache=size=1000", "/a:/b:perNodeCache=size=1000"),
    ("/a:/b:perNodeCache=size=3072k", "/a:/b:perNodeCache=size=3M"),
])
def test_spec_is_canonical(spec, canonical):
    (volume,) = parse_volumes(spec)
    assert volume.spec() == canonical


@pytest.mark.parametrize("spec, site", [
    ("/global/data:/data", False),
    ("/a:/var/tmp:ro", False),
    ("/a:/cache:perNodeCache=size=100G,bs=64K", False),
    ("/a:/cache:perNodeCache=size=12345", False),
    ("/a:/b:ro:rec:slave", True),
    ("/a:/b:rec:private", True),
    ("/global", True),
    ("/a:/c:perNodeCache=size=7E", True),
])
def test_spec_round_trips(spec, site):
    for volume in parse_volumes(spec, site=site):
        assert parse_volumes(volume.spec(), site=site) == (volume,)


def test_site_spec_order_is_shifters():
    (volume,) = parse_volumes("/a:/b:slave:rec:ro", site=True)
    assert volume.spec() == "/a:/b:ro:rec:slave"


def test_per_node_cache_spec_writes_non_defaults():
    cache = PerNodeCache(G, fs="other", method="other")
    assert cache.spec() == "perNodeCache=size=1G,fs=other,method=other"


def test_format_volumes_is_sorted_and_round_trips():
    request = "/q:/r;/d:/c;/a:/b:RO;/e:/f:perNodeCache=size=100m"
    maps = parse_volumes(request)
    text = format_volumes(maps)
    assert text == "/a:/b:ro;/d:/c;/e:/f:perNodeCache=size=100M;/q:/r"
    assert parse_volumes(text) == tuple(sorted(maps, key=VolumeMap.spec))
    assert format_volumes(reversed(maps)) == text
    assert format_volumes(parse_volumes(text)) == text
    assert format_volumes(()) == ""
    assert parse_volumes(format_volumes(())) == ()


def test_format_volumes_site():
    maps = parse_volumes("/d:/c;/a:/b;/q:/r;/a:/c2:rec:ro", site=True)
    text = format_volumes(maps)
    assert text == "/a:/b;/a:/c2:ro:rec;/d:/c;/q:/r"
    assert format_volumes(parse_volumes(text, site=True)) == text


# --- lists ------------------------------------------------------------------------------

def test_volume_list_joins_and_numbers_across_items():
    assert parse_volume_list(["/a:/b;", "/c:/d;/e:/f:ro", ""]) == (
        VolumeMap("/a", "/b"), VolumeMap("/c", "/d"), VolumeMap("/e", "/f", read_only=True))
    with pytest.raises(UsageError) as exc:
        parse_volume_list(["/a:/b", "/c:/d;/e:/etc"])
    assert exc.value.message.startswith("invalid volume map 3 '/e:/etc': destination '/etc'")


def test_volume_list_site():
    assert parse_volume_list(["/global", "/a:/b:rec"], site=True) == (
        VolumeMap("/global", "/global"), VolumeMap("/a", "/b", recursive=True))
    with pytest.raises(ConfigError, match="invalid site volume map 2 '': the map is empty"):
        parse_volume_list(["/global", ";"], site=True)


def test_volume_list_empty_item_inside_is_refused():
    with pytest.raises(UsageError) as exc:
        parse_volume_list(["/a:/b", "/c:/d;;/e:/f"])
    assert exc.value.message == (
        "invalid volume map 3 '': the map is empty (an extra ';' in '/c:/d;;/e:/f')")


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
    maps = parse_volumes("/x:/data;/y:/other;/z:/data:ro")
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
        destination_conflicts(parse_volumes("/global;/other:/global", site=True), site=True)


# --- check_destination ------------------------------------------------------------------

def test_check_destination():
    check_destination("/data")
    check_destination("/var/tmp/x")
    check_destination("/etc/hosts", site=True)
    with pytest.raises(UsageError) as exc:
        check_destination("/etc/shadow")
    assert exc.value.message == (
        "can't mount a volume: destination '/etc/shadow' is inside /etc, "
        "where shifter writes the container's configuration")
    with pytest.raises(UsageError, match="contains a '..' component"):
        check_destination("/data/../etc")
    with pytest.raises(ConfigError, match="destination '/' would replace"):
        check_destination("/", site=True)
