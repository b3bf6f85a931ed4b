"""Running things on the local site: commands as a test user, and the slurmd logs."""

from __future__ import annotations

import os
import pwd
import subprocess
import time

from tools import cluster as cluster_tool
from tools.site import Site

from helpers.prereq import USER1


def cluster_ready(site: Site) -> bool:
    """Every node of the local cluster is up (idle, mixed or allocated)."""
    if not os.path.exists(site.slurm_conf):
        return False
    states = cluster_tool.node_states(site)
    return all(states.get(n, "").rstrip("*") in ("idle", "mixed", "allocated") for n in site.node_names())


class Runner:
    """Runs commands as a test user with the site's environment."""

    def __init__(self, site: Site):
        self.site = site

    def env(self, user: str | None = None, **extra) -> dict:
        env = {
            "PATH": f"{self.site.bindir}:/usr/local/bin:/usr/bin:/bin",
            "SLURM_CONF": self.site.slurm_conf,
            "SHIFTER_CONFIG": os.path.join(self.site.prefix, "etc", "udiRoot.conf"),
            "LANG": "C.UTF-8",
        }
        if user:
            pw = pwd.getpwnam(user)
            env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
        env.update(extra)
        return env

    def run(self, argv: list[str], user: str | None = USER1, timeout: float = 120, cwd: str | None = None,
            env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
        full_env = self.env(user, **(env or {}))
        if user:
            pw = pwd.getpwnam(user)
            cwd = cwd or pw.pw_dir
            argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd or "/", env=full_env)
        if check and res.returncode != 0:
            raise AssertionError(f"{argv} exited {res.returncode}: {res.stderr}")
        return res


class SlurmdLogs:
    """Reads what the slurmd logs gained since a mark."""

    def __init__(self, site: Site):
        self.site = site
        self.offsets: dict[str, int] = {}

    def mark(self) -> None:
        for node in self.site.node_names():
            try:
                self.offsets[node] = os.path.getsize(self.site.slurmd_log(node))
            except FileNotFoundError:
                self.offsets[node] = 0

    def new_lines(self, node: str) -> list[str]:
        with open(self.site.slurmd_log(node), "rb") as f:
            f.seek(self.offsets.get(node, 0))
            return f.read().decode(errors="replace").splitlines()

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.2)
        return predicate()
