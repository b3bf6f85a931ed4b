"""A tiny http.client transport for the one-request lookups made on the hot paths (the
SPANK plugin pinning ``--image`` at submission, ``shifter --image=docker:...``).

``import requests`` costs ~90 ms here; this costs ~20.  It speaks the subset of
``requests.Session.request`` that ``GatewayClient.request`` uses, so the client's
failover and error handling stay one code path.  It is used only when no proxy applies
(no ``*_proxy`` variable, or a loopback gateway); otherwise the client uses requests,
which honours proxies.
"""

from __future__ import annotations

import http.client
import os
import socket
from urllib.parse import urlencode, urlsplit

from shifter.gateway.http import USER_AGENT, is_loopback

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class LiteError(OSError):
    pass


class LiteTimeout(LiteError):
    pass


class LiteResponse:
    def __init__(self, status_code: int, content: bytes):
        self.status_code = status_code
        self.content = content
        self.text = content.decode("utf-8", "replace")


def usable(urls) -> bool:
    """No proxy applies to any of ``urls``."""
    return all(is_loopback(u) for u in urls) or not any(os.environ.get(v) for v in _PROXY_VARS)


class LiteSession:
    def request(self, method: str, url: str, headers: dict | None = None, data=None, params=None,
                timeout: float | None = None, proxies=None, allow_redirects: bool = False) -> LiteResponse:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        body = data.encode() if isinstance(data, str) else data
        try:
            conn.request(method, path, body=body, headers={"User-Agent": USER_AGENT, **(headers or {})})
            resp = conn.getresponse()
            return LiteResponse(resp.status, resp.read())
        except (socket.timeout, TimeoutError) as e:
            raise LiteTimeout(str(e)) from None
        except (OSError, http.client.HTTPException) as e:
            raise LiteError(getattr(e, "strerror", None) or str(e) or type(e).__name__) from None
        finally:
            conn.close()
