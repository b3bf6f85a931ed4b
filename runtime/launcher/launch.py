"""``shifter``: run a command in a container — the Python implementation.

The compiled fast path (launcher.c) handles ``shifter CMD`` when the prepared UDI
matches; it hands everything else here, unchanged.

    shifter [-i IMAGE] [-V MAP]... [-m MODULES] [-e NAME=VALUE]... [--env-file FILE]
            [-E] [-w PATH | --workdir[=PATH]] [--entrypoint[=CMD]] [-v] [--dry-run]
            [--] [CMD [ARG...]]

Options stop at the first non-option.  Image: ``--image`` > the environment's
(``env_image_spec``: ``SHIFTER_IMAGETYPE``/``SHIFTER_IMAGE`` > the job's
``SLURM_SPANK_SHIFTER_*`` pair > ``SHIFTER_IMAGEREQUEST``, ``SHIFTER``).  Volumes:
``--volume`` (replaces the job's) > ``SHIFTER_VOLUME`` > ``SLURM_SPANK_SHIFTER_VOLUME``;
modules likewise with ``--module``/``SHIFTER_MODULE``.

The container: the UDI that setupRoot (as root, on this node) prepared when it was made
for this very request (uid, gid, job, image, volumes, modules); otherwise a private one for this
process (as root: a new mount namespace; as a user: squashfuse in a user namespace).

Environment, in Shifter's order: the caller's (none with ``--clearenv``) -> image ENV ->
``--env-file`` -> ``-e`` -> modules' siteEnv* -> the site's siteEnv*; ``SHIFTER_RUNTIME=1``.
Working directory: the caller's (``/`` if the container lacks it); ``-w PATH``;
``--workdir`` alone: the image's WORKDIR.  Command: CMD, else the image's CMD, else
``/bin/sh``; ``--entrypoint`` runs the image's ENTRYPOINT (or the given one) before it.

Exit status (the table of ``shifter.exit_codes``): the command's; 126 not executable;
127 not found; 125 shifter itself failed (one line on stderr, with a hint:
``shifter.command.run`` with ``launcher=True``).
"""

from __future__ import annotations

import json
import os
import pwd
import sys

from shifter import command
from shifter.errors import ShifterError, UsageError
from shifter.gateway_client.resolve import resolve_id
from shifter.runtime import config as udiconfig
from shifter.runtime import devices, jobpath, linux, plan, volumes
from shifter.runtime import envrequest as E
from shifter.runtime.builder import udi
from shifter.runtime.builder.udi import command_argv
from shifter.runtime.envrequest import (FALLBACK_IMAGE_VARS, env_image_spec, env_module,  # noqa: F401
                                        env_request, env_volume, first_set)
from shifter.runtime.image import parse_image
from shifter.runtime.launcher import entry  # before any chroot: nothing is imported after it
from shifter.runtime.modules import normalize, parse_list, select_modules

USAGE = ("usage: shifter [-i IMAGE] [-V SRC:DST[:FLAGS]]... [-m MODULES] [-e NAME=VALUE]... "
         "[--env-file FILE] [-E] [-w PATH|--workdir[=PATH]] [--entrypoint[=CMD]] [-v] [--dry-run] "
         "[CMD [ARG...]]")
HELP = """\
Run CMD in a container made from IMAGE (Shifter-compatible).

  -i, --image=IMAGE        docker:REPO[:TAG], REPO:TAG, id:<64 hex>, custom:NAME[:TAG], local:/PATH
                           (default: SHIFTER_IMAGETYPE/SHIFTER_IMAGE or SHIFTER_IMAGE=TYPE:SPEC,
                           else the job's --image, else SHIFTER_IMAGEREQUEST or SHIFTER=TYPE:SPEC)
  -V, --volume=SRC:DST[:ro|:perNodeCache=size=N]   repeatable; replaces the job's volumes
  -m, --module=LIST        site modules (comma separated), 'none' for none
  -e, --env=NAME=VALUE     set a variable in the container (repeatable; NAME alone copies it)
      --env-file=FILE      NAME=VALUE lines
  -E, --clearenv           start from an empty environment (the image's ENV still applies)
  -w, --workdir=PATH       working directory (default: the current one);
      --workdir            alone: the image's WORKDIR
      --entrypoint[=CMD]   run the image's ENTRYPOINT (or CMD) with the arguments
  -v, --verbose            say which container is used
      --dry-run            print what would run, as JSON, and run nothing
  -h, --help               this text

Without CMD: the image's CMD, else /bin/sh.  Exit status: the command's; 126 not
executable; 127 not found; 125 shifter could not run it.  See docs/launcher.md."""
_WITH_VALUE = {"-i": "image", "--image": "image", "-V": "volume", "--volume": "volume",
               "-m": "module", "--module": "module", "-e": "env", "--env": "env",
               "--env-file": "env_file", "-w": "workdir"}
