"""Shifter's image metadata file: ``<imagePath>/<id>.meta``.

A text file of ``KEY: value`` lines, one per field, that Shifter's runtime and ours both
read and the gateway writes next to ``<id>.squashfs``::

    FORMAT: squashfs
    ENTRY: ["/usr/bin/python3", "-u"]
    CMD: ["app.py"]
    WORKDIR: /app
    ENV: PATH=/usr/local/bin:/usr/bin:/bin
    ENV: LANG=C.UTF-8
    USERACL: 4242,4243
    GROUPACL: 4240

``ENTRY`` and ``CMD`` are written as JSON arrays (exec form); a value that is not a JSON
array is read as a shell-form string, as older Shifter images have it.  ``USERACL`` and
``GROUPACL`` are present only for private images.  Unknown keys are kept (``extra``) and
written back unchanged, so a newer writer's fields survive.
"""

from __future__ import annotations

import json
import os
from shifter.frozen import field, frozen

from shifter import files
from shifter.errors import ShifterError

FORMATS = ("squashfs", "ext4", "cramfs", "vfs")


class MetaError(ShifterError):
    pass


@frozen
class ImageMeta:
    format: str = "squashfs"
    entry: tuple[str, ...] | str | None = None
    cmd: tuple[str, ...] | str | None = None
    workdir: str | None = None
    env: tuple[str, ...] = ()
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def private(self) -> bool:
        return bool(self.user_acl or self.group_acl)

    def allows(self, uid: int, gids: set[int] | frozenset[int]) -> bool:
        """May ``uid`` (with groups ``gids``) use this image?  Root always may."""
        if not self.private or uid == 0:
            return True
        return uid in self.user_acl or bool(set(gids) & set(self.group_acl))

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


def _command(value: str) -> tuple[str, ...] | str:
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return tuple(parsed)
    return value


def _ids(path: str, lineno: int, key: str, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.replace(" ", "").split(",") if x)
    except ValueError:
        raise MetaError(f"{path}:{lineno}: {key} must be comma-separated numeric ids, not {value!r}") from None


def parse(text: str, path: str = "<meta>") -> ImageMeta:
    fields: dict[str, object] = {}
    env: list[str] = []
    extra: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise MetaError(f"{path}:{lineno}: expected 'KEY: value', got {line!r}")
        key, value = key.strip(), value.strip()
        if key == "FORMAT":
            if value not in FORMATS:
                raise MetaError(f"{path}:{lineno}: unknown FORMAT {value!r} (known: {', '.join(FORMATS)})")
            fields["format"] = value
        elif key == "ENTRY":
            fields["entry"] = _command(value) if value else None
        elif key == "CMD":
            fields["cmd"] = _command(value) if value else None
        elif key == "WORKDIR":
            fields["workdir"] = value or None
        elif key == "ENV":
            if "=" not in value:
                raise MetaError(f"{path}:{lineno}: ENV needs NAME=value, got {value!r}")
            env.append(value)
        elif key == "USERACL":
            fields["user_acl"] = _ids(path, lineno, key, value)
        elif key == "GROUPACL":
            fields["group_acl"] = _ids(path, lineno, key, value)
        else:
            extra.append((key, value))
    if "format" not in fields:
        raise MetaError(f"{path}: no FORMAT line (not a shifter image metadata file?)")
    return ImageMeta(env=tuple(env), extra=tuple(extra), **fields)


def _format_command(value: tuple[str, ...] | str) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else value


def dumps(meta: ImageMeta) -> str:
    for item in meta.env:
        if "\n" in item or "=" not in item:
            raise MetaError(f"can't write image metadata: bad ENV entry {item!r}")
    lines = [f"FORMAT: {meta.format}"]
    if meta.entry:
        lines.append(f"ENTRY: {_format_command(meta.entry)}")
    if meta.cmd:
        lines.append(f"CMD: {_format_command(meta.cmd)}")
    if meta.workdir:
        lines.append(f"WORKDIR: {meta.workdir}")
    if meta.user_acl:
        lines.append("USERACL: " + ",".join(map(str, meta.user_acl)))
    if meta.group_acl:
        lines.append("GROUPACL: " + ",".join(map(str, meta.group_acl)))
    lines += [f"ENV: {item}" for item in meta.env]
    lines += [f"{k}: {v}" for k, v in meta.extra]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise MetaError(f"can't write image metadata: a value contains a newline: {line!r}")
    return "\n".join(lines) + "\n"


def read(path: str) -> ImageMeta:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse(f.read(), path)
    except FileNotFoundError:
        raise MetaError(f"can't read image metadata: {path}: no such file",
                        "is the image id right? (shifterimg lookup IMAGE)") from None
    except PermissionError:
        # a private image's files are readable only by its users (runtime.imagefiles)
        raise MetaError(f"can't use the image of {path}: it is private and uid {os.getuid()} is not "
                        "allowed", "ask the image's owner to add you (shifterimg pull --user/--group)") from None
    except OSError as e:
        raise MetaError(f"can't read image metadata: {path}: {e.strerror}") from None


def write(path: str, meta: ImageMeta) -> None:
    """Write atomically (temp file in the same directory + rename).  Who may read the file
    follows the image's ACL (``runtime.imagefiles``: 0644 when public, else root and the
    ACL's users and groups), set before the rename: the file is never more open."""
    # start-up: imagefiles imports typing (~8 ms); only the gateway writes metadata, the
    # prolog and the launcher read it
    from shifter.runtime import imagefiles

    text = dumps(meta)
    with files.atomic_file(path, imagefiles.mode_for(meta.user_acl, meta.group_acl), text=True) as f:
        f.write(text)
        f.flush()
        imagefiles.set_access(f.fileno(), meta.user_acl, meta.group_acl)
