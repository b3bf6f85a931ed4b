"""The layers of the source tree and what may import what: the rule table and its checker.

This module owns the rules (docs/dev.md, "Layers" points here); ``tests/unit/test_layers.py``
holds the tree to them.  It reads source with ``ast`` and never imports the code it checks.

Each installed module belongs to the layer whose package is the longest prefix of its name
(``shifter.runtime.builder.udi`` is in ``shifter.runtime.builder``, ``shifter.runtime.image``
in ``shifter.runtime``, ``shifter.errors`` in ``shifter``, the package root).  A module may
import the stdlib, third-party packages, its own layer and the layers ``ALLOWED`` lists for
its layer; nothing installed imports ``tools``, ``tests`` (``helpers``) or ``benchmarks``.
The checks, over every import, at a module's top and inside functions alike:

- the rule table (an import into a layer not listed is an upward or sideways import);
- no import cycle between modules;
- an import made inside a function (deferred) says why on the line above (a comment block
  over it, or over the run of imports it belongs to) or at the end of its line, with a
  comment that starts ``# start-up:``.  Deferring is for start-up time only (the launcher,
  setupRoot/unsetupRoot, the SPANK hooks, the prolog/epilog, the submission's image lookup,
  the hook server's fork); a cycle is fixed by moving code to the right layer, not by
  deferring an import.
"""

from __future__ import annotations

import ast
import io
import os
import tokenize

#: source folder -> the package it installs as (or, not installed, runs as)
FOLDERS = {
    "shifter": "shifter",
    "templates": "shifter.templates",
    "runtime": "shifter.runtime",
    "gateway_client": "shifter.gateway_client",
    "gateway": "shifter.gateway",
    "wlm": "shifter.wlm",
    "spank": "shifter.spank",
    "tools": "tools",
}

#: installed scripts that are not modules (pyproject's script-files): path -> the name they are
#: checked under (it puts them in their folder's layer)
SCRIPTS = {
    "runtime/builder/bin/setupRoot": "shifter.runtime.builder.bin.setupRoot",
    "runtime/builder/bin/unsetupRoot": "shifter.runtime.builder.bin.unsetupRoot",
}

#: the installed layers, bottom to top, and the other layers each may import
ALLOWED = {
    "shifter": (),
    "shifter.templates": ("shifter",),
    "shifter.runtime": ("shifter", "shifter.templates"),
    "shifter.gateway_client": ("shifter", "shifter.runtime"),
    "shifter.gateway": ("shifter", "shifter.templates", "shifter.runtime"),
    "shifter.runtime.siteprep": ("shifter", "shifter.templates", "shifter.runtime"),
    "shifter.runtime.builder": ("shifter", "shifter.templates", "shifter.runtime", "shifter.gateway_client"),
    "shifter.runtime.launcher": ("shifter", "shifter.templates", "shifter.runtime", "shifter.gateway_client",
                                 "shifter.runtime.builder"),
    "shifter.wlm": ("shifter", "shifter.templates", "shifter.runtime", "shifter.gateway_client",
                    "shifter.runtime.builder"),
    # not the launcher either, until the plugin needs it (none of it does today)
    "shifter.spank": ("shifter", "shifter.templates", "shifter.runtime", "shifter.gateway_client",
                      "shifter.runtime.builder", "shifter.wlm"),
}

#: not installed: may import anything; nothing installed imports them
NOT_INSTALLED = ("tools", "tests", "helpers", "benchmarks", "conftest")

COMMENT = "# start-up:"


def layer_of(module: str) -> str | None:
    """The layer of ``module``: the longest ``ALLOWED`` package it is in; the first part of
    its name for what is not installed; None for anything else (stdlib, third party)."""
    best = None
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    if best is None and module.split(".")[0] in NOT_INSTALLED:
        return module.split(".")[0]
    return best


def installed(module: str) -> bool:
    return layer_of(module) in ALLOWED


def module_name(rel_path: str) -> str | None:
    """The import name of a source file (path relative to the checkout), None if none."""
    rel = rel_path.replace(os.sep, "/")
    if rel in SCRIPTS:
        return SCRIPTS[rel]
    if not rel.endswith(".py"):
        return None
    parts = rel[:-3].split("/")
    if parts[0] not in FOLDERS:
        return None
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([FOLDERS[parts[0]], *parts[1:]])


def tree_sources(checkout: str) -> dict[str, tuple[str, str]]:
    """module name -> (path relative to the checkout, source) for every module of the
    folders in ``FOLDERS`` and the ``SCRIPTS``."""
    found = {}
    for folder in FOLDERS:
        for root, dirs, files in os.walk(os.path.join(checkout, folder)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(root, name), checkout)
                mod = module_name(rel)
                if mod is not None:
                    with open(os.path.join(checkout, rel)) as f:
                        found[mod] = (rel, f.read())
    return found


