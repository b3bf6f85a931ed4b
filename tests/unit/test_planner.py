"""The planner: given this configuration and request, these operations (no root, no
mounts).  The executed containers are checked in tests/root (test_setuproot.py,
test_private_user.py, test_private_plan.py)."""

from __future__ import annotations

import os

import pytest

from shifter.errors import ConfigError
from shifter.runtime import config as udiconfig
from shifter.runtime.builder import execute, planner, udi
from shifter.runtime import privplan
from shifter.runtime.image import ImageRef
from shifter.runtime.modules import select_modules
from shifter.runtime.volumes import parse_volumes

ID = "ab" * 32
IMG = f"/images/{ID}.squashfs"
NOSUID_NODEV = str(planner.SAFE)
RO_SAFE = str(planner.RO | planner.SAFE)


def _config(text: str = ""):
    return udiconfig.parse("udiMount=/udi\nloopMount=/loop\nimagePath=/images\n" + text, "/x/udiRoot.conf")


def _request(**kw):
    base = dict(image=ImageRef("id", ID), uid=4242, gid=4240, username="sftest1")
    base.update(kw)
    return udi.Request(**base)


def _root(config, req, **kw):
    t = planner.Target("root", "/udi", loop="/loop", prepared=kw.pop("prepared", True), job=kw.pop("job", False))
    return planner.plan(config, req, t, IMG, select_modules(config, req.modules), (4240,), created=1.0, **kw)


def _user(config, req):
    t = planner.Target("user", "@/root", loop="@/image")
    return planner.plan(config, req, t, IMG, select_modules(config, req.modules), (4240,))


def _names(ops):
    return [op[0] for op in ops]


def test_root_udi_starts_with_its_tmpfs_state_and_the_image_read_only():
    ops = _root(_config(), _request())
    assert ops[:4] == [("mkdirp", "/udi"), ("mkdirp", "/loop"), ("anchor", "/udi"),
                       ("mount", "shifter-udi", "/udi", "tmpfs", NOSUID_NODEV, "mode=755")]
    assert ("stateacl", "/udi/var/shifter", 4242) in ops  # the job's user may search it
    assert ("loopmount", IMG, "/loop", RO_SAFE) in ops
    state = next(op for op in ops if op[0] == "state")
    assert state[2]["image"] == f"id:{ID}" and state[2]["complete"] is False and state[2]["created"] == 1.0
    # the image's entries, then /etc over the image's; the root read-only last
    merge = next(op for op in ops if op[0] == "merge")
    assert merge[1:3] == ("/loop", "/udi") and {"etc", "var", "shifter"} <= merge[3]
    assert ops[-1] == ("mount", "", "/udi", "", str(0x20 | 0x1000 | planner.RO | planner.SAFE), "")
    assert _names(ops)[-4:-1] == ["launchplan", "userns", "state"]


def test_root_dev_proc_sys_are_hardened_slaves_and_tmp_a_nosuid_bind():
    ops = _root(_config(), _request(uid=0, gid=0, username="root"))
    i = ops.index(("mount", "/dev", "/udi/dev", "", str(0x1000 | 0x4000), ""))
    assert ops[i + 1] == ("mount", "", "/udi/dev", "", str((1 << 19) | 0x4000), "")
    assert ops[i + 3] == ("hardentree", "/udi/dev", NOSUID_NODEV)
    assert ("hardentree", "/udi/proc", str(planner.SAFE | 8)) in ops
    assert ("bind", "/tmp", "/udi/tmp", NOSUID_NODEV) in ops
    assert "userns" not in _names(ops)  # root's own UDI: no user namespace to keep


def test_a_private_root_container_writes_no_launch_plan_and_a_job_has_no_anchor():
    assert "launchplan" not in _names(_root(_config(), _request(), prepared=False))
    ops = _root(_config(), _request(job_id="7"), job=True)
    assert "anchor" not in _names(ops) and ("fault", "after-image") in ops


def test_site_maps_modules_hooks_and_caches_in_the_root_plan():
    config = _config("siteFs=/home:/home;/scratch:/scratch:rec\nsitePreMountHook=/pre.sh\n"
                     "sitePostMountHook=/post.sh\noptUdiImage=/opt/deps\n"
                     "module_mpich_siteFs=/opt/mpich:/opt/udiImage/modules/mpich/lib:ro\n"
                     "module_mpich_copyPath=/opt/mods/mpich\nmodule_mpich_roothook=/opt/mods/mpich/root.sh\n")
    vols = parse_volumes("/data/x:/x;/y:/cache:perNodeCache=size=1G")
    ops = _root(config, _request(modules=("mpich",), volumes=vols))
    names = _names(ops)
    sites = [op for op in ops if op[0] == "site"]
    assert [(op[2].destination, op[3]) for op in sites] == [
        ("/home", "siteFs"), ("/scratch", "siteFs"),
        ("/opt/udiImage/modules/mpich/lib", "module_mpich_siteFs of /x/udiRoot.conf")]
    assert names.index("hook") < names.index("merge")  # sitePreMountHook before the image's entries
    hooks = [op[3] for op in ops if op[0] == "hook"]
    assert hooks == ["run sitePreMountHook", "run sitePostMountHook", "run the roothook of module mpich"]
    assert ("copyopt", "/opt/deps", "/udi/opt/udiImage") in ops
    assert ("copytree", "/opt/mods/mpich", "/udi/opt/udiImage/modules/mpich") in ops
    (volumes,) = [op for op in ops if op[0] == "volumes"]
    assert [v.destination for v in volumes[2]] == ["/x"] and [v.destination for v in volumes[3]] == ["/cache"]


