"""Layout of the local site: every path and port the site tools use, in one place.

All state lives under one world-readable directory (default ``/var/lib/shifter-site``,
override with ``SHIFTER_SITE_DIR``), never under a 0700 home, so job users can read
slurm.conf, udiRoot.conf and the munge socket.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

DEFAULT_SITE_DIR = "/var/lib/shifter-site"


@dataclass(frozen=True)
class Site:
    root: str = field(default_factory=lambda: os.environ.get("SHIFTER_SITE_DIR", DEFAULT_SITE_DIR))
    prefix: str = sys.prefix
    nodes: int = 3
    slurmctld_port: int = 16817
    slurmd_base_port: int = 17000  # node nI listens on base + I
    registry_port: int = 5000  # open registry
    registry_auth_port: int = 5001  # htpasswd registry
    gateway_port: int = 8000
    registry_user: str = "shifter"
    registry_password: str = "shifter-test-pw"
    #: the "contain" configuration (``tools/cluster up --contain``): PrologFlags=Alloc,Contain,
    #: proctrack/cgroup, the plugin's --ccm, memory_cgroup (per node), extern_cgroup and
    #: extern_setup, allowLocalChroot=1; the default configuration has none of these
    contain: bool = False
    #: the contain configuration's memory_cgroup (default: cgroup v1's memory controller;
    #: tests also run it on the v2 hierarchy)
    cgroup_mount: str = ""

    # directories -------------------------------------------------------------
    @property
    def etc(self) -> str:
        return os.path.join(self.root, "etc")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "log")

    @property
    def run(self) -> str:
        return os.path.join(self.root, "run")

    @property
    def state(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def spool(self) -> str:
        return os.path.join(self.root, "spool")

    @property
    def images(self) -> str:
        """imagePath of udiRoot.conf: where squashfs images and .meta files live."""
        return os.path.join(self.root, "images")

    @property
    def cache(self) -> str:
        """Build cache of the test images (kept between runs)."""
        return os.path.join(self.root, "cache")

    @property
    def registry_data(self) -> str:
        return os.path.join(self.root, "registry")

    # files ----------------------------------------------------------------
    @property
    def slurm_conf(self) -> str:
        return os.path.join(self.etc, "slurm.conf")

    @property
    def gres_conf(self) -> str:
        """Slurm reads gres.conf beside slurm.conf."""
        return os.path.join(self.etc, "gres.conf")

    @property
    def plugstack_conf(self) -> str:
        return os.path.join(self.etc, "plugstack.conf")

    @property
    def cgroup_conf(self) -> str:
        """Slurm reads cgroup.conf beside slurm.conf (proctrack/cgroup, contain configuration)."""
        return os.path.join(self.etc, "cgroup.conf")

    @property
    def extern_setup(self) -> str:
        """The contain configuration's extern_setup script (logs one line per job)."""
        return os.path.join(self.etc, "extern_setup.sh")

    @property
    def daemon_roothook(self) -> str:
        """The contain configuration's test module "daemon": its roothook leaves a process."""
        return os.path.join(self.etc, "daemon-roothook.sh")

    def plugin_args(self) -> dict:
        """plugstack.conf arguments after shifter_config=."""
        if not self.contain:
            return {"enable_sshd": 1}  # the job's per-node sshd (docs/sshd.md)
        # the local nodes share one kernel: the node's name is a level of the job's cgroup
        return {"enable_ccm": 1, "enable_sshd": 1, "memory_cgroup": self.cgroup_mount or MEMORY_CGROUP, "cgroup_per_node": 1,
                "extern_cgroup": 1, "extern_setup": self.extern_setup}

    @property
    def munge_dir(self) -> str:
        return os.path.join(self.run, "munge")

    @property
    def munge_socket(self) -> str:
        return os.path.join(self.munge_dir, "munge.socket")

    @property
    def munge_key(self) -> str:
        return os.path.join(self.etc, "munge.key")

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def slurmd_log(self, node: str) -> str:
        return os.path.join(self.log, f"slurmd-{node}.log")

    def pidfile(self, name: str) -> str:
        return os.path.join(self.run, f"{name}.pid")

    @property
    def bindir(self) -> str:
        return os.path.join(self.prefix, "bin")

    @property
    def plugin_path(self) -> str:
        """The SPANK shim that plugstack.conf loads."""
        return os.path.join(self.prefix, "lib", "shifter", "shifter_slurm.so")

    @property
    def udiroot_conf(self) -> str:
        """The site's udiRoot.conf: at the prefix's default location."""
        return os.path.join(self.prefix, "etc", "udiRoot.conf")

    @property
    def etc_files(self) -> str:
        """etcPath: the site's /etc files for containers."""
        return os.path.join(self.prefix, "etc", "shifter_etc_files")

    def udiroot_context(self, **overrides) -> dict:
        """What templates/udiRoot.conf.j2 renders for this site (tests override a few)."""
        context = dict(
            system="local", image_path=self.images, udi_mount="/var/udiMount", loop_mount="/var/udiLoopMount",
            # the slurmd spool too: a batch script starting with #!/usr/bin/shifter /bin/bash
            # runs inside the image, which must see the script Slurm stored there
            etc_path=self.etc_files, site_fs=f"/home:/home;{self.spool}:{self.spool}:ro",
            image_gateways=[f"http://127.0.0.1:{self.gateway_port}"], munge_socket=self.munge_socket,
            allow_local_chroot=1 if self.contain else 0,
            daemon_roothook=self.daemon_roothook if self.contain else "",
            modules_conf="",
        )
        context.update(overrides)
        return context

    def registry_url(self, auth: bool = False) -> str:
        return f"127.0.0.1:{self.registry_auth_port if auth else self.registry_port}"


#: the contain configuration's memory_cgroup (cgroup v1's memory controller)
MEMORY_CGROUP = "/sys/fs/cgroup/memory"

TEST_USERS = (
    # name, uid, own gid
    ("sftest1", 4242, 4242),
    ("sftest2", 4243, 4243),
)
TEST_SHARED_GROUP = ("sftestgrp", 4240)
