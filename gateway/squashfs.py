"""Make a squashfs image of a tree with ``mksquashfs``, written under a temporary name.

``make`` writes ``<dir>/.<name>.partial-XXXX`` next to the destination and returns that
path; ``publish`` renames it into place.  So a crash never leaves a file with the final
name that is not a complete image; ``cleanup_partials`` removes leftovers at start-up.
mksquashfs gets ``PR_SET_PDEATHSIG``: a gateway killed mid-conversion leaves none running.
"""

from __future__ import annotations

import ctypes
import glob
import os
import signal
import tempfile

from shifter.runtime import proc

TIMEOUT = 6 * 3600
_PR_SET_PDEATHSIG = 1
# TODO(runtime.linux): a public set_pdeathsig() there would keep every libc call in one module.
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the gateway (the forking thread) dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def argv(tree: str, out: str, compression: str) -> list[str]:
    """The mksquashfs command line (Shifter's options; also used by the benchmark)."""
    return ["mksquashfs", tree, out, "-no-xattrs", "-all-root", "-noappend", "-comp", compression,
            "-no-progress", "-quiet"]


def partial_name(dest: str) -> str:
    """A fresh temporary path next to ``dest`` (created empty, mode 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.partial-",
                               dir=os.path.dirname(dest))
    os.close(fd)
    return tmp


def make(tree: str, dest: str, compression: str) -> str:
    """Build the image of ``tree`` for ``dest``; return the temporary file holding it (mode
    0600: the caller gives it the image's access, ``runtime.imagefiles``, before publishing)."""
    tmp = partial_name(dest)
    try:
        proc.run(argv(tree, tmp, compression), f"make the squashfs image {dest}", timeout=TIMEOUT,
                 hint="apt-get install squashfs-tools", preexec_fn=_die_with_parent)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def publish(tmp: str, dest: str) -> None:
    """Atomically move a finished image (or any file made by ``partial_name``) into place."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def cleanup_partials(directory: str) -> list[str]:
    """Remove temporary files a crash left in ``directory``; return their names."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), ".*.partial-*")) + \
            glob.glob(os.path.join(glob.escape(directory), ".meta.*")):
        try:
            os.unlink(path)
            removed.append(path)
        except IsADirectoryError:
            pass
        except FileNotFoundError:
            pass
    return removed
