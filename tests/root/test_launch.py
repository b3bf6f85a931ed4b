"""The shifter launcher on the real kernel: the compiled fast path into a prepared UDI,
the Python path (options, env merge, workdir, entrypoint), private containers as root,
exit codes and refusals."""

from __future__ import annotations

import json
import os
import pwd
import subprocess

import pytest

from helpers.prereq import USER1, USER2
from helpers.site_launch import SHIFTER, python_ran, run
from shifter.runtime import linux
from shifter.runtime.builder import udi

pytestmark = pytest.mark.root

@pytest.fixture
def prepared(launch_env):
    """setupRoot for sftest1, as the prolog would (job 4711)."""
    res = subprocess.run(["/opt/shifter/bin/setupRoot", "-U", "4242", "id", launch_env["id"]], capture_output=True,
                         text=True, env={"SHIFTER_CONFIG": launch_env["conf"], "SLURM_JOB_ID": "4711"})
    assert res.returncode == 0, res.stderr
    yield launch_env
    udi.teardown(launch_env["config"])


def test_fast_path_enters_the_prepared_udi_without_python(prepared):
    res = run(prepared, ["sh", "-c", "id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
                                      "cat /etc/os-release | head -1; pwd"], strace=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:2] == ["4242", "4242"]
    assert lines[2].split() == ["CapEff:", "0000000000000000"] and lines[3].split() == ["NoNewPrivs:", "1"]
    assert lines[4] == 'NAME="BusyBox"' and lines[5] == "/tmp"
    assert not python_ran(res), res.execs
    # control: the same check sees Python when an option forces the Python path
    res = run(prepared, ["-v", "true"], strace=True)
    assert res.returncode == 0 and python_ran(res)


def test_fast_path_env_readonly_image_and_exit_status(prepared):
    res = run(prepared, ["sh", "-c", "echo $LAYER $HOST_ONLY $IMAGE_ONLY $SITE_ONLY $SHIFTER_RUNTIME; "
                                      "echo $PATH; touch /bin/x 2>/dev/null || echo ro; cat /root/secret; exit 7"])
    assert res.returncode == 7
    lines = res.stdout.splitlines()
    assert lines[0] == "image 1 1 1 1"
    assert lines[1].startswith("/opt/udiImage/bin:/usr/local/sbin")
    assert lines[2] == "ro" and "Permission denied" in res.stderr
    assert run(prepared, ["no-such-command"]).returncode == 127


def test_request_that_does_not_match_takes_the_python_path(prepared):
    for extra in ({"SLURM_JOB_ID": "999"}, {"SHIFTER_VOLUME": "/tmp:/data"}, {"SHIFTER_MODULE": "hook"}):
        res = run(prepared, ["--dry-run", "true"], extra_env=extra)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["udi"] == "private", extra
    res = run(prepared, ["--dry-run", "true"])
    assert json.loads(res.stdout)["udi"] == "prepared"


def test_other_user_cannot_enter_the_prepared_udi(prepared):
    res = run(prepared, ["--dry-run", "true"], user=USER2)
    assert json.loads(res.stdout)["udi"] == "private"
    res = run(prepared, ["sh", "-c", "id -u; ls /tmp/shifter-hook-parent-4242 2>&1 >/dev/null; cat /etc/passwd"],
              user=USER2, strace=True)
    assert python_ran(res)  # never the fast path into sftest1's UDI
    assert res.returncode == 0, res.stderr  # a private container of their own
    assert res.stdout.splitlines()[0] == "4243" and "sftest2" in res.stdout and "sftest1" not in res.stdout


def test_env_merge_order_workdir_entrypoint_and_cmd(prepared):
    res = run(prepared, ["--dry-run", f"--env-file={prepared['envfile']}", "-e", "FROM_E=1", "-e", "LAYER=dash-e",
                         "--workdir", "--entrypoint", "a", "b"])
    plan = json.loads(res.stdout)
    assert plan["env"]["LAYER"] == "dash-e" and plan["env"]["FROM_FILE"] == "1" and plan["env"]["FROM_E"] == "1"
    assert plan["env"]["HOST_ONLY"] == "1" and plan["env"]["SITE_ONLY"] == "1"
    assert plan["cwd"] == "/work" and plan["argv"] == ["/bin/entry.sh", "a", "b"]
    # modules' rules come after -e, the site's last
    res = run(prepared, ["--dry-run", "-m", "hook", "-e", "LAYER=dash-e", "true"])
    assert json.loads(res.stdout)["env"]["LAYER"] == "module"
    # --clearenv drops the caller's environment
    env = json.loads(run(prepared, ["--dry-run", "-E", "true"]).stdout)["env"]
    assert "HOST_ONLY" not in env and env["IMAGE_ONLY"] == "1"
    # no command: the image's CMD; --entrypoint with it
    assert json.loads(run(prepared, ["--dry-run"]).stdout)["argv"] == ["/bin/echo", "default-cmd"]
    res = run(prepared, ["--entrypoint"])
    assert res.stdout == "entry:/bin/echo default-cmd\n", res.stderr
    res = run(prepared, ["-w", "/work", "pwd"])
    assert res.stdout == "/work\n"