_FLAGS = {"-E": "clearenv", "--clearenv": "clearenv", "-v": "verbose", "--verbose": "verbose",
          "-h": "help", "--help": "help", "--dry-run": "dry_run"}
_OPTIONAL = {"--workdir": "workdir", "--entrypoint": "entrypoint", "--entry": "entrypoint"}


class Options:
    def __init__(self):
        self.image = None
        self.volume: list[str] = []
        self.module = None
        self.env: list[str] = []
        self.env_file: list[str] = []
        self.workdir = None  # None: caller's cwd; "": the image's WORKDIR; else a path
        self.entrypoint = None  # None: no; "": the image's; else a command
        self.clearenv = self.verbose = self.help = self.dry_run = False
        self.args: list[str] = []


def parse_args(argv: list[str]) -> Options:
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[:2], "=", arg[2:]  # -iIMAGE
        if name in _FLAGS and not eq:
            setattr(opts, _FLAGS[name], True)
        elif name in _OPTIONAL:
            setattr(opts, _OPTIONAL[name], value if eq else "")
        elif name in _WITH_VALUE:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"option {name} needs a value", USAGE)
                value = argv[i]
            key = _WITH_VALUE[name]
            if isinstance(getattr(opts, key), list):
                getattr(opts, key).append(value)
            else:
                setattr(opts, key, value)
        else:
            raise UsageError(f"unknown option {arg!r}", USAGE)
        i += 1
    opts.args = argv[i:]
    return opts


def caller_environ():
    """The environment the caller gave us.  CPython sets LC_CTYPE=C.UTF-8 at start-up
    when the locale is C (locale coercion; ``-I`` can't turn it off): that is not the
    caller's, and the compiled launcher does not add it either."""
    env = os.environ
    if env.get("LC_CTYPE") == "C.UTF-8":
        try:
            with open("/proc/self/environ", "rb") as f:  # the environment exec() gave us
                original = f.read().split(b"\0")
        except OSError:
            return env
        if not any(item.startswith(b"LC_CTYPE=") for item in original):
            env = dict(env)
            del env["LC_CTYPE"]
    return env


# --------------------------------------------------------------------------- the request
# the names and the rule: shifter.runtime.envrequest (the contract's one owner)


def choose_image(opts: Options, env, config):
    if opts.image is not None:
        return parse_image(opts.image, config)
    spec = env_image_spec(env)
    if spec is not None:
        return parse_image(spec, config)
    raise UsageError("no image: give --image=IMAGE or submit the job with --image",
                     "e.g. shifter --image=docker:ubuntu:22.04 CMD")


def read_env_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"can't read --env-file {path}: {e.strerror}") from None
    out = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        if "=" not in line or not line.split("=", 1)[0]:
            raise UsageError(f"--env-file {path}:{lineno}: expected NAME=value, got {line!r}")
        out.append(line)
    return out


def build_env(opts: Options, environ, image_meta, rules) -> dict[str, str]:
    env = {} if opts.clearenv else dict(environ)
    env.update(image_meta.env_dict())
    for item in [*(x for f in opts.env_file for x in read_env_file(f)), *opts.env]:
        name, eq, value = item.partition("=")
        if not name or "\0" in item:
            raise UsageError(f"invalid --env {item!r}: expected NAME=value")
        if eq:
            env[name] = value
        elif name in environ:  # -e NAME: take the caller's value
            env[name] = environ[name]
    env = plan.apply_env(plan.env_ops(rules), env)
    env["SHIFTER_RUNTIME"] = "1"
    return env


def build_argv(opts: Options, image_meta) -> list[str]:
    args = list(opts.args)
    if not args and image_meta.cmd and opts.entrypoint in (None, ""):
        args = list(command_argv(image_meta.cmd))
    if opts.entrypoint is not None:
        if opts.entrypoint:
            entry = opts.entrypoint.split()
        elif image_meta.entry:
            entry = list(command_argv(image_meta.entry))
        else:
            raise UsageError("the image has no ENTRYPOINT", "give one: --entrypoint=CMD")
        args = entry + args
    return args or ["/bin/sh"]


def choose_cwd(opts: Options, image_meta) -> str:
    if opts.workdir is None:
        try:
            return os.getcwd()
        except OSError:
            return "/"
    if opts.workdir == "":
        return image_meta.workdir or "/"
    if not opts.workdir.startswith("/"):
        raise UsageError(f"invalid --workdir {opts.workdir!r}: must be an absolute path")
    return opts.workdir


