"""The gateway opens a file a user asks it to import as that user (shifter.gateway.userfile),
on the real kernel: symlinks into root's directories, refusals that all look alike, the
user's groups, an open that hangs."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from helpers.prereq import require
from shifter.gateway import userfile
from shifter.gateway.catalog import Requester
from shifter.gateway.errors import ImportRefused
from tools.site import TEST_SHARED_GROUP, TEST_USERS

pytestmark = pytest.mark.root


USER, UID, _ = TEST_USERS[0]
GROUP = TEST_SHARED_GROUP[1]


def _requester() -> Requester:
    return Requester(USER, UID, frozenset({UID, GROUP}))


@pytest.fixture
def layout():
    """As root: a directory of the user's, a 0700 root directory beside it holding a squashfs
    file the user owns, and in the user's directory a symlink to the root directory."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        require(False, f"needs the test user {USER} (tools/users)")
    base = tempfile.mkdtemp(prefix="shifter-userfile-")
    os.chmod(base, 0o755)
    mine = os.path.join(base, "mine")
    secret = os.path.join(base, "secret")
    os.mkdir(mine)
    os.chown(mine, UID, UID)
    os.mkdir(secret, 0o700)
    tree = os.path.join(base, "tree")
    os.mkdir(tree)
    image = os.path.join(secret, "image.squashfs")
    subprocess.run(["mksquashfs", tree, image, "-all-root", "-no-xattrs", "-quiet"], check=True,
                   capture_output=True)
    os.chown(image, UID, UID)
    os.symlink(secret, os.path.join(mine, "link"))
    yield base, mine, secret, image
    shutil.rmtree(base)


def _refusal(path: str, limit=None) -> tuple:
    with pytest.raises(ImportRefused) as e:
        os.close(userfile.open_import_file(path, _requester(), limit))
    return e.value.http_status, e.value.message, e.value.hint


def test_a_file_behind_a_symlink_into_a_root_directory_looks_missing(layout):
    base, mine, secret, image = layout
    via_link = os.path.join(mine, "link", "image.squashfs")
    os.close(userfile.open_import_file(via_link, Requester("root", 0, frozenset({0}))))  # root may
    refused = _refusal(via_link)
    os.unlink(image)
    assert _refusal(via_link) == refused  # exactly what a missing file gets
    assert refused[0] == 400 and "not a regular file that sftest1 can open" in refused[1]


def test_every_refusal_of_the_open_is_the_same(layout):
    base, mine, secret, image = layout
    cases = {}
    own = os.path.join(mine, "own.squashfs")
    shutil.copy(image, own)
    os.chown(own, UID, UID)
    cases["symlink"] = os.path.join(mine, "sym.squashfs")
    os.symlink(own, cases["symlink"])
    cases["fifo"] = os.path.join(mine, "fifo")
    os.mkfifo(cases["fifo"])
    os.chown(cases["fifo"], UID, UID)
    cases["directory"] = os.path.join(mine, "dir")
    os.mkdir(cases["directory"])
    os.chown(cases["directory"], UID, UID)
    cases["unreadable"] = os.path.join(mine, "unreadable")
    shutil.copy(image, cases["unreadable"])
    os.chmod(cases["unreadable"], 0o600)  # root's
    cases["missing"] = os.path.join(mine, "missing")
    cases["below a file"] = os.path.join(own, "x")
    cases["secret dir"] = os.path.join(secret, "image.squashfs")
    answers = {name: _refusal(path) for name, path in cases.items()}
    shown = {name: (status, message.replace(cases[name], "PATH"), hint)
             for name, (status, message, hint) in answers.items()}
    assert len(set(shown.values())) == 1, shown
    # the user's own regular squashfs file opens, and reading the fd gives its bytes
    fd = userfile.open_import_file(own, _requester())
    with os.fdopen(fd, "rb") as f, open(own, "rb") as g:
        assert f.read() == g.read()


def test_what_the_user_can_see_is_told_plainly(layout):
    base, mine, secret, image = layout
    theirs = os.path.join(mine, "theirs.squashfs")
    shutil.copy(image, theirs)  # root's, world-readable
    os.chmod(theirs, 0o644)
    assert _refusal(theirs)[:2] == (403, f"can't import {theirs}: the file is not owned by {USER}")
    text = os.path.join(mine, "text")
    with open(text, "w") as f:
        f.write("hello")
    os.chown(text, UID, UID)
    assert _refusal(text)[:2] == (400, f"can't import {text}: not a squashfs image")
    own = os.path.join(mine, "own.squashfs")
    shutil.copy(image, own)
    os.chown(own, UID, UID)
    status, message, hint = _refusal(own, limit=100)
    assert status == 400 and message.endswith("more than this gateway's ImageSizeLimit of 100 bytes")


def test_the_open_runs_with_the_users_ids(layout):
    """The child takes uid, gid and groups: a 0750 directory of the shared group is reachable."""
    base, mine, secret, image = layout
    shared = os.path.join(base, "shared")
    os.mkdir(shared, 0o750)
    os.chown(shared, 0, GROUP)
    own = os.path.join(shared, "own.squashfs")
    shutil.copy(image, own)
    os.chown(own, UID, UID)
    os.close(userfile.open_import_file(own, _requester()))
    without_group = Requester(USER, UID, frozenset({UID}))
    with pytest.raises(ImportRefused):
        userfile.open_import_file(own, without_group)


def test_an_open_that_hangs_is_cut_short(layout):
    base, mine, secret, image = layout
    fifo = os.path.join(mine, "fifo")
    os.mkfifo(fifo, 0o666)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        userfile.open_as_user(fifo, UID, UID, [UID], flags=os.O_RDONLY, timeout=0.5)  # blocks
    assert time.monotonic() - t0 < 3
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
