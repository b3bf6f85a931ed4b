"""MUNGE credentials through the ``munge``/``unmunge`` tools (no libmunge binding needed).

``encode`` makes a credential (optionally carrying a payload, given on stdin so a password
never shows in ``ps``); ``decode`` verifies one and returns who made it.  ``decode`` trusts
a credential only when unmunge exits 0 AND reports ``STATUS: 0``; expired (15) and replayed
(17) credentials are errors unless the caller explicitly accepts them (the client does, to
read back the registry logins it stored with ``shifterimg login``).

unmunge prints the metadata (``KEY: value`` lines), a blank line, then the payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from shifter.errors import ShifterError
from shifter.runtime import proc

EXPIRED = 15
REPLAYED = 17
MAX_CREDENTIAL = 64 * 1024
STATUS_TEXT = {EXPIRED: "expired credential", REPLAYED: "replayed credential"}
TIMEOUT = 30


class MungeError(ShifterError):
    def __init__(self, message: str, hint: str | None = None, code: int | None = None):
        super().__init__(message, hint)
        self.code = code


@dataclass(frozen=True)
class Credential:
    uid: int
    gid: int
    payload: str
    status: int  # 0, or EXPIRED/REPLAYED when accepted


def _socket_args(socket: str | None) -> list[str]:
    return [f"--socket={socket}"] if socket else []


def encode(payload: str | None = None, socket: str | None = None) -> str:
    """A new credential for the calling user, carrying ``payload`` (may be empty)."""
    argv = ["munge", *_socket_args(socket)] + ([] if payload else ["--no-input"])
    try:
        out = proc.run(argv, "create a munge credential", input=payload or None, timeout=TIMEOUT,
                       hint="is munged running? (mungeSocketPath in udiRoot.conf)").stdout
    except proc.ProcError as e:
        raise MungeError(e.what, e.hint, e.returncode) from None
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
        res = proc.run(argv, "verify a munge credential", input=cred, timeout=TIMEOUT, check=False)
    except proc.ProcError as e:
        raise MungeError(e.what, e.hint) from None
    except UnicodeDecodeError:  # a payload that is not text is not one of ours
        raise MungeError("invalid credential: its payload is not text") from None
    metadata, _, payload = res.stdout.partition("\n\n")
    fields = {}
    for line in metadata.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        status = int(fields["STATUS"])
    except (KeyError, ValueError):
        why = res.stderr.strip().splitlines()[-1][:200] if res.stderr.strip() else "no status"
        raise MungeError(f"invalid credential ({why})", code=res.returncode) from None
    if status != res.returncode or (status != 0 and status not in accept):
        raise MungeError(f"{STATUS_TEXT.get(status, 'invalid credential')} (munge status {status})",
                         code=status)
    try:
        uid, gid = int(fields["UID"]), int(fields["GID"])
    except (KeyError, ValueError):
        raise MungeError("invalid credential: unmunge gave no UID/GID") from None
    return Credential(uid, gid, payload, status)
