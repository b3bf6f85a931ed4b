"""Pinning an image: a ``docker:`` (or gateway-imported ``custom:``) tag becomes its image
id through the image gateway, as Shifter's lookup does.  Its own small module so that the
commands that pin (``shifter``, ``setupRoot``, the plugin at submission) import the
gateway client only when there is a tag to look up."""

from __future__ import annotations

from shifter.runtime.image import ImageRef


def resolve_id(config, image: ImageRef) -> ImageRef:
    """``image`` pinned: id and local images are returned as they are; gateway errors
    (unknown image, gateway down) are raised."""
    if image.type not in ("docker", "custom"):
        return image
    # start-up: the client (json, re, its records: ~25 ms) is for tags only; an id or a
    # local image, as every step of a job runs it, never pays for it
    from shifter.gateway_client.client import lookup_id

    return ImageRef("id", lookup_id(config, image))
