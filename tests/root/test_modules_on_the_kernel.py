"""Site modules on the real kernel, from modules prepared here by ``shifter-admin``'s
code (``shifter.runtime.siteprep.modprep``): the host's MPICH in place of the image's, and the
stand-in GPU driver, whose per-GPU device files a step sees only for its own GPUs
(prepared containers, private containers as a user and as root); defaultModules,
``--module=none``, conflicts and ``--dry-run``."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap

import pytest

from helpers.prereq import USER1, require
from helpers.site_launch import SHIFTER, forget_plans, plans
from shifter.runtime import config as udiconfig
from shifter.runtime.siteprep import modprep
from shifter.runtime.builder import udi

pytestmark = pytest.mark.root

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(HERE, "..", "tools", "gpu_standin.c")
JOB = "4713"


def _lookup(site, image):
    res = subprocess.run([os.path.join(site.bindir, "shifterimg"), "lookup", image], capture_output=True, text=True,
                         env={**os.environ, "SHIFTER_CONFIG": site.udiroot_conf})
    require(res.returncode == 0, f"{image} is not in the local gateway: {res.stderr.strip()}")
    return res.stdout.strip()


@pytest.fixture(scope="module")
def env(cluster):
    require(os.path.exists("/usr/lib/x86_64-linux-gnu/libmpich.so.12"), "Debian's mpich is not installed")
    base = tempfile.mkdtemp(prefix="shifter-modules-", dir="/var/tmp")
    os.chmod(base, 0o755)
    gpu = os.path.join(base, "gpu")
    for d in ("", "dev", "lib", "bin"):
        os.makedirs(os.path.join(gpu, d), 0o755, exist_ok=True)
    for name in ("nvidiactl", "nvidia0", "nvidia1", "nvidia2", "nvidia3"):
        path = os.path.join(gpu, "dev", name)
        open(path, "w").close()
        os.chmod(path, 0o666)
    lib, smi = os.path.join(gpu, "lib", "libcuda.so.1"), os.path.join(gpu, "bin", "nvidia-smi")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", lib, STANDIN], check=True)
    subprocess.run(["gcc", "-DSTANDIN_SMI", "-o", smi, STANDIN, lib], check=True)
    mods = os.path.join(base, "modules")
    lines = modprep.prepare_mpich(mods)
    lines += modprep.prepare_gpu(mods, libs=[lib], bins=[smi],
                                 gpu_devices=[f"/gpu-standin/nvidia{i}" for i in range(4)],
                                 site_fs=[f"{gpu}/dev:/gpu-standin:ro"])
    lines += "module_other_siteEnv=OTHER=1\nmodule_other_conflict=mpich\n"
    lines += "module_gone_siteFs=/nonexistent/shifter-module:/opt/udiImage/modules/gone:ro\n"
    common = textwrap.dedent(f"""\
        udiMount={base}/mnt/udi
        loopMount={base}/mnt/loop
        imagePath={cluster.images}
        siteFs=/home:/home
        """)
    confs = {}
    for name, extra in (("plain", ""), ("default", "defaultModules=mpich\n")):
        confs[name] = os.path.join(base, f"{name}.conf")
        with open(confs[name], "w") as f:
            f.write(common + extra + lines)
        os.chmod(confs[name], 0o644)
    # the maps probe, where the user's containers see it (siteFs /home)
    home = pwd.getpwnam(USER1).pw_dir
    probe = os.path.join(home, f".shifter-mapsprobe-{os.getpid()}.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", probe, os.path.join(HERE, "data", "mapsprobe.c")], check=True)
    os.chmod(probe, 0o755)
    config = udiconfig.load(confs["plain"])
    yield {"base": base, "conf": confs["plain"], "conf_default": confs["default"], "config": config,
           "id": _lookup(cluster, "docker:test/debian:latest"), "probe": probe, "mods": mods}
    udi.teardown(config)
    udi.remove_anchors(config)
    os.unlink(probe)
    shutil.rmtree(base)


def run(env, args, user=USER1, conf=None, own_ns=True, trace=None, **extra):
    pw = pwd.getpwnam(user)
    e = {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "SHIFTER_CONFIG": conf or env["conf"], "SLURM_JOB_ID": JOB,
         "SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": env["id"], **extra}
    e = {k: v for k, v in e.items() if v is not None}
    argv = [SHIFTER, *args]
    if trace:  # every execve, to see whether Python ran
        argv = ["strace", "-f", "-qq", "-e", "trace=execve", "-o", trace, *argv]
    if user != "root":
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
    elif own_ns:  # root's private container: in a mount namespace of this test's own
        argv = ["unshare", "-m", "--propagation", "private", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=e, cwd="/tmp", timeout=120)


def _gpus(res) -> list[str]:
    assert res.returncode == 0, res.stderr
    assert "libcuda /opt/udiImage/modules/gpu/lib64/libcuda.so.1" in res.stdout, res.stdout
    return [ln for ln in res.stdout.splitlines() if ln.startswith(("gpu ", "no devices"))]


@pytest.mark.parametrize("user", [USER1, "root"])
def test_prepared_container_steps_see_only_their_own_gpus(env, user):
    """One prepared container for the job, steps with different GPUs: each opens exactly
    its own (SLURM_STEP_GPUS over SLURM_JOB_GPUS), and what one step covered is not
    covered for the next nor in the job's container (the covers live in the step's own
    mount namespace; root's steps run in this test's namespace, where a cover that
    propagated would show)."""
    uid = str(pwd.getpwnam(user).pw_uid)
    res = subprocess.run(["/opt/shifter/bin/setupRoot", "-U", uid, "-G", uid, "-m", "gpu", "id", env["id"]],
                         capture_output=True, text=True, env={"SHIFTER_CONFIG": env["conf"], "SLURM_JOB_ID": JOB})
    assert res.returncode == 0, res.stderr
    try:
        _steps(env, user)
    finally:
        udi.teardown(env["config"])


def _steps(env, user):
    steps = [({"SLURM_JOB_GPUS": "0,1,2,3", "SLURM_STEP_GPUS": "1"}, ["gpu 1 /gpu-standin/nvidia1"]),
             ({"SLURM_JOB_GPUS": "0,1,2,3", "SLURM_STEP_GPUS": "0,3"},
              ["gpu 0 /gpu-standin/nvidia0", "gpu 3 /gpu-standin/nvidia3"]),
             ({"SLURM_JOB_GPUS": "2"}, ["gpu 2 /gpu-standin/nvidia2"]),
             ({}, ["no devices were found"]),
             ({"CUDA_VISIBLE_DEVICES": "0"}, ["no devices were found"])]
    trace = f"/tmp/shifter-strace-{user}-{os.getpid()}"  # where the user may write
    for extra, expect in steps:
        res = run(env, ["sh", "-c", "test -r /var/shifter/launch.plan && echo prepared; nvidia-smi"],
                  user=user, own_ns=False, trace=trace, SHIFTER_MODULE="gpu", **extra)
        assert res.stdout.startswith("prepared\n"), res.stdout + res.stderr
        assert _gpus(res) == expect, (extra, res.stdout)
        with open(trace) as f:  # the compiled fast path did it: no Python
            execs = [ln for ln in f if "execve(" in ln]
        os.unlink(trace)
        assert execs and not [ln for ln in execs if "/bin/python" in ln], execs
    # nothing was left covered in the job's container itself
    udi_root = os.path.join(env["base"], "mnt", f"udi.jobs/{JOB}/root")
    with open("/proc/self/mountinfo") as f:
        assert not [ln for ln in f if f"{udi_root}/gpu-standin/nvidia" in ln]


def test_prepared_container_without_the_module_sees_no_gpu(env):
    res = subprocess.run(["/opt/shifter/bin/setupRoot", "-U", "4242", "-G", "4242", "id", env["id"]],
                         capture_output=True, text=True, env={"SHIFTER_CONFIG": env["conf"], "SLURM_JOB_ID": JOB})
    assert res.returncode == 0, res.stderr
    try:
        res = run(env, ["sh", "-c", "ls /gpu-standin; ls /opt/udiImage/modules; echo $LD_LIBRARY_PATH."],
                  SLURM_STEP_GPUS="0")
        assert res.stdout == ".\n", res.stdout
        assert "cannot access '/gpu-standin': No such file or directory" in res.stderr
    finally:
        udi.teardown(env["config"])


@pytest.mark.parametrize("user", [USER1, "root"])
def test_private_containers_see_only_the_steps_gpus(env, user):
    res = run(env, ["--module=gpu", "nvidia-smi"], user=user, SLURM_STEP_GPUS="2", SLURM_JOB_GPUS="0,1,2,3")
    assert _gpus(res) == ["gpu 2 /gpu-standin/nvidia2"]
    res = run(env, ["--module=gpu", "sh", "-c", "cat /gpu-standin/nvidia0 && echo opened"], user=user,
              SLURM_STEP_GPUS="2")
    assert "opened" not in res.stdout and "Permission denied" in res.stderr
    res = run(env, ["ls", "/gpu-standin"], user=user, SLURM_STEP_GPUS="2")  # a plain container: none
    assert res.returncode != 0 and "No such file or directory" in res.stderr


def test_mpich_module_replaces_the_images_library(env):
    """The rank loads libmpich.so.12 from the module (its /proc/self/maps shows the path:
    host and image carry the same Debian MPICH); UCX's plugins come along."""
    res = run(env, ["--module=mpich", "/app/mpi-hello"], LD_PRELOAD=env["probe"])
    assert res.returncode == 0, res.stderr
    assert "hello from rank 0 of 1" in res.stdout
    assert "maps - /opt/udiImage/modules/mpich/lib64/libmpich.so.12\n" in res.stdout, res.stdout
    res = run(env, ["/app/mpi-hello"], LD_PRELOAD=env["probe"])
    assert "maps - /usr/lib/x86_64-linux-gnu/libmpich.so.12" in res.stdout, res.stdout


