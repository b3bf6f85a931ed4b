"""setupRoot/unsetupRoot on the real kernel: loop-mounted squashfs, mounts, overlay,
user volumes opened as the user, per-node XFS caches, modules, hooks, teardown."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import textwrap

import pytest

from helpers.prereq import USER1, USER2
from shifter.runtime import config as udiconfig
from shifter.runtime import linux, plan, volumes
from shifter.runtime.builder import udi
from shifter.runtime.image import ImageRef

pytestmark = pytest.mark.root

SETUPROOT = "/opt/shifter/bin/setupRoot"
UNSETUPROOT = "/opt/shifter/bin/unsetupRoot"


def _extras(root: str) -> None:
    """Hostile bits in the test image: a setuid-root shell, a device node, a root-only file."""
    shutil.copy2(os.path.join(root, "bin", "busybox"), os.path.join(root, "bin", "busybox.suid"))
    os.chmod(os.path.join(root, "bin", "busybox.suid"), 0o4755)
    os.makedirs(os.path.join(root, "usr", "share", "evil"), exist_ok=True)
    os.mknod(os.path.join(root, "usr", "share", "evil", "mem"), 0o666 | stat.S_IFCHR, os.makedev(1, 1))
    with open(os.path.join(root, "root", "secret"), "w") as f:
        f.write("root only\n")
    os.chmod(os.path.join(root, "root", "secret"), 0o600)
    os.makedirs(os.path.join(root, "opt", "imagetool"))
    os.symlink("/etc", os.path.join(root, "linked-etc"))


@pytest.fixture(scope="module")
def env(tmp_path_factory, cluster):
    base = tmp_path_factory.mktemp("udi")
    os.chmod(base, 0o755)
    images = base / "images"
    from tools import squash

    image_id = squash.make_image(cluster, "busybox", str(images), extra=_extras)
    private_id = squash.make_image(cluster, "busybox", str(images), user_acl=(4243,),
                                   extra=lambda r: open(os.path.join(r, "private"), "w").close())
    etc = base / "etc_files"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nsftest1:x:4242:4242:Site One:/home/sftest1:/bin/sh\n"
                                "sftest2:x:4243:4243::/home/sftest2:/bin/sh\nother:x:5000:5000::/:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nsftest1:x:4242:\nsftestgrp:x:4240:sftest1,sftest2\nother:x:5000:\n")
    (etc / "site-marker").write_text("from the site\n")
    modules = base / "modules"
    (modules / "tools" / "bin").mkdir(parents=True)
    (modules / "tools" / "bin" / "hello").write_text("#!/bin/sh\necho module hello\n")
    (modules / "tools" / "bin" / "hello").chmod(0o755)
    sitefs = base / "sitefs"
    sitefs.mkdir()
    (sitefs / "shared").write_text("site data\n")
    hooks = base / "hooks"
    hooks.mkdir()
    (hooks / "roothook.sh").write_text("#!/bin/sh\necho \"$SHIFTER_MODULE\" > var/shifter/roothook-ran\n")
    (hooks / "fail.sh").write_text("#!/bin/sh\nexit 3\n")
    mnt = base / "mnt"
    conf = base / "udiRoot.conf"
    conf.write_text(textwrap.dedent(f"""\
        udiMount={mnt}/udi
        loopMount={mnt}/loop
        imagePath={images}
        etcPath={etc}
        perNodeCachePath={base}/cache
        perNodeCacheSizeLimit=1G
        siteFs={sitefs}:/site:ro
        siteEnvPrepend=PATH=/opt/udiImage/bin
        module_tools_copyPath={modules}/tools
        module_tools_siteFs={sitefs}:/opt/sitetools:ro
        module_tools_roothook={hooks}/roothook.sh
        module_tools_siteEnv=TOOLS=1
        module_off_enabled=0
        module_clash_conflict=tools
        """))
    failing = base / "failing.conf"
    failing.write_text(conf.read_text() + f"sitePostMountHook={hooks}/fail.sh\n")
    home = pwd.getpwnam(USER1).pw_dir
    vol = os.path.join(home, "vol")
    os.makedirs(vol, exist_ok=True)
    os.chown(vol, 4242, 4242)
    yield {"conf": str(conf), "failing": str(failing), "id": image_id, "private": private_id,
           "config": udiconfig.load(str(conf)), "home": home, "vol": vol, "base": str(base)}
    udi.teardown(udiconfig.load(str(conf)))
    udi.remove_anchors(udiconfig.load(str(conf)))


@pytest.fixture
def torn_down(env):
    yield env
    udi.teardown(env["config"])
    assert not linux.mounts_under(env["config"].udiMount)


def _setup(env, *args, conf=None):
    return subprocess.run([SETUPROOT, *args], capture_output=True, text=True,
                          env={"SHIFTER_CONFIG": conf or env["conf"], "PATH": "/usr/bin:/bin"})


def _in_udi(env, argv, uid=4242, gid=4242):
    """Run ``argv`` chrooted into the UDI as the user (what the launcher will do)."""
    return subprocess.run(["/usr/sbin/chroot", f"--userspec={uid}:{gid}", env["config"].udiMount, *argv],
                          capture_output=True, text=True, env={"PATH": "/bin:/usr/bin"})


def _loops_for(path):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if path in ln]


def test_setup_builds_a_readonly_image_with_site_etc(torn_down):
    env = torn_down
    res = _setup(env, "-U", "4242", "-v", f"{env['vol']}:/data", "id", env["id"])
    assert res.returncode == 0, res.stderr
    root = env["config"].udiMount
    # the image is there and read-only, even for root
    assert _in_udi(env, ["/bin/cat", "/etc/os-release"]).stdout.startswith('NAME="BusyBox"')
    with pytest.raises(OSError) as exc:
        open(os.path.join(root, "bin", "new"), "w")
    assert exc.value.errno == 30  # EROFS
    # /etc/passwd and group are the site's, filtered to the user
    assert open(os.path.join(root, "etc/passwd")).read().splitlines() == [
        "root:x:0:0:root:/root:/bin/sh", "sftest1:x:4242:4242:Site One:/home/sftest1:/bin/sh"]
    groups = open(os.path.join(root, "etc/group")).read()
    assert "sftestgrp:x:4240:sftest1" in groups and "other" not in groups and "sftest2" not in groups
    assert open(os.path.join(root, "etc/site-marker")).read() == "from the site\n"
    assert "root" in _in_udi(env, ["/bin/id", "-un"], uid=0, gid=0).stdout
    # the volume is the user's directory, writable; the site fs read-only
    res = _in_udi(env, ["/bin/sh", "-c", "echo hi > /data/f && cat /data/f && id -u"])
    assert res.stdout.split() == ["hi", "4242"], res.stderr
    assert open(os.path.join(env["vol"], "f")).read() == "hi\n"
    assert _in_udi(env, ["/bin/cat", "/site/shared"]).stdout == "site data\n"
    assert _in_udi(env, ["/bin/sh", "-c", "echo x > /site/new"]).returncode != 0
    # /tmp is the host's, /var/tmp a fresh 1777 dir
    assert stat.S_IMODE(os.stat(os.path.join(root, "var/tmp")).st_mode) == 0o1777
    # the launch plan records the UDI's identity and the environment rules
    p = plan.read(root)
    assert (p.uid, p.gid, p.image_type, p.image_id) == (4242, 4242, "id", env["id"])
    assert p.volumes == f"{env['vol']}:/data"
    assert p.modules == "" and p.cmd == ("/bin/sh",)
    assert "=SHIFTER_TEST_IMAGE=busybox" in p.env and p.env[-1] == "<PATH=/opt/udiImage/bin"


def test_setuid_and_device_nodes_of_the_image_give_nothing(torn_down):
    env = torn_down
    assert _setup(env, "-U", "4242", "id", env["id"]).returncode == 0
    root = env["config"].udiMount
    assert os.stat(os.path.join(root, "bin/busybox.suid")).st_mode & stat.S_ISUID
    res = _in_udi(env, ["/bin/busybox.suid", "id", "-u"])
    assert res.stdout.strip() == "4242", res  # nosuid: no root
    with pytest.raises(PermissionError):
        open(os.path.join(root, "usr/share/evil/mem"), "rb")  # nodev, even for root
    # the root-only file of the image stays root-only
    assert _in_udi(env, ["/bin/cat", "/root/secret"]).returncode != 0


def test_forbidden_destination_and_symlinked_destination_refused(torn_down):
    env = torn_down
    res = _setup(env, "-U", "4242", "-v", f"{env['vol']}:/etc/x", "id", env["id"])
    assert res.returncode == 2 and "inside /etc" in res.stderr and res.stderr.count("\n") == 1
    res = _setup(env, "-U", "4242", "-v", f"{env['vol']}:/linked-etc/x", "id", env["id"])
    assert res.returncode != 0 and "/linked-etc is a symbolic link" in res.stderr, res.stderr
    assert not linux.mounts_under(env["config"].udiMount)
    assert not _loops_for(env["id"])


def test_volume_source_is_resolved_as_the_user(torn_down):
    env = torn_down
    link = os.path.join(env["home"], "sneaky")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink("/root", link)  # root's 0700 home: the user can't read it
    try:
        res = _setup(env, "-U", "4242", "-v", f"{link}:/data", "id", env["id"])
        assert res.returncode != 0 and "permission denied (as uid 4242)" in res.stderr.lower(), res.stderr
        assert not linux.mounts_under(env["config"].udiMount)
        # swapped for a link to something the user can read: that is what gets bound
        os.unlink(link)
        os.symlink(env["vol"], link)
        res = _setup(env, "-U", "4242", "-v", f"{link}:/data", "id", env["id"])
        assert res.returncode == 0, res.stderr
        assert os.stat(os.path.join(env["config"].udiMount, "data")).st_ino == os.stat(env["vol"]).st_ino
    finally:
        os.unlink(link)


def test_private_image_only_for_its_acl(torn_down):
    env = torn_down
    res = _setup(env, "-U", "4242", "id", env["private"])
    assert res.returncode != 0 and "private" in res.stderr
    assert _setup(env, "-U", "4243", "id", env["private"]).returncode == 0


def test_per_node_cache_is_xfs_owned_by_the_user_and_limited(torn_down):
    env = torn_down
    res = _setup(env, "-U", "4242", "-v", "/x:/scratch:perNodeCache=size=2G", "id", env["id"])
    assert res.returncode != 0 and "over the site limit" in res.stderr
    res = _setup(env, "-U", "4242", "-v", "/x:/scratch:perNodeCache=size=300M", "id", env["id"])
    assert res.returncode == 0, res.stderr
    target = os.path.join(env["config"].udiMount, "scratch")
    fstype = [t for mp, t, _ in linux.mountinfo() if mp == target]
    assert fstype == ["xfs"]
    st = os.stat(target)
    assert (st.st_uid, st.st_gid) == (4242, 4242)
    sv = os.statvfs(target)
    assert 200 << 20 < sv.f_blocks * sv.f_frsize <= 300 << 20  # XFS keeps some for its log
    assert _in_udi(env, ["/bin/sh", "-c", "echo x > /scratch/f && cat /scratch/f"]).stdout == "x\n"
    backing = [f for f in os.listdir(os.path.join(env["base"], "cache")) if f.startswith("shifter-cache.")]
    assert len(backing) == 1
    udi.teardown(env["config"])
    assert os.listdir(os.path.join(env["base"], "cache")) == []
    assert not _loops_for("shifter-cache")


def test_shifter_job_script_volumes_work(torn_down):
    """Maps copied from Shifter job scripts: a source (and destination) with a trailing
    '/', and a per-node cache with ro and an unexpanded $USER in its unused source
    (#SBATCH lines are not expanded).  Shifter mounts them; so do we, saying on stderr
    what is ignored, and the plan holds the canonical text."""
    env = torn_down
    res = _setup(env, "-U", "4242", "-v", f"{env['vol']}//:/data/",
                 "-v", "/global/cscratch1/sd/$USER/:/scratch:perNodeCache=size=300M:ro", "id", env["id"])
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("setupRoot: warning: volume map 2 ")]
    assert len(warnings) == 2, res.stderr
    assert "its characters '$' are dropped as Shifter does" in warnings[0]
    assert "'ro' ignored: a per-node cache is a new, writable filesystem" in warnings[1]
    # the user's directory is at /data, writable by the user
    res = _in_udi(env, ["/bin/sh", "-c", "echo from-job > /data/job-file && cat /data/job-file"])
    assert res.stdout == "from-job\n", res.stderr
    assert open(os.path.join(env["vol"], "job-file")).read() == "from-job\n"
    os.unlink(os.path.join(env["vol"], "job-file"))
    # the cache is a fresh XFS the user can write, as in Shifter (ro does not apply)
    target = os.path.join(env["config"].udiMount, "scratch")
    assert [t for mp, t, _ in linux.mountinfo() if mp == target] == ["xfs"]
    assert _in_udi(env, ["/bin/sh", "-c", "echo x > /scratch/f && cat /scratch/f"]).stdout == "x\n"
    assert plan.read(env["config"].udiMount).volumes == (
        f"/global/cscratch1/sd/USER:/scratch:perNodeCache=size=300M;{env['vol']}:/data")


def test_modules_copy_path_site_fs_roothook_and_env(torn_down):
    env = torn_down
    res = _setup(env, "-U", "4242", "-m", "tools", "id", env["id"])
    assert res.returncode == 0, res.stderr
    root = env["config"].udiMount
    assert _in_udi(env, ["/opt/udiImage/modules/tools/bin/hello"]).stdout == "module hello\n"
    assert _in_udi(env, ["/bin/cat", "/opt/sitetools/shared"]).stdout == "site data\n"
    assert open(os.path.join(root, "var/shifter/roothook-ran")).read() == "tools\n"
    p = plan.read(root)
    assert p.modules == "tools" and "=TOOLS=1" in p.env
    for bad, message in ((["-m", "nope"], "unknown module 'nope'"), (["-m", "off"], "disabled"),
                         (["-m", "tools,clash"], "conflict")):
        udi.teardown(env["config"])
        res = _setup(env, "-U", "4242", *bad, "id", env["id"])
        assert res.returncode != 0 and message in res.stderr, res.stderr
        assert not linux.mounts_under(root)


def test_failure_halfway_leaves_nothing(torn_down):
    env = torn_down
    res = _setup(env, "-U", "4242", "-v", f"{env['vol']}:/data", "id", env["id"], conf=env["failing"])
    assert res.returncode == 1 and "sitePostMountHook" in res.stderr and "exited with 3" in res.stderr
    assert not linux.mounts_under(env["config"].udiMount)
    assert not linux.mounts_under(env["config"].loopMount)
    assert not _loops_for(env["id"])


def test_unsetuproot_after_a_crashed_setup(torn_down):
    env = torn_down
    # a setup killed halfway: mounts left behind, no cleanup ran
    config = env["config"]
    os.makedirs(config.udiMount, exist_ok=True)
    linux.mount("crashed", config.udiMount, "tmpfs", 0)
    os.makedirs(os.path.join(config.udiMount, "bin"))
    linux.bind("/usr", os.path.join(config.udiMount, "bin"), linux.MS_RDONLY)
    res = subprocess.run([UNSETUPROOT], capture_output=True, text=True, env={"SHIFTER_CONFIG": env["conf"]})
    assert res.returncode == 0, res.stderr
    assert not linux.mounts_under(config.udiMount)
    again = subprocess.run([UNSETUPROOT], capture_output=True, text=True, env={"SHIFTER_CONFIG": env["conf"]})
    assert again.returncode == 0 and again.stderr == ""


def test_hundred_cycles_leave_no_mounts_or_loop_devices(env):
    config = env["config"]
    request = udi.Request(image=ImageRef("id", env["id"]), uid=4242, gid=4242, username=USER1,
                          volumes=volumes.parse_volumes(f"{env['vol']}:/data:ro"))
    udi.setup_root(config, request)  # the first setup leaves the (empty) anchors in place
    udi.teardown(config)
    before = len(linux.mountinfo())
    for _ in range(100):
        udi.setup_root(config, request)
        assert udi.teardown(config)
    assert len(linux.mountinfo()) == before
    assert not _loops_for(env["id"])


def test_bad_usage_is_one_line(env):
    for args, code in (([], 2), (["id"], 2), (["-U", "x", "id", env["id"]], 2),
                       (["-U", "4242", "id", "0" * 64], 2), (["-U", "4242", "docker", "Bad Name"], 2)):
        res = _setup(env, *args)
        assert res.returncode == code, (args, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("setupRoot: "), res.stderr


def test_other_user_cannot_use_the_first_users_udi_files(torn_down):
    env = torn_down
    assert _setup(env, "-U", "4242", "-v", f"{env['vol']}:/data", "id", env["id"]).returncode == 0
    os.chmod(env["vol"], 0o700)
    res = _in_udi(env, ["/bin/ls", "/data"], uid=4243, gid=4243)
    assert res.returncode != 0  # the volume keeps its owner's permissions
    assert USER2


@pytest.mark.parametrize("style, seen", [("slave", True), ("private", False)])
def test_site_fs_propagation_follows_mount_propagation_style(torn_down, style, seen):
    env = torn_down
    src = os.path.join(env["base"], "sitefs")
    conf = os.path.join(env["base"], f"{style}.conf")
    with open(conf, "w") as f:
        f.write(open(env["conf"]).read() + f"mountPropagationStyle={style}\n")
    # the source is a shared mount of its own, as a site's /global would be
    linux.bind(src, src)
    linux.make_propagation(src, linux.MS_SHARED)
    try:
        assert _setup(env, "-U", "4242", "id", env["id"], conf=conf).returncode == 0
        later = os.path.join(src, "later")
        os.makedirs(later, exist_ok=True)
        linux.mount("later", later, "tmpfs", 0)
        try:
            with open(os.path.join(later, "f"), "w") as f:
                f.write("mounted after setup\n")
            inside = os.path.join(env["config"].udiMount, "site", "later", "f")
            assert os.path.exists(inside) is seen
        finally:
            linux.umount(later)
    finally:
        udi.teardown(env["config"])
        linux.umount(src)


def test_image_var_symlink_never_reaches_the_host(env, tmp_path):
    """An image whose /var is a link to /etc must not get the host's /etc entries bound
    into the container's /var (the link would be followed on the host)."""
    from tools import squash
    from tools.site import Site

    def hostile(root):
        shutil.rmtree(os.path.join(root, "var"), ignore_errors=True)
        os.symlink("/etc", os.path.join(root, "var"))
        os.symlink("/root", os.path.join(root, "opt"))

    images = os.path.dirname(env["config"].imagePath + "/")
    image_id = squash.make_image(Site(), "busybox", images, extra=hostile)
    try:
        res = _setup(env, "-U", "4242", "id", image_id)
        assert res.returncode == 0, res.stderr
        root = env["config"].udiMount
        assert sorted(os.listdir(os.path.join(root, "var"))) == ["shifter", "tmp"]
        assert sorted(os.listdir(os.path.join(root, "opt"))) == ["udiImage"]
    finally:
        udi.teardown(env["config"])
        for suffix in (".squashfs", ".meta"):
            os.unlink(os.path.join(images, image_id + suffix))


@pytest.mark.parametrize("propagation", ["unchanged", "slave"])
def test_teardown_reaches_namespaces_created_after_setup(torn_down, propagation):
    """A mount namespace made after setup (a job's unshare, a container runtime) holds
    copies of the UDI; teardown must remove them too, and free the loop device."""
    env = torn_down
    assert _setup(env, "-U", "4242", "-v", f"{env['vol']}:/data", "id", env["id"]).returncode == 0
    sleeper = subprocess.Popen(["unshare", "-m", "--propagation", propagation, "sleep", "60"])
    try:
        def copies():
            res = subprocess.run(["nsenter", "-t", str(sleeper.pid), "-m", "cat", "/proc/self/mountinfo"],
                                 capture_output=True, text=True)
            return res.stdout.count("shifter-udi") + res.stdout.count("squashfs")

        import time
        deadline = time.monotonic() + 5
        while copies() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert copies() > 0
        assert subprocess.run([UNSETUPROOT], env={"SHIFTER_CONFIG": env["conf"]}).returncode == 0
        assert copies() == 0
        assert not _loops_for(env["id"])
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------------ a host whose / is shared
# Every systemd host has an rshared /.  The driver runs in a mount namespace of its own,
# made private first (nothing reaches the machine) and then rshared, like such a host; it
# runs setupRoot there, reports what the host side of that namespace looks like while the
# UDI is up, tears it down and reports again.
_DRIVER = r'''
import json, os, subprocess, sys
conf, udi, loop, args, watch, probes = json.loads(sys.argv[1])
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "--make-rshared", "/"], check=True)

def table():
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            x = line.split()
            if x[4] == udi or x[4].startswith(udi + "/") or x[4] == loop or x[4].startswith(loop + "/"):
                continue
            rows.append(" ".join([x[3], x[4], x[x.index("-") + 1], x[x.index("-") + 2]]))
    return sorted(rows)

def look():
    out = {}
    for p in watch:
        try:
            st = os.lstat(p)
            out[p] = [st.st_mode, st.st_uid, st.st_dev, st.st_ino,
                      os.path.isdir(p) and "sftest2-was-here" in os.listdir(p)]
        except OSError as e:
            out[p] = e.strerror
    return out

env = {"SHIFTER_CONFIG": conf, "PATH": "/usr/bin:/bin"}
before, seen_before = table(), look()
res = subprocess.run(["/opt/shifter/bin/setupRoot", *args], capture_output=True, text=True, env=env)
during, seen_during = table(), look()
probe_out = {}
for name, argv in probes.items():
    p = subprocess.run(argv, capture_output=True, text=True)
    probe_out[name] = [p.returncode, p.stdout, p.stderr]
down = subprocess.run(["/opt/shifter/bin/unsetupRoot"], capture_output=True, text=True, env=env)
after, seen_after = table(), look()
print(json.dumps({"rc": res.returncode, "stderr": res.stderr, "down": down.returncode,
                  "before": before, "during": during, "after": after, "probes": probe_out,
                  "seen_before": seen_before, "seen_during": seen_during, "seen_after": seen_after}))
'''


def _on_shared_host(env, args, watch=(), probes=None):
    import json

    cfg = env["config"]
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/opt/shifter/bin/python", "-c", _DRIVER,
         json.dumps([env["conf"], cfg.udiMount, cfg.loopMount, list(args), list(watch), probes or {}])],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture
