"""Fixtures shared by the root tier's modules (the tier's rules: tests/conftest.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
import textwrap

import pytest

from helpers.prereq import USER1, USER2
from helpers.site_launch import forget_plans
from shifter.runtime import config as udiconfig
from shifter.runtime import meta
from shifter.runtime.builder import udi
from tools import squash


def _launch_extras(root):
    """What launch_env's image holds beyond busybox."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
    subprocess.run(["gcc", "-static", "-O2", "-o", os.path.join(root, "bin", "cma"),
                    os.path.join(here, "data", "cma.c")], check=True)
    with open(os.path.join(root, "root", "secret"), "w") as f:
        f.write("root only\n")
    os.chmod(os.path.join(root, "root", "secret"), 0o600)
    os.makedirs(os.path.join(root, "work"))
    with open(os.path.join(root, "bin", "entry.sh"), "w") as f:
        f.write("#!/bin/sh\necho entry:\"$@\"\n")
    os.chmod(os.path.join(root, "bin", "entry.sh"), 0o755)


@pytest.fixture(scope="module")
def launch_env(cluster):
    """The busybox image with an ENTRYPOINT, WORKDIR and ENV, a udiRoot.conf with site env and
    a user hook (module ``hook``), and an env file, all readable by the test users."""
    # the test users must reach the config and images: not under pytest's 0700 tmp
    base = pathlib.Path(tempfile.mkdtemp(prefix="shifter-launch-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    images = base / "images"
    image_id = squash.make_image(cluster, "busybox", str(images), extra=_launch_extras)
    # give the image an ENTRYPOINT, WORKDIR and ENV to merge
    m = meta.read(str(images / f"{image_id}.meta"))
    meta.write(str(images / f"{image_id}.meta"), meta.ImageMeta(
        entry=("/bin/entry.sh",), cmd=("/bin/echo", "default-cmd"), workdir="/work",
        env=m.env + ("LAYER=image", "IMAGE_ONLY=1")))
    hooks = base / "hooks"
    hooks.mkdir()
    (hooks / "user.sh").write_text("#!/bin/sh\ncat /proc/$PPID/cmdline | tr '\\0' ' ' > /tmp/shifter-hook-parent-$(id -u)\n")
    conf = base / "udiRoot.conf"
    conf.write_text(textwrap.dedent(f"""\
        udiMount={base}/mnt/udi
        loopMount={base}/mnt/loop
        imagePath={images}
        siteEnv=SITE_ONLY=1
        siteEnvPrepend=PATH=/opt/udiImage/bin
        module_hook_userhook={hooks}/user.sh
        module_hook_siteFs={hooks}:{hooks}:ro
        module_hook_siteEnv=LAYER=module
        """))
    for p in (conf, images, hooks, base / "hooks" / "user.sh"):
        os.chmod(p, 0o755 if os.path.isdir(p) else 0o644)
    os.chmod(hooks / "user.sh", 0o755)
    envfile = base / "envfile"
    envfile.write_text("# comment\nLAYER=envfile\nFROM_FILE=1\n")
    os.chmod(envfile, 0o644)
    config = udiconfig.load(str(conf))
    yield {"conf": str(conf), "id": image_id, "config": config, "base": str(base), "envfile": str(envfile)}
    udi.teardown(config)
    udi.remove_anchors(config)
    shutil.rmtree(base)


@pytest.fixture
def fresh_plans(launch_env):
    """launch_env with no private plans of root and the test users before and after."""
    setup = launch_env
    for user in ("root", USER1, USER2):
        forget_plans(user)
    yield setup
    for user in ("root", USER1, USER2):
        forget_plans(user)
