"""The compiled code's shape (docs/dev.md, "The compiled code"): every C file stays small,
the launcher's and the shim's units call one way (the objects' symbols say who calls
whom), and the plugin exports nothing but Slurm's symbols."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers.prereq import require

from shifter import exit_codes
from shifter.runtime import contract_header

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(HERE, "..", ".."))
SHIM = os.path.join(sys.prefix, "lib", "shifter", "shifter_slurm.so")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 800, 80

#: each unit's layer: a unit calls only into units of a lower layer
LAUNCHER_LAYERS = {"launcher": 3, "replay": 2, "replay_plan": 1, "replay_ops": 1, "sqfs_inproc": 1,
                   "container": 0, "envrequest": 0}
SHIM_LAYERS = {"shim": 2, "shim_route": 1, "shim_python": 1, "shim_ccm": 1, "shim_extern": 1,
               "shim_config": 0, "hookd_client": 0}
SPANK_SYMBOLS = re.compile(r"slurm_spank_\w+|plugin_name|plugin_type|plugin_version|spank_plugin_version")


def c_files():
    out = [os.path.join(SRC, rel) for rel in (*contract_header.LAUNCHER_SOURCES, *contract_header.SHIM_SOURCES)]
    for pattern in ("runtime/launcher/*.h", "spank/*.h", "tests/data/*.c"):
        out += sorted(glob.glob(os.path.join(SRC, pattern)))
    return out


def functions(lines):
    """(name, first line, length) of each function: its body opens with a `{` alone at the
    start of a line, its signature is the lines just above, it ends at a `}` at the start
    of a line."""
    i = 0
    while i < len(lines):
        if lines[i] == "{":
            start = i - 1
            while start > 0 and lines[start - 1].strip() and not lines[start - 1].rstrip().endswith((";", "}", "*/")) \
                    and not lines[start - 1].startswith(("#", "/*", " *")):
                start -= 1
            end = i + 1
            while end < len(lines) and not lines[end].startswith("}"):
                end += 1
            names = [n for n in re.findall(r"(\w+)\s*\(", " ".join(lines[start:i])) if n != "__attribute__"]
            yield (names[0] if names else lines[start]), start + 1, end - start + 1
            i = end
        i += 1


def test_the_sources_are_listed_once():
    launcher = sorted(os.path.basename(p) for p in glob.glob(os.path.join(SRC, "runtime", "launcher", "*.c")))
    assert sorted(os.path.basename(s) for s in contract_header.LAUNCHER_SOURCES) == launcher
    shim = sorted(os.path.basename(p) for p in glob.glob(os.path.join(SRC, "spank", "*.c")))
    assert sorted(os.path.basename(s) for s in contract_header.SHIM_SOURCES) == shim
    assert set(LAUNCHER_LAYERS) == {n[:-2] for n in launcher} and set(SHIM_LAYERS) == {n[:-2] for n in shim}


@pytest.mark.parametrize("path", c_files(), ids=lambda p: os.path.relpath(p, SRC))
def test_no_c_file_or_function_is_too_long(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert len(lines) - 1 <= MAX_FILE_LINES, f"{len(lines) - 1} lines: split it along its seams"
    if not path.startswith(os.path.join(SRC, "tests", "")):
        assert lines[0].startswith("/*"), "a file starts with a comment saying what it is"
    long = [f"{name} (line {first}): {n} lines" for name, first, n in functions(lines) if n > MAX_FUNCTION_LINES]
    assert long == [], "extract named steps"


def test_the_function_measure_sees_a_long_function():
    body = ["    x++;"] * MAX_FUNCTION_LINES
    lines = ["/* a */", "static int", "f(int x)", "{", *body, "}", "", "int g(void)", "{", "    return 0;", "}"]
    assert list(functions(lines)) == [("f", 2, MAX_FUNCTION_LINES + 4), ("g", MAX_FUNCTION_LINES + 7, 4)]


def compile_units(tmp_path, sources, flags):
    cc = shutil.which(os.environ.get("CC", "gcc"))
    require(cc is not None and shutil.which("nm") is not None, "needs a C compiler and nm")
    gen = tmp_path / "gen"
    contract_header.write(SRC, str(gen / contract_header.HEADER))
    (gen / "exit_codes.h").write_text(exit_codes.c_header())
    objects = {}
    for rel in sources:
        unit = os.path.basename(rel)[:-2]
        obj = str(tmp_path / f"{unit}.o")
        subprocess.run([cc, *flags, "-I", str(gen), "-c", "-o", obj, os.path.join(SRC, rel)], check=True)
        objects[unit] = obj
    return objects


def calls(objects):
    """unit -> the other units whose symbols it uses (nm: defined, undefined)."""
    def nm(obj, *args):
        out = subprocess.run(["nm", *args, obj], capture_output=True, text=True, check=True).stdout
        return {line.split()[-1] for line in out.splitlines() if line.strip()}

    defined = {unit: nm(obj, "-g", "--defined-only") for unit, obj in objects.items()}
    owner = {sym: unit for unit, syms in defined.items() for sym in syms}
    return {unit: {owner[s] for s in nm(obj, "-u") if s in owner} - {unit} for unit, obj in objects.items()}


def assert_layered(graph, layers):
    wrong = [f"{a} -> {b}" for a, used in graph.items() for b in used if layers[b] >= layers[a]]
    assert wrong == [], "a unit calls one of its own layer or above: " + ", ".join(sorted(wrong))


def test_the_launchers_units_call_one_way(tmp_path):
    flags = [f for f in contract_header.LAUNCHER_CFLAGS]
    graph = calls(compile_units(tmp_path, contract_header.LAUNCHER_SOURCES, flags))
    assert "replay" in graph["launcher"] and "container" in graph["replay"]  # the measure sees calls
    assert_layered(graph, LAUNCHER_LAYERS)


def test_the_shims_units_call_one_way(tmp_path):
    require(os.path.exists("/usr/include/slurm/spank.h"), "needs slurm/spank.h")
    flags = [f for f in contract_header.SHIM_CFLAGS if f != "-shared"]
    graph = calls(compile_units(tmp_path, contract_header.SHIM_SOURCES, flags))
    assert "shim_route" in graph["shim"] and "shim_config" in graph["shim_route"]
    assert_layered(graph, SHIM_LAYERS)


def test_a_cycle_is_seen():
    with pytest.raises(AssertionError, match="replay -> launcher"):
        assert_layered({"launcher": {"replay"}, "replay": {"launcher"}}, LAUNCHER_LAYERS)


def test_the_plugin_exports_only_slurms_symbols():
    """Slurm finds the plugin's entry points; nothing else of it can bind to (or be bound
    by) a symbol of the slurmstepd or srun that loads it."""
    require(shutil.which("nm") is not None, "needs nm")
    out = subprocess.run(["nm", "-D", "--defined-only", SHIM], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert "slurm_spank_init" in exported and "slurm_spank_job_prolog" in exported
    assert sorted(s for s in exported if not SPANK_SYMBOLS.fullmatch(s)) == []
