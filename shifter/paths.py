"""Where things live: the install prefix and the site configuration file."""

from __future__ import annotations

import os
import sys

#: The install prefix: the venv this code runs from (default /opt/shifter).
PREFIX = sys.prefix

#: Shifter's site configuration file, unless overridden.
DEFAULT_CONFIG = os.path.join(PREFIX, "etc", "udiRoot.conf")


def config_path(plugstack_value: str | None = None, environ=None) -> str:
    """The udiRoot.conf to read.

    Precedence: an explicit plugstack ``shifter_config=`` value (SPANK plugin), else
    ``SHIFTER_CONFIG`` from the environment (command-line tools), else
    ``<prefix>/etc/udiRoot.conf``.
    """
    if plugstack_value:
        return plugstack_value
    env = os.environ if environ is None else environ
    value = env.get("SHIFTER_CONFIG")
    if value:
        return value
    return DEFAULT_CONFIG