def hostile(env, tmp_path):
    """sftest2's directory (in their home) whose entries imitate /dev and /tmp, ``null`` a
    symlink to a root-only file."""
    import pathlib
    import tempfile

    secret = tmp_path / "secret"
    secret.write_text("root's\n")
    d = pathlib.Path(tempfile.mkdtemp(prefix="hostile-", dir=pwd.getpwnam(USER2).pw_dir))
    os.symlink(str(secret), d / "null")
    (d / "sftest2-was-here").write_text("x\n")
    for p in (d, d / "sftest2-was-here"):
        os.lchown(p, 4243, 4243)
    os.lchown(d / "null", 4243, 4243)
    yield {"d": str(d), "secret": str(secret)}
    shutil.rmtree(d)


@pytest.mark.parametrize("dest", ["/dev", "/tmp", "/dev/shm"])
def test_user_volume_on_a_host_tree_never_reaches_the_host(env, hostile, dest):
    """Outside review, item 1: on a host with a shared /, a user's volume on /dev (or
    /tmp, /dev/shm) appeared on the host's own /dev, and root's write to /dev/null went
    through the user's symlink.  Shifter accepts these destinations, so must we."""
    probes = {"write": ["/bin/sh", "-c", "echo x > /dev/null"], "inside": ["ls", f"{env['config'].udiMount}{dest}"]}
    out = _on_shared_host(env, ["-U", "4243", "-G", "4243", "-u", USER2, "-v", f"{hostile['d']}:{dest}", "id",
                                env["id"]], watch=[dest, "/dev/null"], probes=probes)
    assert out["rc"] == 0, out["stderr"]
    assert "sftest2-was-here" in out["probes"]["inside"][1]  # the container has it
    assert out["during"] == out["before"] == out["after"]  # the host's mount table does not
    assert out["seen_during"] == out["seen_before"] == out["seen_after"]
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with open(hostile["secret"]) as f:
        assert f.read() == "root's\n"


