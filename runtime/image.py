"""Image descriptors: ``--image=`` values and ``shifter --image`` arguments.

Grammar (Shifter's):
  ``docker:REPO[:TAG]``  an image from a Docker registry, resolved by the gateway
                         (no tag means ``:latest``; REPO may carry a registry host)
  ``REPO:TAG``           the same with the site's ``defaultImageType`` (docker)
  ``id:<64 hex>``        an image already on the system, by id (as pinned at submission)

Anything else is refused with one line saying which value and why: hostile characters
are never silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shifter.errors import UsageError

KNOWN_TYPES = ("docker", "id")

# Docker reference grammar (distribution/reference), without the digest form.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_RE = re.compile(
    r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$")
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_TYPE_RE = re.compile(r"^[a-z]+$")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9:_./@-]")

MAX_LEN = 1024


@dataclass(frozen=True)
class ImageRef:
    """A parsed image descriptor: type (``docker``, ``id``) and its normalised value."""

    type: str
    tag: str

    def __str__(self) -> str:
        return f"{self.type}:{self.tag}"


def _refuse(spec: str, why: str, hint: str) -> UsageError:
    return UsageError(f"invalid image {spec!r}: {why}", hint)


def parse_image(spec: str | None, default_type: str = "docker") -> ImageRef:
    """Parse an image descriptor; raise ``UsageError`` with the reason when malformed."""
    hint = "use docker:REPO:TAG (e.g. docker:ubuntu:22.04) or id:<64-hex image id>"
    if spec is None or spec.strip() == "":
        raise UsageError("invalid image '': the image name is empty", hint)
    if len(spec) > MAX_LEN:
        raise _refuse(spec[:40] + "...", f"longer than {MAX_LEN} characters", hint)
    bad = _BAD_CHARS.search(spec)
    if bad:
        raise _refuse(spec, f"character {bad.group()!r} is not allowed in an image name", hint)

    itype, sep, rest = spec.partition(":")
    if sep and _TYPE_RE.match(itype) and itype in KNOWN_TYPES + ("custom", "local"):
        if itype not in KNOWN_TYPES:
            raise _refuse(spec, f"image type {itype!r} is not supported here", hint)
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
    return ImageRef("docker", _normalise_docker(spec, rest, hint))


def _looks_like_type(prefix: str, rest: str) -> bool:
    """``foo:bar`` is REPO:TAG, but ``foo:repo/x:tag`` names an (unknown) type ``foo``."""
    return ":" in rest or "/" in rest


def _normalise_docker(spec: str, ref: str, hint: str) -> str:
    if "@" in ref:
        raise _refuse(spec, "digest references (@sha256:...) are not supported; use a tag", hint)
    repo, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        repo, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise _refuse(spec, f"tag {tag!r} is not a valid Docker tag", hint)
    host, _, path = repo.partition("/")
    # as in Docker, the first component names a registry only if it looks like a host
    if not path or not ("." in host or ":" in host or host == "localhost"):
        host, path = "", repo
    if (host and not _HOST_RE.match(host)) or not _PATH_RE.match(path):
        raise _refuse(
            spec,
            f"repository {repo!r} is not a valid Docker repository name "
            "(lowercase letters, digits and . _ - separators, '/'-separated)",
            hint,
        )
    if any(part in (".", "..") for part in repo.split("/")):
        raise _refuse(spec, "'.' and '..' are not allowed in a repository name", hint)
    return f"{repo}:{tag}"
