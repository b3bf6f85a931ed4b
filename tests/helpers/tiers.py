"""The test tiers: which folder a test lives in, what it may use, and the checks that hold
the suite to it (the collection hook of tests/conftest.py and tests/unit/test_suite_layout.py).

- ``unit``: needs nothing (no root, no local site, no Slurm); no ``root``/``slurm`` marker,
  none of the site fixtures, no import of a module that reaches the site.
- ``root``: needs root; may use the site's services (munged, registries, gateway, test
  users) but runs no Slurm job.  Every module says ``pytestmark = pytest.mark.root``.
- ``slurm``: needs the local Slurm cluster.  Every module says ``pytestmark = pytest.mark.slurm``.
"""

from __future__ import annotations

import ast
import os

TIERS = ("unit", "root", "slurm")
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the fixtures of tests/conftest.py that reach the local site
SITE_FIXTURES = ("site", "cluster", "runner", "slurmd_logs")

#: modules that reach the local site (talk to its daemons, start or stop it)
SITE_MODULES = ("tools.cluster", "tools.daemons", "tools.registry",
                "tools.users")


def tier_of(path: str) -> str | None:
    """The tier of a file under tests/<tier>/ (None elsewhere)."""
    rel = os.path.relpath(os.path.abspath(path), TESTS).split(os.sep)
    return rel[0] if len(rel) > 1 and rel[0] in TIERS else None


def item_problems(tier: str, markers: set[str], site_fixtures: list[str]) -> list[str]:
    """What is wrong with a collected test of ``tier`` carrying ``markers`` and using the
    site fixtures ``site_fixtures`` (empty: nothing)."""
    problems = []
    if tier == "unit":
        problems += [f"marked {m}, so it belongs in tests/{m}" for m in ("root", "slurm") if m in markers]
        problems += [f"uses the site fixture '{f}', so it belongs in tests/root or tests/slurm"
                     for f in site_fixtures]
    elif tier not in markers:
        problems.append(f"is in tests/{tier} but not marked {tier} (pytestmark = pytest.mark.{tier})")
    return problems


# -- the static checks of a test module's source ------------------------------------------


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import, names of ``from X import a`` as ``X.a``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _fixtures(tree: ast.AST) -> set[str]:
    """Names of the fixtures the module defines itself."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if _dotted(target) in ("pytest.fixture", "fixture"):
                    names.add(node.name)
    return names


def _parametrized(function: ast.FunctionDef) -> set[str]:
    """The argument names a test's ``pytest.mark.parametrize`` decorators give it."""
    names = set()
    for dec in function.decorator_list:
        if isinstance(dec, ast.Call) and _dotted(dec.func).endswith("parametrize") and dec.args:
            first = dec.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names |= {n.strip() for n in first.value.split(",")}
            elif isinstance(first, (ast.List, ast.Tuple)):
                names |= {e.value for e in first.elts if isinstance(e, ast.Constant)}
    return names


def _reaches_site(module: str) -> bool:
    parts = module.split(".")
    if parts[0] == "helpers":
        return len(parts) > 1 and parts[1].startswith("site")
    return any(module == m or module.startswith(m + ".") for m in SITE_MODULES)


def module_problems(tier: str | None, source: str, local_modules: set[str], marker: bool = True,
                    sets_path: bool = False) -> list[str]:
    """What is wrong with the module ``source`` of ``tier`` (None: a helper or the top
    conftest.py, held to the import rules only); ``local_modules`` are the names of the
    modules in the tier folders; ``marker``: the module must declare its tier's marker (test
    modules of root and slurm; not a tier's conftest.py); ``sets_path``: the module may touch
    sys.path (the top conftest.py alone, which puts the checkout, for ``tools``, after
    site-packages)."""
    tree = ast.parse(source)
    problems = []
    reported = set()  # (line, rule): ``from x import a, b`` is reported once
    for line, name in _imports(tree):
        top = name.split(".")[0]
        if name.startswith("."):
            continue
        if (top in ("conftest", "tests") or top.startswith("test_") or top in local_modules) \
                and (line, "test module") not in reported:
            reported.add((line, "test module"))
            problems.append(f"line {line}: imports {name}: test modules never import each other "
                            "(shared code goes to tests/helpers, shared fixtures to a conftest.py)")
        if tier == "unit" and _reaches_site(name) and (line, "site") not in reported:
            reported.add((line, "site"))
            problems.append(f"line {line}: imports {name}, which reaches the local site: "
                            "not in tests/unit")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _dotted(node) == "sys.path" and not sets_path:
            problems.append(f"line {node.lineno}: changes sys.path: import from tests/helpers instead")
    marks = [(n.lineno, _dotted(n).rsplit(".", 1)[1]) for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and _dotted(n) in ("pytest.mark.root", "pytest.mark.slurm")]
    if tier == "unit":
        problems += [f"line {line}: marked {m}, so it belongs in tests/{m}" for line, m in marks]
        local = _fixtures(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    node.name.startswith("test") or node.name in local):
                for arg in node.args.args:
                    if arg.arg in SITE_FIXTURES and arg.arg not in local | _parametrized(node):
                        problems.append(f"line {node.lineno}: {node.name} uses the site fixture '{arg.arg}'")
            if isinstance(node, ast.Constant) and node.value in SITE_FIXTURES and node.value not in local:
                parent_calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and node in c.args
                                and _dotted(c.func).endswith(("usefixtures", "getfixturevalue"))]
                if parent_calls:
                    problems.append(f"line {node.lineno}: asks for the site fixture '{node.value}'")
    elif tier is not None and marker:
        declared = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                    for t in node.targets):
                values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
                declared |= {_dotted(v) for v in values}
        if f"pytest.mark.{tier}" not in declared:
            problems.append(f"no module-level pytestmark = pytest.mark.{tier} (every module in tests/{tier})")
    return problems