def test_site_and_image_binds_do_not_carry_user_volumes_back(env, hostile):
    """A user volume under a site map (siteFs binds a host directory) or a per-node cache
    on /tmp must not appear in the host's directory either."""
    sitefs = os.path.join(env["base"], "sitefs")
    os.makedirs(os.path.join(sitefs, "mnt"), exist_ok=True)
    out = _on_shared_host(env, ["-U", "4243", "-G", "4243", "-u", USER2, "-v",
                                f"{hostile['d']}:/site/mnt;/x:/tmp:perNodeCache=size=300M", "id", env["id"]],
                          watch=[os.path.join(sitefs, "mnt"), "/tmp"],
                          probes={"tmp": ["stat", "-f", "-c", "%T", f"{env['config'].udiMount}/tmp"]})
    assert out["rc"] == 0, out["stderr"]
    assert out["probes"]["tmp"][1].strip() == "xfs"
    assert out["during"] == out["before"] == out["after"]
    assert out["seen_during"] == out["seen_before"] == out["seen_after"]


def test_a_wrong_site_configuration_is_one_line_and_exit_3_with_nothing_mounted(env, tmp_path):
    """The one exit-code table (docs/dev.md, "Failing"): the site's fault is CONFIG, 3, for
    setupRoot and unsetupRoot alike (they said 1 before the table)."""
    bad = tmp_path / "udiRoot.conf"
    bad.write_text(open(env["conf"]).read() + "udiMount=relative/path\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(bad, 0o644)
    before = len(linux.mountinfo())
    for res, command in ((_setup(env, "-U", "4242", "id", env["id"], conf=str(bad)), "setupRoot"),
                         (subprocess.run([UNSETUPROOT], capture_output=True, text=True,
                                         env={"SHIFTER_CONFIG": str(bad), "PATH": "/usr/bin:/bin"}), "unsetupRoot")):
        assert res.returncode == 3, res.stderr
        assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"{command}: {bad}:"), res.stderr
        assert "udiMount" in res.stderr
    assert len(linux.mountinfo()) == before


