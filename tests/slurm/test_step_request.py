"""Steps of an image job cost no Python (issue 10): on the real cluster, srun in a job
that only inherits the job's validated request never maps libpython, and its tasks
still get SHIFTER_IMAGE/SHIFTER_IMAGETYPE (and the volumes) of the pinned image; a step
that asks for something new goes through Python and a bad value is refused with one
line.  `--image=id:<id>` alone needs no Python at submission either."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from helpers.prereq import USER1

pytestmark = pytest.mark.slurm

DEBIAN, BUSYBOX = "docker:test/debian:latest", "docker:test/busybox:latest"
PROBE = "echo \"$SHIFTER_IMAGETYPE $SHIFTER_IMAGE $SHIFTER_IMAGEREQUEST|$SHIFTER_VOLUME\"; sleep 3"


@pytest.fixture(scope="module")
def ids(cluster, runner):
    out = {}
    for image in (DEBIAN, BUSYBOX):
        assert runner.run(["shifterimg", "pull", image], timeout=300).returncode == 0
        out[image] = runner.run(["shifterimg", "lookup", image], check=True).stdout.strip()
        assert len(out[image]) == 64
    return out


@pytest.fixture
def workdir():
    """A directory sftest1's job writes its steps' pids and output into; root reads."""
    path = tempfile.mkdtemp(prefix="shifter-steps-", dir="/tmp")
    pw = pwd.getpwnam(USER1)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    yield path
    shutil.rmtree(path)


def _maps_have_python(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "libpython" in f.read()


def _script(steps: list[list[str]], d: str) -> str:
    """Each step in turn: its srun's pid, output, error output and exit code into d."""
    lines = []
    for i, args in enumerate(steps):
        quoted = " ".join(f"'{a}'" for a in args)
        lines.append(f"srun -N1 {quoted} sh -c '{PROBE}' >{d}/out{i} 2>{d}/err{i} & "
                     f"echo $! >{d}/pid{i}.tmp; mv {d}/pid{i}.tmp {d}/pid{i}; wait $!; echo $? >{d}/rc{i}")
    return "\n".join(lines)


def _watch(d: str, n: int, alive) -> list[dict]:
    """For each step: whether its srun had libpython mapped while its task ran (read as
    root once the task has printed, i.e. after every SPANK hook of srun's start), then its
    output, error lines and exit code."""
    seen = []
    for i in range(n):
        deadline = time.monotonic() + 120
        step: dict = {}
        while not os.path.exists(f"{d}/rc{i}"):
            assert time.monotonic() < deadline and alive(), f"step {i} did not finish"
            if "python" not in step and os.path.exists(f"{d}/pid{i}") and os.path.getsize(f"{d}/out{i}") > 0:
                pid = int(open(f"{d}/pid{i}").read())
                with open(f"/proc/{pid}/comm") as f:
                    assert f.read().strip() == "srun"
                step["python"] = _maps_have_python(pid)
            time.sleep(0.02)
        step.update(out=open(f"{d}/out{i}").read().strip(), rc=int(open(f"{d}/rc{i}").read()),
                    errors=[ln for ln in open(f"{d}/err{i}").read().splitlines()
                            if "shifter:" in ln and "spank" not in ln])
        seen.append(step)
    return seen


def _in_batch_job(runner, sbatch_args: list[str], steps: list[list[str]], d: str, head: str = "") -> list[dict]:
    script = f"{head}\n{_script(steps, d)}" if head else _script(steps, d)
    res = runner.run(["sbatch", "-N1", "--output=/dev/null", *sbatch_args, "--wrap", script])
    assert res.returncode == 0, res.stderr
    job = re.search(r"(\d+)", res.stdout).group(1)
    try:
        return _watch(d, len(steps), lambda: True)
    finally:
        subprocess.run(["scancel", job], env=runner.env())


