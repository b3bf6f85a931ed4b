"""The walking skeleton on the real local cluster: --image at submission reaches the
prolog and epilog of every node; bad values are refused at submission; jobs that do
not use shifter never load Python."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time

import pytest

from helpers.prereq import USER1

pytestmark = pytest.mark.slurm

IMAGE = "docker:test/busybox:latest"


def _job_id(stdout: str) -> int:
    m = re.search(r"Submitted batch job (\d+)", stdout)
    assert m, f"no job id in {stdout!r}"
    return int(m.group(1))


def _image_id(runner, image: str) -> str:
    res = runner.run(["shifterimg", "lookup", image], check=True)
    return res.stdout.strip()


def _node_states(runner) -> dict[str, str]:
    res = runner.run(["sinfo", "-h", "-N", "-o", "%N %T"], user=None, check=True)
    return dict(line.split(None, 1) for line in res.stdout.splitlines())


def test_sbatch_image_reaches_prolog_and_epilog_of_every_node(runner, slurmd_logs, site):
    out = f"/tmp/shifter-skeleton-{os.getpid()}.out"
    res = runner.run(["sbatch", "-N3", "--wait", f"--output={out}", f"--image={IMAGE}",
                      "--wrap", "srun -N3 hostname"], timeout=120)
    assert res.returncode == 0, res.stderr
    job = _job_id(res.stdout)
    with open(out) as f:
        hosts = sorted(f.read().split())
    os.unlink(out)
    assert hosts == ["n1", "n2", "n3"]

    image_id = _image_id(runner, IMAGE)

    def seen(kind):
        pattern = re.compile(rf"shifter: {kind}: job={job} node=(n\d+) uid=4242 imagetype=id image={image_id} "
                             r"request=docker:test/busybox:latest$")
        found = set()
        for node in site.node_names()[:3]:
            for line in slurmd_logs.new_lines(node):
                m = pattern.search(line)
                if m:
                    assert m.group(1) == node, f"{node}'s log names {m.group(1)}: {line}"
                    found.add(node)
        return found

    assert slurmd_logs.wait_for(lambda: seen("prolog") == {"n1", "n2", "n3"}), seen("prolog")
    assert slurmd_logs.wait_for(lambda: seen("epilog") == {"n1", "n2", "n3"}), seen("epilog")


def test_srun_creating_its_allocation_hands_image_to_prolog(runner, slurmd_logs, site):
    res = runner.run(["srun", "-N1", "-w", "n2", "--image=docker:test/debian", "true"])
    assert res.returncode == 0, res.stderr
    assert slurmd_logs.wait_for(lambda: any(
        "shifter: prolog:" in ln and "request=docker:test/debian:latest" in ln and "node=n2" in ln
        for ln in slurmd_logs.new_lines("n2")))


@pytest.mark.parametrize("value, reason", [
    ("", "the image name is empty"),
    ("docker:", "nothing follows 'docker:'"),
    ("docker:Test/Busybox", "not a valid Docker repository name"),
    ("docker:busybox;reboot", "character ';' is not allowed"),
    ("id:1234", "an image id is 64 lowercase hex digits"),
    ("weird:thing/x:1", "unknown image type 'weird'"),
    ("docker:test/no-such-image:latest", "shifterimg pull"),
])
def test_bad_image_refused_at_submission(runner, value, reason):
    name = f"shifter-refused-{os.getpid()}"
    res = runner.run(["sbatch", "-N1", f"--job-name={name}", f"--image={value}", "--wrap", "sleep 30"])
    assert res.returncode != 0
    assert "Submitted batch job" not in res.stdout
    ours = [ln for ln in res.stderr.splitlines() if "shifter:" in ln and "spank" not in ln]
    assert len(ours) == 1, res.stderr
    assert reason in ours[0] and "hint:" in ours[0], ours[0]
    assert runner.run(["squeue", "-h", "-n", name, "-o", "%i"], user=None).stdout == ""
    assert not any("drain" in s or "down" in s for s in _node_states(runner).values())


def test_bad_image_refused_by_srun_and_salloc(runner):
    for argv in (["srun", "-N1", "--image=docker:x y", "true"],
                 ["salloc", "-N1", "--image=", "true"]):
        res = runner.run(argv, timeout=60)
        assert res.returncode != 0, argv
        assert "shifter: invalid image" in res.stderr, res.stderr


def test_volume_without_image_refused(runner):
    res = runner.run(["sbatch", "--volume=/tmp:/scratch", "--wrap", "true"])
    assert res.returncode != 0
    assert "needs an image" in res.stderr


def _maps_have_python(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "libpython" in f.read()


def _srun_and_stepd_map_python(runner, extra: list[str]) -> tuple[bool, bool]:
    """Start ``srun [extra] task`` as the user; while its task runs, look (as root) at
    the maps of srun and of the task's parent slurmstepd."""
    marker = f"/tmp/shifter-ppid-{os.getpid()}-{len(extra)}"
    pw = pwd.getpwnam(USER1)
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
         "srun", "-N1", *extra, "/bin/sh", "-c", f"echo $PPID > {marker}.tmp && mv {marker}.tmp {marker}; sleep 5"],
        env=runner.env(USER1), cwd=pw.pw_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        with open(marker) as f:
            stepd = int(f.read())
        with open(f"/proc/{stepd}/comm") as f:
            assert f.read().strip() == "slurmstepd"
        with open(f"/proc/{proc.pid}/comm") as f:
            assert f.read().strip() == "srun"
        return _maps_have_python(proc.pid), _maps_have_python(stepd)
    finally:
        proc.communicate(timeout=60)
        os.unlink(marker)


