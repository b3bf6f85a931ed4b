"""Shared test machinery: the tiers, prerequisites, the local site, and running things as a
test user.

Tiers are folders and markers, one to one (``helpers.tiers`` says what each may use, and the
collection below refuses a test in the wrong folder):

- ``tests/unit``: needs nothing: no root, no local site (munged, registries, gateway,
  Slurm, test users), no network beyond servers the test starts on 127.0.0.1.  Passes as any
  user.  No ``root``/``slurm`` marker, none of the site fixtures below.
- ``tests/root`` (``pytestmark = pytest.mark.root``): needs root.  May use the local site's
  services without Slurm jobs (munged, registries, gateway, test users, /opt/shifter),
  reached through the ``cluster`` fixture, which brings the site up when it is down.
- ``tests/slurm`` (``pytestmark = pytest.mark.slurm``): needs the local Slurm cluster
  (submits jobs, reads slurmd logs).

A missing prerequisite skips the test with the reason, except under ``SHIFTER_CI=1``, where
it fails it: CI must never pass by skipping.  Shared helpers live in ``tests/helpers``
(``from helpers.x import y``), shared fixtures here or in a tier's own conftest.py; test
modules never import each other.
"""

from __future__ import annotations

import os
import sys

# The checkout's shifter/ folder holds only the package root's own modules, so the checkout
# comes after site-packages (`shifter` is the installed package, `tools` the checkout's
# folder), even when pytest was started as `python -m pytest` from the checkout.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != ROOT] + [ROOT]

import pytest  # noqa: E402

from helpers import tiers  # noqa: E402
from helpers.prereq import require  # noqa: E402
from helpers.site import Runner, SlurmdLogs, cluster_ready  # noqa: E402
from tools import cluster as cluster_tool  # noqa: E402
from tools.site import Site  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Refuse the run when a test sits in the wrong tier folder (before -m/-k deselect it)."""
    problems = []
    for item in items:
        tier = tiers.tier_of(str(item.path))
        if tier is None:
            continue
        markers = {m.name for m in item.iter_markers()}
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        used = [name for name in getattr(item, "fixturenames", ()) if name in tiers.SITE_FIXTURES
                and _ours(defs.get(name))]
        problems += [f"{item.nodeid}: {p}" for p in tiers.item_problems(tier, markers, used)]
    if problems:
        raise pytest.UsageError("tests in the wrong tier (see tests/conftest.py):\n  " + "\n  ".join(problems))


def _ours(fixturedefs) -> bool:
    """The fixture that applies is one of this file's (a module's own fixture of the same
    name, such as a unit module's ``site``, is not a site fixture)."""
    code = getattr(fixturedefs[-1].func, "__code__", None) if fixturedefs else None
    return code is not None and os.path.samefile(code.co_filename, __file__)


@pytest.fixture(autouse=True)
def _tier_prerequisites(request):
    if request.node.get_closest_marker("root") or request.node.get_closest_marker("slurm"):
        require(os.geteuid() == 0, "needs root (run as root, as CI does)")


@pytest.fixture(scope="session")
def site() -> Site:
    """The local site's description (paths, nodes); nothing is started."""
    s = Site()
    state = cluster_tool.saved_state(s)
    if state.get("nodes"):
        s = Site(nodes=state["nodes"])
    return s


@pytest.fixture(scope="session")
def cluster(site):
    """The local site, up (brought up here if needed, which needs root)."""
    if not cluster_ready(site):
        require(os.geteuid() == 0, "the local cluster is down and bringing it up needs root")
        cluster_tool.up(site, images=True)
    require(cluster_ready(site), "the local cluster did not come up (see tools/cluster status)")
    return site


@pytest.fixture(scope="session")
def runner(site) -> Runner:
    """Runs commands as a test user with the site's environment."""
    return Runner(site)


@pytest.fixture
def slurmd_logs(cluster) -> SlurmdLogs:
    """What the slurmd logs gain during the test."""
    logs = SlurmdLogs(cluster)
    logs.mark()
    return logs