@pytest.mark.parametrize("dest, is_file", [
    ("/dev/x", False), ("/tmp/shifter-new/x", False), ("/dev/shm/f", True), ("/site/newdir", False),
    ("/sys/fs/cgroup/memory/shifter-x", False), ("/usr/newdir", False),
])
def test_missing_destination_parents_are_never_made_on_the_host(env, hostile, dest, is_file):
    """Outside review, item 2: root made missing destination parents on whatever was bound
    there (/dev, /tmp, /dev/shm, a site directory, even a memory cgroup) and left them."""
    src = os.path.join(hostile["d"], "sftest2-was-here") if is_file else hostile["d"]
    host = dest.replace("/site", os.path.join(env["base"], "sitefs"), 1)
    parent = os.path.dirname(host) if os.path.exists(os.path.dirname(host)) else os.path.dirname(os.path.dirname(host))
    out = _on_shared_host(env, ["-U", "4243", "-G", "4243", "-u", USER2, "-v", f"{src}:{dest}", "id", env["id"]],
                          watch=[parent, host])
    assert out["rc"] != 0
    lines = out["stderr"].strip().splitlines()
    assert "does not exist in the container" in lines[0] and "container's own file system" in lines[0], lines
    assert len([ln for ln in lines if not ln.lstrip().startswith("hint:")]) == 1, lines
    assert out["seen_during"] == out["seen_before"] == out["seen_after"]
    assert not os.path.lexists(host)
    assert out["during"] == out["before"] == out["after"]


