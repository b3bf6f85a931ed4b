import pytest

from shifter.runtime import etcfiles, plan
from shifter.runtime.config import EnvRules


def _plan(**kw):
    base = dict(uid=4242, gid=4242, jobid="17", image_type="id", image_id="a" * 64, volumes="/a:/b:ro",
                modules="mpich", udi="/var/udiMount", workdir="/w", entry=("/bin/ent",), cmd=("x", "y z"),
                env=("=A=1", "<PATH=/p", ">PATH=/q", "-GONE"))
    base.update(kw)
    return plan.Plan(**base)


def test_round_trip_and_format_is_nul_separated():
    p = _plan()
    data = plan.dumps(p)
    assert data.startswith(b"SHIFTER_PLAN\x001\x00uid\x004242\x00") and data.endswith(b"END\x00\x00")
    assert plan.loads(data) == p
    assert p.identity() == (4242, 4242, "17", "id", "a" * 64, "/a:/b:ro", "mpich")


@pytest.mark.parametrize("data, message", [
    (b"NOPE\x001\x00", "not a shifter launch plan"),
    (b"SHIFTER_PLAN\x009\x00END\x00\x00", "version '9'"),
    (b"SHIFTER_PLAN\x001\x00uid\x001\x00", "truncated"),
    (b"SHIFTER_PLAN\x001\x00bogus\x001\x00END\x00\x00", "unknown key 'bogus'"),
    (b"SHIFTER_PLAN\x001\x00uid\x001\x00END\x00\x00", "lacks gid"),
])
def test_bad_plans(data, message):
    with pytest.raises(ValueError) as exc:
        plan.loads(data)
    assert message in str(exc.value)


def test_nul_in_a_value_is_refused():
    with pytest.raises(ValueError):
        plan.dumps(_plan(cmd=("a\0b",)))


def test_env_ops_order_image_then_rules():
    rules = [EnvRules(set=(("M", "1"),), prepend=(("PATH", "/mod"),)),
             EnvRules(append=(("PATH", "/site"),), unset=("SECRET",))]
    ops = plan.env_ops(rules, {"PATH": "/img", "I": "x"})
    assert ops == ["=PATH=/img", "=I=x", "=M=1", "<PATH=/mod", ">PATH=/site", "-SECRET"]
    env = plan.apply_env(ops, {"PATH": "/host", "SECRET": "s", "HOME": "/h"})
    assert env == {"PATH": "/mod:/img:/site", "I": "x", "M": "1", "HOME": "/h"}
    assert plan.apply_env(["<NEW=/a", ">NEW2=/b"], {}) == {"NEW": "/a", "NEW2": "/b"}


def test_passwd_filtered_to_root_and_the_user():
    site = ["root:x:0:0:root:/root:/bin/sh", "alice:x:4242:4242::/home/a:/bin/sh", "bob:x:4243:4243::/b:/bin/sh",
            "broken:line"]
    assert etcfiles.passwd_lines(site, 4242, "alice") == site[:2]
    # a user the site file lacks comes from the host's name service (or a stub)
    lines = etcfiles.passwd_lines(["bob:x:4243:4243::/b:/bin/sh"], 987654, "ghost")
    assert lines[0].startswith("root:x:0:0") and lines[1].startswith("ghost:x:987654:")


def test_group_filtered_and_limited():
    site = ["root:x:0:", "alice:x:4242:", "team:x:4240:alice,bob", "other:x:5000:"]
    gids = [4242, 4240]
    assert etcfiles.group_lines(site, "alice", gids) == ["root:x:0:", "alice:x:4242:alice", "team:x:4240:alice"]
    assert etcfiles.user_groups("root", 0, 1) == [0]


def test_build_writes_site_files(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "passwd").write_text("root:x:0:0::/root:/bin/sh\nu:x:7:7::/:/bin/sh\nv:x:8:8::/:/bin/sh\n")
    (site / "hosts").write_text("127.0.0.1 localhost\n")
    out = tmp_path / "out"
    out.mkdir()
    etcfiles.build(str(out), str(site), 7, "u", [7])
    assert (out / "passwd").read_text() == "root:x:0:0::/root:/bin/sh\nu:x:7:7::/:/bin/sh\n"
    assert (out / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert (out / "nsswitch.conf").read_text().startswith("passwd: files")
