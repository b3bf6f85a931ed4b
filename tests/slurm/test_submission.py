"""What the user's request means, on the real cluster: the image request in a batch
script (items 10/12), imported custom images by name (9), id images private to others
(7), volume sources and per-node caches (6) refused at submission, as the user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from helpers.prereq import USER1, USER2
from helpers.site_jobs import batch

pytestmark = pytest.mark.slurm

BUSYBOX, DEBIAN = "docker:test/busybox:latest", "docker:test/debian:latest"
SHIFTER = "/opt/shifter/bin/shifter"
NOT_YOURS = "there is no such image, or it is not yours to use"


def _img(runner, *args, user=USER1):
    return runner.run(["shifterimg", *args], user=user, timeout=300)


def _ours(stderr: str) -> list[str]:
    """Our lines among Slurm's (it adds its own 'init_post_opt() failed' after ours)."""
    return [ln for ln in stderr.splitlines() if "shifter:" in ln and "spank" not in ln]


@pytest.fixture(scope="module")
def ids(cluster, runner):
    for image in (BUSYBOX, DEBIAN):
        assert _img(runner, "pull", image).returncode == 0
    return {image: _img(runner, "lookup", image).stdout.strip() for image in (BUSYBOX, DEBIAN)}


@pytest.fixture(scope="module")
def scratch():
    """A directory the test users can reach (pytest's tmp is 0700 root)."""
    path = tempfile.mkdtemp(prefix="shifter-submission-", dir="/var/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


# -------------------------------------------------------------------- items 10, 12
def test_batch_script_picks_the_image_the_environment_asks_for(runner, ids):
    """In a job of image A (busybox), B (debian) by the SHIFTER_ pair and by SHIFTER_IMAGE
    alone; twice each (a private container: Python builds, the launcher replays)."""
    b = ids[DEBIAN]
    probe = f"{SHIFTER} sh -c 'grep ^ID= /etc/os-release'"
    script = "; ".join([
        "echo request=$SLURM_SPANK_SHIFTER_IMAGEREQUEST",
        *[f"SHIFTER_IMAGETYPE=id SHIFTER_IMAGE={b} {probe}"] * 2,
        *[f"SHIFTER_IMAGE=id:{b} {probe}"] * 2,
        *[probe] * 2,
    ])
    out = batch(runner, ["-N1", f"--image={BUSYBOX}"], script).splitlines()
    assert out == [f"request={BUSYBOX}"] + ["ID=debian"] * 4 + ["ID=busybox"] * 2, out


def test_a_step_picks_the_image_the_environment_asks_for(runner, ids):
    """In a step of a job of image A (busybox) the tasks carry the job's
    SHIFTER_IMAGETYPE=id and SHIFTER_IMAGE=<A>; `SHIFTER_IMAGE=id:<B> shifter CMD` there
    runs B (it used to be read as id:id:<B> and refused), twice (Python builds, the
    launcher replays); without it, A (the prolog's container)."""
    b = ids[DEBIAN]
    probe = f"{SHIFTER} sh -c 'grep ^ID= /etc/os-release'"
    step = (f"echo task=\\$SHIFTER_IMAGETYPE:\\$SHIFTER_IMAGE; SHIFTER_IMAGE=id:{b} {probe}; "
            f"SHIFTER_IMAGE=id:{b} {probe}; {probe}")
    out = batch(runner, ["-N1", f"--image={BUSYBOX}"], f"srun -n1 sh -c \"{step}\"").splitlines()
    assert out == [f"task=id:{ids[BUSYBOX]}", "ID=debian", "ID=debian", "ID=busybox"], out


def test_steps_and_fallback_request_in_a_job_without_image(runner, ids):
    """Without --image there is no pair: Shifter's SHIFTER_IMAGEREQUEST and old Shifter's
    SHIFTER=type:spec are used."""
    b = ids[DEBIAN]
    probe = f"{SHIFTER} sh -c 'grep ^ID= /etc/os-release'"
    out = batch(runner, ["-N1"], f"SHIFTER_IMAGEREQUEST=id:{b} {probe}; SHIFTER={BUSYBOX} {probe}")
    assert out.splitlines() == ["ID=debian", "ID=busybox"], out


# -------------------------------------------------------------------- item 9
def _squashfs(cluster, directory: str, marker: str, owner: int) -> str:
    from tools import squash

    def extra(root):
        with open(os.path.join(root, "etc", "marker"), "w") as f:
            f.write(marker + "\n")

    image_id = squash.make_image(cluster, "busybox", directory, extra=extra)
    os.unlink(os.path.join(directory, image_id + ".meta"))
    path = os.path.join(directory, f"{marker}.squashfs")
    os.rename(os.path.join(directory, image_id + ".squashfs"), path)
    os.chown(path, owner, owner)
    os.chmod(path, 0o644)
    return path


def test_an_imported_custom_image_runs_by_name(cluster, runner, scratch):
    """Shifter's documented commands: import FILE custom:NAME:TAG, then lookup, sbatch
    --image and shifter --image by that name; custom:NAME means custom:NAME:latest."""
    name = f"custom:load_test_{os.getpid()}"
    path = _squashfs(cluster, scratch, f"load-test-{os.getpid()}", 4242)
    untagged = _squashfs(cluster, scratch, f"untagged-{os.getpid()}", 4242)
    try:
        res = _img(runner, "import", path, f"{name}:v1")
        assert res.returncode == 0 and res.stdout.rstrip().endswith("status: READY"), res.stderr
        assert _img(runner, "import", untagged, name).returncode == 0  # no tag: latest
        image_id = _img(runner, "lookup", f"{name}:v1").stdout.strip()
        assert len(image_id) == 64
        latest = _img(runner, "lookup", name).stdout.strip()
        assert len(latest) == 64 and latest != image_id
        assert _img(runner, "lookup", f"{name}:latest").stdout.strip() == latest
        out = batch(runner, ["-N1", f"--image={name}:v1"],
                     f"echo $SLURM_SPANK_SHIFTER_IMAGE; {SHIFTER} cat /etc/marker; "
                     f"{SHIFTER} --image={name}:v1 cat /etc/marker")
        assert out.splitlines() == [image_id, f"load-test-{os.getpid()}", f"load-test-{os.getpid()}"], out
        for image, marker in ((f"{name}:v1", "load-test"), (name, "untagged")):  # outside a job
            res = runner.run([SHIFTER, f"--image={image}", "cat", "/etc/marker"])
            assert (res.returncode, res.stdout) == (0, f"{marker}-{os.getpid()}\n"), res.stderr
        pull = _img(runner, "pull", f"{name}:v1")
        assert pull.returncode == 2 and "custom images are imported, not pulled" in pull.stderr
    finally:
        for tag in (f"{name}:v1", f"{name}:latest"):
            _img(runner, "expire", tag, user=None)


# -------------------------------------------------------------------- item 7
@pytest.fixture(scope="module")
def private_id(cluster, runner, scratch):
    """An image imported by root, private to sftest2."""
    name = f"custom:req_private_{os.getpid()}:v1"
    path = _squashfs(cluster, scratch, f"private-{os.getpid()}", 0)
    res = _img(runner, "--user", USER2, "import", path, name, user=None)
    assert res.returncode == 0, res.stderr
    yield _img(runner, "lookup", name, user=USER2).stdout.strip()
    _img(runner, "expire", name, user=None)


@pytest.mark.parametrize("command", [["sbatch", "-N1", "--wrap", "true"], ["srun", "-N1", "true"],
                                     ["salloc", "-N1", "true"]])
def test_an_id_private_to_others_is_refused_at_submission_like_a_missing_one(runner, private_id, command):
    missing = "0" * 64
    lines = {}
    for image_id in (private_id, missing):
        res = runner.run([command[0], f"--image=id:{image_id}", *command[1:]], timeout=60)
        assert res.returncode != 0 and "Submitted" not in res.stdout and "granted" not in res.stderr
        ours = _ours(res.stderr)
        assert len(ours) == 1 and f"shifter: can't use image id:{image_id}: {NOT_YOURS}" in ours[0], res.stderr
        lines[image_id] = ours[0].replace(image_id, "ID")
    assert lines[private_id] == lines[missing]  # nothing tells whether it exists


def test_the_allowed_user_runs_the_private_id(runner, private_id):
    res = runner.run(["srun", "-N1", f"--image=id:{private_id}", SHIFTER, "cat", "/etc/marker"], user=USER2)
    assert (res.returncode, res.stdout) == (0, f"private-{os.getpid()}\n"), res.stderr


def test_shifter_refuses_an_id_private_to_others_like_a_missing_one(runner, private_id):
    for image_id in (private_id, "0" * 64):
        res = runner.run([SHIFTER, f"--image=id:{image_id}", "true"])
        assert res.returncode == 125
        assert res.stderr.startswith(f"shifter: can't use image id:{image_id}: {NOT_YOURS} (hint: ")
        assert res.stderr.count("\n") == 1


# -------------------------------------------------------------------- item 6
@pytest.fixture(scope="module")
def theirs(scratch):
    path = os.path.join(scratch, "sftest2-only")
    os.mkdir(path, 0o700)
    os.chown(path, 4243, 4243)
    return path


@pytest.mark.parametrize("command", [["sbatch", "-N1", "--wrap", "true"], ["srun", "-N1", "true"],
                                     ["salloc", "-N1", "true"]])
@pytest.mark.parametrize("kind", ["missing", "unreadable"])
def test_a_volume_source_the_user_cant_read_is_refused_at_submission(runner, theirs, command, kind):
    source = "/no/such/source" if kind == "missing" else theirs
    why = "no such file or directory" if kind == "missing" else "permission denied"
    res = runner.run([command[0], f"--image={BUSYBOX}", f"--volume={source}:/data", *command[1:]], timeout=60)
    assert res.returncode != 0 and "Submitted" not in res.stdout
    assert _ours(res.stderr) == [f"{command[0]}: error: shifter: can't mount volume source {source}: {why} "
                                 "(as uid 4242) (hint: use a directory or file you can read)"], res.stderr


def test_the_source_of_a_per_node_cache_is_not_checked(runner):
    res = runner.run(["sbatch", "-N1", "--test-only", f"--image={BUSYBOX}",
                      "--volume=/no/such/source:/cache:perNodeCache=size=1G", "--wrap", "true"])
    assert res.returncode == 0, res.stderr


def test_a_per_node_cache_over_the_site_limit_is_refused_at_submission(runner, site):
    from tools import cluster as cluster_tool

    directory = tempfile.mkdtemp(prefix="shifter-cachelimit-", dir="/var/tmp")
    os.chmod(directory, 0o755)
    udiroot = os.path.join(directory, "udiRoot.conf")
    with open(os.path.join(site.prefix, "etc", "udiRoot.conf")) as f:
        text = f.read()
    with open(udiroot, "w") as f:
        f.write(text + "\nperNodeCacheSizeLimit=1G\n")
    os.chmod(udiroot, 0o644)
    conf = cluster_tool.private_slurm_conf(site, f"required {site.plugin_path} shifter_config={udiroot}\n")[0]
    try:
        for command in (["sbatch", "-N1", "--wrap", "true"], ["srun", "-N1", "true"]):
            res = runner.run([command[0], f"--image={BUSYBOX}", "--volume=/x:/cache:perNodeCache=size=2G",
                              *command[1:]], env={"SLURM_CONF": conf}, timeout=60)
            assert res.returncode != 0 and "Submitted" not in res.stdout
            assert _ours(res.stderr) == [
                f"{command[0]}: error: shifter: can't create the per-node cache at /cache: size 2147483648 bytes "
                "is over the site limit of 1073741824 bytes (hint: ask for less (perNodeCache=size=...))"], res.stderr
        ok = runner.run(["sbatch", "--test-only", f"--image={BUSYBOX}", "--volume=/x:/cache:perNodeCache=size=1G",
                         "--wrap", "true"], env={"SLURM_CONF": conf}, timeout=60)
        assert ok.returncode == 0, ok.stderr
    finally:
        shutil.rmtree(os.path.dirname(conf))
        shutil.rmtree(directory)


# ------------------------------------------------------------- the gateway down
@pytest.fixture
def gateway_down(cluster, site):
    from tools import gateway

    gateway.stop(site)
    try:
        yield
    finally:
        gateway.start(site)


@pytest.mark.parametrize("command", [["sbatch", "-N1", "--wrap", "true"], ["srun", "-N1", "true"],
                                     ["salloc", "-N1", "true"]])
def test_with_the_gateway_down_a_docker_image_is_refused_with_one_line(runner, ids, gateway_down, command):
    """A tag needs the gateway at submission (it pins the id); without it the job is
    refused, nothing is queued, and the one line says what and what to do.  An id: image
    needs no gateway and still runs."""
    before = runner.run(["squeue", "-h", "-u", USER1, "-o", "%i"]).stdout.split()
    res = runner.run([command[0], f"--image={DEBIAN}", *command[1:]])
    assert res.returncode != 0
    ours = _ours(res.stderr)
    assert len(ours) == 1, res.stderr
    assert "can't reach the image gateway: http://127.0.0.1:" in ours[0]
    assert "hint: start shifter-gateway" in ours[0] and "id:<id>" in ours[0]
    assert runner.run(["squeue", "-h", "-u", USER1, "-o", "%i"]).stdout.split() == before
    ok = runner.run(["srun", "-N1", f"--image=id:{ids[DEBIAN]}", SHIFTER, "sh", "-c",
                     "grep ^ID= /etc/os-release"])
    assert ok.returncode == 0 and ok.stdout.strip() == "ID=debian", ok.stderr
