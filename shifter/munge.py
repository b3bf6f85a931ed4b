"""MUNGE credentials through the ``munge``/``unmunge`` tools (no libmunge binding needed).

``encode`` makes a credential (optionally carrying a payload, given on stdin so a password
never shows in ``ps``); ``decode`` verifies one and returns who made it.  ``decode`` trusts
a credential only when unmunge exits 0 AND reports ``STATUS: 0``; expired (15) and replayed
(17) credentials are errors unless the caller explicitly accepts them (the client does, to
read back the registry logins it stored with ``shifterimg login``).

unmunge prints the metadata (``KEY: value`` lines), a blank line, then the payload.
"""

from __future__ import annotations

import os

from shifter.errors import ShifterError
from shifter.frozen import frozen

EXPIRED = 15
REPLAYED = 17
MAX_CREDENTIAL = 64 * 1024
STATUS_TEXT = {EXPIRED: "expired credential", REPLAYED: "replayed credential"}
TIMEOUT = 30


class MungeError(ShifterError):
    def __init__(self, message: str, hint: str | None = None, code: int | None = None):
        super().__init__(message, hint)
        self.code = code


@frozen
class Credential:
    uid: int
    gid: int
    payload: str
    status: int  # 0, or EXPIRED/REPLAYED when accepted


def _socket_args(socket: str | None) -> list[str]:
    return [f"--socket={socket}"] if socket else []


HINT = "is munged running? (mungeSocketPath in udiRoot.conf)"


def _run(argv: list[str], what: str, data: str | None, hint: str | None) -> tuple[int, str, str]:
    """Run munge or unmunge (``shifter.spawn``: no ``subprocess`` import on the
    submission's path); MungeError if it can't be run or does not finish in time."""
    # start-up: spawn (~1 ms with select) only when a credential is made or read: the launcher
    # and setupRoot import this module through the gateway client and seldom need one
    from shifter import spawn

    env = {"PATH": os.environ.get("PATH") or spawn.DEFAULT_PATH, "LC_ALL": "C"}
    try:
        code, out, err = spawn.run(argv, env, data.encode() if data is not None else None, TIMEOUT)
    except FileNotFoundError:
        raise MungeError(f"can't {what}: {argv[0]}: command not found",
                         hint or f"install the package that provides {argv[0]}") from None
    except OSError as e:
        raise MungeError(f"can't {what}: {argv[0]}: {(e.strerror or str(e)).lower()}", hint) from None
    if code is None:
        raise MungeError(f"can't {what}: {' '.join(argv)}: timed out after {TIMEOUT} s", hint)
    return code, out.decode(), err.decode()


def encode(payload: str | None = None, socket: str | None = None) -> str:
    """A new credential for the calling user, carrying ``payload`` (may be empty)."""
    argv = ["munge", *_socket_args(socket)] + ([] if payload else ["--no-input"])
    what = "create a munge credential"
    code, out, err = _run(argv, what, payload or None, HINT)
    if code != 0:
        tail = " | ".join(line.strip() for line in err.strip().splitlines()[-3:])
        raise MungeError(f"can't {what}: {' '.join(argv)} exited with {code}: {tail or 'no error output'}",
                         HINT, code)
    cred = out.strip()
    if not cred.startswith("MUNGE:"):
        raise MungeError(f"can't create a munge credential: munge printed {cred[:40]!r}")
    return cred


def decode(cred: str, socket: str | None = None, accept: tuple[int, ...] = ()) -> Credential:
    """Verify ``cred``; raise MungeError (with ``code``) unless valid or its status is in ``accept``."""
    if not cred or len(cred) > MAX_CREDENTIAL or not cred.isascii() or not cred.startswith("MUNGE:"):
        raise MungeError("invalid credential: not a munge credential")
    argv = ["unmunge", "--numeric", *_socket_args(socket)]
    try:
        returncode, stdout, stderr = _run(argv, "verify a munge credential", cred, None)
    except UnicodeDecodeError:  # a payload that is not text is not one of ours
        raise MungeError("invalid credential: its payload is not text") from None
    metadata, _, payload = stdout.partition("\n\n")
    fields = {}
    for line in metadata.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        status = int(fields["STATUS"])
    except (KeyError, ValueError):
        why = stderr.strip().splitlines()[-1][:200] if stderr.strip() else "no status"
        raise MungeError(f"invalid credential ({why})", code=returncode) from None
    if status != returncode or (status != 0 and status not in accept):
        raise MungeError(f"{STATUS_TEXT.get(status, 'invalid credential')} (munge status {status})",
                         code=status)
    try:
        uid, gid = int(fields["UID"]), int(fields["GID"])
    except (KeyError, ValueError):
        raise MungeError("invalid credential: unmunge gave no UID/GID") from None
    return Credential(uid, gid, payload, status)
