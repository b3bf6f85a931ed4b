import pytest

from shifter.runtime import meta
from shifter.runtime.meta import ImageMeta, MetaError

SHIFTER_STYLE = """FORMAT: squashfs
ENTRY: /bin/sh -c run
WORKDIR: /work
USERACL: 4242, 4243
ENV: PATH=/usr/bin:/bin
ENV: A=b=c
"""


def test_reads_shifter_written_meta():
    m = meta.parse(SHIFTER_STYLE)
    assert m.format == "squashfs" and m.entry == "/bin/sh -c run" and m.workdir == "/work"
    assert m.user_acl == (4242, 4243) and m.private
    assert m.env_dict() == {"PATH": "/usr/bin:/bin", "A": "b=c"}


def test_round_trip(tmp_path):
    m = ImageMeta(entry=("/bin/echo", "a b"), cmd=("x",), workdir="/w", env=("K=V", "E="),
                  group_acl=(4240,), extra=(("LABEL", "v"),))
    path = tmp_path / "id.meta"
    meta.write(str(path), m)
    assert meta.read(str(path)) == m
    assert "ENTRY: [\"/bin/echo\", \"a b\"]" in path.read_text()
    # a private image's metadata: root and the group only (runtime.imagefiles)
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in tmp_path.iterdir()] == ["id.meta"]


def test_acl():
    public = ImageMeta()
    private = ImageMeta(user_acl=(4242,), group_acl=(4240,))
    assert public.allows(1, set())
    assert private.allows(4242, set()) and private.allows(9, {4240}) and private.allows(0, set())
    assert not private.allows(4243, {4243})


@pytest.mark.parametrize("text, message", [
    ("ENV: X=1\n", "no FORMAT line"),
    ("FORMAT: zip\n", "unknown FORMAT"),
    ("FORMAT: squashfs\nENV: novalue\n", ":2: ENV needs NAME=value"),
    ("FORMAT: squashfs\nUSERACL: alice\n", ":2: USERACL must be comma-separated numeric ids"),
    ("FORMAT: squashfs\ngarbage\n", ":2: expected 'KEY: value'"),
])
def test_errors(text, message):
    with pytest.raises(MetaError) as exc:
        meta.parse(text, "/i/x.meta")
    assert message in str(exc.value)


def test_refuses_to_write_newlines(tmp_path):
    with pytest.raises(MetaError):
        meta.write(str(tmp_path / "x.meta"), ImageMeta(workdir="/a\nFORMAT: vfs"))
    assert list(tmp_path.iterdir()) == []
