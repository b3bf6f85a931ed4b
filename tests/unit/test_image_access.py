"""An id image a user may not use is refused with one line that does not tell whether
it exists (udi.check_image_usable: shifter --image=id:..., sbatch/srun --image=id:...)."""

from __future__ import annotations

import pytest

from shifter.errors import UsageError
from shifter.runtime import config, meta
from shifter.runtime.builder import udi
from shifter.runtime.image import ImageRef

MINE, THEIRS, PUBLIC, MISSING = "1" * 64, "2" * 64, "3" * 64, "4" * 64


@pytest.fixture
def conf(tmp_path):
    for image_id, acl in ((MINE, (4242,)), (THEIRS, (4243,)), (PUBLIC, ())):
        (tmp_path / f"{image_id}.squashfs").write_bytes(b"hsqs")
        meta.write(str(tmp_path / f"{image_id}.meta"), meta.ImageMeta(user_acl=acl))
    return config.parse(f"imagePath={tmp_path}\n")


def _error(conf, image_id, uid=4242, gids=(4242,)):
    try:
        udi.check_image_usable(conf, ImageRef("id", image_id), uid, set(gids))
    except UsageError as e:
        return str(e)
    return None


def test_allowed_public_and_root(conf):
    assert _error(conf, MINE) is None and _error(conf, PUBLIC) is None
    assert _error(conf, THEIRS, uid=0, gids=(0,)) is None and _error(conf, MISSING, uid=0) is None


def test_private_to_others_and_missing_are_the_same_line(conf):
    theirs, missing = _error(conf, THEIRS), _error(conf, MISSING)
    assert theirs == f"can't use image id:{THEIRS}: there is no such image, or it is not yours to use " \
                     f"(hint: {udi.NOT_YOURS_HINT})"
    assert missing == theirs.replace(THEIRS, MISSING)


def test_unreadable_metadata_is_the_same_line(conf, tmp_path, monkeypatch):
    real_read = meta.read

    def read(path):  # what a 0640 .meta of another user's image gives (we are root here)
        if THEIRS in path:
            raise meta.MetaError(f"can't read image metadata: {path}: Permission denied")
        return real_read(path)

    monkeypatch.setattr(meta, "read", read)
    (tmp_path / f"{THEIRS}.meta").write_text("FORMAT: squashfs\n")  # public, but unreadable
    assert _error(conf, THEIRS) == _error(conf, MISSING).replace(MISSING, THEIRS)