def test_refusals_do_not_tell_what_exists_where_the_user_cannot_look(env, hostile):
    closed = os.path.join(env["base"], "sitefs", "closed")
    os.makedirs(os.path.join(closed, "there"), exist_ok=True)
    os.chmod(closed, 0o700)
    msgs = []
    for name in ("there", "absent"):
        res = _setup(env, "-U", "4243", "-G", "4243", "-u", USER2, "-v", f"{hostile['d']}:/site/closed/{name}",
                     "id", env["id"])
        assert res.returncode != 0
        msgs.append(res.stderr.replace(name, "NAME"))
    assert msgs[0] == msgs[1] and "permission denied" in msgs[0]
    assert not linux.mounts_under(env["config"].udiMount)


def test_new_top_level_destinations_live_in_the_udi_only(torn_down, hostile):
    env = torn_down
    res = _setup(env, "-U", "4243", "-G", "4243", "-u", USER2, "-v", f"{hostile['d']}:/newtop/a/b", "id", env["id"])
    assert res.returncode == 0, res.stderr
    assert _in_udi(env, ["ls", "/newtop/a/b"], uid=4243, gid=4243).stdout.split() == ["null", "sftest2-was-here"]
    udi.teardown(env["config"])
    assert not os.path.exists(os.path.join(env["config"].udiMount, "newtop"))


