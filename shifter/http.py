"""HTTP plumbing shared by the registry client and the gateway client.

``requests`` honours ``http_proxy``/``https_proxy``/``no_proxy`` from the environment.
Loopback addresses are never sent through a proxy, whatever ``no_proxy`` says: a proxy
cannot reach this host's 127.0.0.1, and a site-wide ``http_proxy`` must not break a
local gateway or registry.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

NO_PROXY = {"http": None, "https": None, "all": None}
USER_AGENT = "shifter/0.1"


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxies_for(url: str) -> dict | None:
    """``proxies=`` for a request to ``url``: none at all for loopback, else the environment's."""
    return dict(NO_PROXY) if is_loopback(url) else None


def new_session():
    """A requests.Session (imported here: ``import requests`` alone costs ~90 ms, which the
    SPANK plugin's one lookup should not pay; see gateway_client.lite)."""
    import requests  # start-up: ~90 ms; never on the submission's image lookup (gateway_client.lite)

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


_REASONS = ("Connection refused", "Name or service not known", "No route to host", "Connection reset",
            "Read timed out", "timed out", "Temporary failure in name resolution",
            "Network is unreachable", "certificate verify failed")


def reason(e: Exception) -> str:
    """A short reason for a requests exception (urllib3 buries the OS error deep inside)."""
    text = str(e)
    for marker in _REASONS:
        if marker in text:
            return marker.lower()
    return text[:200]