def test_a_step_inheriting_the_job_request_loads_no_python(runner, ids, workdir):
    """sbatch --image --volume --volume: the job's steps inherit both, rewritten at
    submission to the pinned id and the canonical maps (all of them: Slurm alone hands
    the steps only the last --volume); srun hands them to the tasks from the shim alone.
    The same job's step asking for another image loads Python (the positive control)."""
    debian, busybox = ids[DEBIAN], ids[BUSYBOX]
    steps = _in_batch_job(runner, [f"--image={DEBIAN}", "--volume=/var/tmp/:/data", "--volume=/tmp:/scratch:ro"],
                          [[], [f"--image=id:{debian}"], [f"--image={BUSYBOX}"]], workdir,
                          head=f"echo \"$SLURM_SPANK__SLURM_SPANK_OPTION_shifter_image "
                               f"$SLURM_SPANK__SLURM_SPANK_OPTION_shifter_volume\" >{workdir}/inherited")
    volumes = "/tmp:/scratch:ro;/var/tmp:/data"
    assert open(f"{workdir}/inherited").read().split() == [f"id:{debian}", volumes]
    inherited, same_id, other = steps
    assert inherited == {"python": False, "rc": 0, "errors": [], "out": f"id {debian} {DEBIAN}|{volumes}"}
    # naming the job's pinned id is the job's request too
    assert same_id == {"python": False, "rc": 0, "errors": [], "out": f"id {debian} {DEBIAN}|{volumes}"}
    assert other == {"python": True, "rc": 0, "errors": [], "out": f"id {busybox} {BUSYBOX}|{volumes}"}


def test_a_step_asking_for_something_new_is_validated_by_python(runner, ids, workdir):
    """In an image job, a step's own bad --image, --volume or --module is refused by srun
    with one line, before any task starts."""
    steps = _in_batch_job(runner, [f"--image={DEBIAN}"], [
        ["--image=docker:test/no-such-image:latest"],
        ["--volume=/no/such/dir:/x"],
        ["--module=no-such-module"],
        ["--image=id:" + "0" * 64],
    ], workdir)
    reasons = ["docker:test/no-such-image:latest", "can't mount volume source /no/such/dir",
               "unknown module 'no-such-module'", "there is no such image, or it is not yours to use"]
    for step, reason in zip(steps, reasons):
        assert step["rc"] != 0 and step["out"] == "", step
        assert len(step["errors"]) == 1 and reason in step["errors"][0], step


def test_salloc_steps_inherit_the_pinned_request_without_python(runner, ids, workdir):
    """salloc --image: srun in its shell inherits the option (salloc's own environment and
    the job's), rewritten to the pinned id."""
    debian = ids[DEBIAN]
    pw = pwd.getpwnam(USER1)
    script = f"echo \"$_SLURM_SPANK_OPTION_shifter_image\" >{workdir}/inherited\n" + _script([[]], workdir)
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
         "salloc", "-N1", f"--image={DEBIAN}", "sh", "-c", script],
        env=runner.env(USER1), cwd=pw.pw_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        (step,) = _watch(workdir, 1, lambda: proc.poll() is None or os.path.exists(f"{workdir}/rc0"))
    finally:
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert open(f"{workdir}/inherited").read().strip() == f"id:{debian}"
    assert step == {"python": False, "rc": 0, "errors": [], "out": f"id {debian} {DEBIAN}|"}


def test_an_id_image_needs_no_python_at_submission(runner, ids, workdir):
    """srun --image=id:<id> creating its own allocation: no Python in srun, the tasks get
    the image; sbatch --image=id:<id>: the job carries it (and its steps need none)."""
    busybox = ids[BUSYBOX]
    pw = pwd.getpwnam(USER1)
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
         "sh", "-c", _script([[f"--image=id:{busybox}"]], workdir)],
        env=runner.env(USER1), cwd=pw.pw_dir)
    try:
        (step,) = _watch(workdir, 1, lambda: True)
    finally:
        proc.wait(timeout=120)
    assert step == {"python": False, "rc": 0, "errors": [], "out": f"id {busybox} id:{busybox}|"}

    for name in os.listdir(workdir):
        os.unlink(os.path.join(workdir, name))
    steps = _in_batch_job(runner, [f"--image=id:{busybox}"], [[]], workdir,
                          head=f"echo \"$SLURM_SPANK_SHIFTER_IMAGETYPE $SLURM_SPANK_SHIFTER_IMAGE\" >{workdir}/job")
    assert open(f"{workdir}/job").read().split() == ["id", busybox]
    assert steps == [{"python": False, "rc": 0, "errors": [], "out": f"id {busybox} id:{busybox}|"}]
