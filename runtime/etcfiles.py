"""The site's /etc files for a container: passwd and group filtered to the job's user.

Source: the site's ``etcPath`` directory (Shifter's ``shifter_etc_files``), whose files lie
over the image's /etc.  ``passwd`` keeps root and the job user; ``group`` keeps root's
group and the user's groups (at most ``maxGroupCount``), each listing only the user.  A
user or group missing from the site files is taken from the host's name service.  When
the site has no ``nsswitch.conf``, one that reads only these files is written; when it
has no ``hosts``, the node's own ``/etc/hosts`` is copied (so the job's node names resolve
inside, for ssh between them).  A login shell the image does not have is replaced by
``/bin/sh`` in the user's entry (sshd refuses a user whose shell is missing).
"""

from __future__ import annotations

import grp
import os
import pwd

NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
_FILTERED = ("passwd", "group")


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")]
    except FileNotFoundError:
        return []


def user_groups(username: str, gid: int, max_groups: int) -> list[int]:
    """The user's primary gid first, then supplementary gids, at most ``max_groups`` in all."""
    try:
        gids = os.getgrouplist(username, gid)
    except (KeyError, OSError):
        gids = [gid]
    ordered = [gid] + [g for g in dict.fromkeys(gids) if g != gid]
    return ordered[: max(1, max_groups)] if max_groups else ordered


def passwd_lines(site_lines: list[str], uid: int, username: str) -> list[str]:
    out, have_user = [], False
    for line in site_lines:
        fields = line.split(":")
        if len(fields) != 7:
            continue
        if fields[2] == "0":
            out.append(line)
        elif fields[2] == str(uid) and fields[0] == username:
            out.append(line)
            have_user = True
    if not any(ln.split(":")[2] == "0" for ln in out):
        out.insert(0, "root:x:0:0:root:/root:/bin/sh")
    if not have_user and uid != 0:
        try:
            pw = pwd.getpwuid(uid)
            out.append(f"{username}:x:{uid}:{pw.pw_gid}:{pw.pw_gecos}:{pw.pw_dir}:{pw.pw_shell}")
        except KeyError:
            out.append(f"{username}:x:{uid}:{uid}::/:/bin/sh")
    return out


def group_lines(site_lines: list[str], username: str, gids: list[int]) -> list[str]:
    by_gid: dict[int, str] = {}
    for line in site_lines:
        fields = line.split(":")
        if len(fields) != 4 or not fields[2].isdigit():
            continue
        by_gid.setdefault(int(fields[2]), fields[0])
    out = ["root:x:0:"] if 0 not in gids else []
    for gid in gids:
        name = by_gid.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = f"group{gid}"
        out.append(f"{name}:x:{gid}:{username if gid != 0 else ''}")
    return out


FALLBACK_SHELL = "/bin/sh"


def fix_shell(lines: list[str], uid: int, shell_exists) -> list[str]:
    """The user's passwd line with ``/bin/sh`` for a login shell the image lacks."""
    out = []
    for line in lines:
        fields = line.split(":")
        if len(fields) == 7 and fields[2] == str(uid) and fields[6] and not shell_exists(fields[6]):
            fields[6] = FALLBACK_SHELL
            line = ":".join(fields)
        out.append(line)
    return out


def build(target: str, etc_path: str | None, uid: int, username: str, gids: list[int],
          shell_exists=None) -> None:
    """Fill the empty directory ``target`` with the container's site /etc files.
    ``shell_exists(path)``: whether the image has that login shell (None: don't check)."""
    names = []
    if etc_path and os.path.isdir(etc_path):
        names = sorted(os.listdir(etc_path))
    for name in names:
        if name in _FILTERED:
            continue
        src = os.path.join(etc_path, name)
        if os.path.isfile(src):
            with open(src, "rb") as fin, open(os.path.join(target, name), "wb") as fout:
                fout.write(fin.read())
            os.chmod(os.path.join(target, name), 0o644)
    site = etc_path or "/nonexistent"
    users = passwd_lines(_read_lines(os.path.join(site, "passwd")), uid, username)
    if shell_exists is not None:
        users = fix_shell(users, uid, shell_exists)
    _write(os.path.join(target, "passwd"), users)
    _write(os.path.join(target, "group"),
           group_lines(_read_lines(os.path.join(site, "group")), username, gids))
    if "nsswitch.conf" not in names:
        with open(os.path.join(target, "nsswitch.conf"), "w") as f:
            f.write(NSSWITCH)
    if "hosts" not in names:
        try:
            with open("/etc/hosts", "rb") as fin:
                data = fin.read(1 << 20)
        except OSError:
            data = None
        if data is not None:
            with open(os.path.join(target, "hosts"), "wb") as fout:
                fout.write(data)
            os.chmod(os.path.join(target, "hosts"), 0o644)


def _write(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o644)
