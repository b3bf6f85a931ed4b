"""The node's hook server (shifter.spank.hookd): its request records, and one connection's
handling (a real fork, a real socket pair; the hook itself faked at dispatch.run).  The
server on the cluster, with the compiled shim as its client: tests/slurm/test_hook_server.py."""

from __future__ import annotations

import os
import socket
import time

import pytest

from shifter.spank import dispatch
from shifter.spank import hookd
from shifter.wlm import hookcpu


def _request(*records: str) -> bytes:
    return b"\0".join(r.encode() for r in records) + b"\0end\0"


GOOD = _request("hook=job_prolog", "ctx=3", "job=42", "uid=4242", "gid=4242", "arg=enable_sshd=1",
                "arg=shifter_config=/etc/x.conf", "opt=image=id:abc", "env=SLURMD_NODENAME=n1", "env=A=b=c")


def test_a_request_gives_the_hook_its_items_arguments_options_and_environment():
    req = hookd.parse_request(GOOD)
    assert (req["hook"], req["ctx"], req["job"], req["uid"], req["gid"]) == ("job_prolog", "3", "42", "4242", "4242")
    assert req["arg"] == ["enable_sshd=1", "shifter_config=/etc/x.conf"]
    assert req["opt"] == {"image": "id:abc"} and req["env"] == {"SLURMD_NODENAME": "n1", "A": "b=c"}


@pytest.mark.parametrize("data, why", [
    (GOOD[:-5], "incomplete"),
    (_request("hook=task_init", "ctx=3"), "not a prolog or epilog"),
    (_request("hook=job_prolog", "ctx=x"), "not a prolog or epilog"),
    (_request("hook=job_prolog", "ctx=3", "shell=/bin/sh"), "unknown record"),
    (_request("hook=job_prolog", "ctx=3", "env=noequals"), "bad env record"),
    (_request("hook=job_prolog", "ctx=3", "garbage"), "bad record"),
])
def test_anything_else_is_refused(data, why):
    with pytest.raises(ValueError, match=why):
        hookd.parse_request(data)


@pytest.mark.parametrize("node", ["", "../x", ".hidden", "a/b", "n" * 65])
def test_a_node_name_cannot_steer_the_socket_path(node):
    with pytest.raises(ValueError):
        hookd.socket_path(node)
    assert hookd.socket_path("nid00042") == "/run/shifter/hookd/nid00042.sock"


def _serve_one(monkeypatch, fake_run, data=GOOD):
    """handle() in a forked handler, as the server does; returns the shim's end."""
    monkeypatch.setattr(dispatch, "run", fake_run)
    shim, server = socket.socketpair()
    shim.sendall(data)
    pid = os.fork()
    if pid == 0:  # the handler
        try:
            shim.close()
            hookd.handle(server.fileno())
        finally:
            os._exit(0)
    server.close()
    return shim, pid


def _answer(shim) -> list[str]:
    out = b""
    while not out.endswith(b"\n") or b"\nR " not in b"\n" + out:
        chunk = shim.recv(65536)
        if not chunk:
            break
        out += chunk
    return out.decode().splitlines()


def test_the_hook_runs_with_the_requests_environment_and_its_lines_and_result_come_back(monkeypatch):
    def fake_run(sp, hook, args, options):
        assert hookcpu.IN_HOOK_SERVER
        sp.info(f"{hook} job={sp.job_id()} uid={sp.job_uid()} ctx={sp.context} node={os.environ['SLURMD_NODENAME']}")
        sp.error("two\nlines")
        sp.verbose(f"{args} {options} {sorted(os.environ)}")
        return 1

    shim, pid = _serve_one(monkeypatch, fake_run)
    lines = _answer(shim)
    os.waitpid(pid, 0)
    assert lines[0] == "I job_prolog job=42 uid=4242 ctx=3 node=n1"
    assert lines[1] == "E two lines"  # one line each, whatever the message holds
    assert lines[2] == "V ['enable_sshd=1', 'shifter_config=/etc/x.conf'] {'image': 'id:abc'} ['A', 'SLURMD_NODENAME']"
    assert lines[3:] == ["R 1"]


def test_a_failed_or_crashed_hook_answers_failure(monkeypatch):
    shim, pid = _serve_one(monkeypatch, lambda *a: -1)
    assert _answer(shim) == ["R -1"]
    os.waitpid(pid, 0)

    def crash(*a):
        raise RuntimeError("boom")

    shim, pid = _serve_one(monkeypatch, crash)
    assert _answer(shim) == ["E shifter: internal error in the hook server: RuntimeError('boom')", "R -1"]
    os.waitpid(pid, 0)
    shim, pid = _serve_one(monkeypatch, crash, _request("hook=rm", "ctx=1"))
    assert _answer(shim) == ["E shifter: the hook server refused a request: not a prolog or epilog request",
                             "R -1"]
    os.waitpid(pid, 0)


def test_a_shim_that_goes_away_gets_its_hook_killed(monkeypatch, tmp_path):
    marker = tmp_path / "worker"

    def slow(sp, *a):
        marker.write_text(str(os.getpid()))
        time.sleep(60)
        return 1

    shim, handler = _serve_one(monkeypatch, slow)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    worker = int(marker.read_text())
    shim.close()  # Slurm's PrologTimeout killed the prolog
    os.waitpid(handler, 0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"the hook's worker {worker} still runs after its shim left")
