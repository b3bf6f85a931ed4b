"""The suite itself: tier folders match tier markers, test modules never import each other,
and test basenames are unique.

pytest imports test modules by basename (rootdir-relative, no packages), so two test files
with one name in different tier folders stop the whole run at collection.  The tier rules
are ``helpers.tiers``; they are checked twice: here on the source of every module, and by
tests/conftest.py on every collected test (which sees the fixtures a test really gets).
"""

import collections
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from helpers import tiers

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {tier: os.path.join(TESTS, tier) for tier in tiers.TIERS}


def _python_files(top):
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(root, name)


def _local_modules() -> set[str]:
    return {os.path.basename(p)[:-3] for folder in FOLDERS.values() for p in _python_files(folder)}


def test_every_test_file_has_a_basename_of_its_own():
    seen = collections.defaultdict(list)
    for root, _, files in os.walk(TESTS):
        for name in files:
            if name.startswith("test_") and name.endswith(".py"):
                seen[name].append(os.path.relpath(os.path.join(root, name), TESTS))
    assert {n: p for n, p in seen.items() if len(p) > 1} == {}


def test_tier_folders_hold_test_modules_and_a_conftest_only():
    """Shared code lives in tests/helpers, not beside the tests."""
    others = [os.path.relpath(p, TESTS) for folder in FOLDERS.values() for p in _python_files(folder)
              if not os.path.basename(p).startswith("test_") and os.path.basename(p) != "conftest.py"]
    assert others == []
    assert set(os.listdir(TESTS)) - {"__pycache__"} == {"conftest.py", "data", "helpers", *tiers.TIERS}


def test_every_module_keeps_to_its_tier_and_imports_no_test_module():
    local = _local_modules()
    problems = {}
    for tier, folder in FOLDERS.items():
        for path in _python_files(folder):
            conftest = os.path.basename(path) == "conftest.py"
            with open(path) as f:
                found = tiers.module_problems(tier, f.read(), local, marker=not conftest)
            if found:
                problems[os.path.relpath(path, TESTS)] = found
    for path in [os.path.join(TESTS, "conftest.py"), *_python_files(os.path.join(TESTS, "helpers"))]:
        with open(path) as f:
            found = tiers.module_problems(None, f.read(), local, sets_path=path == os.path.join(TESTS, "conftest.py"))
        if found:
            problems[os.path.relpath(path, TESTS)] = found
    assert problems == {}


# -- the checks themselves can fail ------------------------------------------------------------

BAD_UNIT = '''
import sys
import pytest
import test_launch
from conftest import require
from tests.conftest import USER1
from test_private_plan import fresh  # noqa: F401
from tools import registry
from helpers.site_gateway import SITE
from helpers import site_launch
sys.path.insert(0, "/elsewhere")

pytestmark = pytest.mark.root


@pytest.mark.slurm
def test_a(cluster):
    pass


@pytest.fixture
def thing(runner):
    return runner


@pytest.mark.usefixtures("slurmd_logs")
def test_b(request):
    request.getfixturevalue("site")
'''


def test_the_source_check_refuses_a_unit_module_that_needs_the_site():
    found = "\n".join(tiers.module_problems("unit", BAD_UNIT, {"test_launch", "test_private_plan"}))
    for expected in ("imports test_launch:", "imports conftest:", "imports tests.conftest:",
                     "imports test_private_plan:", "imports tools.registry, which reaches the local site",
                     "imports helpers.site_gateway, which reaches", "imports helpers.site_launch, which reaches",
                     "changes sys.path", "marked root, so it belongs in tests/root",
                     "marked slurm, so it belongs in tests/slurm", "test_a uses the site fixture 'cluster'",
                     "thing uses the site fixture 'runner'", "asks for the site fixture 'slurmd_logs'",
                     "asks for the site fixture 'site'"):
        assert expected in found, (expected, found)


def test_the_source_check_passes_what_the_rules_allow():
    unit = textwrap.dedent('''
        import pytest
        from helpers.prereq import require
        from helpers.gateway import free_port
        from tools import gateway


        @pytest.fixture
        def site(tmp_path):  # a module's own fixture of that name is not the site
            return tmp_path


        def test_x(site):
            require(True, "")
        ''')
    assert tiers.module_problems("unit", unit, {"test_x"}) == []
    root = "import pytest\nfrom helpers.site_launch import run\npytestmark = [pytest.mark.root, pytest.mark.fuse]\n"
    assert tiers.module_problems("root", root, set()) == []
    assert tiers.module_problems("root", root.replace("pytest.mark.root, ", ""), set()) == [
        "no module-level pytestmark = pytest.mark.root (every module in tests/root)"]
    assert tiers.module_problems("slurm", root, set()) == [
        "no module-level pytestmark = pytest.mark.slurm (every module in tests/slurm)"]
    assert tiers.module_problems("root", "import pytest\n", set(), marker=False) == []  # a tier's conftest.py


def test_the_collection_check_refuses_tests_in_the_wrong_folder(tmp_path):
    """tests/conftest.py on a copy of the suite's machinery: a unit test getting the site's
    ``cluster`` through a fixture of its own, and a root module without its marker, stop
    the run at collection, even when -m deselects them; a unit module's own ``site`` does not."""
    top = tmp_path / "tests"
    shutil.copytree(os.path.join(TESTS, "helpers"), top / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(TESTS, "conftest.py"), top / "conftest.py")
    (tmp_path / "tools").symlink_to(os.path.join(os.path.dirname(TESTS), "tools"))  # the checkout's, not installed
    (top / "unit").mkdir()
    (top / "root").mkdir()
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.pytest.ini_options]
        pythonpath = ["tests"]
        markers = ["root: r", "slurm: s"]
        '''))
    (top / "unit" / "test_fine.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.fixture
        def site():
            return "mine"

        def test_own_site(site):
            assert site == "mine"
        '''))

    def collect(*args):
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only",
                               *args, "tests"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    res = collect()
    assert res.returncode == 0, res.stdout + res.stderr
    (top / "unit" / "test_sneaky.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.fixture
        def up(cluster):
            return cluster

        def test_sneaky(up):
            pass
        '''))
    (top / "root" / "test_unmarked.py").write_text("def test_unmarked():\n    pass\n")
    res = collect("-m", "not root and not slurm")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "tests/unit/test_sneaky.py::test_sneaky: uses the site fixture 'cluster'" in out, out
    assert "tests/root/test_unmarked.py::test_unmarked: is in tests/root but not marked root" in out, out
    assert "test_own_site" not in out.split("wrong tier")[1], out


@pytest.mark.parametrize("tier, markers, fixtures, expected", [
    ("unit", set(), [], []),
    ("unit", {"root"}, [], ["marked root, so it belongs in tests/root"]),
    ("unit", {"parametrize"}, ["runner"],
     ["uses the site fixture 'runner', so it belongs in tests/root or tests/slurm"]),
    ("root", {"root", "fuse"}, ["cluster"], []),
    ("slurm", {"root"}, [], ["is in tests/slurm but not marked slurm (pytestmark = pytest.mark.slurm)"]),
])
def test_item_rules(tier, markers, fixtures, expected):
    assert tiers.item_problems(tier, markers, fixtures) == expected