def test_default_modules_and_module_none(env):
    res = run(env, ["/app/mpi-hello"], conf=env["conf_default"], LD_PRELOAD=env["probe"])
    assert "maps - /opt/udiImage/modules/mpich/lib64/libmpich.so.12\n" in res.stdout, res.stdout + res.stderr
    res = run(env, ["--module=none", "/app/mpi-hello"], conf=env["conf_default"], LD_PRELOAD=env["probe"])
    assert "maps - /usr/lib/x86_64-linux-gnu/libmpich.so.12" in res.stdout, res.stdout + res.stderr
    res = run(env, ["sh", "-c", "echo $LD_LIBRARY_PATH"], conf=env["conf_default"], SHIFTER_MODULE="none")
    assert res.stdout == "\n"


def test_conflicting_modules_are_one_line(env):
    res = run(env, ["--module=mpich,other", "true"])
    assert res.returncode == 125
    assert res.stderr == "shifter: modules 'other' and 'mpich' conflict (hint: load only one of them)\n"


def test_dry_run_shows_what_modules_add(env):
    res = run(env, ["--dry-run", "--module=gpu,mpich", "true"], SLURM_STEP_GPUS="1,2")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    mods = {m["name"]: m for m in out["modules"]}
    assert mods["gpu"]["gpu_devices"] == {"visible": ["/gpu-standin/nvidia1", "/gpu-standin/nvidia2"],
                                          "covered": ["/gpu-standin/nvidia0", "/gpu-standin/nvidia3"]}
    assert mods["mpich"]["env"]["prepend"] == {"LD_LIBRARY_PATH": "/opt/udiImage/modules/mpich/lib64"}
    assert {"source": os.path.join(env["mods"], "mpich"), "destination": "/opt/udiImage/modules/mpich",
            "flags": ["ro"]} in mods["mpich"]["mounts"]
    assert out["env"]["LD_LIBRARY_PATH"].split(":")[:2] == ["/opt/udiImage/modules/mpich/lib64",
                                                           "/opt/udiImage/modules/gpu/lib64"] or \
        set(out["env"]["LD_LIBRARY_PATH"].split(":")) == {"/opt/udiImage/modules/mpich/lib64",
                                                          "/opt/udiImage/modules/gpu/lib64"}
    res = run(env, ["--dry-run", "true"])
    assert json.loads(res.stdout)["modules"] == []


