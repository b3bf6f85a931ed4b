"""``shifterimg``: Shifter's image gateway command line.

    shifterimg [-v] [--json] [-u USERS] [-g GROUPS] [--system SYSTEM] COMMAND ...

    images                  list the images of this system (Shifter's table)
    lookup IMAGE            print the image's id
    pull IMAGE              pull IMAGE and wait until it is READY (or FAILURE)
    login [LOCATION]        store a registry login (default location: "default")
    expire IMAGE            remove an image (gateway admins)
    autoexpire              remove images unused for a while (gateway admins)
    import FILE IMAGE       import a squashfs file, e.g. as custom:myapp:v1
    queue                   list pulls in progress
    metrics [--limit N]     recent lookups (gateway admins)

``-u/--user USERS`` and ``-g/--group GROUPS`` (names or numeric ids, comma-separated) make
a pulled or imported image private to them; they go before or after the command.  ``-v``
traces every request on stderr; ``--json`` prints the gateway's JSON instead of text.

Exit status (the table of ``shifter.exit_codes``): 0 on success; 1 on any failure
(unreachable gateway, unknown image, FAILURE of a pull...); 2 for a malformed command line
or image name; 3 for a site configuration error; 130 interrupted.  Every error is one line
on stderr (``shifter.command.run``).
"""

from __future__ import annotations

import argparse
import getpass
import grp
import json
import os
import pwd
import re
import sys
import time

from shifter import command
from shifter.errors import ShifterError, UsageError
from shifter import munge
from shifter.gateway_client.client import (CredentialStore, GatewayClient, ImageRecord, PullFailed,
                                           image_ref)
from shifter.runtime import config as udiroot

_LOCATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,254}$")


_Parser = command.parser_class()  # its errors: one line, exit 2, as every shifter command


def _ids(value: str, kind: str) -> tuple[int, ...]:
    """"alice,1001" -> (uid of alice, 1001); unknown names are errors."""
    out = []
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        if item.isdigit():
            out.append(int(item))
            continue
        try:
            out.append(pwd.getpwnam(item).pw_uid if kind == "user" else grp.getgrnam(item).gr_gid)
        except KeyError:
            raise UsageError(f"invalid --{kind} {value!r}: no such {kind} {item!r}",
                             f"give {kind} names or numeric ids, comma-separated") from None
    return tuple(sorted(set(out)))


def build_parser() -> argparse.ArgumentParser:
    acl = argparse.ArgumentParser(add_help=False)
    acl.add_argument("-u", "--user", default=argparse.SUPPRESS, metavar="USERS",
                     help="make the image private to these users (names or uids, comma-separated)")
    acl.add_argument("-g", "--group", default=argparse.SUPPRESS, metavar="GROUPS",
                     help="make the image private to these groups (names or gids)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="trace the requests on stderr")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the gateway's JSON")
    common.add_argument("--system", default=argparse.SUPPRESS,
                        help="the system to ask about (default: udiRoot.conf's system)")
    parser = _Parser(prog="shifterimg", parents=[common, acl],
                     description="Pull, look up and list images of Shifter's image gateway.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser("images", parents=[common], help="list the images of this system")
    p = sub.add_parser("lookup", parents=[common], help="print an image's id")
    p.add_argument("image")
    p = sub.add_parser("pull", parents=[common, acl], help="pull an image and wait until it is READY")
    p.add_argument("image")
    p = sub.add_parser("login", parents=[common], help="store a registry login for this system")
    p.add_argument("location", nargs="?", default="default")
    p = sub.add_parser("expire", parents=[common], help="remove an image (admins)")
    p.add_argument("image")
    sub.add_parser("autoexpire", parents=[common], help="remove images unused for a while (admins)")
    p = sub.add_parser("import", parents=[common, acl], help="import a squashfs file as an image")
    p.add_argument("file")
    p.add_argument("image", help="e.g. custom:myapp:v1")
    p.add_argument("--format", default="squashfs", choices=("squashfs",))
    sub.add_parser("queue", parents=[common], help="list pulls in progress")
    p = sub.add_parser("metrics", parents=[common], help="recent lookups (admins)")
    p.add_argument("--limit", type=int, default=10)
    return parser


# -- output ------------------------------------------------------------------------------------


def _stamp(when: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when))


def image_lines(records: list[ImageRecord]) -> list[str]:
    """Shifter's ``images`` table: one line per tag, sorted by tag."""
    rows = []
    for r in records:
        for tag in r.tags:
            rows.append((tag, f"{r.system:<10} {r.itype:<10} {r.status:<8} {(r.id or '')[:10]}   "
                              f"{_stamp(r.last_pull)} {tag:<30}".rstrip()))
    return [line for _, line in sorted(rows)]


class PullDisplay:
    """Prints a pull's progress: on a TTY one line rewritten in place, else one line per state."""

    def __init__(self, name: str, out=sys.stdout, verbose: bool = False):
        self.name = name
        self.out = out
        self.tty = out.isatty() and not verbose
        self.verbose = verbose
        self.last: tuple[str, str] | None = None

    def __call__(self, record: ImageRecord) -> None:
        line = f"{_stamp()} Pulling Image: {self.name}, status: {record.status}"
        state = (record.status, record.status_message)
        if self.tty:
            detail = f" ({record.status_message})" if record.status_message and \
                record.status not in ("READY", "FAILURE") else ""
            self.out.write(f"\r\x1b[2K{line}{detail}")
            if record.status in ("READY", "FAILURE", "EXPIRED"):
                self.out.write("\n")
        elif self.last is None or state[0] != self.last[0] or (self.verbose and state != self.last):
            detail = f" ({record.status_message})" if self.verbose and record.status_message else ""
            self.out.write(f"{line}{detail}\n")
        self.out.flush()
        self.last = state


