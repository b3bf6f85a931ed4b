"""Private containers for an ordinary user (shifter.runtime.launcher.private_user): squashfuse in a
user namespace, run as the test user sftest1 through a small helper script.  What the
user sees inside, exit statuses, signals, refusals, and that nothing is left behind."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from helpers.prereq import USER1, require

pytestmark = [pytest.mark.root, pytest.mark.fuse]

PYTHON = sys.executable if sys.prefix.startswith("/opt/shifter") else "/opt/shifter/bin/python"
UID = pwd.getpwnam(USER1).pw_uid
GID = pwd.getpwnam(USER1).pw_gid

# Runs private_user.run() as the calling user, under shifter's one wrapper (shifter.command.run,
# launcher=True): argv[1] is a JSON spec; exit status = run()'s, else one line "shifter: ..."
# and 125 (126/127: the command can't be run).
RUNNER = textwrap.dedent("""\
    import json, os, pwd, sys
    from shifter import command
    from shifter.runtime import config as udiconfig, volumes
    from shifter.runtime.builder import udi
    from shifter.runtime.launcher import private_user
    from shifter.runtime.image import ImageRef

    def body(argv):
        spec = json.loads(argv[0])
        cfg = udiconfig.load(spec["conf"])
        ref = ImageRef("id", spec["id"])
        path, meta = udi.resolve_image(cfg, ref)
        uid, gid = os.getuid(), os.getgid()
        req = udi.Request(image=ref, uid=uid, gid=gid, username=pwd.getpwuid(uid).pw_name,
                          volumes=volumes.parse_volumes(spec.get("volumes", "")),
                          modules=tuple(spec["modules"]) if "modules" in spec else None,
                          gids=tuple(dict.fromkeys([gid, *os.getgroups()])))
        return private_user.run(cfg, path, meta, req, spec["argv"], spec.get("env", {"PATH": "/bin:/usr/bin"}),
                                spec.get("cwd", "/"), tuple(spec.get("hooks", ())),
                                warn=lambda line: print(f"shifter: {line}", file=sys.stderr))

    sys.exit(command.run("shifter", body, launcher=True))  # as shifter's own main