def prepared_plan(config, uid, gid, image, vols, modules_req, env):
    """(the prepared UDI's path, its launch plan) if a prepared UDI was made for exactly
    this request: the job's (the prolog made it; ``jobpath``), else the one setupRoot made
    at udiMount; else None."""
    for root in (jobpath.prepared_udi(config.udiMount, env), config.udiMount):
        if root is None:
            continue
        try:
            st = os.stat(os.path.join(root, plan.RELPATH))
            if st.st_uid != 0 or st.st_mode & 0o022:
                continue
            p = plan.read(root)
        except (OSError, ValueError):
            continue
        if (p.uid, p.gid, p.jobid) != (uid, gid, env.get("SLURM_JOB_ID", "")):
            return None
        if (p.image_type, p.image_id) != (image.type, image.tag) or p.volumes != volumes.format_volumes(vols):
            return None
        if modules_req is None:
            return (root, p) if p.modules_default == "1" else None
        return (root, p) if normalize(",".join(modules_req)) == p.modules else None
    return None


def job_error(config, environ) -> None:
    """Raise the user's mistake the prolog recorded for this job (``wlm.prolog.record_error``)
    when the environment asks for the job's own request: a step says it and fails rather
    than quietly building a private container (the compiled launcher's ``job_error``)."""
    job_id = environ.get("SLURM_JOB_ID", "")
    itype, tag = environ.get(E.JOB_IMAGETYPE), environ.get(E.JOB_IMAGE)
    if not jobpath.valid_job_id(job_id) or itype is None or tag is None:
        return
    path = jobpath.error_file(config.udiMount, job_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o022:
            return
        text = os.read(fd, 65536).decode(errors="replace").strip()
    finally:
        os.close(fd)
    for mine, pinned in ((E.VOLUME, E.JOB_VOLUME), (E.MODULE, E.JOB_MODULE)):
        if first_set(environ, mine, pinned) != environ.get(pinned):
            return
    if env_image_spec(environ) == f"{itype}:{tag}":
        raise ShifterError(text)


# --------------------------------------------------------------------------- entering
def _mounts(config, vols, modules) -> list[dict]:
    return _mounts_of([*config.siteFs, *(x for m in modules for x in m.site_fs), *vols])


def _module_report(modules, environ) -> list[dict]:
    """What each module adds (``--dry-run``): its maps, files, environment rules, hooks
    and, for per-GPU device files, which this step may open and which are covered."""
    out = []
    for m in modules:
        item = {"name": m.name, "mounts": _mounts_of(m.site_fs),
                "env": {"set": dict(m.env.set), "prepend": dict(m.env.prepend), "append": dict(m.env.append),
                        "unset": list(m.env.unset)}}
        if m.copy_path:
            item["copy"] = {"source": m.copy_path, "destination": f"/opt/udiImage/modules/{m.name}"}
        if m.userhook:
            item["userhook"] = m.userhook
        if m.roothook:
            item["roothook"] = m.roothook
        if m.gpu_devices:
            item["gpu_devices"] = {"visible": devices.visible([m], environ), "covered": devices.covered([m], environ)}
        out.append(item)
    return out


def _mounts_of(maps) -> list[dict]:
    out = []
    for v in maps:
        flags = [f for f, on in (("ro", v.read_only), ("rec", v.recursive)) if on]
        if v.per_node_cache is not None:
            flags.append(v.per_node_cache.spec())
        out.append({"source": v.source, "destination": v.destination, "flags": flags})
    return out


def _join_user_ns(udi: str) -> bool:
    """Join the user namespace setupRoot made for this UDI's user (shared by all of the
    job's tasks on the node), if there is one."""
    try:
        fd = os.open(os.path.join(udi, "var/shifter/userns"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        linux.setns(fd, linux.CLONE_NEWUSER)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def enter(udi: str, cwd: str, env: dict[str, str], argv: list[str], userhooks, userns: bool,
          cover=(), own_namespace: bool = False):
    """chroot into ``udi`` (through an own user namespace unless root), cover the device
    files ``cover`` (in a new mount namespace unless ``own_namespace``: the process has
    one already; ``shifter.runtime.devices``), no_new_privs, run the userhooks, exec
    ``argv``.  Does not return."""
    uid, gid = os.getuid(), os.getgid()
    try:
        if userns and not _join_user_ns(udi):
            linux.unshare(linux.CLONE_NEWUSER)
            linux.map_self(uid, gid)
        os.chdir(udi)
        os.chroot(udi)
        os.chdir("/")
        devices.restrict(cover, new_namespace=not own_namespace)
        linux.no_new_privs()
    except OSError as e:
        raise ShifterError(f"can't enter the container at {udi}: {e.strerror or e}",
                           "are unprivileged user namespaces enabled (kernel.unprivileged_userns_clone)?") from None
    entry.start(cwd, env, userhooks, warn=_warn)
    entry.exec_command(argv, env)


def _saver(config, environ, image_path, image_meta, modules, uid, gid):
    """A ``privplan.Saver`` for this request, or None if the launcher would not replay it."""
    # start-up: privplan and plandir (~2 ms: their patterns) only when a private container is
    # built: a prepared container's launch execs before
    from shifter import paths
    from shifter.runtime import plandir, privplan

    if devices.needs_blank(modules):  # what a step may open depends on its GPUs: never replayed
        return None
    config_path = paths.config_path(environ=environ)
    key = privplan.request_key(environ, config_path, uid, gid, os.getgroups())
    if key is None:
        return None
    env_ops = plan.env_ops([m.env for m in modules] + [config.siteEnv], image_meta.env_dict())
    return privplan.Saver(key, "root" if uid == 0 else "user", uid, privplan.inputs(config, config_path, image_path),
                          env_ops, [m.userhook for m in modules if m.userhook], command_argv(image_meta.cmd),
                          plandir.open_dir(uid, create=True))


def main(argv: list[str] | None = None) -> int:
    return command.run("shifter", _main, argv, launcher=True)


def _warn(line: str) -> None:
    print(f"shifter: {line}", file=sys.stderr)


def _main(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts.help:
        print(USAGE)
        print(HELP)
        return 0
    environ = caller_environ()
    config = udiconfig.load()
    image = resolve_id(config, choose_image(opts, environ, config))
    if opts.volume:
        vols = volumes.parse_volume_list(opts.volume, warn=_warn)
    else:
        vols = volumes.parse_volumes(env_volume(environ) or "",
                                     warn=_warn)
    mod_text = opts.module if opts.module is not None else env_module(environ)
    modules_req = parse_list(mod_text) if mod_text is not None else None
    modules = select_modules(config, modules_req)
    uid, gid = os.getuid(), os.getgid()
    # the same one line whether the image is missing or private to others
    udi.check_image_usable(config, image, uid, {gid, *os.getgroups()})
    image_path, image_meta = udi.resolve_image(config, image)
    prepared = prepared_plan(config, uid, gid, image, vols, modules_req, environ)
    if prepared is None and opts.image is None and not opts.volume and opts.module is None:
        job_error(config, environ)
    env = build_env(opts, environ, image_meta, [m.env for m in modules] + [config.siteEnv])
    args = build_argv(opts, image_meta)
    cwd = choose_cwd(opts, image_meta)
    userhooks = tuple(m.userhook for m in modules if m.userhook)
    cover = devices.covered(modules, environ)  # the caller's: --clearenv does not give GPUs
    if opts.dry_run:
        print(json.dumps({
            "image": {"type": image.type, "tag": image.tag, "path": image_path},
            "udi": "prepared" if prepared else "private",
            "mounts": _mounts(config, vols, modules), "env": env, "cwd": cwd, "argv": args,
            "modules": _module_report(modules, environ),
        }, indent=1, sort_keys=True))
        return 0
    if opts.verbose:
        print(f"shifter: image {image}, {'prepared' if prepared else 'private'} container", file=sys.stderr)
    if prepared:
        enter(prepared[0], cwd, env, args, userhooks, userns=uid != 0, cover=cover)
    gids = tuple(dict.fromkeys([gid, *os.getgroups()]))
    try:
        username = pwd.getpwuid(uid).pw_name
    except KeyError:
        username = str(uid)
    request = udi.Request(image=image, uid=uid, gid=gid, username=username, volumes=vols,
                          modules=modules_req, job_id=environ.get("SLURM_JOB_ID", ""), gids=gids)
    # `shifter CMD` (no option): record the build for the compiled launcher to replay
    saver = None if argv and argv[0].startswith("-") else _saver(config, environ, image_path, image_meta,
                                                                 modules, uid, gid)
    if uid != 0:
        # start-up: ~3 ms (userns, socket); only a user's private container needs it, not a root's
        # or a prepared container's launch
        from shifter.runtime.launcher import private_user

        return private_user.run(config, image_path, image_meta, request, args, env, cwd, userhooks,
                                save_plan=saver, cover=cover, warn=_warn)
    # root: a private UDI in a new mount namespace, gone when the process exits
    linux.unshare(linux.CLONE_NEWNS)
    # slave: our mounts stay ours, and the host's teardown of its UDI still reaches the
    # copies this namespace holds (see linux.ensure_anchor)
    linux.make_propagation("/", linux.MS_SLAVE, recursive=True)
    udi.setup_root(config, request, private=True,
                   on_built=None if saver is None else lambda ex: saver(ex, config.udiMount))
    enter(config.udiMount, cwd, env, args, userhooks, userns=False, cover=cover, own_namespace=True)
    raise ShifterError("the command was not started")  # not reached: enter() execs or raises


if __name__ == "__main__":
    sys.exit(main())
