"""``shifter-admin``: the site administrator's commands (run as root on a node or on the
host that holds the site's module directory).

    shifter-admin module prepare mpich [--dir DIR] [--name NAME] [--from PATH]
                                       [--env NAME=VALUE]... [--userhook FILE] [--conf FILE]
    shifter-admin module prepare gpu   [--dir DIR] [--name NAME] [--lib PATH|SONAME]...
                                       [--bin PATH|NAME]... [--gpu-device PATH]...
                                       [--site-fs MAP]... [--conf FILE]

``prepare`` copies what the module needs into ``DIR/NAME`` (default DIR:
``<prefix>/modules``) and prints the ``module_NAME_*`` lines for udiRoot.conf (or writes
them to ``--conf FILE``).  Exit status (``shifter.exit_codes``): 0 ok, 2 refused (one line
and a hint; nothing changed), 3 a wrong site configuration, 1 another failure.  See
docs/modules.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from shifter import command, paths
from shifter.errors import UsageError
from shifter.runtime.siteprep import modprep


_Parser = command.parser_class()  # its errors: one line, exit 2, as every shifter command


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shifter-admin", description="shifter's site administration commands")
    sub = p.add_subparsers(dest="group", required=True, parser_class=_Parser)
    module = sub.add_parser("module", help="site modules (udiRoot.conf module_<name>_*)")
    msub = module.add_subparsers(dest="action", required=True, parser_class=_Parser)
    prep = msub.add_parser("prepare", help="prepare a module from what this host has")
    kinds = prep.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    default_dir = os.path.join(paths.PREFIX, "modules")
    for kind in ("mpich", "gpu"):
        k = kinds.add_parser(kind, help={"mpich": "the host's MPICH-ABI MPI",
                                         "gpu": "the GPU driver's libraries, tools and devices"}[kind])
        k.add_argument("--dir", default=default_dir, help=f"the site's module directory (default {default_dir})")
        k.add_argument("--name", default=kind, help=f"the module's name (default {kind})")
        k.add_argument("--conf", help="write the udiRoot.conf lines to this file instead of printing them")
    mpich = kinds.choices["mpich"]
    mpich.add_argument("--from", dest="source", help="the MPI library, or its directory (default: the "
                       "ldconfig cache's libmpi.so.12 or libmpich.so.12)")
    mpich.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="also set in the container (module_<name>_siteEnv)")
    mpich.add_argument("--userhook", help="a /bin/sh script run as the user before the command")
    gpu = kinds.choices["gpu"]
    gpu.add_argument("--lib", action="append", default=[], help="a driver library (path or soname); "
                     "default: the NVIDIA driver's in the ldconfig cache")
    gpu.add_argument("--bin", action="append", default=[], help="a driver tool (path or name); default: nvidia-smi & co.")
    gpu.add_argument("--gpu-device", action="append", default=[], dest="gpu_devices",
                     help="a per-GPU device file in the container, ending in its GPU number (default /dev/nvidia<N>)")
    gpu.add_argument("--site-fs", action="append", default=[], dest="site_fs",
                     help="an extra site map of the module (e.g. the devices' directory when not under /dev)")
    return p


def main(argv=None) -> int:
    return command.run("shifter-admin", _main, argv)


def _main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    log = lambda m: print(f"shifter-admin: {m}", file=sys.stderr)  # noqa: E731
    if args.kind == "mpich":
        for item in args.env:
            name, eq, value = item.partition("=")
            if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or re.search(r"\s", value):
                raise UsageError(f"invalid --env {item!r}: expected NAME=VALUE (no spaces in VALUE)")
        lines = modprep.prepare_mpich(args.dir, args.name, args.source, env=args.env, userhook=args.userhook,
                                      log=log)
    else:
        lines = modprep.prepare_gpu(args.dir, args.name, libs=args.lib, bins=args.bin,
                                    gpu_devices=args.gpu_devices, site_fs=args.site_fs, log=log)
    if args.conf:
        tmp = f"{args.conf}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(lines)
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.conf)
        log(f"wrote the module's udiRoot.conf lines to {args.conf}")
    else:
        sys.stdout.write(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
