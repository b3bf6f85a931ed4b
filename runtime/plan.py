"""The launch plan: what setupRoot precomputes inside the UDI for the launcher.

Path (fixed): ``<udiMount>/var/shifter/launch.plan`` (inside the container:
``/var/shifter/launch.plan``).  Format, version 1 — built for a small C program that
parses it without a library: a sequence of NUL-terminated strings::

    "SHIFTER_PLAN" "1"  then  KEY VALUE  pairs ...  then  "END" ""

Single keys: ``uid``, ``gid``, ``jobid`` (empty outside a job), ``image_type``,
``image_id``, ``volumes`` (canonical form, ``volumes.format_volumes``), ``modules``
(comma-joined, sorted), ``modules_default`` (``1`` when setupRoot got no module list and
used the site's defaults), ``udi`` (the udiMount path), ``workdir`` (the image WORKDIR,
may be empty).  Repeated keys, in order: ``entry`` and ``cmd`` (one argv element each;
the image ENTRYPOINT/CMD), ``userhook`` (module userhooks, in-container paths, run as
the user before the command), ``gpudev`` (the loaded modules' per-GPU device files: a
step covers those not its own, ``shifter.runtime.devices``), and ``env`` — environment operations applied in order
over the caller's environment::

    =NAME=VALUE   set        <NAME=VALUE   prepend (VALUE:old)
    >NAME=VALUE   append     -NAME         unset

(image ENV, then each module's rules, then the site's siteEnv* rules).  No value may
contain a NUL byte.
"""

from __future__ import annotations

import os

from shifter import files
from shifter.errors import UsageError
from shifter.frozen import field, frozen
from shifter.runtime import envrequest
from shifter.runtime.modules import normalize

MAGIC = "SHIFTER_PLAN"
VERSION = "1"
RELPATH = "var/shifter/launch.plan"
SINGLE_KEYS = ("uid", "gid", "jobid", "image_type", "image_id", "volumes", "modules", "modules_default", "udi",
               "workdir")
LIST_KEYS = ("entry", "cmd", "env", "userhook", "gpudev")


@frozen
class Plan:
    uid: int
    gid: int
    jobid: str
    image_type: str
    image_id: str
    volumes: str
    modules: str
    udi: str
    modules_default: str = "0"  # "1": setupRoot was given no module list (site defaults)
    workdir: str = ""
    entry: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = field(default=())
    userhook: tuple[str, ...] = ()
    gpudev: tuple[str, ...] = ()  # the modules' per-GPU device files (shifter.runtime.devices)

    def identity(self) -> tuple:
        """What a launch request must match to use this UDI."""
        return (self.uid, self.gid, self.jobid, self.image_type, self.image_id, self.volumes, self.modules)


def matches(plan: Plan, uid: int, gid: int, env) -> bool:
    """Is this prepared UDI the one ``shifter CMD`` (no option) with environment ``env``
    asks for, byte for byte: the rule of the compiled fast path (launcher.c ``matches``;
    tests/data/contracts/launch_match.json runs through both).  Same uid, gid and job
    (``SLURM_JOB_ID``), the environment's image descriptor is ``image_type:image_id``, its
    volume text the plan's canonical ``volumes``, and its module list, normalised, the
    plan's ``modules`` (no list: the plan used the site's defaults).  The Python launcher
    accepts more (another spelling of the same volumes, a tag of the same image), which
    only costs that request its Python start."""
    if (plan.uid, plan.gid, plan.jobid) != (uid, gid, env.get("SLURM_JOB_ID", "")):
        return False
    if envrequest.env_image_spec(env) != f"{plan.image_type}:{plan.image_id}":
        return False
    if (envrequest.env_volume(env) or "") != plan.volumes:
        return False
    module = envrequest.env_module(env)
    if module is None:
        return plan.modules_default == "1"
    try:
        return normalize(module) == plan.modules
    except UsageError:
        return False


