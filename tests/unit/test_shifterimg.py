"""``shifterimg`` and the gateway client without a gateway: the command line, Shifter's
output, one-line errors.  Real runs as the test users against a gateway are in
tests/root/test_shifterimg_as_users.py."""

from __future__ import annotations

import io
import re

import pytest

from helpers.gateway import PULL_LINE as LINE
from helpers.gateway import free_port, write_udiroot
from shifter.errors import UsageError
from shifter.gateway_client import cli
from shifter.gateway_client.client import GatewayClient, GatewayUnavailable, ImageRecord
from shifter import munge
from shifter.runtime import config as udiroot


def test_options_go_before_or_after_the_command():
    a = cli.parse_args(["-v", "--user", "root", "pull", "docker:test/x:1"])
    b = cli.parse_args(["pull", "-v", "-u", "root", "docker:test/x:1"])
    for args in (a, b):
        assert args.command == "pull" and args.verbose and args.user == "root"
    assert cli._ids("root,1234", "user") == (0, 1234)
    assert cli._ids("root,7", "group") == (0, 7)
    login = cli.parse_args(["login"])
    assert login.location == "default" and not login.verbose and login.system is None


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["lookup"], "the following arguments are required: image"),
    (["--user", "root", "lookup", "x"], "--user/--group apply to pull and import, not lookup"),
    (["pull", "--user", "no-such-user-here", "x"], "no such user 'no-such-user-here'"),
    (["pull", "--group", "no-such-group-here", "x"], "no such group 'no-such-group-here'"),
])
def test_command_line_mistakes_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        args = cli.parse_args(argv)
        cli._acl(args)


def test_bad_image_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SHIFTER_CONFIG", str(write_udiroot(str(tmp_path), ["http://127.0.0.1:9"])))
    assert cli.main(["pull", "docker:BAD^image"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("shifterimg: invalid image 'docker:BAD^image': character '^'")


def test_images_table_is_shifters():
    records = [ImageRecord.from_json({"id": "ab" * 32, "system": "local", "itype": "docker",
                                      "tag": ["z/b:1", "a/a:2"], "status": "READY", "last_pull": 0.0})]
    lines = cli.image_lines(records)
    assert [line.split()[-1] for line in lines] == ["a/a:2", "z/b:1"]
    assert re.match(r"^local      docker     READY    abababab\w\w   \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d a/a:2$",
                    lines[0])


def test_pull_display_one_line_per_state_or_rewritten_on_a_tty():
    out = io.StringIO()
    show = cli.PullDisplay("docker:x:1", out)
    for status in ("PENDING", "PULLING", "PULLING", "CONVERSION", "READY"):
        show(ImageRecord.from_json({"status": status, "status_message": "m"}))
    lines = out.getvalue().splitlines()
    assert [LINE.match(line).group(2) for line in lines] == ["PENDING", "PULLING", "CONVERSION", "READY"]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    show = cli.PullDisplay("docker:x:1", tty)
    show(ImageRecord.from_json({"status": "PULLING", "status_message": "layer 1/2"}))
    show(ImageRecord.from_json({"status": "READY"}))
    assert tty.getvalue().startswith("\r\x1b[2K") and "(layer 1/2)" in tty.getvalue()
    assert tty.getvalue().endswith("status: READY\n")


def test_records_from_shifters_gateway_parse():
    # Shifter fills missing fields with 'MISSING' and older versions say userAcl
    record = ImageRecord.from_json({"id": "MISSING", "status": "PULLING", "tag": "a:1",
                                    "userAcl": [1, "2"], "last_pull": "MISSING"})
    assert record.id is None and record.tags == ("a:1",) and record.user_acl == (1, 2)
    with pytest.raises(Exception, match="invalid image record"):
        ImageRecord.from_json(["not", "a", "record"])


def test_no_gateway_answering_is_one_clear_error(tmp_path, monkeypatch):
    # the credential's seam: this is about the connections, not munged (unit tier)
    monkeypatch.setattr(munge, "encode", lambda payload, socket=None: "MUNGE:fake")
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    config = udiroot.load(str(write_udiroot(str(tmp_path), dead)))
    with pytest.raises(GatewayUnavailable, match=r"can't reach the image gateway: http://127.0.0.1:\d+: "
                                                 r"connection refused; http://127.0.0.1:\d+: connection refused"):
        GatewayClient(config).images()
