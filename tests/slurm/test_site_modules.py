"""The local site's modules in jobs: ``mpich`` (the host's MPICH, prepared by
``tools/cluster up`` with shifter-admin's code) loaded by every rank of ``srun -N3`` in
prepared and private containers, and ``gpu`` (the stand-in driver) with Slurm's GRES:
a step opens exactly the device files of its own GPUs; conflicts refused at submission."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile

import pytest

from helpers.prereq import USER1
from helpers.site_jobs import batch
from shifter.runtime import config as udiconfig

pytestmark = pytest.mark.slurm

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN = "docker:test/debian:latest"
SHIFTER = "/opt/shifter/bin/shifter"
MODULE_LIB = "/opt/udiImage/modules/mpich/lib64/libmpich.so.12"
IMAGE_LIB = "/usr/lib/x86_64-linux-gnu/libmpich.so.12"


@pytest.fixture(scope="module")
def probe():
    home = pwd.getpwnam(USER1).pw_dir
    path = os.path.join(home, f".shifter-mapsprobe-{os.getpid()}.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", path, os.path.join(HERE, "data", "mapsprobe.c")], check=True)
    os.chmod(path, 0o755)
    yield path
    os.unlink(path)


def _batch(runner, args, script, timeout=180):
    return batch(runner, args, script, timeout=timeout)


def _sections(text):
    return text.split("==\n")


def _words(text):
    """A section's own lines (not srun's notes, such as "step creation temporarily disabled")."""
    return [ln for ln in text.splitlines() if not ln.startswith("srun:")]


def _ranks(text, n=3):
    hello = sorted(ln for ln in text.splitlines() if ln.startswith("hello from rank"))
    assert [ln.rsplit(" on ", 1)[0] for ln in hello] == [f"hello from rank {r} of {n}" for r in range(n)], text
    assert sorted(ln.rsplit(" on ", 1)[1] for ln in hello) == ["n1", "n2", "n3"], text
    return sorted(ln.split(" ", 2)[1:] for ln in text.splitlines() if ln.startswith("maps "))


def test_the_local_site_defines_the_modules_and_no_defaults(cluster):
    config = udiconfig.load(cluster.udiroot_conf)
    assert {"mpich", "gpu"} <= set(config.modules)
    assert config.defaultModules == ()
    res = subprocess.run(["scontrol", "show", "node", "n1"], capture_output=True, text=True,
                         env={**os.environ, "SLURM_CONF": cluster.slurm_conf})
    assert "Gres=gpu:4" in res.stdout, res.stdout


def test_mpich_module_in_a_prepared_job_on_three_nodes(cluster, runner, probe):
    """`srun -N3 shifter /app/mpi-hello` in a job submitted with --module=mpich (the fast
    path), and `shifter --module=mpich` (Python into the same prepared container): every
    rank prints, and every rank's /proc/self/maps has libmpich.so.12 from the module."""
    step = f"srun -N3 --mpi=pmi2 env LD_PRELOAD={probe} {SHIFTER}"
    script = (f"{step} /app/mpi-hello; echo ==; {step} --module=mpich /app/mpi-hello; echo ==; "
              f"srun -N3 {SHIFTER} sh -c 'test -r /var/shifter/launch.plan && echo prepared'")
    text = _batch(runner, ["-N3", f"--image={DEBIAN}", "--module=mpich"], script)
    fast, python, check = _sections(text)
    for part in (fast, python):
        assert _ranks(part) == [[str(r), MODULE_LIB] for r in range(3)], text
    assert _words(check) == ["prepared"] * 3, text


def test_mpich_module_in_private_containers_and_the_images_library_without_it(cluster, runner, probe):
    """The job has no module: `shifter --module=mpich` builds private containers, whose
    ranks load the module's library; plain `shifter` (the prepared container) loads the
    image's own."""
    step = f"srun -N3 --mpi=pmi2 env LD_PRELOAD={probe} {SHIFTER}"
    script = (f"{step} --module=mpich /app/mpi-hello; echo ==; {step} /app/mpi-hello; echo ==; "
              f"srun -N3 {SHIFTER} --module=mpich sh -c 'test -r /var/shifter/launch.plan || echo private'")
    text = _batch(runner, ["-N3", f"--image={DEBIAN}"], script)
    private, plain, check = _sections(text)
    assert _ranks(private) == [[str(r), MODULE_LIB] for r in range(3)], text
    rows = _ranks(plain)
    assert [r for r, _ in rows] == ["0", "1", "2"] and all(p.startswith(IMAGE_LIB) for _, p in rows), text
    assert _words(check) == ["private"] * 3, text


