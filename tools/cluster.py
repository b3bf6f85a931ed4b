"""``tools/cluster up | down | status | restart``: the whole local site on one machine.

``up`` is idempotent: it installs what is missing, creates the test users, starts a
private munged, one slurmctld and N slurmd (each in its node's own mount+UTS namespace,
kept by a holder process, with hostname nI, a private /etc/hosts and a boot id of its
own; a dead slurmd restarts inside its node's namespace), the local registries
(127.0.0.1:5000 open, :5001 htpasswd) with the test images pushed, waits until every
node is idle, resumes drained nodes, and writes ``.cluster/env.sh`` in the checkout.

Generated files come from templates/; all state lives under ``Site().root``.  Nothing
is written under /etc except the test users and /dev/fuse mode 0666 (the documented
site prerequisite for unprivileged squashfuse).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace

from shifter import command, templates
from shifter.errors import ShifterError, UsageError
from tools import daemons, gateway, registry, sitemodules, users
from tools import images as test_images
from tools.site import Site

APT_PACKAGES = (
    "slurmctld", "slurmd", "slurm-client", "munge", "libslurm-dev", "squashfs-tools",
    "xfsprogs", "squashfuse", "fuse3", "docker-registry", "skopeo", "debootstrap",
    "apache2-utils", "mpich", "libmpich-dev", "util-linux", "openssh-server",
    "openssh-client", "gcc", "strace", "openssl", "slurm-wlm-basic-plugins",  # mpi/pmi2
)
MAX_NODES = 64
#: the plugin's plugstack.conf arguments on the local site (docs/local-site.md)
def say(msg: str) -> None:
    print(f"cluster: {msg}", flush=True)


# --------------------------------------------------------------------------- packages
def missing_packages(packages=APT_PACKAGES) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True, text=True,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def ensure_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    say(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    with no_service_starts():
        res = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            env=env, capture_output=True, text=True,
        )
    if res.returncode != 0:
        raise ShifterError(f"can't install {' '.join(missing)}: {res.stderr.strip()[-500:]}")
    if "openssh-server" in missing:
        # The machine's own sshd (port 22) is not the site's business: the package only
        # provides the binaries the jobs' sshd run (docs/sshd.md).  Keep Debian's service
        # from starting at boot too.
        subprocess.run(["systemctl", "disable", "ssh.service", "ssh.socket"], capture_output=True)


POLICY_RC_D = "/usr/sbin/policy-rc.d"


@contextlib.contextmanager
def no_service_starts():
    """Debian's packages start their services on install unless policy-rc.d says no
    (exit 101): say no while installing, when the machine has no policy of its own."""
    made = False
    if not os.path.lexists(POLICY_RC_D):
        with open(POLICY_RC_D, "w") as f:
            f.write("#!/bin/sh\n# tools/cluster: no service starts while it installs packages\nexit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
        made = True
    try:
        yield
    finally:
        if made:
            os.unlink(POLICY_RC_D)


# --------------------------------------------------------------------------- layout
def ensure_dirs(site: Site) -> None:
    for d in (site.root, site.etc, site.log, site.run, site.state, site.spool, site.images,
              site.cache, site.munge_dir, os.path.join(site.prefix, "etc")):
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
    # the munge socket directory must be reachable (o+x) by job users
    os.chmod(site.munge_dir, 0o755)


def ensure_fuse() -> None:
    if os.path.exists("/dev/fuse"):
        os.chmod("/dev/fuse", 0o666)


def node_table(site: Site) -> list[dict]:
    return [
        {"name": name, "port": site.slurmd_base_port + i, "addr": f"127.0.1.{i}"}
        for i, name in enumerate(site.node_names(), 1)
    ]


def write_configs(site: Site, modules_conf: str = "") -> bool:
    """Render every config file; True when one that slurm reads changed.  ``modules_conf``:
    the site modules' udiRoot.conf lines (``tools.sitemodules``)."""
    nodes = node_table(site)
    udiroot = site.udiroot_conf
    write_etc_files(site.etc_files)
    if site.contain:
        templates.write("extern_setup.sh", site.extern_setup, mode=0o755)
        templates.write("daemon-roothook.sh", site.daemon_roothook, mode=0o755)
    templates.write("udiRoot.conf", udiroot, **site.udiroot_context(modules_conf=modules_conf))
    changed = templates.write(
        "plugstack.conf", site.plugstack_conf,
        plugin_path=site.plugin_path, udiroot_conf=udiroot, plugin_args=site.plugin_args(),
    )
    changed |= templates.write("cgroup.conf", site.cgroup_conf)
    changed |= templates.write(
        "slurm.conf", site.slurm_conf,
        cluster_name="shifter", slurmctld_port=site.slurmctld_port, munge_socket=site.munge_socket,
        plugstack_conf=site.plugstack_conf, state_dir=site.state, spool_dir=site.spool,
        run_dir=site.run, log_dir=site.log, nodes=nodes, cpus=2, memory_mb=1000, partition="debug",
        proctrack="proctrack/cgroup" if site.contain else "proctrack/linuxproc",
        prolog_flags="Alloc,Contain" if site.contain else "Alloc",
        gpus=sitemodules.GPUS,
    )
    changed |= templates.write("gres.conf", site.gres_conf, nodes=nodes,
                               gpu_files=sitemodules.gpu_device_files(site))
    templates.write("hosts", os.path.join(site.etc, "hosts"), nodes=nodes)
    return changed


