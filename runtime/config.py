"""udiRoot.conf: Shifter's site configuration file.

Format: ``key=value`` lines, ``#`` comments, a trailing ``\\`` continues a line.  Parsed
once into a frozen ``UdiRootConfig``; every error names ``file:line`` and the key.

This is the foundation's reader: the syntax is complete; typed keys cover what the
plugin, the gateway client and the site tools need so far.  Other keys are kept in
``raw`` (the runtime-core work gives each of Shifter's keys its type and checks).
Extension: ``mungeSocketPath`` — the munged socket clients use (for a private munged).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType

from shifter import paths
from shifter.errors import ConfigError

_IMAGE_TYPES = ("docker", "id", "custom", "local")


@dataclass(frozen=True)
class UdiRootConfig:
    path: str
    system: str = "default"
    imagePath: str = "/images"
    udiMount: str = "/var/udiMount"
    imageGateway: tuple[str, ...] = ()
    defaultImageType: str = "docker"
    mungeSocketPath: str | None = None
    gatewayTimeout: int = 30
    raw: "MappingProxyType[str, str]" = field(default_factory=lambda: MappingProxyType({}))


def _logical_lines(text: str):
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


def parse(text: str, path: str = "<udiRoot.conf>") -> UdiRootConfig:
    raw: dict[str, str] = {}
    where: dict[str, int] = {}
    for lineno, line in _logical_lines(text):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        key, sep, value = body.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"{path}:{lineno}: expected key=value, got {body!r}")
        if key in raw and not key.startswith("siteEnv") and key != "siteFs":
            raise ConfigError(f"{path}:{lineno}: {key} is set twice (first at line {where[key]})")
        raw[key] = f"{raw[key]} {value}".strip() if key in raw else value
        where[key] = lineno

    def loc(key: str) -> str:
        return f"{path}:{where[key]}: {key}"

    kwargs: dict[str, object] = {}
    for key in ("system", "imagePath", "udiMount"):
        if key in raw:
            if not raw[key]:
                raise ConfigError(f"{loc(key)} is empty")
            kwargs[key] = raw[key]
    for key in ("imagePath", "udiMount"):
        if key in kwargs and not str(kwargs[key]).startswith("/"):
            raise ConfigError(f"{loc(key)} must be an absolute path, not {kwargs[key]!r}")
    if "imageGateway" in raw:
        kwargs["imageGateway"] = tuple(raw["imageGateway"].split())
    if "defaultImageType" in raw:
        if raw["defaultImageType"] not in _IMAGE_TYPES:
            raise ConfigError(
                f"{loc('defaultImageType')} must be one of {', '.join(_IMAGE_TYPES)}, "
                f"not {raw['defaultImageType']!r}"
            )
        kwargs["defaultImageType"] = raw["defaultImageType"]
    if raw.get("mungeSocketPath"):
        kwargs["mungeSocketPath"] = raw["mungeSocketPath"]
    if "gatewayTimeout" in raw:
        try:
            kwargs["gatewayTimeout"] = int(raw["gatewayTimeout"])
        except ValueError:
            raise ConfigError(f"{loc('gatewayTimeout')} must be a whole number of seconds") from None
    return UdiRootConfig(path=path, raw=MappingProxyType(raw), **kwargs)


def load(path: str | None = None) -> UdiRootConfig:
    """Read udiRoot.conf from ``path`` or the default location (see ``shifter.paths``)."""
    path = path or paths.config_path()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"can't read the shifter configuration: {path}: no such file",
            "set SHIFTER_CONFIG or the plugstack argument shifter_config= to your udiRoot.conf",
        ) from None
    except OSError as e:
        raise ConfigError(f"can't read the shifter configuration: {path}: {e.strerror}") from None
    return parse(text, os.path.abspath(path))
