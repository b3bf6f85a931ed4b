"""Private plans: the request key (shared with the C launcher), the file format and the
recorder."""

from __future__ import annotations

import os

import pytest

from shifter.runtime import privplan, record

ID = "ab" * 32


def test_fnv1a64_known_vectors():
    assert privplan.fnv1a64(b"") == 0xcbf29ce484222325
    assert privplan.fnv1a64(b"a") == 0xaf63dc4c8601ec8c
    assert privplan.fnv1a64(b"foobar") == 0x85944171f73967e8


def test_request_key_follows_the_image_precedence():
    key = privplan.request_key({"SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": ID,
                                "SLURM_SPANK_SHIFTER_IMAGE": "docker:x"}, "/c", 5, 6, [9, 6, 9])
    assert key.split("\n") == ["shifter-private-1", "uid=5", "gid=6", "groups=6,9", "config=/c", f"image=id:{ID}",
                               "volume=", "module-default"]
    # the job's pinned image; a module list, even empty, is not the default
    key = privplan.request_key({"SLURM_SPANK_SHIFTER_IMAGETYPE": "id", "SLURM_SPANK_SHIFTER_IMAGE": ID,
                                "SLURM_SPANK_SHIFTER_VOLUME": "/a:/b", "SHIFTER_MODULE": ""}, "/c", 5, 6, [])
    assert key.endswith(f"image=id:{ID}\nvolume=/a:/b\nmodule=")
    assert privplan.request_key({"SHIFTER_IMAGE": f"id:{ID}"}, "/c", 0, 0, []) is not None


@pytest.mark.parametrize("env", [
    {}, {"SHIFTER_IMAGETYPE": "docker", "SHIFTER_IMAGE": "ubuntu:22.04"}, {"SHIFTER_IMAGE": ID},
    {"SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": ID.upper()}, {"SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": ID + "0"},
    # an empty SHIFTER_IMAGE falls through to the job's, which is a tag here
    {"SHIFTER_IMAGE": "", "SLURM_SPANK_SHIFTER_IMAGETYPE": "docker", "SLURM_SPANK_SHIFTER_IMAGE": "x:1"},
])
def test_only_image_ids_are_replayed(env):
    assert privplan.request_key(env, "/c", 1, 1, []) is None


def test_dumps_and_loads_round_trip_and_refuse_bad_records():
    records = [("key", "k"), ("kind", "user"), ("root", "@/root"), ("mount", "a", "@/b", "", "4096", ""),
               ("file", "@/f", "644", b"x\ny")]
    data = privplan.dumps(records)
    assert data.startswith(b"SHIFTER_PRIVATE\x001\x00") and data.endswith(b"END\x00")
    assert [tuple(x if isinstance(x, bytes) else x.encode() for x in r) for r in records] == \
        [tuple(x if isinstance(x, bytes) else x.encode() for x in r) for r in privplan.loads(data)]
    with pytest.raises(ValueError):
        privplan.dumps([("mount", "a")])  # wrong arity
    with pytest.raises(ValueError):
        privplan.dumps([("bogus",)])
    with pytest.raises(ValueError):
        privplan.dumps([("file", "f", "644", b"a\0b")])
    with pytest.raises(ValueError):
        privplan.loads(data[:-4])  # no END


def test_recorder_names_paths_as_the_plan_does(tmp_path):
    base = str(tmp_path / "stage")
    rec = record.Recorder(base)
    fd = os.open(tmp_path, os.O_PATH)
    try:
        with record.recording(rec):
            assert record.P(base + "/root/usr") == "@/root/usr"
            assert record.P(base) == "@"
            assert record.P(base + "x") == base + "x"  # a sibling, not inside
            assert record.P(f"/proc/self/fd/{fd}") == str(tmp_path)  # a dir fd: its path
            record.register_fd(fd, "/home/u/link")
            assert record.P(f"/proc/self/fd/{fd}") == "/home/u/link"  # a volume source: as the user wrote it
            assert record.P(None) == ""
    finally:
        os.close(fd)
    assert record.P(base) == base  # no recorder: unchanged


def test_group_records_once_on_success_and_hides_its_steps():
    rec = record.Recorder()
    with record.recording(rec):
        with record.group("bindkeep", "/a", "/b", 6, 0):
            record.op("mount", "/a", "/b", "", 4096, "")
        with pytest.raises(OSError):
            with record.group("bindkeep", "/c", "/d", 6, 0):
                raise OSError("EINVAL")
        record.op("umount", "/b", 10)
    assert rec.ops == [("bindkeep", "/a", "/b", "6", "0"), ("umount", "/b", "10")]
    assert rec.broken is None


def test_what_a_plan_cannot_express_breaks_the_recording(tmp_path):
    rec = record.Recorder()
    (tmp_path / "bin").write_bytes(b"\x7fELF\0")
    with record.recording(rec):
        record.files(str(tmp_path))
        record.fail("later reason")
    assert rec.broken.endswith("contains a NUL byte")
    saver = privplan.Saver("k", "root", os.getuid(), [], [], [], [])
    assert saver(rec, "/udi") is None  # nothing written


def test_signature_changes_with_the_file(tmp_path):
    path = tmp_path / "f"
    assert privplan.signature(str(path)) == "-"
    path.write_text("a")
    first = privplan.signature(str(path))
    os.utime(path, ns=(1, 2))
    assert privplan.signature(str(path)) != first


def test_inputs_cover_the_site_the_image_and_this_installation(tmp_path):
    from shifter.runtime import config as udiconfig

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("x")
    conf = tmp_path / "udiRoot.conf"
    conf.write_text(f"udiMount=/u\nloopMount=/l\nimagePath=/i\netcPath={etc}\n")
    paths = privplan.inputs(udiconfig.load(str(conf)), str(conf), "/i/abc.squashfs")
    assert paths[:3] == [str(conf), "/i/abc.squashfs", "/i/abc.meta"]
    assert {"/etc/passwd", "/etc/group", str(etc), str(etc / "hosts")} <= set(paths)
    assert os.path.dirname(privplan.__file__) in paths  # a reinstall makes plans stale