def test_sshd_and_hostsfile_belong_to_the_prolog_udi():
    from shifter.runtime.builder import sshd

    setup = sshd.Setup(bundle="/b", pubkey="ssh-ed25519 AAAA x", address="127.0.0.1", allowed=("sftest1",))
    ops = _root(_config(), _request(sshd=setup, hostlist="n1/2 n2/1"))
    assert ("sshd", "/udi", setup) in ops
    (hosts,) = [op for op in ops if op[0] == "file"]
    assert hosts[:3] == ("file", "/udi/var/hostsfile", "644") and hosts[3].split() == ["n1", "n1", "n2"]


def test_user_plan_is_staged_at_at_and_keeps_the_hosts_locked_flags():
    config = _config("siteFs=/home:/home\n")
    ops = _user(config, _request(volumes=parse_volumes("/data:/data:ro")))
    assert ops[:6] == [("mount", "shifter-stage", "@", "tmpfs", NOSUID_NODEV, "mode=700"), ("chdir", "@"),
                       ("mkdir", "@/image", "700"), ("mkdir", "@/root", "755"),
                       ("fusemount", IMG, "@/image", RO_SAFE),
                       ("mount", "shifter-udi", "@/root", "tmpfs", NOSUID_NODEV, "mode=755")]
    assert ("treekeep", "@/root/dev", "2", NOSUID_NODEV) in ops
    assert ("treekeep", "@/root/proc", str(planner.SAFE | 8), "-1") in ops
    (etc,) = [op for op in ops if op[0] == "etcmount"]
    assert etc[1][-1] == "lowerdir=root/var/shifter/etc:image/etc"  # relative to the staging directory
    names = _names(ops)
    for root_only in ("anchor", "stateacl", "state", "hook", "launchplan", "userns", "hardentree", "loopmount"):
        assert root_only not in names
    site = next(op for op in ops if op[0] == "site")
    assert site[1] == "@/root" and site[5] is None  # the namespace is private: no propagation style


def test_a_user_plan_keeps_a_site_cache_so_that_the_executor_refuses_it():
    config = _config("siteFs=/scratch:/tmp:perNodeCache=size=100M\n")
    ops = _user(config, _request())
    assert [op[2].destination for op in ops if op[0] == "site"] == ["/tmp"]
    assert "site" not in _names(_root(config, _request()))  # root makes it with the user's volumes


def test_every_operation_is_a_plan_record_or_one_the_executor_resolves():
    config = _config("siteFs=/home:/home\nsitePreMountHook=/p.sh\nmodule_g_gpuDevices=/dev/nvidia0\n")
    for ops in (_root(config, _request(modules=("g",))), _user(config, _request())):
        for op in ops:
            known = op[0] in privplan.ARITY
            assert known or op[0] in planner.EXPANDED | planner.PYTHON_ONLY, op
            if known:
                assert len(op) - 1 == privplan.ARITY[op[0]] and all(isinstance(a, (str, bytes)) for a in op[1:]), op


def test_a_local_image_is_merged_from_its_directory_without_its_hidden_paths():
    config = _config("allowLocalChroot=1\n")
    req = _request(image=ImageRef("local", "/"))
    t = planner.Target("root", "/udi", loop="/loop", image="/", prepared=False)
    hide = frozenset({"/var/udiMount"})
    ops = planner.plan(config, req, t, "/", (), (4240,), hide=hide)
    assert "loopmount" not in _names(ops) and ("anchor", "/loop") not in ops
    merges = [op for op in ops if op[0] == "merge"]
    assert [m[1] for m in merges] == ["/", "/var", "/opt"] and all(m[4] == hide for m in merges)
    t = planner.Target("user", "@/root", loop="@/image", image="/srv/tree")
    ops = planner.plan(config, req, t, "/srv/tree", (), (4240,))
    assert "fusemount" not in _names(ops)
    (etc,) = [op for op in ops if op[0] == "etcmount"]
    assert etc[1][-1] == "lowerdir=root/var/shifter/etc:/srv/tree/etc"  # the tree's own path


