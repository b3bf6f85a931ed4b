"""The container's layout as a list of operations: one pure planner for every container.

``plan(...)`` turns (configuration, request, root or user, prepared or private) into the
operations that build the container, in order.  It makes no system call and reads no
file: what it needs of the host is passed in (the configuration, the image's metadata,
the request).  ``shifter.runtime.builder.execute`` runs the list; ``udi.setup_root`` (prolog,
setupRoot, a root's private container) and ``private_user`` (a user's private
container) are its only callers, so there is one layout.

An operation is a tuple ``(NAME, ARG...)``.  Most are the private-plan records of
docs/private-plans.md (``mkdir``, ``mount``, ``bindkeep``, ...), with string arguments
exactly as a plan file writes them; the compiled launcher (runtime/launcher/replay.c) runs those.
The others need something only the executing process knows and are resolved by the
executor (docs/private-plans.md, "Operations the executor resolves"):

``EXPANDED`` — become plan records when they run: which entries the image has
(``merge``), whether its /etc is a directory (``etcmount``), what the site's /etc files
hold (``etc``), where a destination is and what must be made for it (``site``,
``volumes``), whether an anchor is mounted (``anchor``), whether a bind must be recursive
(``bind`` of the user kind), whether optUdiImage exists (``copyopt``), how long the
build took (``state``), the state directory's owner (``stateacl``: a ``chmod`` for root's
own container; an ACL for a user's, which no record expresses).

``PYTHON_ONLY`` — no record expresses them (site hooks, the job's sshd and its generated
host key, per-node caches on loop devices, per-GPU blank devices, the launch plan, the
user namespace handle, the state directory's ACL, the prolog's fault point): a build that
ran one is never saved as a private plan.

User-kind paths are relative to the staging directory, written ``@`` (``@/root``, ...)
as in a plan file; root-kind paths are absolute.
"""

from __future__ import annotations

import json
import os

from shifter.frozen import frozen

# mount(2) flags (the kernel's ABI; the same numbers as shifter.runtime.linux)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC = 0x20, 0x1000, 0x4000
MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 18, 1 << 19, 1 << 20
RO = MS_RDONLY
SAFE = MS_NOSUID | MS_NODEV

STATE_DIR = "var/shifter"
STATE_FILE = "var/shifter/udi.json"
#: the job user's shared user namespace (an nsfs bind mount) that launchers setns() into
USERNS_FILE = "var/shifter/userns"
HOSTSFILE = "var/hostsfile"
#: image top-level names the container provides itself
SPECIAL = frozenset({"etc", "dev", "proc", "sys", "tmp", "var", "opt", "run"})
STAGE = "@"  # the user kind's staging directory

EXPANDED = frozenset({"anchor", "bind", "merge", "etc", "etcmount", "site", "volumes", "copyopt", "state",
                      "stateacl"})
PYTHON_ONLY = frozenset({"hook", "sshd", "blankdev", "launchplan", "userns", "fault"})


@frozen
class Target:
    """Where a container is built and how.

    ``kind``: ``root`` (setupRoot; mounts as root) or ``user`` (an ordinary user in their
    own user namespace: every bind keeps the flags the host's mount has).  ``udi``: the
    container's root; ``loop``: where the image is mounted (``image``: a local image's
    directory instead).  ``prepared``: a prepared UDI (setupRoot, the prolog: the
    launch plan and the user namespace handle are made); ``job``: in the job's
    directories (the prolog)."""

    kind: str
    udi: str
    loop: str | None = None
    image: str | None = None
    prepared: bool = False
    job: bool = False


def _mount(src, target, fstype, flags, data="") -> tuple:
    return ("mount", src or "", target, fstype or "", str(flags), data or "")


def _prop(target: str, kind: int, recursive: bool = False) -> tuple:
    return _mount("", target, "", kind | (MS_REC if recursive else 0))


def _ensure_dir(path: str, mode: int = 0o755) -> list[tuple]:
    return [("mkdir", path, f"{mode:o}"), ("chmod", path, f"{mode:o}")]


def _j(*parts: str) -> str:
    return os.path.join(*parts)


def state(req, image_path: str, modules, created: float, complete: bool = False) -> dict:
    """udi.json: what teardown and the tools read of a UDI."""
    return {"version": 1, "uid": req.uid, "gid": req.gid, "username": req.username, "job_id": req.job_id,
            "image": str(req.image), "image_path": image_path, "volumes": [v.spec() for v in req.volumes],
            "modules": [m.name for m in modules], "ssh_pubkey": req.ssh_pubkey, "hostlist": req.hostlist,
            "complete": complete, "created": created}


