"""shifter.frozen: the records the runtime uses instead of dataclasses (cold-start cost)."""

import subprocess
import sys

import pytest

from shifter.frozen import FrozenInstanceError, field, fields, frozen, replace


@frozen
class Point:
    x: int
    y: int = 0
    tags: tuple = field(default=())
    extra: dict = field(default_factory=dict)


def test_construction_defaults_and_factories():
    p = Point(1)
    assert (p.x, p.y, p.tags, p.extra) == (1, 0, (), {})
    assert Point(1).extra is not Point(1).extra  # a fresh object per instance
    assert Point(1, 2, ("a",), {"k": 1}) == Point(x=1, y=2, tags=("a",), extra={"k": 1})
    assert fields(Point) == ("x", "y", "tags", "extra")


def test_missing_and_unknown_arguments_fail_like_a_function_call():
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, z=3)


def test_frozen_after_construction():
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2
    with pytest.raises(AttributeError):
        del p.y
    assert p.x == 1


def test_equality_hash_repr_and_replace():
    a, b = Point(1, 2), Point(1, 2)
    assert a == b and a != Point(1, 3)
    assert hash(Point(1, 2, extra=None)) == hash(Point(1, 2, extra=None))
    assert {Point(1, extra=None): 1}[Point(1, extra=None)] == 1
    assert a != (1, 2, (), {}) and a.__eq__("x") is NotImplemented
    assert repr(Point(1, tags=("t",))) == "Point(x=1, y=0, tags=('t',), extra={})"
    assert replace(a, y=5) == Point(1, 5) and a.y == 2
    with pytest.raises(TypeError):
        replace(a, nope=1)


def test_a_field_without_default_after_one_with_default_is_refused():
    with pytest.raises(TypeError, match="without a default"):
        @frozen
        class Bad:
            a: int = 1
            b: int


def test_match_args():
    match Point(3, 4):
        case Point(x, y):
            assert (x, y) == (3, 4)


def test_a_field_can_stay_out_of_equality_and_repr():
    @frozen
    class Record:
        name: str
        raw: dict = field(default_factory=dict, compare=False, repr=False)

    a, b = Record("x", {"k": 1}), Record("x", {"k": 2})
    assert a == b and hash(a) == hash(b) and repr(a).endswith("Record(name='x')")
    assert Record("x") != Record("y") and a.raw == {"k": 1}


HOT = ("dataclasses", "inspect", "traceback", "typing", "fractions", "subprocess", "http.client", "ssl",
       "email", "requests")


def test_the_submissions_lookup_imports_none_of_the_heavy_modules():
    """The SPANK plugin pins a docker image at every sbatch/srun/salloc (a munge credential
    and one request to the gateway): none of these (~70 ms together) on that path."""
    code = ("import sys, shifter.spank.dispatch, shifter.spank.request, shifter.runtime.image, "
            "shifter.gateway_client.client, shifter.munge, shifter.spawn, shifter.runtime.builder.sshd;"
            f"print(' '.join(m for m in {HOT!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_the_prologs_imports_stay_off_dataclasses_inspect_and_traceback():
    """The prolog and epilog start a cold interpreter per job on every node: these modules
    cost ~35 ms of import together (docs/dev.md, start-up)."""
    code = ("import sys, shifter.spank.dispatch, shifter.wlm.prolog, shifter.wlm.epilog, "
            "shifter.runtime.builder.udi, shifter.runtime.builder.teardown, shifter.spank.request, shifter.wlm.cgroup, "
            "shifter.runtime.builder.sshd, shifter.runtime.hostsfile, shifter.runtime.ed25519, shifter.asuser, "
            "shifter.wlm.jobinfo;"
            f"print(' '.join(m for m in {HOT!r} + ('socket', 'hashlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