def test_udi_state_is_for_root_and_the_jobs_user_only(torn_down):
    """Outside review, item 3: udi.json and the launch plan were world-readable."""
    env = torn_down
    assert _setup(env, "-U", "4242", "-v", f"{env['vol']}:/data", "id", env["id"]).returncode == 0
    state = os.path.join(env["config"].udiMount, "var", "shifter")

    def cat(uid, name):
        return _in_udi(env, ["cat", f"/var/shifter/{name}"], uid=uid, gid=uid).returncode

    assert cat(4242, "launch.plan") == 0
    assert cat(4243, "launch.plan") != 0
    assert cat(4242, "udi.json") != 0
    assert _in_udi(env, ["ls", "/var/shifter"], uid=4243, gid=4243).returncode != 0
    st = os.stat(os.path.join(state, "launch.plan"))
    assert st.st_uid == 0 and not st.st_mode & 0o022


def test_unsetuproot_after_a_crash_never_unmounts_the_hosts_trees(env):
    """A setup killed right after binding the host's /sys (before making it a slave)
    leaves a peer of the host's mounts in the UDI: tearing it down must not unmount the
    host's own /sys/fs/cgroup (which took the local cluster's slurmd down here)."""
    cfg = env["config"]
    script = f"""
        set -e
        mount --make-rprivate /; mount --make-rshared /
        mkdir -p {cfg.udiMount}
        mount -t tmpfs shifter-udi {cfg.udiMount}; mount --make-shared {cfg.udiMount}
        mkdir {cfg.udiMount}/sys {cfg.udiMount}/tmp
        mount --rbind /sys {cfg.udiMount}/sys; mount --bind /tmp {cfg.udiMount}/tmp
        before=$(findmnt -rn -o TARGET | grep -v '^{cfg.udiMount}' | sort | md5sum)
        SHIFTER_CONFIG={env['conf']} /opt/shifter/bin/unsetupRoot
        after=$(findmnt -rn -o TARGET | grep -v '^{cfg.udiMount}' | sort | md5sum)
        findmnt -rn -o TARGET | grep -c '^{cfg.udiMount}/' || true
        [ "$before" = "$after" ] && echo same
        """
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "same"], res.stdout