""")


def _extras(root: str) -> None:
    """A root-only file and directory, a world-readable file, a setuid-root copy of busybox."""
    with open(os.path.join(root, "secret"), "w") as f:
        f.write("root only\n")
    os.chmod(os.path.join(root, "secret"), 0o600)
    with open(os.path.join(root, "root", "hidden"), "w") as f:
        f.write("in root's home\n")
    os.chmod(os.path.join(root, "root"), 0o700)
    with open(os.path.join(root, "public"), "w") as f:
        f.write("for everyone\n")
    os.chmod(os.path.join(root, "public"), 0o644)
    shutil.copy2(os.path.join(root, "bin", "busybox"), os.path.join(root, "bin", "busybox.suid"))
    os.chmod(os.path.join(root, "bin", "busybox.suid"), 0o4755)


@pytest.fixture(scope="module")
def env(site):
    require(os.path.exists("/dev/fuse") and os.stat("/dev/fuse").st_mode & 0o006 == 0o006,
            "/dev/fuse must be usable by users (mode 0666)")
    require(any(shutil.which(p) for p in ("squashfuse_ll", "squashfuse")), "squashfuse is not installed")
    require(os.path.isdir(os.path.join(site.cache, "oci", "busybox")),
            "the busybox test image is not built (tools/images)")
    base = tempfile.mkdtemp(prefix="shifter-pu-test.", dir="/tmp")
    os.chmod(base, 0o755)
    from tools import squash

    images = os.path.join(base, "images")
    image_id = squash.make_image(site, "busybox", images, extra=_extras)
    bad_dir = os.path.join(base, "bad")
    os.makedirs(bad_dir)
    with open(os.path.join(bad_dir, "b" * 64 + ".squashfs"), "wb") as f:
        f.write(os.urandom(65536))
    shutil.copy(os.path.join(images, image_id + ".meta"), os.path.join(bad_dir, "b" * 64 + ".meta"))
    etc = os.path.join(base, "etc_files")
    os.makedirs(etc)
    with open(os.path.join(etc, "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nsftest1:x:4242:4242:Site One:/home/sftest1:/bin/sh\n"
                "sftest2:x:4243:4243::/home/sftest2:/bin/sh\nother:x:5000:5000::/:/bin/sh\n")
    with open(os.path.join(etc, "group"), "w") as f:
        f.write("root:x:0:\nsftest1:x:4242:\nsftestgrp:x:4240:sftest1,sftest2\nother:x:5000:\n")
    with open(os.path.join(etc, "site-marker"), "w") as f:
        f.write("from the site\n")
    sitefs = os.path.join(base, "sitefs")
    os.makedirs(sitefs)
    with open(os.path.join(sitefs, "shared"), "w") as f:
        f.write("site data\n")
    tools = os.path.join(base, "modules", "tools", "bin")
    os.makedirs(tools)
    with open(os.path.join(tools, "hello"), "w") as f:
        f.write("#!/bin/sh\necho module hello\n")
    os.chmod(os.path.join(tools, "hello"), 0o755)
    conf = os.path.join(base, "udiRoot.conf")
    common = textwrap.dedent(f"""\
        udiMount={base}/mnt/udi
        loopMount={base}/mnt/loop
        etcPath={etc}
        perNodeCachePath={base}/cache
        siteFs={sitefs}:/site:ro
        module_tools_copyPath={base}/modules/tools
        module_tools_siteFs={sitefs}:/opt/sitetools:ro
        module_rooty_roothook={base}/modules/roothook.sh
        """)
    with open(conf, "w") as f:
        f.write(common + f"imagePath={images}\n")
    bad_conf = os.path.join(base, "bad.conf")
    with open(bad_conf, "w") as f:
        f.write(common + f"imagePath={bad_dir}\n")
    # hooks live in the container: put them on a volume
    hooks = os.path.join(base, "hooks")
    os.makedirs(hooks)
    with open(os.path.join(hooks, "ok.sh"), "w") as f:
        f.write("echo hook ran as $(id -u) in $(pwd) > /work/hook-out\n")
    with open(os.path.join(hooks, "fail.sh"), "w") as f:
        f.write("exit 4\n")
    # the user's volume, and one the user reaches only through the group sftestgrp
    work = os.path.join(base, "work")
    os.makedirs(work)
    os.chown(work, UID, GID)
    group_dir = os.path.join(base, "groupdir")
    os.makedirs(group_dir)
    os.chown(group_dir, 0, 4240)
    os.chmod(group_dir, 0o770)
    with open(os.path.join(base, "runner.py"), "w") as f:
        f.write(RUNNER)
    subprocess.run(["chmod", "-R", "a+rX", images, bad_dir, etc, sitefs, os.path.join(base, "modules"), hooks,
                    os.path.join(base, "runner.py"), conf, bad_conf], check=True)
    yield {"base": base, "conf": conf, "bad_conf": bad_conf, "id": image_id, "work": work, "group_dir": group_dir,
           "hooks": hooks, "sitefs": sitefs}
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tmpdir_user(env):
    """A TMPDIR of the user's for one test: the launcher's staging directory goes there."""
    path = tempfile.mkdtemp(prefix="tmpdir.", dir=env["base"])
    os.chown(path, UID, GID)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _argv(env, spec: dict) -> list[str]:
    spec = {"conf": env["conf"], "id": env["id"], **spec}
    return ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--init-groups", "--",
            PYTHON, "-I", os.path.join(env["base"], "runner.py"), json.dumps(spec)]


def _run(env, tmpdir, argv: list[str], **spec) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(env, {"argv": argv, **spec}), capture_output=True, text=True, timeout=60,
                          cwd="/", env={"PATH": "/usr/bin:/bin", "TMPDIR": tmpdir, "LANG": "C.UTF-8"})


def _user_processes(name: str) -> list[str]:
    out = subprocess.run(["pgrep", "-u", str(UID), "-a", name], capture_output=True, text=True).stdout
    return out.splitlines()


def _mounts_mentioning(text: str) -> list[str]:
    found = []
    for path in glob.glob("/proc/[0-9]*/mountinfo"):
        try:
            with open(path) as f:
                found += [f"{path}: {ln.strip()}" for ln in f if text in ln]
        except OSError:
            pass
    return found


def _assert_nothing_left(tmpdir: str) -> None:
    deadline = time.monotonic() + 3
    while _user_processes("squashfuse") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _user_processes("squashfuse") == []
    assert os.listdir(tmpdir) == []
    assert _mounts_mentioning(tmpdir) == []


def test_user_sees_themselves_without_privileges_and_a_readonly_image(env, tmpdir_user):
    script = textwrap.dedent("""\
        echo "uid=$(id -u) gid=$(id -g)"
        grep -E '^(CapEff|CapPrm|NoNewPrivs):' /proc/self/status
        touch /bin/new 2>/dev/null && echo "image writable" || echo "image read-only"
        touch /newdir 2>/dev/null && echo "root writable" || echo "root read-only"
        cat /secret 2>/dev/null && echo "secret readable" || echo "secret unreadable"
        cat /root/hidden 2>/dev/null && echo "root home readable" || echo "root home unreadable"
        cat /public
        stat -c 'secret owner %u mode %a' /secret
        /bin/busybox.suid id -u
        echo "--- passwd"; cat /etc/passwd; echo "--- group"; cat /etc/group; echo "---"
        cat /etc/site-marker /etc/os-release | head -2
        cat /site/shared
        stat -c 'var/tmp %a' /var/tmp
        """)
    res = _run(env, tmpdir_user, ["/bin/sh", "-c", script])
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == f"uid={UID} gid={GID}"
    assert "CapPrm:\t0000000000000000" in out and "CapEff:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    assert "image read-only" in out and "root read-only" in out
    # default_permissions: the image's root-owned files keep their modes for the user
    assert "secret unreadable" in out and "root home unreadable" in out
    assert "for everyone" in out
    assert "secret owner 65534 mode 600" in out  # uid 0 is not mapped in the namespace
    assert str(UID) in out  # the setuid-root busybox gives nothing (nosuid, no_new_privs)
    passwd = out[out.index("--- passwd") + 1:out.index("--- group")]
    assert passwd == ["root:x:0:0:root:/root:/bin/sh", "sftest1:x:4242:4242:Site One:/home/sftest1:/bin/sh"]
    group = out[out.index("--- group") + 1:out.index("---")]
    assert "sftestgrp:x:4240:sftest1" in group and not any("other" in g or "sftest2" in g for g in group)
    assert "from the site" in out and 'NAME="BusyBox"' in out
    assert "site data" in out
    assert "var/tmp 1777" in out
    _assert_nothing_left(tmpdir_user)


def test_volumes_are_the_users_and_groups_still_grant_access(env, tmpdir_user):
    script = textwrap.dedent("""\
        id -G
        echo hi > /work/f && cat /work/f
        echo grp > /grp/g && echo "group dir writable"
        echo x > /ro/x 2>/dev/null && echo "ro writable" || echo "ro volume read-only"
        """)
    vols = f"{env['work']}:/work;{env['group_dir']}:/grp;{env['sitefs']}:/ro:ro"
    res = _run(env, tmpdir_user, ["/bin/sh", "-c", script], volumes=vols)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert "65534" in out[0].split()  # supplementary groups are unmapped, shown as nobody ...
    assert out[1:] == ["hi", "group dir writable", "ro volume read-only"]  # ... but still grant access
    st = os.stat(os.path.join(env["work"], "f"))
    assert (st.st_uid, st.st_gid) == (UID, GID)
    assert open(os.path.join(env["group_dir"], "g")).read() == "grp\n"
    _assert_nothing_left(tmpdir_user)


def test_volume_the_user_cannot_read_is_refused(env, tmpdir_user):
    res = _run(env, tmpdir_user, ["/bin/true"], volumes="/root:/data")
    assert res.returncode == 125
    assert "can't mount volume source /root: permission denied (as uid 4242)" in res.stderr
    assert res.stderr.count("\n") == 1
    _assert_nothing_left(tmpdir_user)


def test_exit_statuses(env, tmpdir_user):
    assert _run(env, tmpdir_user, ["/bin/sh", "-c", "exit 7"]).returncode == 7
    res = _run(env, tmpdir_user, ["no-such-command"])
    assert res.returncode == 127 and res.stderr == "shifter: can't run no-such-command: command not found\n"
    res = _run(env, tmpdir_user, ["/etc/os-release"])
    assert res.returncode == 126 and res.stderr.startswith("shifter: can't run /etc/os-release: ")
    res = _run(env, tmpdir_user, ["/bin/sh", "-c", "kill -USR1 $$"])
    assert res.returncode == 128 + signal.SIGUSR1
    _assert_nothing_left(tmpdir_user)


def test_sigterm_to_the_launcher_reaches_the_command(env, tmpdir_user):
    script = "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done"
    proc = subprocess.Popen(_argv(env, {"argv": ["/bin/sh", "-c", script]}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/",
                            env={"PATH": "/usr/bin:/bin", "TMPDIR": tmpdir_user})
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)  # setpriv execs python: this is the launcher
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (3, "got TERM\n"), err
    _assert_nothing_left(tmpdir_user)


def test_working_directory_and_userhooks(env, tmpdir_user):
    vols = f"{env['work']}:/work;{env['hooks']}:/hooks:ro"
    res = _run(env, tmpdir_user, ["/bin/pwd"], volumes=vols, cwd="/usr/bin", hooks=["/hooks/ok.sh"])
    assert (res.returncode, res.stdout, res.stderr) == (0, "/usr/bin\n", "")
    assert open(os.path.join(env["work"], "hook-out")).read() == f"hook ran as {UID} in /usr/bin\n"
    res = _run(env, tmpdir_user, ["/bin/pwd"], cwd="/no/such/dir")
    assert res.returncode == 0 and res.stdout == "/\n"
    assert res.stderr == "shifter: /no/such/dir does not exist in the container, starting in /\n"
    res = _run(env, tmpdir_user, ["/bin/echo", "not reached"], volumes=vols, hooks=["/hooks/fail.sh"])
    assert res.returncode == 125 and res.stdout == ""
    assert res.stderr == "shifter: can't run the userhook /hooks/fail.sh: it exited with 4\n"
    _assert_nothing_left(tmpdir_user)


def test_module_copy_path_and_site_fs(env, tmpdir_user):
    res = _run(env, tmpdir_user, ["/bin/sh", "-c", "/opt/udiImage/modules/tools/bin/hello; cat /opt/sitetools/shared"],
               modules=["tools"])
    assert (res.returncode, res.stdout) == (0, "module hello\nsite data\n"), res.stderr
    _assert_nothing_left(tmpdir_user)


def test_per_node_cache_and_roothook_are_refused(env, tmpdir_user):
    res = _run(env, tmpdir_user, ["/bin/true"], volumes="/x:/scratch:perNodeCache=size=1G")
    assert res.returncode == 125 and res.stderr.count("\n") == 1
    assert "can't create the per-node cache at /scratch in a private container: it needs root" in res.stderr
    # the hint is true for the code: nothing in a job's prolog or in sbatch --image makes
    # a per-node cache for a private container (it used to send the user there)
    assert "only a container that setupRoot builds as root can have it" in res.stderr
    assert "prolog" not in res.stderr and "sbatch" not in res.stderr and "--image" not in res.stderr
    res = _run(env, tmpdir_user, ["/bin/true"], modules=["rooty"])
    assert res.returncode == 125 and res.stderr.count("\n") == 1
    assert "module 'rooty'" in res.stderr and "roothook needs root" in res.stderr
    assert "prolog" not in res.stderr and "sbatch" not in res.stderr
    _assert_nothing_left(tmpdir_user)


def test_a_broken_image_fails_cleanly(env, tmpdir_user):
    res = _run(env, tmpdir_user, ["/bin/true"], conf=env["bad_conf"], id="b" * 64)
    assert res.returncode == 125 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("shifter: can't mount the image ") and "squashfuse" in res.stderr
    assert "look like a squashfs image" in res.stderr  # squashfuse's own words, on the same line
    _assert_nothing_left(tmpdir_user)


def test_left_behind_processes_lose_the_image_and_nothing_stays(env, tmpdir_user):
    t0 = time.monotonic()
    res = _run(env, tmpdir_user, ["/bin/sh", "-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])
    assert res.returncode == 0 and res.stdout.strip().isdigit(), res.stderr
    straggler = int(res.stdout)
    try:
        assert time.monotonic() - t0 < 10
        _assert_nothing_left(tmpdir_user)
    finally:
        os.kill(straggler, signal.SIGKILL)
