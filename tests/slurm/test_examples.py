"""Every job script of docs/examples runs on the local site, as sftest1, in the
containers the prologs prepare."""

from __future__ import annotations

import os
import pwd
import re
import shutil

import pytest

from helpers.prereq import USER1

pytestmark = pytest.mark.slurm
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "examples")
DEBIAN = "docker:test/debian:latest"


@pytest.fixture(scope="module")
def scratch():
    """/scratch/sftest1/{in,out} (the literal paths of the examples), sftest1's."""
    base = "/scratch/sftest1"
    for sub in ("in", "out"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    with open(os.path.join(base, "in", "greeting"), "w") as f:
        f.write("hello from /scratch\n")
    os.chmod("/scratch", 0o755)
    for root, dirs, files in os.walk(base):
        for name in [root, *(os.path.join(root, x) for x in dirs + files)]:
            os.chown(name, 4242, 4242)
    yield base
    shutil.rmtree(os.path.join(base, "out"), ignore_errors=True)


def _sbatch(runner, name: str) -> str:
    """Submit docs/examples/NAME (copied into sftest1's home) and return its output."""
    home = pwd.getpwnam(USER1).pw_dir
    script = os.path.join(home, f"example-{os.getpid()}-{name}")
    out = script + ".out"
    shutil.copy(os.path.join(EXAMPLES, name), script)
    os.chown(script, 4242, 4242)
    try:
        res = runner.run(["sbatch", "--wait", f"--output={out}", script], timeout=300)
        text = open(out).read() if os.path.exists(out) else ""
        assert res.returncode == 0, res.stderr + text
        return text
    finally:
        for path in (script, out):
            if os.path.exists(path):
                os.unlink(path)


def test_two_node_job_with_volumes_and_a_per_node_cache(cluster, runner, scratch):
    text = _sbatch(runner, "two-node-cache.sh")
    rows = sorted(text.splitlines())
    nodes = sorted(r.split(":")[0] for r in rows)
    assert rows == [f"{n}: hello from /scratch, /tmp is xfs" for n in nodes] and len(set(nodes)) == 2, text
    assert sorted(os.listdir(os.path.join(scratch, "out"))) == nodes


def test_a_script_whose_interpreter_is_shifter(cluster, runner):
    assert _sbatch(runner, "shebang.sh").split() == ['PRETTY_NAME="Debian', "GNU/Linux", "12", '(bookworm)"',
                                                     "bash", "5"]


def test_mpi_hello_with_the_sites_default_mpi(cluster, runner):
    text = _sbatch(runner, "mpi-hello.sh")
    ranks = sorted(re.findall(r"hello from rank (\d) of (\d) on (n\d)", text))
    assert [r[:2] for r in ranks] == [("0", "3"), ("1", "3"), ("2", "3")] and len({r[2] for r in ranks}) == 3, text


def test_python_startup(cluster, runner):
    assert re.fullmatch(r"imports took \d+ ms\n", _sbatch(runner, "python-startup.sh"))


def test_salloc_then_srun_shifter(cluster, runner):
    res = runner.run(["salloc", "-N2", f"--image={DEBIAN}", "srun", "-N2", "shifter", "sh", "-c",
                      "echo $(hostname) $(test -r /var/shifter/launch.plan && echo prepared)"], timeout=120)
    assert res.returncode == 0, res.stderr
    rows = sorted(res.stdout.splitlines())
    assert len({r.split()[0] for r in rows}) == 2 and all(r.endswith(" prepared") for r in rows), res.stdout


def test_srun_creating_its_own_allocation(cluster, runner):
    res = runner.run(["srun", "-N2", f"--image={DEBIAN}", "shifter", "sh", "-c",
                      "echo $(hostname) $(grep ^ID= /etc/os-release) "
                      "$(test -r /var/shifter/launch.plan && echo prepared)"], timeout=120)
    assert res.returncode == 0, res.stderr
    rows = sorted(res.stdout.splitlines())
    assert len({r.split()[0] for r in rows}) == 2 and all(r.split()[1:] == ["ID=debian", "prepared"]
                                                          for r in rows), res.stdout


def test_every_example_is_tested():
    tested = {"two-node-cache.sh", "shebang.sh", "mpi-hello.sh", "python-startup.sh"}
    assert {n for n in os.listdir(EXAMPLES) if n.endswith(".sh")} == tested