# -- commands ----------------------------------------------------------------------------------


def _config(args) -> udiroot.UdiRootConfig:
    if getattr(args, "_config", None) is None:
        args._config = udiroot.load()
    return args._config


def _client(args) -> GatewayClient:
    trace = (lambda line: print(f"shifterimg: {line}", file=sys.stderr)) if args.verbose else None
    return GatewayClient(_config(args), system=args.system, trace=trace)


def _emit(args, data, text_lines) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for line in text_lines:
            print(line)


def _acl(args) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return _ids(args.user or "", "user"), _ids(args.group or "", "group")


def _wait(args, client: GatewayClient, name: str, start, what: str) -> int:
    record = client.wait(start, PullDisplay(name, verbose=args.verbose) if not args.json else (lambda r: None))
    if args.json:
        print(json.dumps(record.raw, indent=2))
    if record.status != "READY":
        raise PullFailed(f"can't {what} {name}: {record.status_message or record.status}")
    if record.status_message:
        print(f"shifterimg: note: {name}: {record.status_message}", file=sys.stderr)
    return 0


def cmd_pull(args) -> int:
    ref = image_ref(args.image, _config(args), allow_custom=False)
    users, groups = _acl(args)
    client = _client(args)
    return _wait(args, client, str(ref), lambda: client.pull(ref, users, groups), "pull")


def cmd_import(args) -> int:
    ref = image_ref(args.image, _config(args))
    users, groups = _acl(args)
    client = _client(args)
    path = os.path.abspath(args.file)
    return _wait(args, client, str(ref), lambda: client.doimport(path, ref, args.format, users, groups),
                 "import")


def cmd_lookup(args) -> int:
    record = _client(args).lookup(image_ref(args.image, _config(args)))
    _emit(args, record.raw, [record.id or ""])
    return 0


def cmd_images(args) -> int:
    records = _client(args).images()
    _emit(args, [r.raw for r in records], image_lines(records))
    return 0


def cmd_expire(args) -> int:
    ref = image_ref(args.image, _config(args))
    ok = _client(args).expire(ref)
    if args.json:
        print(json.dumps({"status": ok}))
    if not ok:
        raise ShifterError(f"can't expire {ref}: the gateway did not expire it")
    return 0


def cmd_autoexpire(args) -> int:
    expired = _client(args).autoexpire()
    _emit(args, {"status": expired}, [str(x) for x in expired])
    return 0


def cmd_queue(args) -> int:
    items = _client(args).queue()
    _emit(args, {"list": items}, [f"{str(i.get('status', '')):<10} {i.get('image', '')}" for i in items])
    return 0


def cmd_metrics(args) -> int:
    if args.limit < 1:
        raise UsageError(f"invalid --limit {args.limit}: must be at least 1")
    items = _client(args).metrics(args.limit)
    lines = [f"{_stamp(i.get('time') if isinstance(i.get('time'), (int, float)) else 0)} "
             f"{str(i.get('user', '')):<12} {str(i.get('type', '')):<8} {str(i.get('id', ''))[:10]}   "
             f"{i.get('tag', '')}" for i in items]
    _emit(args, items, lines)
    return 0


def _read_login(location: str) -> tuple[str, str]:
    if sys.stdin.isatty():
        print(f"{location} username: ", end="", file=sys.stderr, flush=True)
        user = sys.stdin.readline().strip()
        password = getpass.getpass(f"{location} password: ")
    else:  # scripted: two lines on stdin
        user = sys.stdin.readline().rstrip("\n")
        password = sys.stdin.readline().rstrip("\n")
    if not user or ":" in user or not password:
        raise UsageError(f"can't log in to {location}: a user name (without ':') and a password are needed")
    return user, password


def cmd_login(args) -> int:
    if not _LOCATION.match(args.location):
        raise UsageError(f"invalid location {args.location!r}: a registry host[:port], or 'default'")
    config = _config(args)
    system = args.system or config.system
    user, password = _read_login(args.location)
    try:
        cred = munge.encode(f"{user}:{password}", config.mungeSocketPath)
    except munge.MungeError as e:
        raise ShifterError(e.what, e.hint) from None
    store = CredentialStore()
    store.store(system, args.location, cred)
    print(f"shifterimg: stored the login of {user} for {system}:{args.location} in {store.path}",
          file=sys.stderr)
    return 0


COMMANDS = {"pull": cmd_pull, "import": cmd_import, "lookup": cmd_lookup, "images": cmd_images,
            "expire": cmd_expire, "autoexpire": cmd_autoexpire, "queue": cmd_queue,
            "metrics": cmd_metrics, "login": cmd_login}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name, default in (("verbose", False), ("json", False), ("system", None), ("user", None),
                          ("group", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if (args.user or args.group) and args.command not in ("pull", "import"):
        raise UsageError(f"--user/--group apply to pull and import, not {args.command}")
    return args


def main(argv: list[str] | None = None) -> int:
    return command.run("shifterimg", _main, argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
