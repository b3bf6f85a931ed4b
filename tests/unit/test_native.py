"""The installed plugin: a C shim NOT linked to libpython, beside the embedded module."""

import os
import subprocess
import sys

SHIM = os.path.join(sys.prefix, "lib", "shifter", "shifter_slurm.so")
PYMOD = os.path.join(sys.prefix, "lib", "shifter", "_shifter_spank_py.so")


def _needed(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def _dynsyms(path):
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_shim_is_not_linked_to_python():
    needed = _needed(SHIM)
    assert not any("python" in n for n in needed), needed
    syms = _dynsyms(SHIM)
    for sym in ("slurm_spank_init", "slurm_spank_init_post_opt", "slurm_spank_job_prolog",
                "slurm_spank_job_epilog", "plugin_name", "plugin_type", "plugin_version"):
        assert sym in syms


def test_embedded_module_links_python_and_exports_entry_points():
    assert any(n.startswith("libpython3") for n in _needed(PYMOD))
    syms = _dynsyms(PYMOD)
    assert {"shifter_py_boot", "shifter_py_hook"} <= syms
