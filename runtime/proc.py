"""The one seam for running external tools (mksquashfs, mkfs.xfs, skopeo, hooks, ...).

``run`` captures output, raises ``ProcError`` (a ``ShifterError``) with the command, its
exit status and the tail of its stderr on failure, and on timeout kills the tool's
whole process group, so nothing it started outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess

from shifter.errors import ShifterError


class ProcError(ShifterError):
    def __init__(self, message, hint=None, returncode=None, stderr=""):
        super().__init__(message, hint)
        self.returncode = returncode
        self.stderr = stderr


def run(argv: list[str], what: str, *, hint: str | None = None, secret: str | None = None,
        timeout: float | None = None, check: bool = True, input: str | None = None,
        cwd: str | None = None, env: dict | None = None, preexec_fn=None) -> subprocess.CompletedProcess:
    """Run ``argv``; on failure raise ``ProcError("can't WHAT: CMD exited with N: stderr")``.

    ``secret`` (e.g. a password on the command line) is masked in every message.
    """

    def shown(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
            start_new_session=True, preexec_fn=preexec_fn,
        )
    except FileNotFoundError:
        raise ProcError(f"can't {what}: {argv[0]}: command not found",
                        hint or f"install the package that provides {argv[0]}") from None
    except PermissionError:
        raise ProcError(f"can't {what}: {argv[0]}: permission denied", hint) from None
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise ProcError(f"can't {what}: {shown(' '.join(argv))}: timed out after {timeout:g} s", hint) from None
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
        raise ProcError(
            f"can't {what}: {shown(' '.join(argv))} exited with {proc.returncode}: "
            f"{shown(tail) or 'no error output'}", hint, proc.returncode, stderr)
    return result
