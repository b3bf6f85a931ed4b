"""The plan directory (shifter.runtime.plandir): one rule in Python and in C
(runtime/launcher/plandir.h), checked against one set of vectors; the directories are opened
without following symlinks and used only if they are the user's alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from helpers.prereq import require

from shifter.errors import ConfigError
from shifter.runtime import plandir, privplan

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
RUNTIME = os.path.join(HERE, "..", "..", "runtime", "launcher")
VECTORS = json.load(open(os.path.join(DATA, "contracts", "plandir.json")))["vectors"]


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: repr(v["hostname"]))
def test_python_follows_the_vectors(v):
    node = plandir.node_key(v["hostname"])
    assert node == v["node"]
    assert plandir.candidates(v["uid"], node, v["home"]) == v["paths"]


@pytest.fixture(scope="module")
def c_rule(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        require(False, "needs a C compiler")
    exe = str(tmp_path_factory.mktemp("plandir") / "plandir_rule")
    subprocess.run([cc, "-O2", "-Wall", "-Wno-unused-function", "-I", RUNTIME, "-o", exe,
                    os.path.join(DATA, "plandir_rule.c")], check=True)
    return exe


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: repr(v["hostname"]))
def test_c_follows_the_vectors(c_rule, v):
    args = [c_rule, str(v["uid"]), v["hostname"]] + ([] if v["home"] is None else [v["home"]])
    out = subprocess.run(args, capture_output=True, check=True).stdout.decode()
    assert out.split("\n")[:-1] == [v["node"], *v["paths"]]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """TOP, the node and the home directory under tmp_path; the caller plays root too."""
    top, home = tmp_path / "var-lib", tmp_path / "home"
    top.mkdir()
    home.mkdir()
    monkeypatch.setattr(plandir, "TOP", str(top))
    monkeypatch.setattr(plandir, "ROOT_UID", os.getuid())
    monkeypatch.setattr(plandir, "hostname", lambda: "n1")
    monkeypatch.setattr(plandir, "home_of", lambda uid: str(home))
    return top, home


def _opened(uid, create=False):
    found = plandir.open_dir(uid, create)
    if found is None:
        return None
    os.close(found[0])
    return found[1]


def test_home_directory_when_the_prolog_made_none(site):
    top, home = site
    uid = os.getuid()
    assert _opened(uid) is None  # nothing made without create
    assert _opened(uid, create=True) == f"{home}/.shifter/n1"
    assert (home / ".shifter" / "n1").stat().st_mode & 0o777 == 0o700
    assert plandir.path(uid) == f"{home}/.shifter/n1"


def test_the_prolog_directory_wins_and_is_made_private(site):
    top, home = site
    uid, gid = os.getuid(), os.getgid()
    _opened(uid, create=True)
    made = plandir.prepare(uid, gid)
    assert made == f"{top}/shifter/users/n1/{uid}"
    assert os.stat(made).st_mode & 0o777 == 0o700
    assert _opened(uid, create=True) == made
    os.chmod(made, 0o755)  # not the user's alone: not used, and the next prolog repairs it
    assert _opened(uid) == f"{home}/.shifter/n1"
    plandir.prepare(uid, gid)
    assert _opened(uid) == made


def test_the_prolog_umask_does_not_close_the_parents(site):
    top, home = site
    old = os.umask(0o077)
    try:
        made = plandir.prepare(os.getuid(), os.getgid())
    finally:
        os.umask(old)
    for d in (top / "shifter", top / "shifter" / "users", top / "shifter" / "users" / "n1"):
        assert d.stat().st_mode & 0o777 == 0o755
    assert os.stat(made).st_mode & 0o777 == 0o700


def test_parents_writable_by_others_are_not_trusted(site):
    top, home = site
    uid = os.getuid()
    made = plandir.prepare(uid, os.getgid())
    os.chmod(top / "shifter" / "users", 0o777)
    assert _opened(uid, create=True) == f"{home}/.shifter/n1"
    with pytest.raises(ConfigError, match="not a directory of root's"):
        plandir.prepare(uid, os.getgid())
    os.chmod(top / "shifter" / "users", 0o755)
    assert _opened(uid) == made


def test_symlinks_are_never_followed(site, tmp_path):
    top, home = site
    uid = os.getuid()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    # a symlink where the prolog's parents go: refused, nothing made through it
    (top / "shifter").symlink_to(elsewhere)
    with pytest.raises(ConfigError):
        plandir.prepare(uid, os.getgid())
    assert list(elsewhere.iterdir()) == []
    # ~/.shifter or the node's directory a symlink: no plan directory at all
    (home / ".shifter").symlink_to(elsewhere)
    assert _opened(uid, create=True) is None
    (home / ".shifter").unlink()
    (home / ".shifter").mkdir(mode=0o700)
    (home / ".shifter" / "n1").symlink_to(elsewhere)
    assert _opened(uid, create=True) is None
    assert list(elsewhere.iterdir()) == []


def test_a_home_plan_directory_open_to_others_is_not_used(site):
    top, home = site
    uid = os.getuid()
    _opened(uid, create=True)
    os.chmod(home / ".shifter" / "n1", 0o750)
    assert _opened(uid, create=True) is None
    os.chmod(home / ".shifter" / "n1", 0o700)
    os.chmod(home / ".shifter", 0o775)  # others could swap the node's directory
    assert _opened(uid, create=True) is None


def test_plans_are_written_privately_and_pruned(site, monkeypatch):
    top, home = site
    monkeypatch.setattr(privplan, "MAX_PLANS", 3)
    uid = os.getuid()
    paths = []
    for i in range(5):
        paths.append(privplan.write(uid, f"key{i}", privplan.dumps([("key", f"key{i}")])))
        os.utime(paths[-1], (i, i))
    d = home / ".shifter" / "n1"
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert sorted(p.name for p in d.iterdir()) == sorted(os.path.basename(p) for p in paths[2:])
    assert all((d / os.path.basename(p)).stat().st_mode & 0o777 == 0o600 for p in paths[2:])
    assert os.path.basename(paths[0]) == privplan.plan_name("key0")
    # into an open directory (the Saver's, opened before the build), which stays open
    found = plandir.open_dir(uid)
    try:
        assert privplan.write(uid, "key7", b"x", found) == str(d / privplan.plan_name("key7"))
        os.fstat(found[0])
    finally:
        os.close(found[0])
    # a directory open to others is not used
    d.chmod(0o755)
    assert privplan.write(uid, "key9", b"x") is None


def test_prolog_makes_the_plan_directory_and_survives_a_site_fault(site, monkeypatch):
    from helpers.fake_spank import FakeSpank
    from shifter.wlm import prolog

    top, home = site
    uid, gid = os.getuid(), os.getgid()
    sp = FakeSpank(0, uid=uid, gid=gid)
    prolog.run(sp, None, {})
    assert os.path.isdir(top / "shifter" / "users" / "n1" / str(uid)) and sp.errors == []
    shutil.rmtree(top / "shifter")
    (top / "shifter").write_text("")  # the site broke it: logged, the prolog succeeds
    prolog.run(sp, None, {})
    assert len(sp.errors) == 1 and "can't make the plan directory" in sp.errors[0]
