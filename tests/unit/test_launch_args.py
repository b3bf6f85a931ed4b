import pytest

from shifter.errors import UsageError
from shifter.runtime.launcher.launch import parse_args


def test_stops_at_the_first_non_option():
    o = parse_args(["-i", "docker:a:1", "ls", "-l", "--image=x"])
    assert o.image == "docker:a:1" and o.args == ["ls", "-l", "--image=x"]


def test_forms_and_aliases():
    o = parse_args(["-idocker:a:1", "--volume=/a:/b", "-V", "/c:/d:ro", "--module", "mpich", "-e", "A=1",
                    "--env=B=2", "--env-file", "/f", "-E", "-v", "--dry-run", "--", "-x"])
    assert o.image == "docker:a:1" and o.volume == ["/a:/b", "/c:/d:ro"] and o.module == "mpich"
    assert o.env == ["A=1", "B=2"] and o.env_file == ["/f"] and o.clearenv and o.verbose and o.dry_run
    assert o.args == ["-x"]


@pytest.mark.parametrize("argv, workdir, entrypoint", [
    ([], None, None),
    (["--workdir"], "", None),
    (["--workdir=/w"], "/w", None),
    (["-w", "/w"], "/w", None),
    (["--entrypoint"], None, ""),
    (["--entry=/bin/x -y"], None, "/bin/x -y"),
])
def test_workdir_and_entrypoint(argv, workdir, entrypoint):
    o = parse_args(argv + ["cmd"])
    assert (o.workdir, o.entrypoint, o.args) == (workdir, entrypoint, ["cmd"])


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unknown option '--bogus'"),
    (["-i"], "option -i needs a value"),
    (["--verbose=yes"], "unknown option"),
])
def test_bad_options(argv, message):
    with pytest.raises(UsageError) as exc:
        parse_args(argv)
    assert message in str(exc.value)
