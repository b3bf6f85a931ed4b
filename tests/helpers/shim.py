"""The compiled SPANK shim driven by a stand-in for srun/sbatch (tests/data/shim_harness.c):
a world-readable site of fake images and the harness, and one run of it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from helpers.prereq import require

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
SHIM = os.path.join(sys.prefix, "lib", "shifter", "shifter_slurm.so")
A, B, MISSING, PRIVATE = "a1" * 32, "b2" * 32, "c3" * 32, "d4" * 32
NOBODY = 65534
NOT_YOURS = "there is no such image, or it is not yours to use"


def compiler():
    """The C compiler (with slurm/spank.h beside it), or skip."""
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None or not os.path.exists("/usr/include/slurm/spank.h"):
        require(False, "needs a C compiler and slurm/spank.h")
    return cc


@contextlib.contextmanager
def shim_site():
    """A world-readable directory: images A, B (public), PRIVATE (root's alone), a volume
    source, udiRoot.conf, and the compiled harness (so that another user can run it)."""
    top = tempfile.mkdtemp(prefix="shifter-shim-route-")
    os.chmod(top, 0o755)
    images, data = os.path.join(top, "images"), os.path.join(top, "data")
    os.makedirs(images)
    os.makedirs(data)
    for image_id, mode in ((A, 0o644), (B, 0o644), (PRIVATE, 0o600)):
        for suffix, text in ((".meta", "FORMAT: squashfs\n"), (".squashfs", "")):
            path = os.path.join(images, image_id + suffix)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, mode)
    os.chmod(images, 0o755)
    os.chmod(data, 0o755)
    conf = os.path.join(top, "udiRoot.conf")
    with open(conf, "w") as f:
        f.write(f"system=test\nimagePath={images}\nudiMount=/var/udiMount\nmodule_mpich_siteEnv=MPI=1\n")
    os.chmod(conf, 0o644)
    harness = os.path.join(top, "shim_harness")
    subprocess.run([compiler(), "-O2", "-Wall", "-Wno-unused-parameter", "-rdynamic", "-o", harness,
                    os.path.join(DATA, "shim_harness.c"), "-ldl"], check=True)
    try:
        yield {"top": top, "conf": conf, "dir": data, "harness": harness}
    finally:
        shutil.rmtree(top)


def run_shim(site, context, env, options, plugstack=None, user=None, extra_env=None):
    """One run of the harness over ``site``: what the shim did (JSON); as uid ``user`` when given."""
    plugstack = [f"shifter_config={site['conf']}"] if plugstack is None else plugstack
    argv = [site["harness"], SHIM, context, *plugstack, "--", *[f"{k}={v}" for k, v in options]]
    if user is not None and os.geteuid() != user:
        if os.geteuid() != 0:
            require(False, "running as another user needs root")
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *argv]
    res = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", **env, **(extra_env or {})}, cwd="/",
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)
