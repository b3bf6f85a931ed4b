"""``tools/users``: the test users every "as the user" check runs as.

Two users with home directories and fixed ids, each with an own group, both in one
shared supplementary group (see ``tools.site.TEST_USERS``).  Idempotent; a
name or id already taken by something else is an error, never silently reused.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys

from shifter import command
from shifter.errors import ShifterError, UsageError
from tools.site import TEST_SHARED_GROUP, TEST_USERS


def _run(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise ShifterError(f"can't create test user/group: {' '.join(argv)}: {res.stderr.strip()}")


def _ensure_group(name: str, gid: int) -> None:
    try:
        g = grp.getgrnam(name)
    except KeyError:
        try:
            other = grp.getgrgid(gid)
        except KeyError:
            _run(["groupadd", "-g", str(gid), name])
            return
        raise ShifterError(f"can't create group {name}: gid {gid} belongs to {other.gr_name}") from None
    if g.gr_gid != gid:
        raise ShifterError(f"group {name} exists with gid {g.gr_gid}, expected {gid}")


def ensure() -> list[pwd.struct_passwd]:
    shared, shared_gid = TEST_SHARED_GROUP
    _ensure_group(shared, shared_gid)
    out = []
    for name, uid, gid in TEST_USERS:
        _ensure_group(name, gid)
        try:
            pw = pwd.getpwnam(name)
            if pw.pw_uid != uid:
                raise ShifterError(f"user {name} exists with uid {pw.pw_uid}, expected {uid}")
        except KeyError:
            try:
                other = pwd.getpwuid(uid)
                raise ShifterError(f"can't create user {name}: uid {uid} belongs to {other.pw_name}")
            except KeyError:
                pass
            _run(["useradd", "-m", "-u", str(uid), "-g", str(gid), "-G", shared, "-s", "/bin/bash", name])
            pw = pwd.getpwnam(name)
        if name not in grp.getgrnam(shared).gr_mem:
            _run(["usermod", "-a", "-G", shared, name])
        os.chmod(pw.pw_dir, 0o750)
        out.append(pw)
    return out


def main(argv: list[str] | None = None) -> int:
    return command.run("users", _main, argv)


def _main(argv: list[str]) -> int:
    if argv:
        raise UsageError(f"unexpected argument {argv[0]!r}", "tools/users takes no arguments")
    for pw in ensure():
        groups = [g.gr_name for g in grp.getgrall() if pw.pw_name in g.gr_mem]
        print(f"{pw.pw_name} uid={pw.pw_uid} gid={pw.pw_gid} home={pw.pw_dir} groups={','.join(groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
