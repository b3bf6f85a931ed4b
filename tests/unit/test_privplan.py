"""Private plans: the request key (shared with the C launcher) and the file format
(what the executor writes into one: tests/unit/test_planner.py)."""

from __future__ import annotations


import pytest

from shifter.runtime import privplan

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