def write_etc_files(path: str) -> None:
    """The site's /etc files for containers (etcPath): the host's users and groups (the
    runtime filters them to the job's user) and a files-only nsswitch.conf."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    for name in ("passwd", "group"):
        shutil.copyfile(os.path.join("/etc", name), os.path.join(path, name))
        os.chmod(os.path.join(path, name), 0o644)
    templates.write("nsswitch.conf", os.path.join(path, "nsswitch.conf"))


def config_stamp(site: Site) -> str:
    """What slurmd has loaded: slurm.conf, plugstack.conf and the plugin's shim.  (The
    embedded Python module is loaded afresh by every process that needs it.)"""
    h = hashlib.sha256()
    for path in (site.slurm_conf, site.plugstack_conf, site.cgroup_conf, site.plugin_path, site.gres_conf):
        try:
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        except FileNotFoundError:
            h.update(b"-")
    return h.hexdigest()


def private_slurm_conf(site: Site, plugstack_text: str) -> tuple[str, str]:
    """A copy of the site's slurm.conf whose PlugStackConfig is a new plugstack.conf
    holding ``plugstack_text``, in a new directory (the caller removes it): for srun
    with another plugin set-up.  Returns (slurm.conf, plugstack.conf)."""
    d = tempfile.mkdtemp(prefix="shifter-plugstack-")
    os.chmod(d, 0o755)
    plug = os.path.join(d, "plugstack.conf")
    with open(plug, "w") as f:
        f.write(plugstack_text)
    with open(site.slurm_conf) as f:
        conf = re.sub(r"^PlugStackConfig=.*$", f"PlugStackConfig={plug}", f.read(), flags=re.M)
    path = os.path.join(d, "slurm.conf")
    with open(path, "w") as f:
        f.write(conf)
    for p in (plug, path):
        os.chmod(p, 0o644)
    return path, plug


def slurm_env(site: Site) -> dict:
    return dict(os.environ, SLURM_CONF=site.slurm_conf)


# --------------------------------------------------------------------------- munge
def munge_up(site: Site) -> None:
    pidfile = site.pidfile("munged")
    if daemons.running(pidfile, "munged"):
        return
    if not os.path.exists(site.munge_key):
        subprocess.run(["mungekey", "-c", "-k", site.munge_key], check=True)
    os.chmod(site.munge_key, 0o400)
    log = os.path.join(site.log, "munged.log")
    subprocess.run(
        ["munged", f"--key-file={site.munge_key}", f"--socket={site.munge_socket}",
         f"--pid-file={pidfile}", f"--log-file={log}",
         f"--seed-file={os.path.join(site.state, 'munge.seed')}", "--force"],
        check=True, capture_output=True,
    )
    daemons.wait_for(lambda: os.path.exists(site.munge_socket), 10, "munged", log)
    os.chmod(site.munge_socket, 0o777)


# --------------------------------------------------------------------------- slurm
def slurmctld_up(site: Site, fresh: bool) -> None:
    pidfile = os.path.join(site.run, "slurmctld.pid")
    if daemons.running(pidfile, "slurmctld") and not fresh:
        return
    daemons.stop(pidfile, "slurmctld")
    nodes_down(site)
    # A clean slurmctld restarts job ids at 1, and slurmd silently skips the prolog of
    # ids it remembers: clear slurmctld state and every slurmd spool together (and the
    # nodes start from new namespaces, as after a reboot).
    for d in [site.state, *glob.glob(os.path.join(site.spool, "slurmd-*"))]:
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(site.state, exist_ok=True)
    rotate_logs(site)
    log = os.path.join(site.log, "slurmctld.log")
    res = subprocess.run(["slurmctld", "-c", "-f", site.slurm_conf], env=slurm_env(site),
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise ShifterError(f"can't start slurmctld: {res.stderr.strip() or daemons.log_tail(log)}")
    daemons.wait_for(lambda: daemons.running(pidfile, "slurmctld"), 10, "slurmctld", log)
    daemons.wait_for(lambda: _scontrol_ping(site), 15, "slurmctld to answer", log, interval=0.2)


def _scontrol_ping(site: Site) -> bool:
    res = subprocess.run(["scontrol", "ping"], env=slurm_env(site), capture_output=True, text=True)
    return "UP" in res.stdout


def rotate_logs(site: Site) -> None:
    old = os.path.join(site.log, "old")
    os.makedirs(old, exist_ok=True)
    for path in glob.glob(os.path.join(site.log, "slurm*.log")):
        os.replace(path, os.path.join(old, os.path.basename(path)))


def slurmd_pidfile(site: Site, node: str) -> str:
    return os.path.join(site.run, f"slurmd-{node}.pid")


# Every node nI lives in a mount + UTS namespace of its own, kept alive by a holder
# process (``sleep infinity`` running as ``shifter-node-nI``, pidfile run/node-nI.pid).
# slurmd runs inside it, so a killed slurmd is restarted into the node's namespace,
# where the mounts the node's jobs made still are: a new namespace is made only when
# its holder is gone.
def holder_pidfile(site: Site, node: str) -> str:
    return os.path.join(site.run, f"node-{node}.pid")


def holder_name(node: str) -> str:
    """argv[0] of node's holder: how ``daemons.running`` recognises it."""
    return f"shifter-node-{node}"


