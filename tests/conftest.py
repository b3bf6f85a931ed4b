"""Shared test machinery: prerequisites, the local site, and running things as a test user.

Tiers (markers): unit tests need nothing; ``root`` tests need root; ``slurm`` tests
need the local cluster (brought up here when missing and we are root).  A missing
prerequisite skips the test with the reason, except under ``SHIFTER_CI=1``, where it
fails it: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time

import pytest

from shifter.tools.site import TEST_USERS, Site

CI = os.environ.get("SHIFTER_CI") == "1"
USER1, USER2 = TEST_USERS[0][0], TEST_USERS[1][0]


def require(condition: bool, why: str) -> None:
    """Skip (or, under SHIFTER_CI=1, fail) the current test when ``condition`` is false."""
    if not condition:
        if CI:
            pytest.fail(f"prerequisite missing under SHIFTER_CI=1: {why}")
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _tier_prerequisites(request):
    if request.node.get_closest_marker("root") or request.node.get_closest_marker("slurm"):
        require(os.geteuid() == 0, "needs root (run as root, as CI does)")


@pytest.fixture(scope="session")
def site() -> Site:
    from shifter.tools import cluster

    s = Site()
    state = cluster.saved_state(s)
    if state.get("nodes"):
        s = Site(nodes=state["nodes"])
    return s


def _cluster_ready(site: Site) -> bool:
    from shifter.tools import cluster

    if not os.path.exists(site.slurm_conf):
        return False
    states = cluster.node_states(site)
    return all(states.get(n, "").rstrip("*") in ("idle", "mixed", "allocated") for n in site.node_names())


@pytest.fixture(scope="session")
def cluster(site):
    """The local site, up (brought up here if needed, which needs root)."""
    if not _cluster_ready(site):
        require(os.geteuid() == 0, "the local cluster is down and bringing it up needs root")
        from shifter.tools import cluster as tool

        tool.up(site, images=True)
    require(_cluster_ready(site), "the local cluster did not come up (see tools/cluster status)")
    return site


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


@pytest.fixture(scope="session")
def runner(site) -> Runner:
    return Runner(site)


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


@pytest.fixture
def slurmd_logs(cluster) -> SlurmdLogs:
    logs = SlurmdLogs(cluster)
    logs.mark()
    return logs
