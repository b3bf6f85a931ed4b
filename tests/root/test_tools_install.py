"""tools/install's link for `#!/usr/bin/shifter` scripts (SHIFTER_USR_BIN points it at a
scratch path here): made, kept as it is when right, moved from another prefix, and never
put in place of a file that is not such a link."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

INSTALL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "tools", "install")
LAUNCHER = os.path.join(sys.prefix, "bin", "shifter")


def _install(link: str, *args: str) -> subprocess.CompletedProcess:
    # the prefix the tests run from: installed already, so only the link is at stake
    env = dict(os.environ, SHIFTER_PREFIX=sys.prefix, SHIFTER_USR_BIN=link)
    return subprocess.run([INSTALL, "--quiet", *args], env=env, capture_output=True, text=True, timeout=600)


def test_the_link_is_made_once_and_moved_from_another_prefix(tmp_path):
    link = str(tmp_path / "shifter")
    res = _install(link, "--usr-bin")
    assert res.returncode == 0, res.stderr
    assert os.readlink(link) == LAUNCHER
    before = os.lstat(link)
    assert _install(link, "--usr-bin").returncode == 0
    after = os.lstat(link)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    os.unlink(link)
    os.symlink("/opt/shifter-old/bin/shifter", link)
    assert _install(link, "--usr-bin").returncode == 0
    assert os.readlink(link) == LAUNCHER
    assert os.listdir(tmp_path) == ["shifter"]  # no temporary link left


def test_no_usr_bin_makes_no_link(tmp_path):
    link = str(tmp_path / "shifter")
    res = _install(link, "--no-usr-bin")
    assert res.returncode == 0, res.stderr
    assert not os.path.lexists(link)


@pytest.mark.parametrize("kind", ["file", "foreign-link"])
def test_a_file_that_is_not_our_link_is_left_alone(tmp_path, kind):
    link = str(tmp_path / "shifter")
    if kind == "file":
        with open(link, "w") as f:
            f.write("#!/bin/sh\necho a site's own shifter\n")
    else:
        os.symlink("/usr/local/bin/something-else", link)
    res = _install(link, "--usr-bin")
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and link in lines[0] and "hint:" in lines[0], res.stderr
    if kind == "file":
        assert open(link).read() == "#!/bin/sh\necho a site's own shifter\n"
    else:
        assert os.readlink(link) == "/usr/local/bin/something-else"
