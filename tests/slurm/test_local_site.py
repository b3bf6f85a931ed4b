"""What the local site gives jobs as a real site would: MPI through Slurm's default MPI
plugin (pmi2), nodes that are separate machines to MPI, and `/usr/bin/shifter` for
`#!/usr/bin/shifter /bin/bash` scripts."""

from __future__ import annotations

import os
import pwd

import pytest

pytestmark = pytest.mark.slurm

DEBIAN = "docker:test/debian:latest"


def test_plain_srun_shifter_mpi_hello_runs_real_ranks_on_three_nodes(cluster, runner):
    """The seeds' MPI line, with no --mpi option: MpiDefault=pmi2 hands the ranks PMI_FD
    and co., which the image's MPICH reads (with MpiDefault=none each rank was a
    singleton: 'rank 0 of 1' three times)."""
    res = runner.run(["srun", "-N3", f"--image={DEBIAN}", "shifter", "/app/mpi-hello"], timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(ln for ln in res.stdout.splitlines() if ln.startswith("hello")) == [
        f"hello from rank {r} of 3 on n{r + 1}" for r in range(3)], res.stdout + res.stderr


def test_every_node_is_a_machine_of_its_own_to_the_containers(cluster, runner):
    """MPI libraries (UCX) take processes with one boot id for one machine and join them
    through shared memory, which fails between nodes: every node has its own boot id,
    seen inside its containers too."""
    res = runner.run(["srun", "-N3", "--label", f"--image={DEBIAN}", "shifter",
                      "cat", "/proc/sys/kernel/random/boot_id"], timeout=180)
    assert res.returncode == 0, res.stderr
    ids = dict(ln.split(": ", 1) for ln in res.stdout.splitlines())
    assert len(ids) == 3 and len(set(ids.values())) == 3, res.stdout
    assert open("/proc/sys/kernel/random/boot_id").read().strip() not in ids.values()


def test_a_script_starting_with_usr_bin_shifter_runs_in_the_image(cluster, runner):
    """`tools/install` links /usr/bin/shifter to the site's launcher, which finds its
    prefix through the link; the kernel runs `#!/usr/bin/shifter /bin/bash` scripts
    with the image the environment names."""
    assert os.path.realpath("/usr/bin/shifter") == os.path.join(cluster.bindir, "shifter")
    home = pwd.getpwnam("sftest1").pw_dir
    script = os.path.join(home, f"shebang-{os.getpid()}.sh")
    with open(script, "w") as f:
        f.write("#!/usr/bin/shifter /bin/bash\n"
                'echo "bash=$BASH_VERSION args=$*"\n'
                "test -x /app/mpi-hello && echo in-the-image\n")
    os.chown(script, 4242, 4242)
    os.chmod(script, 0o755)
    try:
        res = runner.run([script, "a", "b"], env={"SHIFTER_IMAGETYPE": "docker",
                                                  "SHIFTER_IMAGE": "test/debian:latest"})
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].startswith("bash=5.") and lines[0].endswith(" args=a b"), res.stdout
        assert lines[1:] == ["in-the-image"], res.stdout + res.stderr
    finally:
        os.unlink(script)