@pytest.mark.parametrize("user", [USER1, "root"])
def test_a_module_whose_directory_is_gone_names_its_key_and_file(env, user):
    res = run(env, ["--module=gone", "true"], user=user)
    assert res.returncode == 125
    assert res.stderr == (f"shifter: can't mount module_gone_siteFs of {env['conf']} /nonexistent/shifter-module:"
                          "/opt/udiImage/modules/gone:ro: source /nonexistent/shifter-module does not exist\n")


def test_private_plans_replay_a_module_container_but_never_a_gpu_one(env):
    """`SHIFTER_MODULE=mpich shifter CMD`: the second launch is the compiled replay of the
    recorded plan, with the module's bind.  With the gpu module nothing is recorded (what a
    step may open depends on its GPUs): each launch is built anew and sees its own GPUs."""
    trace = f"/tmp/shifter-strace-{USER1}-{os.getpid()}"

    def launch(args, **extra):
        res = run(env, args, trace=trace, SLURM_JOB_ID=None, **extra)
        with open(trace) as f:
            python = any("execve(" in ln and "/bin/python" in ln for ln in f)
        os.unlink(trace)
        return res, python

    forget_plans(USER1)
    try:
        for python_expected in (True, False):
            res, python = launch(["/app/mpi-hello"], SHIFTER_MODULE="mpich", LD_PRELOAD=env["probe"])
            assert res.returncode == 0, res.stderr
            assert "maps - /opt/udiImage/modules/mpich/lib64/libmpich.so.12\n" in res.stdout, res.stdout
            assert python is python_expected
        assert len(plans(USER1)) == 1
        forget_plans(USER1)
        for gpus in ("1", "3"):
            res, python = launch(["nvidia-smi"], SHIFTER_MODULE="gpu", SLURM_STEP_GPUS=gpus)
            assert _gpus(res) == [f"gpu {gpus} /gpu-standin/nvidia{gpus}"] and python
        assert plans(USER1) == []
    finally:
        forget_plans(USER1)