def test_job_without_shifter_never_maps_libpython(runner):
    assert _srun_and_stepd_map_python(runner, []) == (False, False)
    # positive control: the same check sees Python in srun with --image (it validates and
    # pins the image); slurmstepd has no Python work yet, so it never starts one
    assert _srun_and_stepd_map_python(runner, [f"--image={IMAGE}"]) == (True, False)


def test_batch_job_without_shifter_never_maps_libpython(runner):
    """sbatch script step and its srun steps, no shifter option anywhere."""
    marker = f"/tmp/shifter-batch-{os.getpid()}"
    # the script and its step record their slurmstepd pids; root reads those maps
    script = (f"echo $PPID > {marker}.pid; sleep 3; "
              f"srun -N1 /bin/sh -c 'echo $PPID > {marker}.steppid; sleep 3'")
    res = runner.run(["sbatch", "-N1", "--output=/dev/null", "--wrap", script])
    assert res.returncode == 0, res.stderr
    try:
        seen = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            for kind in ("pid", "steppid"):
                path = f"{marker}.{kind}"
                if kind not in seen and os.path.exists(path):
                    with open(path) as f:
                        text = f.read().strip()
                    if text:
                        pid = int(text)
                        seen[kind] = _maps_have_python(pid)
            time.sleep(0.1)
        assert seen == {"pid": False, "steppid": False}, seen
    finally:
        for kind in ("pid", "steppid"):
            if os.path.exists(f"{marker}.{kind}"):
                os.unlink(f"{marker}.{kind}")


def _private_conf(site, plugstack_line: str) -> str:
    """A copy of slurm.conf whose PlugStackConfig is a private plugstack.conf."""
    from tools import cluster as cluster_tool

    return cluster_tool.private_slurm_conf(site, plugstack_line + "\n")[0]


def test_unknown_plugstack_argument_is_an_error_naming_it(runner, site):
    conf = _private_conf(site, f"required {site.plugin_path} shifter_config=/nonexistent bogus_key=1")
    try:
        res = runner.run(["srun", "-N1", "true"], env={"SLURM_CONF": conf}, timeout=60)
        assert res.returncode != 0
        assert "unknown argument 'bogus_key'" in res.stderr, res.stderr
    finally:
        shutil.rmtree(os.path.dirname(conf))