def test_a_site_per_node_cache_is_made_for_the_user(torn_down):
    """siteFs with perNodeCache= (Shifter's site maps allow it): setupRoot makes an XFS
    cache owned by the job's user, and teardown removes its file."""
    env = torn_down
    conf = os.path.join(env["base"], "sitecache.conf")
    with open(env["conf"]) as f:
        text = f.read().replace(f"siteFs={env['base']}/sitefs:/site:ro",
                                f"siteFs={env['base']}/sitefs:/site:ro;/unused:/sitecache:perNodeCache=size=300M:ro")
    with open(conf, "w") as f:
        f.write(text)
    res = _setup(env, "-U", "4242", "id", env["id"], conf=conf)
    assert res.returncode == 0, res.stderr
    assert "'ro' ignored" in res.stderr  # Shifter ignores it too: said once
    inside = _in_udi(env, ["sh", "-c", "stat -f -c %T /sitecache; stat -c %u /sitecache; touch /sitecache/x"])
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split() == ["xfs", "4242"]
    cache_dir = os.path.join(env["base"], "cache")
    assert len(os.listdir(cache_dir)) == 1
    udi.teardown(env["config"])
    assert os.listdir(cache_dir) == []


def test_setuproot_N_writes_the_hostsfile_and_refuses_a_bad_list(torn_down):
    """Shifter's -N "host/slots ...": /var/hostsfile, one line per slot (docs/sshd.md)."""
    env = torn_down
    res = _setup(env, "-U", "4242", "-N", "n1/2 n2/1 n3", "id", env["id"])
    assert res.returncode == 0, res.stderr
    assert _in_udi(env, ["/bin/cat", "/var/hostsfile"]).stdout == "n1\nn1\nn2\nn3\n"
    st = os.stat(os.path.join(env["config"].udiMount, "var/hostsfile"))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
    udi.teardown(env["config"])
    bad = _setup(env, "-U", "4242", "-N", "n1/2 ../x/1", "id", env["id"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "invalid host list entry '../x/1'" in bad.stderr
    assert not linux.mounts_under(env["config"].udiMount)
