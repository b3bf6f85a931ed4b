"""The tree keeps its layers: what may import what (the table in ``helpers.layers``, which
docs/dev.md "Layers" points to), no import cycle, and no import inside a function without
a ``# start-up:`` comment saying why it is deferred.  The source is read with ``ast``; no
module of the tree is imported.  Each check is also fed a bad synthetic tree, so it is
seen to fail."""

import os
import textwrap
import tomllib

import pytest

from helpers import layers

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tree():
    found = layers.tree_sources(CHECKOUT)
    return {mod: src for mod, (_, src) in found.items()}, {mod: path for mod, (path, _) in found.items()}


def _problems(tree, kind):
    sources, where = tree
    return [p for p in layers.problems(sources, where) if kind in p]


def test_the_tree_is_read_whole(tree):
    """The checker sees every layer (a rename of a folder must not empty the checks)."""
    sources, _ = tree
    assert {layers.layer_of(m) for m in sources} == set(layers.ALLOWED) | {"tools"}
    assert len(sources) > 50
    assert "shifter.errors" in sources and "shifter.runtime.builder.bin.setupRoot" in sources


def test_the_checker_reads_what_pyproject_installs():
    """A folder or script installed but missing from ``helpers.layers`` would go unchecked."""
    with open(os.path.join(CHECKOUT, "pyproject.toml"), "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    installed = {folder: package for folder, package in layers.FOLDERS.items() if layers.installed(package)}
    assert {folder: package for package, folder in setuptools["package-dir"].items()} == installed
    assert {layers.layer_of(p) for p in setuptools["packages"]} <= set(layers.ALLOWED)
    assert sorted(setuptools["script-files"]) == sorted(layers.SCRIPTS)


def test_every_import_keeps_to_the_layers(tree):
    assert _problems(tree, "may not import") == []


def test_nothing_installed_imports_the_local_site_or_the_tests(tree):
    assert _problems(tree, "never imports") == []


def test_the_gateway_client_never_imports_the_gateway(tree):
    sources, _ = tree
    edges = layers.graph(sources)
    assert [(m, i.line, i.target) for m, imps in edges.items() if m.startswith("shifter.gateway_client")
            for i in imps if i.target == "shifter.gateway" or i.target.startswith("shifter.gateway.")] == []


def test_no_import_cycle_counting_imports_inside_functions(tree):
    sources, _ = tree
    assert layers.cycles(layers.graph(sources)) == []


def test_every_import_inside_a_function_says_why_it_is_deferred(tree):
    assert _problems(tree, "inside a function") == []


# -- the checks can fail -------------------------------------------------------------------

def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


BAD = {
    # runtime may not import the builder (upward) nor the launcher
    "shifter.runtime.config": _src("""
        from shifter.runtime.builder import udi
        import shifter.runtime.launcher.launch
        from shifter.runtime import volumes
        """),
    "shifter.runtime.volumes": "import os\n",
    "shifter.runtime.builder": "",
    "shifter.runtime.builder.udi": "from shifter.runtime import volumes\n",
    "shifter.runtime.launcher": "",
    "shifter.runtime.launcher.launch": "",
    # the client may not import the gateway, nor anything installed the local site
    "shifter.gateway_client.client": _src("""
        from shifter.gateway import server
        import tools.cluster
        from helpers import prereq
        """),
    "shifter.gateway": "",
    "shifter.gateway.server": "",
    "tools.cluster": "from shifter.runtime.builder import udi\n",  # tools may import anything
    # a cycle made through an import inside a function (with its comment: the cycle alone)
    "shifter.wlm.prolog": "from shifter.wlm import epilog\n",
    "shifter.wlm.epilog": _src("""
        def run():
            from shifter.wlm import prolog  # start-up: never
        """),
    # deferred imports: commented (end of line, line above, above the run) and not
    "shifter.spank.request": _src("""
        import os


        def a():
            # start-up: the builder costs ctypes
            from shifter.runtime.builder import udi
            import json

            from shifter.runtime import volumes
            return udi, json, volumes


        def b():
            import re  # start-up: only here
            x = 1
            import struct
            # a comment that says nothing
            import fcntl
            return re, x, struct, fcntl


        class C:
            def m(self):
                try:
                    import select
                except ImportError:
                    pass
        """),
}


def test_the_checker_reports_upward_imports_cycles_and_silent_deferred_imports():
    found = layers.problems(BAD)
    assert found == [
        "shifter.gateway_client.client:1: imports shifter.gateway.server: shifter.gateway_client may not "
        "import shifter.gateway (it may import: shifter, shifter.runtime)",
        "shifter.gateway_client.client:2: imports tools.cluster: installed code never imports tools (not installed)",
        "shifter.gateway_client.client:3: imports helpers: installed code never imports helpers "
        "(not installed)",
        "shifter.runtime.config:1: imports shifter.runtime.builder.udi: shifter.runtime may not import "
        "shifter.runtime.builder (it may import: shifter, shifter.templates)",
        "shifter.runtime.config:2: imports shifter.runtime.launcher.launch: shifter.runtime may not import "
        "shifter.runtime.launcher (it may import: shifter, shifter.templates)",
        "shifter.spank.request:16: imports struct inside a function without a '# start-up:' comment saying "
        "why it is deferred (or move it to the top)",
        "shifter.spank.request:18: imports fcntl inside a function without a '# start-up:' comment saying "
        "why it is deferred (or move it to the top)",
        "shifter.spank.request:25: imports select inside a function without a '# start-up:' comment saying "
        "why it is deferred (or move it to the top)",
        "import cycle: shifter.wlm.epilog <-> shifter.wlm.prolog",
    ]


def test_a_longer_cycle_is_found_and_a_chain_is_not_one():
    chain = {"shifter.a": "import shifter.b\n", "shifter.b": "from shifter import c\n", "shifter.c": "import os\n"}
    assert layers.cycles(layers.graph(chain)) == []
    ring = dict(chain, **{"shifter.c": "def f():\n    from shifter.a import x  # start-up: no\n"})
    assert layers.cycles(layers.graph(ring)) == [["shifter.a", "shifter.b", "shifter.c"]]


def test_names_map_to_modules_and_layers():
    assert layers.module_name("runtime/builder/udi.py") == "shifter.runtime.builder.udi"
    assert layers.module_name("shifter/errors.py") == "shifter.errors"
    assert layers.module_name("runtime/__init__.py") == "shifter.runtime"
    assert layers.module_name("tools/cluster.py") == "tools.cluster"
    assert layers.module_name("spank/shim.c") is None
    assert layers.layer_of("shifter.runtime.builder.udi") == "shifter.runtime.builder"
    assert layers.layer_of("shifter.runtime.image") == "shifter.runtime"
    assert layers.layer_of("shifter.errors") == "shifter"
    assert layers.layer_of("shifter.templates") == "shifter.templates"
    assert layers.layer_of("json") is None
    # ``from pkg import name``: the module pkg.name when there is one, else pkg
    imps = layers.imports("shifter.x", "from shifter.runtime import plan\nfrom shifter.runtime.plan import Plan\n",
                          {"shifter.runtime", "shifter.runtime.plan"})
    assert [i.target for i in imps] == ["shifter.runtime.plan", "shifter.runtime.plan"]
    # relative imports, from a module and from a package's __init__
    known = {"shifter.runtime", "shifter.runtime.volumes", "shifter.runtime.builder", "shifter.runtime.builder.udi"}
    imps = layers.imports("shifter.runtime.config", "from . import volumes\nfrom .builder import udi\n", known)
    assert [i.target for i in imps] == ["shifter.runtime.volumes", "shifter.runtime.builder.udi"]
    imps = layers.imports("shifter.runtime.builder", "from .udi import x\nfrom .. import volumes\n", known)
    assert [i.target for i in imps] == ["shifter.runtime.builder.udi", "shifter.runtime.volumes"]