def plan(config, req, t: Target, image_path: str, modules, gids, created: float = 0.0,
         hide=frozenset(), launch=None) -> list[tuple]:
    """The operations that build ``req``'s container (see the module docstring).
    ``hide``: host paths a ``local:`` image must not show (``udi.hidden_host_paths``);
    ``launch``: a prepared UDI's launch plan (``shifter.runtime.plan.Plan``)."""
    ops = _root_start(config, req, t, image_path, modules, created) if t.kind == "root" else _user_start(t, image_path)
    image_root = t.image or t.loop
    hook_env = {"SHIFTER_UDI": t.udi, "SHIFTER_USER": req.username, "SHIFTER_UID": str(req.uid)}
    if t.kind == "root" and config.sitePreMountHook:
        ops.append(("hook", config.sitePreMountHook, t.udi, "run sitePreMountHook", hook_env))
    ops += _tree(config, req, t, image_root, gids, hide)
    ops += _sites_and_modules(config, req, t, image_root, modules, hook_env)
    ops += _finish(config, req, t, modules, launch)
    return ops


def _root_start(config, req, t: Target, image_path: str, modules, created: float) -> list[tuple]:
    udi, loop = t.udi, t.loop
    ops: list[tuple] = []
    if not t.job:  # a job's UDI and image sit in the shared anchors of jobpath
        ops += [("mkdirp", udi), ("mkdirp", loop), ("anchor", udi)]
    ops += [_mount("shifter-udi", udi, config.rootfsType, SAFE, "mode=755"), _prop(udi, MS_SHARED)]
    state_dir = _j(udi, STATE_DIR)
    ops.append(("mkdirp", state_dir))
    ops.append(("stateacl", state_dir, req.uid))
    ops.append(("state", _j(udi, STATE_FILE), state(req, image_path, modules, created), False))
    if t.image is None:
        if not t.job:
            ops.append(("anchor", loop))
        ops += [("loopmount", image_path, loop, str(RO | SAFE)), _prop(loop, MS_SHARED)]
        if t.job:
            ops.append(("fault", "after-image"))
    return ops


def _user_start(t: Target, image_path: str) -> list[tuple]:
    ops = [_mount("shifter-stage", STAGE, "tmpfs", SAFE, "mode=700"), ("chdir", STAGE),
           ("mkdir", "@/image", "700"), ("mkdir", t.udi, "755")]
    if t.image is None:
        ops.append(("fusemount", image_path, t.loop, str(RO | SAFE)))
    ops.append(_mount("shifter-udi", t.udi, "tmpfs", SAFE, "mode=755"))
    return ops


def _tree(config, req, t: Target, image_root: str, gids, hide) -> list[tuple]:
    """The image's entries, /var, /opt, /etc and the host's /dev, /proc, /sys, /tmp."""
    udi, root = t.udi, t.kind == "root"
    ops: list[tuple] = [("merge", image_root, udi, SPECIAL | {"shifter"}, hide)]
    for name in ("var", "opt", "run", "tmp", "dev", "proc", "sys", "etc"):
        ops += _ensure_dir(_j(udi, name))
    var_skip = {"tmp", "shifter", "hostsfile"} if root else {"tmp", "shifter"}
    ops.append(("merge", _j(image_root, "var"), _j(udi, "var"), frozenset(var_skip), hide))
    ops += _ensure_dir(_j(udi, "var", "tmp"), 0o1777)
    ops.append(("merge", _j(image_root, "opt"), _j(udi, "opt"), frozenset({"udiImage"}), hide))

    # /etc: the site's files over the image's, one read-only overlay
    site_etc = _j(udi, STATE_DIR, "etc")
    if not root:
        ops.append(("mkdirp", _j(udi, STATE_DIR)))
    ops.append(("mkdir", site_etc, "755"))
    ops.append(("etc", site_etc, config.etcPath or "", req.uid, req.username, tuple(gids),
                image_root if root else None))
    image_etc = _j(image_root, "etc")
    if root:
        lower = f"{site_etc}:{image_etc}"
    else:  # relative to the staging dir (cwd): no ',' or ':' of $TMPDIR in the options
        lower = site_etc[2:] + ":" + (image_etc[2:] if image_etc.startswith("@/") else image_etc)
    ops.append(("etcmount", _mount("shifter-etc", _j(udi, "etc"), "overlay", RO | SAFE, f"lowerdir={lower}"),
                image_etc, ("bind", site_etc, _j(udi, "etc"), str(RO | SAFE))))

    # the host's /dev, /proc, /sys and /tmp; for root each made a slave at once: a mount
    # or unmount in the UDI must never propagate to the host's own trees
    dev = _j(udi, "dev")
    ops.append(_mount("/dev", dev, "", MS_BIND | MS_REC))
    if root:
        ops += [_prop(dev, MS_SLAVE, True), _mount("", dev, "", MS_REMOUNT | MS_BIND | MS_NOSUID),
                ("hardentree", dev, str(SAFE))]  # /dev/shm, /dev/pts, ...
    else:
        ops.append(("treekeep", dev, str(MS_NOSUID), str(SAFE)))
    for name in ("proc", "sys"):
        target = _j(udi, name)
        ops.append(_mount(f"/{name}", target, "", MS_BIND | MS_REC))
        if root:
            ops += [_prop(target, MS_SLAVE, True), _mount("", target, "", MS_REMOUNT | MS_BIND | SAFE | MS_NOEXEC),
                    ("hardentree", target, str(SAFE | MS_NOEXEC))]
        else:
            ops.append(("treekeep", target, str(SAFE | MS_NOEXEC), "-1"))
    ops.append(("bind", "/tmp", _j(udi, "tmp"), str(SAFE)))
    if root:
        ops.append(_prop(_j(udi, "tmp"), MS_SLAVE))
    return ops


