"""``setupRoot`` and ``unsetupRoot``: Shifter's root commands, same command lines.

    setupRoot [-U uid] [-G gid] [-u username] [-s sshPubKey] [-N "host/slots ..."]
              [-v map]... [-m modules] [-V] TYPE IDENTIFIER
    unsetupRoot [-V]

Both run as root with a clean environment and a fixed PATH (``SHIFTER_CONFIG`` or
``shifter_config`` is read first).  Exit status: 0 ok, 1 failure (one line on stderr;
for setupRoot nothing is left mounted), 2 bad usage.
"""

from __future__ import annotations

import getopt
import os
import pwd
import sys

from shifter.errors import ShifterError, UsageError

FIXED_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_USAGE = ("usage: setupRoot [-U uid] [-G gid] [-u username] [-s sshPubKey] [-N hostlist] "
               "[-v volumeMap]... [-m modules] [-V] TYPE IDENTIFIER")


def _clean_environment() -> str | None:
    """Keep only the config location; everything else goes."""
    config_path = os.environ.get("SHIFTER_CONFIG") or os.environ.get("shifter_config")
    os.environ.clear()
    os.environ["PATH"] = FIXED_PATH
    return config_path


def _fail(prog: str, e: ShifterError) -> int:
    print(f"{prog}: {e}", file=sys.stderr)
    return e.exit_code if isinstance(e, UsageError) else 1


def _int(opt: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"invalid {opt} {value!r}: not a number", SETUP_USAGE) from None
    if n < 0:
        raise UsageError(f"invalid {opt} {value!r}: negative", SETUP_USAGE)
    return n


def parse_setup_args(argv: list[str], config):
    from shifter.runtime import udi, volumes
    from shifter.runtime.image import parse_image

    try:
        opts, args = getopt.getopt(argv, "U:G:u:s:N:v:m:Vh")
    except getopt.GetoptError as e:
        raise UsageError(f"{e.msg}", SETUP_USAGE) from None
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
            hostlist = value
        elif opt == "-v":
            maps.append(value)
        elif opt == "-m":
            modules = tuple(m for m in value.replace(" ", ",").split(",") if m)
        elif opt == "-V":
            verbose = True
        elif opt == "-h":
            print(SETUP_USAGE)
            raise SystemExit(0)
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
    if image.type == "docker":
        image = _lookup(config, image)
    request = udi.Request(
        image=image, uid=uid, gid=gid, username=username,
        volumes=volumes.parse_volume_list(maps), modules=modules,
        job_id=os.environ.get("SLURM_JOB_ID", ""), ssh_pubkey=pubkey, hostlist=hostlist,
    )
    return request, verbose


def _lookup(config, image):
    """A docker tag is resolved to its image id through the image gateway."""
    try:
        from shifter.gateway_client import client  # the gateway issue provides it
    except ImportError:
        client = None
    if client is None or not hasattr(client, "lookup_id"):
        raise UsageError(f"can't resolve {image} to an image id: no image gateway client here",
                         "pass the id instead: setupRoot id <64-hex id>")
    from shifter.runtime.image import ImageRef

    return ImageRef("id", client.lookup_id(config, image))


def setup_main(argv: list[str] | None = None) -> int:
    config_path = _clean_environment()
    argv = sys.argv[1:] if argv is None else argv
    try:
        from shifter.runtime import config as udiconfig
        from shifter.runtime import udi

        config = udiconfig.load(config_path)
        if config.notice():
            print(f"setupRoot: notice: {config.notice()}", file=sys.stderr)
        request, verbose = parse_setup_args(argv, config)
        log = (lambda msg: print(f"setupRoot: {msg}", file=sys.stderr)) if verbose else (lambda msg: None)
        udi.setup_root(config, request, log)
    except ShifterError as e:
        return _fail("setupRoot", e)
    return 0


def unsetup_main(argv: list[str] | None = None) -> int:
    config_path = _clean_environment()
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-V" in argv
    extra = [a for a in argv if a != "-V"]
    if extra:
        print(f"unsetupRoot: unexpected argument {extra[0]!r} (usage: unsetupRoot [-V])", file=sys.stderr)
        return 2
    try:
        from shifter.runtime import config as udiconfig
        from shifter.runtime import udi

        if os.geteuid() != 0:
            raise UsageError("unsetupRoot must run as root")
        config = udiconfig.load(config_path)
        udi.teardown(config, (lambda m: print(f"unsetupRoot: {m}", file=sys.stderr)) if verbose else (lambda m: None))
    except ShifterError as e:
        return _fail("unsetupRoot", e)
    return 0


if __name__ == "__main__":
    sys.exit(setup_main())