def _gpu_steps(text):
    """[(SLURM_STEP_GPUS, [GPU numbers nvidia-smi opened])] of each section."""
    out = []
    for part in _sections(text):
        m = re.search(r"^step=(\S*)$", part, re.M)
        if m is None:
            continue
        assert "libcuda /opt/udiImage/modules/gpu/lib64/libcuda.so.1" in part, text
        opened = sorted(int(x) for x in re.findall(r"^gpu (\d+) /gpu-standin/nvidia\1$", part, re.M))
        out.append((sorted(int(x) for x in m.group(1).split(",") if x), opened))
    return out


def test_gpu_module_steps_see_exactly_their_gres(cluster, runner):
    """A job with two of a node's four stand-in GPUs, submitted with --module=gpu: steps
    with one GPU (two at once), with both, and a plain container in the same job."""
    smi = f"{SHIFTER} sh -c 'echo step=$SLURM_STEP_GPUS; nvidia-smi; sleep 0.5'"
    script = (f"srun -n1 -c1 --exact --gres=gpu:1 {smi} > /tmp/shifter-gpu-a-$$ & "
              f"srun -n1 -c1 --exact --gres=gpu:1 {smi} > /tmp/shifter-gpu-b-$$ & wait; "
              "cat /tmp/shifter-gpu-a-$$; echo ==; cat /tmp/shifter-gpu-b-$$; echo ==; rm -f /tmp/shifter-gpu-?-$$; "
              f"srun -n1 --gres=gpu:2 {smi}; echo ==; "
              f"srun -n1 {SHIFTER} --module=none sh -c 'ls /gpu-standin 2>&1; echo $LD_LIBRARY_PATH.'")
    text = _batch(runner, ["-N1", "-w", "n1", "-n2", "--gres=gpu:2", f"--image={DEBIAN}", "--module=gpu"], script)
    steps = _gpu_steps(text)
    assert len(steps) == 3, text
    (a_env, a), (b_env, b), (both_env, both) = steps
    assert a == a_env and b == b_env and both == both_env, text
    assert len(a) == len(b) == 1 and a != b and both == sorted(a + b), text
    plain = _sections(text)[-1]
    assert "cannot access '/gpu-standin': No such file or directory" in plain and _words(plain)[-1] == ".", text


def test_gpu_module_in_a_private_container_sees_the_jobs_gpu(cluster, runner):
    smi = f"{SHIFTER} --module=gpu sh -c 'echo step=$SLURM_STEP_GPUS; test -r /var/shifter/launch.plan || nvidia-smi'"
    text = _batch(runner, ["-N1", "-w", "n2", "--gres=gpu:1", f"--image={DEBIAN}"], f"srun {smi}")
    [(given, opened)] = _gpu_steps(text)
    assert len(given) == 1 and opened == given, text


def test_conflicting_modules_are_refused_at_submission_in_one_line(cluster, runner):
    from tools import cluster as cluster_tool

    directory = tempfile.mkdtemp(prefix="shifter-modconf-", dir="/var/tmp")
    os.chmod(directory, 0o755)
    udiroot = os.path.join(directory, "udiRoot.conf")
    with open(cluster.udiroot_conf) as f:
        text = f.read()
    with open(udiroot, "w") as f:
        f.write(text + "\nmodule_other_siteEnv=OTHER=1\nmodule_other_conflict=mpich\n")
    os.chmod(udiroot, 0o644)
    conf = cluster_tool.private_slurm_conf(cluster, f"required {cluster.plugin_path} shifter_config={udiroot}\n")[0]
    try:
        for command in (["sbatch", "-N1", "--wrap", "true"], ["srun", "-N1", "true"]):
            res = runner.run([command[0], f"--image={DEBIAN}", "--module=mpich,other", *command[1:]],
                             env={"SLURM_CONF": conf}, timeout=60)
            assert res.returncode != 0 and "Submitted" not in res.stdout
            ours = [ln for ln in res.stderr.splitlines() if ": error: shifter: " in ln]
            assert ours == [f"{command[0]}: error: shifter: modules 'other' and 'mpich' conflict "
                            "(hint: load only one of them)"], res.stderr
    finally:
        shutil.rmtree(os.path.dirname(conf))
        shutil.rmtree(directory)
