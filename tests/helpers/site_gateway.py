"""The local site's image gateway for root-tier tests: munge credentials of the test users,
the site's registries as prerequisites, private ``shifter-gateway`` instances, and a small
REST client (``Api``)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import requests

from helpers.gateway import free_port
from helpers.prereq import UIDS, require
from tools import gateway as gwtool
from tools import images as test_images
from tools import registry as site_registry
from tools.site import Site

SITE = Site()
NO_PROXY = {"http": None, "https": None, "all": None}


def credential(user: str = "root", payload: str | None = None, ttl: int | None = None) -> str:
    """A fresh munge credential made by ``user`` (root: the gateway's admin)."""
    argv = ["munge", f"--socket={SITE.munge_socket}"]
    argv += [f"--ttl={ttl}"] if ttl else []
    argv += [] if payload else ["--no-input"]
    if user != "root":
        argv = ["setpriv", f"--reuid={UIDS[user]}", f"--regid={UIDS[user]}", "--init-groups", "--", *argv]
    return subprocess.run(argv, input=payload, capture_output=True, text=True, check=True).stdout.strip()


def prerequisites() -> None:
    require(os.path.exists(SITE.munge_socket), f"munged is not running ({SITE.munge_socket})")
    require(site_registry.probe(SITE.registry_url()) == 200, "the site's registry 5000 is not up")
    require(test_images.remote_digest(SITE, "test/debian:latest") is not None, "test images not pushed")
    for name in UIDS:
        require(subprocess.run(["id", name], capture_output=True).returncode == 0, f"no test user {name}")


class Api:
    def __init__(self, gateway: gwtool.Instance, system: str = "local"):
        self.gw = gateway
        self.system = system

    def call(self, method: str, path: str, user: str = "root", body=None, payload: str | None = None,
             cred: str | None = ..., **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if cred is ...:
            cred = credential(user, payload)
        if cred is not None:
            headers["authentication"] = cred
        data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        return requests.request(method, self.gw.url + path, headers=headers, data=data,
                                proxies=NO_PROXY, timeout=60, **kw)

    def ok(self, method: str, path: str, **kw):
        resp = self.call(method, path, **kw)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        return resp.json()

    def pull(self, tag: str, user: str = "root", body=None, payload=None, timeout: float = 180,
             op: str = "pull", itype: str = "docker") -> dict:
        """POST until the record is READY or FAILURE (what shifterimg does)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.ok("POST", f"/api/{op}/{self.system}/{itype}/{tag}/", user=user, body=body,
                             payload=payload)
            if record["status"] in ("READY", "FAILURE"):
                return record
            assert time.monotonic() < deadline, record
            time.sleep(0.2)

    def lookup(self, tag: str, user: str = "root", itype: str = "docker") -> requests.Response:
        return self.call("GET", f"/api/lookup/{self.system}/{itype}/{tag}/", user=user)

    def tags(self, user: str = "root") -> set[str]:
        return {t for r in self.ok("GET", f"/api/list/{self.system}/", user=user)["list"] for t in r["tag"]}


def new_gateway(**config) -> gwtool.Instance:
    directory = tempfile.mkdtemp(prefix="shifter-gw-test-")
    return gwtool.Instance(directory, SITE, free_port(), **config)
