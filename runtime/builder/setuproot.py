"""``setupRoot``: Shifter's root command, same command line (``unsetupRoot`` lives in
``shifter.runtime.builder.teardown``).

    setupRoot [-U uid] [-G gid] [-u username] [-s sshPubKey] [-N "host/slots ..."]
              [-v map]... [-m modules] [-V] TYPE IDENTIFIER

It runs as root with a clean environment and a fixed PATH (``SHIFTER_CONFIG`` or
``shifter_config`` is read first).  Exit status (``shifter.exit_codes``): 0 ok, 1 failure
(one line on stderr; nothing is left mounted), 2 bad usage, 3 a wrong udiRoot.conf.
"""

from __future__ import annotations

import os
import pwd
import sys

from shifter import command
from shifter.errors import UsageError
from shifter.gateway_client.resolve import resolve_id
from shifter.runtime import config as udiconfig
from shifter.runtime import volumes
from shifter.runtime.builder import udi
from shifter.runtime.image import parse_image
from shifter.runtime.modules import parse_list

FIXED_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_USAGE = ("usage: setupRoot [-U uid] [-G gid] [-u username] [-s sshPubKey] [-N hostlist] "
               "[-v volumeMap]... [-m modules] [-V] TYPE IDENTIFIER")


def _clean_environment() -> tuple[str | None, str]:
    """Keep only the config location and the job id (a prolog's SLURM_JOB_ID, recorded
    as the UDI's owner job); everything else goes."""
    config_path = os.environ.get("SHIFTER_CONFIG") or os.environ.get("shifter_config")
    job_id = os.environ.get("SLURM_JOB_ID", "")
    os.environ.clear()
    os.environ["PATH"] = FIXED_PATH
    return config_path, job_id


def _int(opt: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"invalid {opt} {value!r}: not a number", SETUP_USAGE) from None
    if n < 0:
        raise UsageError(f"invalid {opt} {value!r}: negative", SETUP_USAGE)
    return n


def _getopt(argv: list[str], with_value: str, flags: str):
    """POSIX getopt (what Shifter's setupRoot uses) without the cost of importing getopt:
    ``-X value`` or ``-Xvalue``, flags, stop at the first non-option or ``--``."""
    opts, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return opts, argv[i + 1:]
        if not arg.startswith("-") or arg == "-":
            break
        letter = arg[1]
        if letter in with_value:
            if len(arg) > 2:
                value = arg[2:]
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UsageError(f"option -{letter} needs a value", SETUP_USAGE)
            opts.append((f"-{letter}", value))
        elif letter in flags and len(arg) == 2:
            opts.append((arg, ""))
        else:
            raise UsageError(f"unknown option {arg!r}", SETUP_USAGE)
        i += 1
    return opts, argv[i:]


def _warn(line: str) -> None:
    print(f"setupRoot: {line}", file=sys.stderr)


def parse_setup_args(argv: list[str], config, job_id: str = "", warn=_warn):
    """(request, verbose) from setupRoot's command line; (None, False) for -h."""
    opts, args = _getopt(argv, "UGusNvm", "Vh")
    uid = gid = username = pubkey = hostlist = modules = None
    maps: list[str] = []
    verbose = False
    for opt, value in opts:
        if opt == "-U":
            uid = _int("uid", value)
        elif opt == "-G":
            gid = _int("gid", value)
        elif opt == "-u":
            username = value
        elif opt == "-s":
            pubkey = value
        elif opt == "-N":
            from shifter.runtime import hostsfile  # start-up: ~1 ms (its patterns), only with -N

            hostsfile.parse_option(value)  # refused here, before anything is mounted
            hostlist = value
        elif opt == "-v":
            maps.append(value)
        elif opt == "-m":
            modules = parse_list(value)
        elif opt == "-V":
            verbose = True
        elif opt == "-h":
            return None, False
    if len(args) != 2:
        raise UsageError("need TYPE and IDENTIFIER", SETUP_USAGE)
    if uid is None:
        raise UsageError("missing -U uid: the job user must be named", SETUP_USAGE)
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        pw = None
    if username is None:
        if pw is None:
            raise UsageError(f"uid {uid} has no user name here; pass -u username", SETUP_USAGE)
        username = pw.pw_name
    if gid is None:
        if pw is None:
            raise UsageError(f"uid {uid} is unknown here; pass -G gid", SETUP_USAGE)
        gid = pw.pw_gid
    image = parse_image(f"{args[0]}:{args[1]}", config)
    image = resolve_id(config, image)
    request = udi.Request(
        image=image, uid=uid, gid=gid, username=username,
        volumes=volumes.parse_volume_list(maps, warn=warn),
        modules=modules,
        job_id=job_id, ssh_pubkey=pubkey, hostlist=hostlist,
    )
    return request, verbose


def setup_main(argv: list[str] | None = None) -> int:
    return command.run("setupRoot", _setup, argv)


def _setup(argv: list[str]) -> int:
    config_path, job_id = _clean_environment()
    config = udiconfig.load(config_path)
    if config.notice():
        _warn(f"notice: {config.notice()}")
    for line in config.warnings:
        _warn(line)
    request, verbose = parse_setup_args(argv, config, job_id)
    if request is None:
        print(SETUP_USAGE)
        return 0
    udi.setup_root(config, request, _warn if verbose else (lambda msg: None))
    return 0


if __name__ == "__main__":
    sys.exit(setup_main())