def env_ops(rules, image_env: dict[str, str] | None = None) -> list[str]:
    """Encode image ENV (sets) and ``EnvRules`` objects (in order) as plan env ops."""
    ops = [f"={k}={v}" for k, v in (image_env or {}).items()]
    for r in rules:
        ops += [f"={k}={v}" for k, v in r.set]
        ops += [f"<{k}={v}" for k, v in r.prepend]
        ops += [f">{k}={v}" for k, v in r.append]
        ops += [f"-{k}" for k in r.unset]
    return ops


def apply_env(ops, env: dict[str, str]) -> dict[str, str]:
    """Apply plan env ops to ``env`` (the Python twin of the C launcher's loop)."""
    out = dict(env)
    for op in ops:
        kind, body = op[0], op[1:]
        if kind == "-":
            out.pop(body, None)
            continue
        name, _, value = body.partition("=")
        if kind == "=":
            out[name] = value
        elif kind == "<":
            out[name] = f"{value}:{out[name]}" if out.get(name) else value
        elif kind == ">":
            out[name] = f"{out[name]}:{value}" if out.get(name) else value
    return out


def dumps(plan: Plan) -> bytes:
    items = [MAGIC, VERSION]
    for key in SINGLE_KEYS:
        items += [key, str(getattr(plan, key))]
    for key in LIST_KEYS:
        for value in getattr(plan, key):
            items += [key, value]
    items += ["END", ""]
    for item in items:
        if "\0" in item:
            raise ValueError(f"launch plan value contains a NUL byte: {item!r}")
    return b"".join(os.fsencode(i) + b"\0" for i in items)


def loads(data: bytes) -> Plan:
    """Parse a launch plan; ``ValueError`` when it is invalid: not NUL-terminated strings,
    another magic or version, an unknown key, a single key missing, no ``END`` (then its
    value).  Values after END are ignored.  The compiled launcher reads it by the same
    rule (tests/data/contracts/launch_plan.json)."""
    if not data.endswith(b"\0"):
        raise ValueError("not a shifter launch plan")
    parts = [os.fsdecode(p) for p in data[:-1].split(b"\0")]
    if len(parts) < 4 or parts[0] != MAGIC:
        raise ValueError("not a shifter launch plan")
    if parts[1] != VERSION:
        raise ValueError(f"launch plan version {parts[1]!r} is not supported (want {VERSION})")
    single: dict[str, str] = {}
    lists: dict[str, list[str]] = {key: [] for key in LIST_KEYS}
    i = 2
    while i + 1 < len(parts):
        key, value = parts[i], parts[i + 1]
        i += 2
        if key == "END":
            break
        if key in lists:
            lists[key].append(value)
        elif key in SINGLE_KEYS:
            single[key] = value
        else:
            raise ValueError(f"launch plan has unknown key {key!r}")
    else:
        raise ValueError("launch plan is truncated (no END)")
    missing = [k for k in SINGLE_KEYS if k not in single]
    if missing:
        raise ValueError(f"launch plan lacks {', '.join(missing)}")
    for key in ("uid", "gid"):
        if not (single[key].isascii() and single[key].isdigit() and len(single[key]) <= 10):
            raise ValueError(f"launch plan {key} {single[key]!r} is not a number")
    return Plan(uid=int(single.pop("uid")), gid=int(single.pop("gid")),
                **{key: tuple(values) for key, values in lists.items()}, **single)


def write(udi: str, plan: Plan) -> str:
    """Write the plan: root's, readable by the plan's user alone (POSIX ACL)."""
    path = os.path.join(udi, RELPATH)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(dumps(plan))
        files.set_acl(f.fileno(), 0o600, uids=(plan.uid,) if plan.uid else ())
    os.replace(tmp, path)
    return path


def read(udi: str) -> Plan:
    with open(os.path.join(udi, RELPATH), "rb") as f:
        return loads(f.read())