def test_default_modules_in_a_prepared_container(env):
    """setupRoot with no -m (a job submitted without --module) applies defaultModules: the
    job's plain `shifter CMD` enters it and loads the module's MPICH; `--module=none`
    asks for another container, without it."""
    conf = env["conf_default"]
    res = subprocess.run(["/opt/shifter/bin/setupRoot", "-U", "4242", "-G", "4242", "id", env["id"]],
                         capture_output=True, text=True, env={"SHIFTER_CONFIG": conf, "SLURM_JOB_ID": JOB})
    assert res.returncode == 0, res.stderr
    try:
        res = run(env, ["sh", "-c", "test -r /var/shifter/launch.plan && echo prepared; /app/mpi-hello"],
                  conf=conf, LD_PRELOAD=env["probe"])
        assert res.stdout.startswith("prepared\n"), res.stdout + res.stderr
        assert "maps - /opt/udiImage/modules/mpich/lib64/libmpich.so.12\n" in res.stdout, res.stdout
        res = run(env, ["--module=none", "sh", "-c", "test -r /var/shifter/launch.plan || echo private; "
                        "/app/mpi-hello"], conf=conf, LD_PRELOAD=env["probe"])
        assert res.stdout.startswith("private\n"), res.stdout + res.stderr
        assert "maps - /usr/lib/x86_64-linux-gnu/libmpich.so.12" in res.stdout, res.stdout
    finally:
        udi.teardown(udiconfig.load(conf))
