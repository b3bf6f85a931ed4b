"""The syntax of udiRoot.conf, with no heavy imports (unsetupRoot must start fast).

``key=value`` lines; ``#`` starts a comment; a line ending in ``\\`` continues on the
next.  ``shifter.runtime.config`` gives the entries their types and checks.
"""

from __future__ import annotations

from shifter.errors import ConfigError

#: defaults of the keys that unsetupRoot needs (config.UdiRootConfig uses the same)
DEFAULTS = {
    "udiMount": "/var/udiMount",
    "loopMount": "/var/udiLoopMount",
    "perNodeCachePath": "/tmp",
}


def logical_lines(text: str):
    """Yield (first line number, logical line) with continuations joined."""
    buf, start = "", None
    for lineno, line in enumerate(text.splitlines(), 1):
        if start is None:
            start = lineno
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            buf += stripped[:-1]
            continue
        buf += line
        yield start, buf
        buf, start = "", None
    if start is not None:
        yield start, buf


def entries(text: str, path: str) -> list[tuple[int, str, str]]:
    """(line number, key, value) of every setting, in order."""
    out = []
    for lineno, line in logical_lines(text):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        key, sep, value = body.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"{path}:{lineno}: expected key=value, got {body!r}")
        out.append((lineno, key, value))
    return out


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"can't read the shifter configuration: {path}: no such file",
            "set SHIFTER_CONFIG or the plugstack argument shifter_config= to your udiRoot.conf",
        ) from None
    except OSError as e:
        raise ConfigError(f"can't read the shifter configuration: {path}: {e.strerror}") from None