class Import:
    """One imported module: ``line``, ``target`` (a module of the tree when the name is one,
    else the dotted name as written), ``deferred`` (made inside a function), ``commented``
    (carries a ``# start-up:`` comment)."""

    __slots__ = ("line", "target", "deferred", "commented")

    def __init__(self, line, target, deferred, commented):
        self.line, self.target, self.deferred, self.commented = line, target, deferred, commented

    def __repr__(self):
        return f"Import({self.line}, {self.target!r}, deferred={self.deferred}, commented={self.commented})"


def _comments(source: str) -> dict[int, str]:
    """line -> the comment on it."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string
    return found


def _commented(node: ast.stmt, body: list[ast.stmt], lines: list[str], comments: dict[int, str]) -> bool:
    """A ``# start-up:`` comment at the end of one of the import's lines, or in the comment
    lines right above it or above an import before it in the same run of import statements
    (nothing but imports, comments and blank lines between them)."""
    if any(comments.get(n, "").startswith(COMMENT) for n in range(node.lineno, node.end_lineno + 1)):
        return True
    index = body.index(node)
    while True:
        n = body[index].lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            if lines[n - 1].strip().startswith(COMMENT):
                return True
            n -= 1
        if index == 0 or not isinstance(body[index - 1], (ast.Import, ast.ImportFrom)):
            return False
        index -= 1


def _resolve(name: str, known: set[str]) -> str:
    """The module of the tree a dotted name is, or the longest of its prefixes that is one
    (``shifter.runtime.modules.normalize`` is ``shifter.runtime.modules``); else the name."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return name


def imports(module: str, source: str, known: set[str]) -> list[Import]:
    """Every module ``source`` (the module ``module``) imports, with its line; ``known``: the
    modules of the tree (``from pkg import name`` is the module ``pkg.name`` when that is one,
    else ``pkg``)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    comments = _comments(source)
    found = []

    def visit(body: list[ast.stmt], deferred: bool):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    base = node.module or ""
                    if node.level:  # relative: from the module's package
                        package = module.split(".")
                        package = package[:len(package) - node.level + (module in _packages(known))]
                        base = ".".join(package + ([base] if base else []))
                    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
                commented = deferred and _commented(node, body, lines, comments)
                for name in dict.fromkeys(names):
                    found.append(Import(node.lineno, _resolve(name, known), deferred, commented))
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner:
                    if field in ("handlers", "cases"):
                        for sub in inner:
                            visit(sub.body, deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
                    else:
                        visit(inner, deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree.body, False)
    return found


def _packages(known: set[str]) -> set[str]:
    """The modules of ``known`` that are packages (another module's name starts with theirs)."""
    return {m for m in known if any(o.startswith(m + ".") for o in known)}


def graph(sources: dict[str, str]) -> dict[str, list[Import]]:
    """module -> its imports, for ``sources`` (module name -> source)."""
    known = set(sources)
    return {mod: imports(mod, src, known) for mod, src in sources.items()}


def cycles(edges: dict[str, list[Import]]) -> list[list[str]]:
    """The import cycles among the modules of ``edges`` (every import counts, deferred or
    not): each strongly connected component of more than one module, sorted."""
    succ = {m: sorted({i.target for i in imps if i.target in edges and i.target != m}) for m, imps in edges.items()}
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def connect(v):  # Tarjan, with an explicit stack (no recursion limit)
        work = [(v, iter(succ[v]))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            connect(v)
    return sorted(found)


def problems(sources: dict[str, str], where: dict[str, str] | None = None) -> list[str]:
    """Everything wrong with ``sources`` (module name -> source): layer violations, cycles,
    deferred imports without their comment.  ``where``: module -> path, for the reports."""
    where = where or {}
    edges = graph(sources)
    found = []
    for mod, imps in sorted(edges.items()):
        layer = layer_of(mod)
        at = where.get(mod, mod)
        for imp in imps:
            target_layer = layer_of(imp.target)
            if layer in ALLOWED and target_layer is not None and target_layer != layer:
                if target_layer not in ALLOWED:
                    found.append(f"{at}:{imp.line}: imports {imp.target}: installed code never imports "
                                 f"{target_layer} (not installed)")
                elif target_layer not in ALLOWED[layer]:
                    found.append(f"{at}:{imp.line}: imports {imp.target}: {layer} may not import "
                                 f"{target_layer} (it may import: {', '.join(ALLOWED[layer]) or 'nothing of shifter'})")
            if imp.deferred and not imp.commented:
                found.append(f"{at}:{imp.line}: imports {imp.target} inside a function without a "
                             f"'{COMMENT}' comment saying why it is deferred (or move it to the top)")
    for component in cycles(edges):
        found.append("import cycle: " + " <-> ".join(component))
    return found


def deferred(sources: dict[str, str]) -> list[tuple[str, Import]]:
    """(module, import) of every import made inside a function."""
    return [(mod, imp) for mod, imps in sorted(graph(sources).items()) for imp in imps if imp.deferred]
