"""Who may read an image's files (shifter.runtime.imagefiles): the POSIX ACL xattr, modes,
the union rule for an id with several records, and meta.write applying it before the rename
(no root: files in a scratch directory, owned by whoever runs the tests)."""

from __future__ import annotations

import errno
import os

import pytest

from shifter.errors import ConfigError
from shifter.runtime import imagefiles, meta


def test_the_xattr_round_trips_and_is_what_the_kernel_accepts(tmp_path):
    value = imagefiles.acl_xattr((4243, 4242, 4242), (4240,))
    assert imagefiles.parse_acl_xattr(value) == ((4242, 4243), (4240,))
    path = tmp_path / "img.squashfs"
    path.write_bytes(b"hsqs")
    os.chmod(path, 0o644)
    imagefiles.set_access(str(path), (4243, 4242), (4240,))
    assert imagefiles.get_access(str(path)) == (0o640, (4242, 4243), (4240,))
    # the kernel derived the mode from the ACL: others have nothing
    assert os.stat(path).st_mode & 0o007 == 0


def test_going_public_removes_the_acl(tmp_path):
    path = str(tmp_path / "img.meta")
    open(path, "w").close()
    imagefiles.set_access(path, (4242,), ())
    imagefiles.set_access(path, (), ())
    assert imagefiles.get_access(path) == (0o644, (), ())
    with pytest.raises(OSError) as e:
        os.getxattr(path, imagefiles.XATTR)
    assert e.value.errno == errno.ENODATA


def test_a_symlink_is_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("x")
    os.chmod(target, 0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError):
        imagefiles.set_access(str(link), (4242,), ())
    assert imagefiles.get_access(str(target)) == (0o644, (), ())


@pytest.mark.parametrize("accesses, union", [
    ([((1,), ()), ((2,), (7,))], ((1, 2), (7,))),
    ([((1,), ()), ((), ())], ((), ())),  # one public record: the files are public
    ([((), ())], ((), ())),
    ([((3, 1), (9,)), ((1,), (9, 8))], ((1, 3), (8, 9))),
])
def test_union_access_is_as_private_as_the_most_public_record(accesses, union):
    assert imagefiles.union_access(accesses) == union


def test_a_filesystem_without_acls_refuses_a_private_image(tmp_path, monkeypatch):
    path = str(tmp_path / "img")
    open(path, "w").close()

    def nope(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", nope)
    with pytest.raises(ConfigError) as e:
        imagefiles.set_access(path, (4242,), ())
    assert "does not support POSIX ACLs" in e.value.message and e.value.hint


def test_meta_write_restricts_a_private_images_metadata_before_it_has_its_name(tmp_path, monkeypatch):
    path = str(tmp_path / "x.meta")
    seen = []
    real_replace = os.replace

    def spy(src, dst, *a, **kw):  # the access is already set when the file gets its name
        if dst == path:
            seen.append(imagefiles.get_access(src))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", spy)
    meta.write(path, meta.ImageMeta(user_acl=(4242,), group_acl=(4240,)))
    assert seen == [(0o640, (4242,), (4240,))]
    assert imagefiles.get_access(path) == (0o640, (4242,), (4240,))
    assert meta.read(path).user_acl == (4242,)
    meta.write(path, meta.ImageMeta())
    assert imagefiles.get_access(path) == (0o644, (), ())
