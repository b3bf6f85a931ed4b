"""The hot paths' own I/O: ``shifter.spawn`` (a tool run without ``subprocess``) and the
plain-http request of ``gateway_client.lite`` (no ``http.client``), against real
processes and a real socket on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from shifter import spawn
from shifter.gateway_client import lite

ENV = {"PATH": spawn.DEFAULT_PATH}


def test_a_tool_gets_its_stdin_and_gives_its_output_and_exit_code():
    data = os.urandom(300_000)  # more than a pipe holds: written while its output is read
    code, out, err = spawn.run(["sh", "-c", "cat; echo done >&2; exit 3"], ENV, data)
    assert (code, out, err) == (3, data, b"done\n")
    code, out, _ = spawn.run(["sh", "-c", "cat"], ENV)  # no stdin: /dev/null
    assert (code, out) == (0, b"")


def test_a_tool_that_overruns_is_killed_and_reaped_and_its_pipes_closed():
    child = spawn.start(["sleep", "30"], ENV)
    assert spawn.collect(child, 0.2)[0] is None
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)
    for fd in (child.out_fd, child.err_fd):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_missing_tool_is_file_not_found_and_leaves_no_fd():
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError, match="no-such-tool is not in /usr/bin"):
        spawn.start(["no-such-tool"], ENV)
    assert set(os.listdir("/proc/self/fd")) <= before


def test_the_tool_gets_sigpipe_back():
    """Python ignores SIGPIPE; the tool must not inherit that (a `yes | head` would spin)."""
    code, out, _ = spawn.run(["sh", "-c", "grep SigIgn /proc/self/status"], ENV)
    assert code == 0 and not int(out.split()[1], 16) & (1 << (13 - 1))


def _server(answers):
    """A loopback server answering each connection with the next of ``answers`` (bytes,
    sent as is; closed only after a while when ``keep_open``), recording the requests."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    seen = []

    def answer(conn, reply, keep_open):
        with conn:
            seen.append(conn.recv(65536))
            conn.sendall(reply)
            if keep_open:  # a server that closes late: the client must not wait for it
                threading.Event().wait(5)

    def serve():
        for reply, keep_open in answers:
            conn, _ = srv.accept()
            threading.Thread(target=answer, args=(conn, reply, keep_open), daemon=True).start()
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], seen


def test_a_plain_http_answer_is_read_to_its_length_without_waiting_for_the_close():
    body = b'{"status": "READY"}'
    port, seen = _server([(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), True),
                          (b"HTTP/1.0 404 NOT FOUND\r\nServer: x\r\n\r\nno such image", False)])
    resp = lite.LiteSession().request("GET", f"http://127.0.0.1:{port}/api/lookup/x/", timeout=2,
                                      headers={"authentication": "MUNGE:abc"}, params={"a": "b c"})
    assert (resp.status_code, resp.content) == (200, body)  # within the 2 s: the server stays open 5
    head = seen[0].decode()
    assert head.startswith("GET /api/lookup/x/?a=b+c HTTP/1.0\r\n") and "authentication: MUNGE:abc\r\n" in head
    assert f"Host: 127.0.0.1:{port}\r\n" in head
    resp = lite.LiteSession().request("GET", f"http://127.0.0.1:{port}/", timeout=2)
    assert (resp.status_code, resp.text) == (404, "no such image")


def test_plain_http_failures_are_lite_errors():
    port, _ = _server([(b"SSH-2.0-OpenSSH\r\n", False), (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                                                        False)])
    with pytest.raises(lite.LiteError, match="not HTTP"):
        lite.LiteSession().request("GET", f"http://127.0.0.1:{port}/", timeout=2)
    with pytest.raises(lite.LiteError, match="transfer encoding"):
        lite.LiteSession().request("GET", f"http://127.0.0.1:{port}/", timeout=2)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(lite.LiteError, match="refused"):
        lite.LiteSession().request("GET", f"http://127.0.0.1:{port}/", timeout=2)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    with pytest.raises(lite.LiteTimeout):
        lite.LiteSession().request("GET", f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.2)
    silent.close()