def test_private_container_as_root_leaves_nothing(launch_env):
    before = len(linux.mountinfo())
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    res = subprocess.run([SHIFTER, f"--image=id:{launch_env['id']}", "-m", "hook", "sh", "-c",
                          "id -u; cat /root/secret; echo $LAYER; exit 3"],
                         capture_output=True, text=True,
                         env={"SHIFTER_CONFIG": launch_env["conf"], "PATH": "/usr/bin:/bin"},
                         cwd="/")
    assert res.returncode == 3, res.stderr
    assert res.stdout.split() == ["0", "root", "only", "module"]
    assert len(linux.mountinfo()) == before
    assert subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout == loops
    assert open("/tmp/shifter-hook-parent-0").read().startswith("/opt/shifter/bin/python")


def test_userhook_runs_before_the_command_in_the_fast_path(launch_env):
    res = subprocess.run(["/opt/shifter/bin/setupRoot", "-U", "4242", "-m", "hook", "id", launch_env["id"]],
                         capture_output=True, text=True,
                         env={"SHIFTER_CONFIG": launch_env["conf"], "SLURM_JOB_ID": "4711"})
    assert res.returncode == 0, res.stderr
    try:
        res = run(launch_env, ["true"], extra_env={"SHIFTER_MODULE": "hook"}, strace=True)
        assert res.returncode == 0, res.stderr
        assert not python_ran(res)
        assert open("/tmp/shifter-hook-parent-4242").read().startswith(SHIFTER)
    finally:
        udi.teardown(launch_env["config"])


def test_bad_usage_is_one_line_and_125(launch_env):
    for args, message in ((["--bogus"], "unknown option '--bogus'"), (["-i"], "needs a value"),
                          (["--image=docker:Bad"], "invalid image"), (["-V", "/tmp:/etc/x", "true"], "inside /etc"),
                          (["--image=id:" + "0" * 64, "true"], "there is no such image, or it is not yours to use")):
        res = run(launch_env, args)
        assert res.returncode == 125, (args, res)
        assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_fast_path_with_the_jobs_volumes(launch_env):
    """A prepared UDI with volumes is entered by the fast path when the job's volumes
    (canonical form, as the plugin hands them on) are the same."""
    home = pwd.getpwnam(USER1).pw_dir
    vol = os.path.join(home, "fastvol")
    os.makedirs(vol, exist_ok=True)
    os.chown(vol, 4242, 4242)
    res = subprocess.run(["/opt/shifter/bin/setupRoot", "-U", "4242", "-v", f"{vol}:/data", "-v", "/tmp:/scratch:ro",
                          "id", launch_env["id"]], capture_output=True, text=True,
                         env={"SHIFTER_CONFIG": launch_env["conf"], "SLURM_JOB_ID": "4711"})
    assert res.returncode == 0, res.stderr
    try:
        volume = f"{vol}:/data;/tmp:/scratch:ro"  # canonical: sorted
        res = run(launch_env,
                  ["sh", "-c", "echo ok > /data/f && cat /data/f && touch /scratch/x 2>/dev/null || echo ro"],
                  extra_env={"SHIFTER_VOLUME": volume}, strace=True)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["ok", "ro"] and not python_ran(res)
        # the same maps in another order are another request for the fast path: Python decides
        res = run(launch_env, ["--dry-run", "true"], extra_env={"SHIFTER_VOLUME": f"/tmp:/scratch:ro;{vol}:/data"})
        assert json.loads(res.stdout)["udi"] == "prepared"
        # so are other spellings of the same maps (a trailing '/', '//'): the compiled
        # launcher compares text, misses, and Python enters the same prepared UDI
        spelled = f"/tmp//:/scratch/:ro;{vol}/:/data"
        res = run(launch_env, ["sh", "-c", "cat /data/f && touch /scratch/x 2>/dev/null || echo ro"],
                  extra_env={"SHIFTER_VOLUME": spelled}, strace=True)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["ok", "ro"] and python_ran(res)
        res = run(launch_env, ["--dry-run", "true"], extra_env={"SHIFTER_VOLUME": spelled})
        assert json.loads(res.stdout)["udi"] == "prepared" and res.stderr == ""
    finally:
        udi.teardown(launch_env["config"])


def test_tasks_of_a_job_share_one_user_namespace(prepared):
    """Two fast-path tasks on a node can process_vm_readv each other (MPI's CMA): they
    join the UDI's user namespace instead of each making its own."""
    pw = pwd.getpwnam(USER1)
    e = {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "SHIFTER_CONFIG": prepared["conf"], "SLURM_JOB_ID": "4711",
         "SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": prepared["id"]}
    as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    target = subprocess.Popen([*as_user, SHIFTER, "/bin/cma"], env=e, cwd="/tmp", stdout=subprocess.PIPE, text=True)
    try:
        pid, addr = target.stdout.readline().split()
        reader = subprocess.run([*as_user, SHIFTER, "/bin/cma", pid, addr], env=e, cwd="/tmp",
                                capture_output=True, text=True)
        assert reader.stdout.strip() == "read: secret-of-the-target", reader
        with open(f"/proc/{pid}/status") as f:
            assert "CapEff:\t0000000000000000" in f.read()
        # the other user can't read it (nor join the namespace)
        other = pwd.getpwnam(USER2)
        res = subprocess.run(["setpriv", f"--reuid={other.pw_uid}", f"--regid={other.pw_gid}", "--init-groups", "--",
                              "/bin/sh", "-c", f"cat /proc/{pid}/environ >/dev/null 2>&1 && echo leaked || echo denied"],
                             capture_output=True, text=True)
        assert res.stdout.strip() == "denied"
    finally:
        target.kill()
        target.wait()
