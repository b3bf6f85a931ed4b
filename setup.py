"""Build step for the compiled parts, run by ``pip install``.

  <prefix>/lib/shifter/shifter_slurm.so     the SPANK shim (C, NOT linked to libpython)
  <prefix>/lib/shifter/_shifter_spank_py.so the cffi-embedded Python module it loads on demand
  <prefix>/bin/shifter                      the launcher's compiled fast path and plan replay (no setuid bit)

Everything else is declared in pyproject.toml.
"""

import importlib.util
import os
import subprocess

from setuptools import Command, setup
from setuptools.command.build import build
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join("build", "native")
SHIM = os.path.join(NATIVE, "shifter_slurm.so")
PYMOD = os.path.join(NATIVE, "_shifter_spank_py.so")
LAUNCHER = os.path.join(NATIVE, "shifter")
GEN = os.path.join(NATIVE, "gen")  # shifter_contracts.h, written from the contracts' Python owners


class build_native(Command):
    description = "compile the SPANK shim, the cffi-embedded Python module and the launcher"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        os.makedirs(NATIVE, exist_ok=True)
        cc = os.environ.get("CC", "gcc")
        header = _load("contract_header", os.path.join(HERE, "runtime", "contract_header.py"))
        header.write(HERE, os.path.join(GEN, header.HEADER))
        subprocess.run(
            [cc, *header.SHIM_CFLAGS, "-I", GEN, "-o", SHIM, *header.SHIM_SOURCES, "-ldl"],
            check=True,
        )
        # the exit codes' header, from the one table (shifter/exit_codes.py)
        spec = importlib.util.spec_from_file_location("shifter_exit_codes", os.path.join(HERE, "shifter", "exit_codes.py"))
        codes = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(codes)
        with open(os.path.join(GEN, "exit_codes.h"), "w") as f:
            f.write(codes.c_header())
        subprocess.run(
            [cc, *header.LAUNCHER_CFLAGS, "-I", GEN, "-o", LAUNCHER, *header.LAUNCHER_SOURCES],
            check=True,
        )
        os.chmod(LAUNCHER, 0o755)
        mod = _load("shifter_embed_build", os.path.join(HERE, "spank", "embed_build.py"))
        mod.build(NATIVE, os.path.join(NATIVE, "tmp"))


def _load(name, path):
    """A build helper of the source tree, loaded from its file (the package is not installed yet)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class build_with_native(build):
    sub_commands = [("build_native", None)] + build.sub_commands


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(
    distclass=BinaryDistribution,
    cmdclass={"build_native": build_native, "build": build_with_native},
    data_files=[("lib/shifter", [SHIM, PYMOD]), ("bin", [LAUNCHER])],
)