def _sites_and_modules(config, req, t: Target, image_root: str, modules, hook_env) -> list[tuple]:
    """The job's sshd, site filesystems, /opt/udiImage and the modules."""
    udi, root = t.udi, t.kind == "root"
    ops: list[tuple] = []
    if root and req.sshd is not None:  # the OpenSSH bundle at /opt/udiImage/ssh (docs/sshd.md)
        ops.append(("sshd", udi, req.sshd))
    if root:
        # From here on no mount made in the UDI may propagate out of it (the image's binds
        # are peers of the image's mount): every mount becomes a slave of the peer group
        # it came from and the master of a new one of its own
        ops += [_prop(udi, MS_SLAVE, True), _prop(udi, MS_SHARED, True)]
    style = config.mountPropagationStyle if root else None  # a user's namespace is private
    for v in config.siteFs:
        if v.per_node_cache is None or not root:  # root makes caches with the user's volumes
            ops.append(("site", udi, v, "siteFs", image_root, style))
    if root and config.sitePostMountHook:
        ops.append(("hook", config.sitePostMountHook, udi, "run sitePostMountHook", hook_env))
    opt_udi = _j(udi, "opt", "udiImage")
    ops += _ensure_dir(opt_udi)
    if config.optUdiImage:
        ops.append(("copyopt", config.optUdiImage, opt_udi))
    for module in modules:
        if module.copy_path:
            ops.append(("copytree", module.copy_path, _j(opt_udi, "modules", module.name)))
        for v in module.site_fs:
            if v.per_node_cache is None or not root:
                ops.append(("site", udi, v, f"module_{module.name}_siteFs of {config.path}", image_root, style))
        if module.roothook:
            ops.append(("hook", module.roothook, udi, f"run the roothook of module {module.name}",
                        {**hook_env, "SHIFTER_MODULE": module.name}))
    if any(getattr(m, "gpu_devices", ()) for m in modules):  # each step covers the GPUs not its own
        ops.append(("blankdev", udi))
    if root and req.hostlist is not None:  # /var/hostsfile (docs/sshd.md)
        # start-up: hostsfile compiles its patterns at import (~1 ms); only a job with a host
        # list needs it, not the launcher or setupRoot without -N
        from shifter.runtime import hostsfile

        ops.append(("file", _j(udi, HOSTSFILE), "644", hostsfile.render(hostsfile.parse_option(req.hostlist))))
    return ops


def _finish(config, req, t: Target, modules, launch) -> list[tuple]:
    """The user's volumes and per-node caches, then the root read-only."""
    udi, root = t.udi, t.kind == "root"
    ops: list[tuple] = []
    if root:  # nothing mounted from here on may reach a mount outside the UDI
        ops += [_prop(udi, MS_SLAVE, True), _prop(udi, MS_SHARED, True)]
    caches = [v for v in config.siteFs if v.per_node_cache is not None] if root else []
    if root:
        caches += [v for m in modules for v in m.site_fs if v.per_node_cache is not None]
    plain = tuple(v for v in req.volumes if v.per_node_cache is None)
    caches += [v for v in req.volumes if v.per_node_cache is not None]
    if plain or caches:
        ops.append(("volumes", udi, plain, tuple(caches), req.job_id))
    if root:
        if t.prepared:  # a private UDI is entered only by the process that built it
            ops.append(("launchplan", udi, launch))
        if req.uid != 0:  # one user namespace for all of this user's tasks in this UDI
            ops.append(("userns", _j(udi, USERNS_FILE), req.uid, req.gid))
        ops.append(("state", _j(udi, STATE_FILE), None, True))
    if not config.mountUdiRootWritable:
        ops.append(_mount("", udi, "", MS_REMOUNT | MS_BIND | RO | SAFE))
    return ops


def state_text(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True)
