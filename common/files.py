"""Writing files so that a crash never leaves a half-written one under the real name."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o644, text: bool = False):
    """Yield a file opened on a temporary name in ``path``'s directory; on success it gets
    ``mode`` and replaces ``path`` in one rename, on failure it is removed."""
    import tempfile  # not at import time: meta (and so setupRoot) imports this module

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-", dir=directory)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") if text else os.fdopen(fd, "wb")) as f:
            yield f
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
