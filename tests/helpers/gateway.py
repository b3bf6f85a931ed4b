"""Gateway client configuration for tests of any tier (nothing here talks to the site)."""

from __future__ import annotations

import os
import re
import socket

from tools import gateway as gwtool
from tools.site import Site

#: one line of ``shifterimg pull`` output (Shifter's): the image and its status
PULL_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d Pulling Image: (\S+), status: ([A-Z]+)$")


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_udiroot(directory: str, gateways: list[str]) -> str:
    """A client udiRoot.conf in ``directory`` naming ``gateways`` (the site's paths otherwise)."""
    return gwtool.write_client_config(os.path.join(directory, "udiRoot.conf"), Site(), gateways,
                                      os.path.join(directory, "images"))
