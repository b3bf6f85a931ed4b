"""A tiny http.client transport for the one-request lookups made on the hot paths (the
SPANK plugin pinning ``--image`` at submission, ``shifter --image=docker:...``).

``import requests`` costs ~90 ms here, and ``http.client`` alone ~30 (it imports ``email``
and ``ssl``); a plain-http gateway is asked with one HTTP/1.0 request over a socket
(``_get_plain``), which costs ~1 ms to import.  https goes through http.client.  It speaks the subset of
``requests.Session.request`` that ``GatewayClient.request`` uses, so the client's
failover and error handling stay one code path.  It is used only when no proxy applies
(no ``*_proxy`` variable, or a loopback gateway); otherwise the client uses requests,
which honours proxies.
"""

from __future__ import annotations

import os
from urllib.parse import urlencode, urlsplit

import _socket  # not ``socket`` or ``http.client`` for http:// (see below)

from shifter.http import USER_AGENT, is_loopback

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


MAX_RESPONSE = 16 << 20


class LiteSession:
    def request(self, method: str, url: str, headers: dict | None = None, data=None, params=None,
                timeout: float | None = None, proxies=None, allow_redirects: bool = False) -> LiteResponse:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        body = data.encode() if isinstance(data, str) else data
        headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if parts.scheme == "http":
            return _plain(method, parts, path, headers, body, timeout)
        import http.client  # start-up: ~35 ms (ssl, email); only https pays for it

        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return LiteResponse(resp.status, resp.read())
        except TimeoutError as e:
            raise LiteTimeout(str(e)) from None
        except (OSError, http.client.HTTPException) as e:
            raise LiteError(getattr(e, "strerror", None) or str(e) or type(e).__name__) from None
        finally:
            conn.close()


def _plain(method: str, parts, path: str, headers: dict, body: bytes | None, timeout: float | None) -> LiteResponse:
    """One HTTP/1.0 request (the server closes the connection after its answer, and
    sends no chunked body) over a plain socket."""
    host, port = parts.hostname or "", parts.port or 80
    head = [f"{method} {path} HTTP/1.0", f"Host: {parts.netloc.rpartition('@')[2]}"]
    head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    try:
        infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
    except OSError as e:
        raise LiteError(f"can't resolve {host}: {e.strerror or e}") from None
    error: Exception = LiteError(f"no address for {host}")
    for family, kind, proto, _, address in infos:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(request)
            raw, length = b"", None
            while len(raw) <= MAX_RESPONSE:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
                if length is None:
                    length = _expected_length(raw)
                if length is not None and length >= 0 and len(raw) >= length:
                    break  # what Content-Length said: no need to wait for the close
            return _parse(raw)
        except TimeoutError as e:
            raise LiteTimeout(str(e) or "timed out") from None
        except ConnectionRefusedError as e:
            error = LiteError(e.strerror or "connection refused")
        except OSError as e:
            error = LiteError(e.strerror or str(e) or type(e).__name__)
        finally:
            sock.close()
    raise error


def _expected_length(raw: bytes) -> int | None:
    """The whole answer's length, once its head has arrived and says Content-Length."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    for line in raw[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return end + 4 + int(value.strip())
    return -1  # no length: read to the close (never >= a length)


def _parse(raw: bytes) -> LiteResponse:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    words = lines[0].split(None, 2)
    if not sep or len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
        raise LiteError("the answer is not HTTP")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"transfer-encoding" and value.strip().lower() != b"identity":
            raise LiteError("the answer uses a transfer encoding HTTP/1.0 does not allow")
    length = _expected_length(raw)
    return LiteResponse(int(words[1]), raw[len(head) + 4:length] if length is not None and length >= 0 else body)
