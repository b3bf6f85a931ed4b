"""Timing another installed version beside this one (``--before PREFIX``): code that runs in
a version's own interpreter, wherever that version keeps its modules."""

from __future__ import annotations

import os
import subprocess

#: the start of a snippet for a version's own python: its ``udi`` and ``config`` modules
IMPORT_UDI = """
import sys
try:
    from shifter.runtime.builder import udi
except ImportError:  # a version before runtime/ had layers
    from shifter.runtime import udi
from shifter.runtime import config
"""
_TEARDOWN = IMPORT_UDI + """
c = config.load(sys.argv[1])
udi.teardown(c)
udi.remove_anchors(c)
"""


def python(prefix: str, code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` with ``args`` in the python installed at ``prefix`` (-I: not this checkout's)."""
    return subprocess.run([os.path.join(prefix, "bin", "python"), "-I", "-c", code, *args], **kwargs)


def teardown(prefix: str, conf: str) -> None:
    """That version removes its UDI of ``conf`` and the anchors of its private containers."""
    python(prefix, _TEARDOWN, conf, check=True)