def test_root_propagation_is_cut_before_site_maps_and_again_before_user_volumes():
    config = _config("siteFs=/home:/home\n")
    ops = _root(config, _request(volumes=parse_volumes("/data:/data")))
    cut = [i for i, op in enumerate(ops) if op == ("mount", "", "/udi", "", str((1 << 19) | 0x4000), "")]
    assert len(cut) == 2 and ops[cut[0] + 1] == ops[cut[1] + 1] == \
        ("mount", "", "/udi", "", str((1 << 20) | 0x4000), "")
    names = _names(ops)
    assert cut[0] < names.index("site") < cut[1] < names.index("volumes")


def test_a_writable_root_and_per_gpu_devices():
    config = _config("mountUdiRootWritable=1\nmodule_g_gpuDevices=/dev/nvidia0\n")
    for ops in (_root(config, _request(modules=("g",))), _user(config, _request(modules=("g",)))):
        assert not any(op[0] == "mount" and op[4] == str(0x20 | 0x1000 | planner.RO | planner.SAFE) for op in ops)
        assert sum(op[0] == "blankdev" for op in ops) == 1


# ------------------------------------------------------------------ the Python executor, unprivileged
def test_executor_names_paths_as_a_plan_does(tmp_path):
    base = str(tmp_path / "stage")
    ex = execute.Executor("user", None, 1, 1, (), base=base)
    assert ex.real("@/root/usr") == base + "/root/usr" and ex.real("@") == base and ex.real("/x") == "/x"
    assert ex.name(base + "/root/usr") == "@/root/usr" and ex.name(base + "x") == base + "x"
    fd = os.open(tmp_path, os.O_PATH)
    try:
        assert ex.name(f"/proc/self/fd/{fd}") == str(tmp_path)
    finally:
        os.close(fd)


def test_executor_runs_plain_records_and_expands_merge_copyopt_and_etc(tmp_path):
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    os.symlink("usr/bin", image / "bin")
    os.symlink("/etc/hostname", image / "hostlink")
    (tmp_path / "stage").mkdir()
    site_etc = tmp_path / "site"
    site_etc.mkdir()
    (site_etc / "motd").write_text("hello\n")
    ex = execute.Executor("user", None, os.getuid(), os.getgid(), (), base=str(tmp_path / "stage"))
    done = ex.run([("mkdir", "@/root", "755"), ("merge", str(image), "@/root", frozenset({"etc"}), frozenset()),
                   ("copyopt", str(tmp_path / "missing"), "@/root/x"),
                   ("mkdirp", "@/root/var/shifter/etc"),
                   ("etc", "@/root/var/shifter/etc", str(site_etc), os.getuid(), "me", (os.getgid(),), None)])
    assert done[:3] == [("mkdir", "@/root", "755"), ("symlink", "usr/bin", "@/root/bin"),
                        ("symlink", "/etc/hostname", "@/root/hostlink")] or \
        sorted(done[1:3]) == [("symlink", "/etc/hostname", "@/root/hostlink"), ("symlink", "usr/bin", "@/root/bin")]
    assert os.readlink(tmp_path / "stage/root/bin") == "usr/bin"
    files = {op[1]: op[3] for op in done if op[0] == "file"}
    assert files["@/root/var/shifter/etc/motd"] == b"hello\n"
    assert "@/root/var/shifter/etc/passwd" in files
    assert not any(op[0] == "copytree" for op in done)  # no optUdiImage: nothing to copy
    assert ex.unsaveable is None
    # the prolog saves no plan: the files are not read back, and nothing could be saved
    quiet = execute.Executor("user", None, os.getuid(), os.getgid(), (), base=str(tmp_path / "stage"), records=False)
    quiet.run([("mkdirp", "@/etc2"), ("etc", "@/etc2", str(site_etc), os.getuid(), "me", (os.getgid(),), None)])
    assert (tmp_path / "stage/etc2/motd").read_text() == "hello\n"
    assert not any(op[0] == "file" for op in quiet.done) and quiet.unsaveable


def test_what_no_plan_record_expresses_makes_the_build_unsaveable(tmp_path):
    ex = execute.Executor("root", None, 0, 0, ())
    ex.run([("file", str(tmp_path / "bin"), "644", b"\x7fELF\0")])
    assert ex.unsaveable.endswith("contains a NUL byte")
    saver = privplan.Saver("k", "root", os.getuid(), [], [], [], [])
    assert saver(ex, "/udi") is None  # nothing written
    with pytest.raises(ValueError, match="unknown operation"):
        ex.run([("bogus",)])


def test_a_site_per_node_cache_is_never_bound_from_its_source(tmp_path):
    """udiRoot.conf loads with it (as Shifter's does); setupRoot makes the cache itself
    (tests/root/test_setuproot.py); the site step refuses it with one line (a private
    user container can't make one) rather than binding the map's unused source."""
    (volume,) = parse_volumes(f"{tmp_path}:/tmp:perNodeCache=size=100M", site=True)
    ex = execute.Executor("root", None, 0, 0, ())
    with pytest.raises(ConfigError, match="a per-node cache needs a container that setupRoot builds as root"):
        ex.run([("site", str(tmp_path), volume, "siteFs", str(tmp_path), None)])
    assert ex.done == []
