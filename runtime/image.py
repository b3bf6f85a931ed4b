"""Image descriptors: ``--image=`` values and ``shifter --image`` arguments.

Grammar (Shifter's):
  ``docker:REPO[:TAG]``  an image from a Docker registry, resolved by the gateway
                         (no tag means ``:latest``; REPO may carry a registry host)
  ``docker:REPO@sha256:<64 hex>``  the image whose manifest (or index) has this digest
                         (an extension of Shifter's grammar, as in Docker; a tag and a
                         digest together are refused: give one)
  ``REPO:TAG``           the same with the site's ``defaultImageType`` (docker)
  ``id:<64 hex>``        an image already on the system, by id (as pinned at submission)
  ``custom:NAME[:TAG]``  an image imported through the gateway (``shifterimg import
                         FILE custom:NAME:TAG``), resolved by the gateway like docker
                         images; no tag means ``:latest``, as the import stores it
  ``local:/PATH``        a directory of the host as the root (``/`` = the host itself);
                         only where udiRoot.conf sets ``allowLocalChroot=1``

Anything else is refused with one line saying which value and why: hostile characters
are never silently dropped.
"""

from __future__ import annotations

import functools
import re
from shifter.frozen import frozen

from shifter.errors import UsageError

KNOWN_TYPES = ("docker", "id", "custom", "local")

# Docker reference grammar (distribution/reference); of digests, sha256 only.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"


@functools.cache
def _host_and_path_res():
    """The grammar's registry host and repository path patterns, compiled at first use: ~1 ms
    that every cold start importing this module would pay, and that an id never needs."""
    return (re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                       r"(?::[0-9]+)?$"),
            re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$"))


_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TYPE_RE = re.compile(r"^[a-z]+$")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9:_./@+-]")

MAX_LEN = 1024


@frozen
class ImageRef:
    """A parsed image descriptor: type (``docker``, ``id``) and its normalised value."""

    type: str
    tag: str

    def __str__(self) -> str:
        return f"{self.type}:{self.tag}"


def _refuse(spec: str, why: str, hint: str) -> UsageError:
    return UsageError(f"invalid image {spec!r}: {why}", hint)


def parse_image(spec: str | None, config=None, *, default_type: str | None = None) -> ImageRef:
    """Parse an image descriptor; raise ``UsageError`` with the reason when malformed.

    ``config`` (a ``UdiRootConfig``) supplies ``defaultImageType`` for bare names and
    ``allowLocalChroot`` for ``local:`` images; without it bare names are docker images
    and ``local:`` is refused.
    """
    if default_type is None:
        default_type = config.defaultImageType if config is not None else "docker"
    allow_local = bool(config is not None and config.allowLocalChroot)
    hint = "use docker:REPO:TAG (e.g. docker:ubuntu:22.04) or id:<64-hex image id>"
    if spec is None or spec.strip() == "":
        raise UsageError("invalid image '': the image name is empty", hint)
    if len(spec) > MAX_LEN:
        raise _refuse(spec[:40] + "...", f"longer than {MAX_LEN} characters", hint)
    bad = _BAD_CHARS.search(spec)
    if bad:
        raise _refuse(spec, f"character {bad.group()!r} is not allowed in an image name", hint)

    itype, sep, rest = spec.partition(":")
    if sep and itype in KNOWN_TYPES:
        pass
    elif sep and itype.isalpha() and "/" not in itype and _looks_like_type(itype, rest):
        raise _refuse(spec, f"unknown image type {itype!r} (known: {', '.join(KNOWN_TYPES)})", hint)
    else:
        itype, rest = default_type, spec

    if rest == "":
        raise _refuse(spec, f"nothing follows '{itype}:'", hint)
    if itype == "id":
        if not _ID_RE.match(rest):
            raise _refuse(spec, "an image id is 64 lowercase hex digits", "run 'shifterimg lookup IMAGE' to get the id")
        return ImageRef("id", rest)
    if itype == "custom":
        # an image imported through the gateway (shifterimg import FILE custom:NAME:TAG):
        # the docker name and tag grammar, no tag meaning :latest (as the import stores it)
        return ImageRef("custom", _normalise_docker(spec, rest, "use custom:NAME:TAG (shifterimg import FILE IMAGE)"))
    if itype == "local":
        if not allow_local:
            raise _refuse(spec, "local images are not allowed on this system (allowLocalChroot=0)",
                          "use a docker: image")
        if not rest.startswith("/") or (rest != "/" and (rest.endswith("/") or "//" in rest)) or any(
                part in (".", "..") for part in rest.split("/")):
            raise _refuse(spec, "local: needs an absolute, normalised path (no '.', '..', '//' or trailing '/')",
                          "e.g. local:/ or local:/opt/rootfs")
        return ImageRef("local", rest)
    return ImageRef("docker", _normalise_docker(spec, rest, hint))


def _looks_like_type(prefix: str, rest: str) -> bool:
    """``foo:bar`` is REPO:TAG, but ``foo:repo/x:tag`` names an (unknown) type ``foo``."""
    return ":" in rest or "/" in rest


def _normalise_docker(spec: str, ref: str, hint: str) -> str:
    repo, tag = ref, "latest"
    digest = None
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        if not _DIGEST_RE.match(digest):
            raise _refuse(spec, f"digest {digest!r} is not sha256:<64 lowercase hex digits>",
                          "copy the digest from 'docker inspect' or the registry, e.g. "
                          "docker:REPO@sha256:<64 hex>")
        if repo.rfind(":") > repo.rfind("/"):
            raise _refuse(spec, "a tag and a digest together: give one of them",
                          "use docker:REPO@sha256:<64 hex> (the digest names the image)")
    slash = repo.rfind("/")
    colon = repo.rfind(":")
    if digest is None and colon > slash:
        repo, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise _refuse(spec, f"tag {tag!r} is not a valid Docker tag", hint)
    host, _, path = repo.partition("/")
    # as in Docker, the first component names a registry only if it looks like a host
    if not path or not ("." in host or ":" in host or host == "localhost"):
        host, path = "", repo
    host_re, path_re = _host_and_path_res()
    if (host and not host_re.match(host)) or not path_re.match(path):
        raise _refuse(
            spec,
            f"repository {repo!r} is not a valid Docker repository name "
            "(lowercase letters, digits and . _ - separators, '/'-separated)",
            hint,
        )
    if any(part in (".", "..") for part in repo.split("/")):
        raise _refuse(spec, "'.' and '..' are not allowed in a repository name", hint)
    return f"{repo}@{digest}" if digest else f"{repo}:{tag}"
