"""shifter.asuser.call on the real kernel: the work runs with the user's ids, its answer
and descriptors come back, its refusals and errors are reported, and no child is left."""

import os
import pathlib
import pwd
import shutil
import tempfile
import time

import pytest

from shifter import asuser
from helpers.prereq import USER1, require

pytestmark = pytest.mark.root


def _ids():
    pw = pwd.getpwnam(USER1)
    return pw.pw_uid, pw.pw_gid


def _children() -> list[int]:
    me = str(os.getpid())
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    out.append(int(pid))
        except OSError:
            pass
    return out


@pytest.fixture
def reachable(tmp_path):
    """A directory the test user can enter (pytest's own are root's alone)."""
    d = tempfile.mkdtemp(dir="/tmp")
    os.chmod(d, 0o711)
    yield pathlib.Path(d)
    shutil.rmtree(d)


def test_the_work_runs_as_the_user_and_its_descriptor_comes_back(reachable):
    require(os.geteuid() == 0, "needs root")
    uid, gid = _ids()
    mine = reachable / "mine"
    mine.write_text("the user's\n")
    os.chown(mine, uid, gid)
    os.chmod(mine, 0o600)
    before = _children()

    def work():
        return {"ids": [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]}, [os.open(mine, os.O_RDONLY)]

    answer, fds = asuser.call(uid, gid, [gid], work)
    try:
        assert answer == {"ids": [uid, uid, gid, [gid]]}
        assert len(fds) == 1 and os.read(fds[0], 100) == b"the user's\n"
    finally:
        for fd in fds:
            os.close(fd)
    assert _children() == before


def test_a_refusal_and_an_os_error_come_back_as_answers(reachable):
    require(os.geteuid() == 0, "needs root")
    uid, gid = _ids()
    secret = reachable / "secret"
    secret.write_text("root's\n")
    os.chmod(secret, 0o600)

    def refuse():
        raise asuser.Refusal("no", "try again")

    def denied():
        os.open(secret, os.O_RDONLY)
        return {}, []

    assert asuser.call(uid, gid, [gid], refuse) == ({"refused": "no", "hint": "try again"}, [])
    answer, fds = asuser.call(uid, gid, [gid], denied)
    assert fds == [] and answer["error"] == str(secret) and answer["errno"] == 13


def test_work_that_hangs_is_killed_at_the_timeout_and_reaped():
    require(os.geteuid() == 0, "needs root")
    uid, gid = _ids()
    before = _children()

    def hang():
        time.sleep(60)
        return {}, []

    with pytest.raises(TimeoutError):
        asuser.call(uid, gid, [gid], hang, timeout=0.3)
    assert _children() == before