def test_shifter_plugstack_line_with_bare_long_options_loads(runner, site):
    """Shifter's plugstack form, `long_options` as a bare word: the plugin loads and offers
    --shifter.image, --shifter.volume, --shifter.module only (no --image, and no --ccm even
    with enable_ccm=1, as in Shifter), and a submission with --shifter.image is validated."""
    conf = _private_conf(site, f"required {site.plugin_path} shifter_config={site.udiroot_conf} "
                               "enable_ccm=1 long_options")
    try:
        res = runner.run(["sbatch", "--help"], env={"SLURM_CONF": conf}, timeout=60)
        assert res.returncode == 0, res.stderr
        for name in ("--shifter.image", "--shifter.volume", "--shifter.module"):
            assert name in res.stdout, res.stdout[-2000:]
        assert "--image" not in res.stdout and "--ccm" not in res.stdout and "--shifter-image" not in res.stdout
        ok = runner.run(["sbatch", "--test-only", f"--shifter.image={IMAGE}", "--wrap", "true"],
                        env={"SLURM_CONF": conf}, timeout=60)
        assert ok.returncode == 0, ok.stderr
        bad = runner.run(["sbatch", "--test-only", "--shifter.image=docker:bad name", "--wrap", "true"],
                         env={"SLURM_CONF": conf}, timeout=60)
        assert bad.returncode != 0 and "shifter: invalid image 'docker:bad name'" in bad.stderr, bad.stderr
        plain = runner.run(["sbatch", "--help"], timeout=60)
        assert "--image" in plain.stdout and "--shifter.image" not in plain.stdout
    finally:
        shutil.rmtree(os.path.dirname(conf))


def test_missing_config_fails_submission_with_its_path(runner, site):
    conf = _private_conf(site, f"required {site.plugin_path} shifter_config=/nonexistent/udiRoot.conf")
    try:
        res = runner.run(["sbatch", f"--image={IMAGE}", "--wrap", "true"], env={"SLURM_CONF": conf}, timeout=60)
        assert res.returncode != 0
        assert "/nonexistent/udiRoot.conf" in res.stderr, res.stderr
        # without a shifter option the plugin never reads the config: the job goes through
        ok = runner.run(["sbatch", "--test-only", "--wrap", "true"], env={"SLURM_CONF": conf}, timeout=60)
        assert ok.returncode == 0, ok.stderr
    finally:
        shutil.rmtree(os.path.dirname(conf))


@pytest.mark.parametrize("option, reason", [
    ("--volume=/tmp:/etc/x", "inside /etc"),
    ("--volume=relative:/data", "is not an absolute path"),
    ("--volume=/tmp:/data:bogus", "bogus"),
    ("--volume=/tmp:/data:rec", "site"),
    ("--volume=/scratch/$USER/out:/out", "Slurm does not expand $VARIABLES in #SBATCH lines"),
    ("--volume=/tmp:/var/tmp/x", "inside /var"),
    ("--module=no-such-module", "unknown module 'no-such-module'"),
])
def test_bad_volume_or_module_refused_at_submission(runner, option, reason):
    res = runner.run(["sbatch", "-N1", f"--image={IMAGE}", option, "--wrap", "true"])
    assert res.returncode != 0 and "Submitted" not in res.stdout
    ours = [ln for ln in res.stderr.splitlines() if "shifter:" in ln and "spank" not in ln]
    assert len(ours) == 1 and reason in ours[0], res.stderr


def test_batch_script_sees_the_request_in_canonical_form(runner):
    out = f"/tmp/shifter-env-{os.getpid()}.out"
    res = runner.run(["sbatch", "-N1", "--wait", f"--output={out}", f"--image={IMAGE}",
                      "--volume=/var/tmp:/data;/tmp:/scratch:ro", "--wrap", "env"])
    assert res.returncode == 0, res.stderr
    with open(out) as f:
        env = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
    os.unlink(out)
    assert env["SLURM_SPANK_SHIFTER_IMAGE"] == _image_id(runner, IMAGE)
    assert env["SLURM_SPANK_SHIFTER_IMAGETYPE"] == "id"
    assert env["SLURM_SPANK_SHIFTER_VOLUME"] == "/tmp:/scratch:ro;/var/tmp:/data"


def test_srun_image_reaches_the_tasks(runner):
    res = runner.run(["srun", "-N1", f"--image={IMAGE}", "--volume=/tmp:/scratch", "/bin/sh", "-c",
                      "echo $SHIFTER_IMAGETYPE $SHIFTER_IMAGE $SHIFTER_VOLUME"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["id", _image_id(runner, IMAGE), "/tmp:/scratch"]
