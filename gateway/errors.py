"""Errors of the image gateway.

``ApiError`` and its subclasses are what a request can fail with; the server turns each
into Shifter's JSON error body ``{"status": N, "error": ..., "message": ...}`` with that
HTTP status:

* 400 ``BadRequest``   the request is malformed (bad tag, bad JSON body, bad uid list);
* 401 ``Unauthorized`` no, bad, expired or replayed munge credential;
* 403 ``Forbidden``    authenticated, but not allowed (admin-only call, import not allowed);
* 404 ``NotFound``     unknown system, unknown image, or an image the caller may not see
                       (ACL denial is indistinguishable from absence, as in Shifter).

``PullError`` is a failure of the pull/import pipeline (registry, layer, conversion): it
ends the image record in ``FAILURE`` with the message in ``status_message``.
"""

from __future__ import annotations

from shifter.errors import ShifterError


class ApiError(ShifterError):
    """A request failed because of what the client sent (never a 500)."""

    http_status = 400


class BadRequest(ApiError):
    http_status = 400


class Unauthorized(ApiError):
    http_status = 401


class Forbidden(ApiError):
    http_status = 403


class NotFound(ApiError):
    http_status = 404


class PullError(ShifterError):
    """The pull or import of an image failed; the message becomes the record's status_message."""


class ImportRefused(ApiError, PullError):
    """The file of an import can't be used: an API error when the request is checked (with
    ``http_status``), a PullError when the worker opens the file again."""

    def __init__(self, message: str, hint: str | None = None, http_status: int = 400):
        super().__init__(message, hint)
        self.http_status = http_status
