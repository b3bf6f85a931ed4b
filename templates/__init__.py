"""The one jinja2 Environment every generated file comes from.

Templates are ``<name>.j2`` files beside this module.  ``StrictUndefined`` turns any
variable a template uses but the caller did not pass into an error, so a generated
config file never silently contains an empty value.
"""

from __future__ import annotations

import os

import jinja2

_HERE = os.path.dirname(os.path.abspath(__file__))

ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def render(name: str, **context) -> str:
    """Render template ``name`` (e.g. ``"slurm.conf"``; ``.j2`` is added) with ``context``."""
    return ENV.get_template(name + ".j2").render(**context)


def write(name: str, path: str, mode: int = 0o644, **context) -> bool:
    """Render ``name`` to ``path`` atomically (temp file + rename).

    Returns True when the file's content changed (callers restart daemons on that).
    """
    text = render(name, **context)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                os.chmod(path, mode)
                return False
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True