def boot_id_file(site: Site, node: str) -> str:
    return os.path.join(site.run, f"node-{node}.boot_id")


#: the node's own boot id is bound over this file in its namespace
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def mount_ns(pid: int | None) -> str | None:
    """The mount namespace of ``pid`` (``mnt:[inode]``), None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except (OSError, TypeError):
        return None


def holder_running(site: Site, node: str) -> int | None:
    return daemons.running(holder_pidfile(site, node), holder_name(node))


def start_holder(site: Site, node: str, inside: int | None = None) -> int:
    """Start node's holder: inside the mount + UTS namespaces of process ``inside`` (a
    slurmd that outlived its holder keeps its namespace), else in new ones, made private
    towards the machine and then with / recursively shared, as on a systemd host (a
    mount that propagates where it must not shows here as it would at a site)."""
    hold = 'exec -a "$1" sleep infinity'
    if inside is None:
        argv = ["unshare", "--mount", "--uts", "--propagation", "private", "--",
                "/bin/bash", "-c", "mount --make-rshared / && " + hold]
    else:
        argv = ["nsenter", f"--target={inside}", "--mount", "--uts", "--", "/bin/bash", "-c", hold]
    log = os.path.join(site.log, f"node-{node}.log")
    proc = daemons.spawn([*argv, "holder", holder_name(node)], log)

    def held():
        if proc.poll() is not None:
            raise ShifterError(f"can't make the namespace of node {node}: exit {proc.returncode}: "
                               + " | ".join(daemons.log_tail(log, 3)))
        argv0 = (daemons.live_argv(proc.pid) or [b""])[0]
        return argv0 == os.fsencode(holder_name(node))

    daemons.wait_for(held, 10, f"the namespace holder of {node}", log, interval=0.01)
    pidfile = holder_pidfile(site, node)
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{proc.pid}\n")
    os.replace(pidfile + ".tmp", pidfile)
    return proc.pid


def node_setup(site: Site, node: str, holder: int, fresh: bool = False) -> None:
    """Give node's namespace what a node has and it lacks: hostname nI, the cluster's
    /etc/hosts, and a boot id of its own (MPI libraries such as UCX take processes with
    one boot id for one machine and join them through shared memory, which fails
    between the nodes' containers).  Nothing runs when everything is there already."""
    try:
        with open(f"/proc/{holder}/mountinfo") as f:
            targets = {line.split()[4] for line in f}
    except OSError as e:
        raise ShifterError(f"can't read the mounts of node {node}'s namespace: {e.strerror}") from None
    steps = []
    if "/etc/hosts" not in targets:
        steps.append('mount --bind "$2" /etc/hosts')
    if BOOT_ID not in targets:
        with open(boot_id_file(site, node) + ".tmp", "w") as f:
            f.write(f"{uuid.uuid4()}\n")
        os.chmod(boot_id_file(site, node) + ".tmp", 0o644)
        os.replace(boot_id_file(site, node) + ".tmp", boot_id_file(site, node))
        steps.append(f'mount --bind -o ro "$3" {BOOT_ID}')
    if not steps and not fresh:
        return
    script = " && ".join(['hostname "$1"', *steps])
    res = subprocess.run(
        ["nsenter", f"--target={holder}", "--mount", "--uts", "--", "/bin/sh", "-c", script,
         "node-setup", node, os.path.join(site.etc, "hosts"), boot_id_file(site, node)],
        capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise ShifterError(f"can't set up node {node}'s namespace: {res.stderr.strip()}")


def nodes_down(site: Site, holders: bool = True) -> None:
    """Stop every slurmd, then (``holders``) the namespace holders, by pidfile."""
    for pidfile in glob.glob(os.path.join(site.run, "slurmd-*.pid")):
        daemons.stop(pidfile, "slurmd")
    stop_hook_servers(site)
    if holders:
        for pidfile in glob.glob(os.path.join(site.run, "node-*.pid")):
            node = os.path.basename(pidfile)[len("node-"):-len(".pid")]
            daemons.stop(pidfile, holder_name(node))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(boot_id_file(site, node))


def hook_servers(nodes) -> list[int]:
    """The pids of the hook servers (``shifter.spank.hookd``) of the nodes named ``nodes``."""
    names = {n.encode() for n in nodes}
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        argv = daemons.live_argv(int(pid))
        if argv and argv[1:4] == [b"-I", b"-m", b"shifter.spank.hookd"] and argv[4:] and argv[4] in names:
            pids.append(int(pid))
    return pids


def stop_hook_servers(site: Site) -> None:
    """The nodes' hook servers (started by the first prolog on each node, in its
    namespace): they leave with their nodes."""
    for pid in hook_servers(site.node_names()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def node_up(site: Site, node: str) -> None:
    """Node's holder and its slurmd, inside the holder's namespace; starts only what is
    missing (a dead slurmd is restarted in the namespace its node kept)."""
    pidfile = slurmd_pidfile(site, node)
    slurmd = daemons.running(pidfile, "slurmd")
    if slurmd and not node_root_shared(slurmd):
        daemons.stop(pidfile, "slurmd")  # started by an older tools/cluster: private /
        slurmd = None
    holder = holder_running(site, node)
    fresh = holder is None
    if holder is None:
        holder = start_holder(site, node, inside=slurmd)
    elif slurmd and mount_ns(slurmd) != mount_ns(holder):
        say(f"slurmd {node} runs outside its node's namespace: restarting it there")
        daemons.stop(pidfile, "slurmd")
        slurmd = None
    node_setup(site, node, holder, fresh=fresh)
    if slurmd:
        return
    os.makedirs(os.path.join(site.spool, f"slurmd-{node}"), exist_ok=True)
    res = subprocess.run(
        ["nsenter", f"--target={holder}", "--mount", "--uts", "--",
         "slurmd", "-f", site.slurm_conf, "-N", node],
        env=slurm_env(site), capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise ShifterError(f"can't start slurmd {node}: "
                           f"{res.stderr.strip() or daemons.log_tail(site.slurmd_log(node))}")


def slurmd_up(site: Site) -> None:
    for node in site.node_names():
        node_up(site, node)

    def in_its_node(node):
        pid = daemons.running(slurmd_pidfile(site, node), "slurmd")
        return pid and mount_ns(pid) == mount_ns(holder_running(site, node))

    for node in site.node_names():
        daemons.wait_for(lambda n=node: in_its_node(n), 10, f"slurmd {node}", site.slurmd_log(node))


def node_root_shared(pid: int | None) -> bool:
    """Whether the mount namespace of ``pid`` has a shared / (as on a systemd host)."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == "/":
                    root = fields
            return any(tag.startswith("shared:") for tag in root[6:root.index("-")])
    except (OSError, NameError, ValueError, TypeError):
        return False


def node_states(site: Site) -> dict[str, str]:
    res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=slurm_env(site),
                         capture_output=True, text=True)
    states = {}
    for line in res.stdout.splitlines():
        name, _, state = line.partition(" ")
        states[name] = state.strip()
    return states


def wait_idle(site: Site, timeout: float = 60) -> None:
    names = set(site.node_names())
    resumed: set[str] = set()

    def all_idle():
        states = node_states(site)
        for name in names:
            state = states.get(name, "")
            if ("drain" in state or state.startswith("down")) and name not in resumed:
                say(f"resuming {name} ({state})")
                subprocess.run(["scontrol", "update", f"nodename={name}", "state=resume"],
                               env=slurm_env(site), capture_output=True)
                resumed.add(name)
        return all(states.get(n, "") == "idle" for n in names)  # "idle*": not responding yet

    daemons.wait_for(all_idle, timeout, "all nodes idle", os.path.join(site.log, "slurmctld.log"), 0.2)


# --------------------------------------------------------------------------- commands
def write_env(site: Site, checkout: str | None) -> str | None:
    if not checkout:
        return None
    d = os.path.join(checkout, ".cluster")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "env.sh")
    templates.write(
        "env.sh", path,
        slurm_conf=site.slurm_conf, shifter_config=os.path.join(site.prefix, "etc", "udiRoot.conf"),
        bindir=site.bindir, site_dir=site.root,
    )
    return path


def saved_state(site: Site) -> dict:
    try:
        with open(os.path.join(site.run, "cluster.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save_state(site: Site, **values) -> None:
    state = saved_state(site)
    state.update(values)
    path = os.path.join(site.run, "cluster.json")
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)


def up(site: Site, checkout: str | None = None, images: bool = True) -> None:
    t0 = time.monotonic()
    ensure_packages()
    ensure_dirs(site)
    users.ensure()
    ensure_fuse()
    munge_up(site)
    previous = saved_state(site)
    if previous.get("nodes") not in (None, site.nodes):
        say(f"node count changes {previous['nodes']} -> {site.nodes}: restarting Slurm")
        nodes_down(site)
        daemons.stop(os.path.join(site.run, "slurmctld.pid"), "slurmctld")

    modules_conf = sitemodules.prepare(site, log=say)
    slurm_changed = write_configs(site, modules_conf)
    stamp = config_stamp(site)
    fresh = slurm_changed or previous.get("stamp") != stamp
    if fresh and previous.get("stamp"):
        say("slurm.conf, plugstack.conf or the plugin changed: restarting Slurm")
    slurmctld_up(site, fresh=fresh and bool(previous.get("stamp")))
    slurmd_up(site)
    save_state(site, stamp=stamp, nodes=site.nodes, contain=site.contain)
    wait_idle(site)
    say(f"slurm: {site.nodes} nodes idle ({time.monotonic() - t0:.1f} s)")

    registry.start(site)
    if images:
        test_images.ensure(site, log=lambda m: say(m))

    gateway.start(site)
    if images:
        prepull(site)
    env = write_env(site, checkout)
    say(f"site up in {time.monotonic() - t0:.1f} s" + (f"; source {env}" if env else ""))


#: pulled into the gateway by `up`, so jobs can use them at once
PREPULLED = ("docker:test/busybox:latest", "docker:test/debian:latest")


def prepull(site: Site) -> None:
    """Pull the demo images through the gateway (idempotent: a READY image is looked up)."""
    env = dict(os.environ, SHIFTER_CONFIG=site.udiroot_conf)
    for image in PREPULLED:
        shifterimg = os.path.join(site.bindir, "shifterimg")
        if subprocess.run([shifterimg, "lookup", image], env=env, capture_output=True).returncode == 0:
            continue
        res = subprocess.run([shifterimg, "pull", image], env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise ShifterError(f"can't pull {image} into the gateway: {res.stderr.strip()}")
        say(f"pulled {image} into the gateway")


def down(site: Site) -> None:
    nodes_down(site)
    daemons.stop(os.path.join(site.run, "slurmctld.pid"), "slurmctld")

    gateway.stop(site)
    registry.stop(site)
    daemons.stop(site.pidfile("munged"), "munged")
    say("site down")


def status(site: Site) -> int:
    ok = True
    rows = [("munged", daemons.running(site.pidfile("munged"), "munged")),
            ("slurmctld", daemons.running(os.path.join(site.run, "slurmctld.pid"), "slurmctld"))]
    for n in site.node_names():
        rows += [(f"holder {n}", holder_running(site, n)),
                 (f"slurmd {n}", daemons.running(slurmd_pidfile(site, n), "slurmd"))]
    for name, pid in rows:
        print(f"{name:12} {'running pid ' + str(pid) if pid else 'stopped'}")
        ok &= bool(pid)
    for name, value in registry.status(site).items():
        print(f"{name:12} {value}")

    print(f"{'gateway':12} {gateway.status(site)}")
    if rows[1][1]:
        for node, state in sorted(node_states(site).items()):
            print(f"node {node:7} {state}")
    return 0 if ok else 1


def main(argv=None) -> int:
    return command.run("cluster", _main, argv)


def _main(argv: list[str]) -> int:
    parser = command.parser_class()(prog="tools/cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status", "restart"))
    parser.add_argument("-n", "--nodes", type=int, default=None,
                        help=f"number of slurmd (1..{MAX_NODES}; default: as before, else 3)")
    parser.add_argument("--no-images", action="store_true", help="do not build/push the test images")
    parser.add_argument("--contain", action="store_true",
                        help="the contain configuration: PrologFlags=Alloc,Contain, proctrack/cgroup, --ccm, "
                             "memory_cgroup, extern_cgroup, extern_setup (without it: the default one)")
    args = parser.parse_args(argv)
    site = Site()
    nodes = args.nodes or saved_state(site).get("nodes") or 3
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"invalid --nodes {nodes}: must be 1..{MAX_NODES}")
    site = replace(site, nodes=nodes, contain=args.contain)
    checkout = os.environ.get("SHIFTER_CHECKOUT")
    try:
        if args.command == "up":
            up(site, checkout, images=not args.no_images)
        elif args.command == "down":
            down(site)
        elif args.command == "restart":
            down(site)
            save_state(site, stamp=None)
            up(site, checkout, images=not args.no_images)
        else:
            return status(site)
    except subprocess.CalledProcessError as e:
        raise ShifterError(f"{' '.join(map(str, e.cmd))} exited {e.returncode}: "
                           f"{(e.stderr or b'').decode(errors='replace').strip()[-400:] if isinstance(e.stderr, bytes) else e.stderr}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
