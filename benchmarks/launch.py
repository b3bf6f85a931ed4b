"""Launch latency of ``/bin/true`` in test/debian (lz4), as root and as a test user,
interleaved runs, medians (ms):

  chroot              chroot on the unpacked tree (as the user: ``unshare -r chroot``)
  ch-run tree         Charliecloud's ch-run on the unpacked tree
  ch-run squashfs     ch-run on the squashfs (it mounts it with squashfuse itself)
  shifter fast path   shifter into the UDI setupRoot prepared (the compiled launcher)
  shifter private     shifter building a private UDI (no prepared one matches): the
                      compiled launcher replaying the private plan the first launch
                      recorded (docs/private-plans.md); the image is mounted on the
                      node (by the prepared UDI), and the private UDI shares that mount
  shifter private,    the same with the image mounted nowhere on the node (a second
    image not mounted imagePath with a hard link of the image): a fresh loop mount (root)
                      or squashfuse (user)
  shifter private,    the same with no plan (removed before each run): Python builds
    first launch      the container and records the plan
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from shifter.runtime import config as udiconfig
from shifter.runtime import plandir, privplan
from shifter.runtime.builder import udi
from tools import squash
from tools.site import TEST_USERS, Site

SHIFTER = os.path.join(sys.prefix, "bin", "shifter")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--image", default="debian")
    args = parser.parse_args()
    site = Site()
    base = tempfile.mkdtemp(prefix="shifter-bench-launch-", dir="/var/tmp")
    os.chmod(base, 0o755)
    conf = os.path.join(base, "udiRoot.conf")
    try:
        images = os.path.join(base, "images")
        image_id = squash.make_image(site, args.image, images)
        tree = os.path.join(base, "tree")
        os.mkdir(tree)
        squash.unpack(site, args.image, tree)
        sqfs = os.path.join(images, image_id + ".squashfs")
        with open(conf, "w") as f:
            f.write(f"udiMount={base}/udi\nloopMount={base}/loop\nimagePath={images}\n")
        for path in (images, sqfs, conf, sqfs[:-9] + ".meta"):
            os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        # the same image under another path: no mount of it on the node to share
        images2, conf2 = os.path.join(base, "images2"), os.path.join(base, "udiRoot2.conf")
        os.mkdir(images2, 0o755)
        for ext in (".squashfs", ".meta"):
            os.link(sqfs[:-9] + ext, os.path.join(images2, image_id + ext))
        with open(conf2, "w") as f:
            f.write(f"udiMount={base}/udi2\nloopMount={base}/loop2\nimagePath={images2}\n")
        os.chmod(conf2, 0o644)
        # first launches: their own configuration, so that removing their plan leaves the others'
        conf3 = os.path.join(base, "udiRoot3.conf")
        with open(conf3, "w") as f:
            f.write(f"udiMount={base}/udi3\nloopMount={base}/loop3\nimagePath={images}\n")
        os.chmod(conf3, 0o644)
        config = udiconfig.load(conf)
        results = {}
        for who in ("root", TEST_USERS[0][0]):
            pw = pwd.getpwnam(who)
            env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": pw.pw_dir, "USER": who,
                   "SHIFTER_CONFIG": conf, "SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": image_id}
            as_user = [] if who == "root" else [
                "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
            chroot = ["/usr/sbin/chroot", tree, "/bin/true"] if who == "root" else [
                "unshare", "-r", "/usr/sbin/chroot", tree, "/bin/true"]
            cases = {
                "chroot": chroot,
                "ch-run tree": ["ch-run", tree, "--", "/bin/true"],
                "ch-run squashfs": ["ch-run", sqfs, "--", "/bin/true"],
                "shifter fast path": [SHIFTER, "/bin/true"],
                "shifter private": [SHIFTER, "/bin/true"],
                "shifter private, image not mounted": [SHIFTER, "/bin/true"],
                "shifter private, first launch": [SHIFTER, "/bin/true"],
            }
            udi.teardown(config)
            subprocess.run([os.path.join(sys.prefix, "bin", "setupRoot"), "-U", str(pw.pw_uid), "id", image_id],
                           env={"SHIFTER_CONFIG": conf}, check=True)
            times = {name: [] for name in cases}
            for i in range(args.runs + 2):
                for name, argv in cases.items():
                    e = dict(env, SLURM_JOB_ID="other") if name.startswith("shifter private") else env
                    if name == "shifter private, image not mounted":
                        e = dict(e, SHIFTER_CONFIG=conf2)
                    if name == "shifter private, first launch":
                        e = dict(e, SHIFTER_CONFIG=conf3)
                        groups = os.getgrouplist(who, pw.pw_gid) if who != "root" else os.getgroups()
                        key = privplan.request_key(e, conf3, pw.pw_uid, pw.pw_gid, groups)
                        try:
                            os.unlink(os.path.join(plandir.path(pw.pw_uid), privplan.plan_name(key)))
                        except FileNotFoundError:
                            pass
                    t0 = time.perf_counter()
                    res = subprocess.run(as_user + argv, env=e, cwd="/", capture_output=True, text=True)
                    elapsed = (time.perf_counter() - t0) * 1000
                    if res.returncode != 0:
                        times[name] = None
                        print(f"launch: {who}: {name} failed: {res.stderr.strip()[:200]}", file=sys.stderr)
                    if times[name] is not None and i >= 2:
                        times[name].append(elapsed)
                cases = {n: a for n, a in cases.items() if times[n] is not None}
            results[who] = {n: (statistics.median(v) if v else None) for n, v in times.items()}
            udi.teardown(config)
        names = ["chroot", "ch-run tree", "ch-run squashfs", "shifter fast path", "shifter private",
                 "shifter private, image not mounted", "shifter private, first launch"]
        print(f"/bin/true in test/{args.image} (lz4 squashfs {os.path.getsize(sqfs) >> 20} MB), "
              f"median of {args.runs} interleaved runs, ms")
        print(f"{'':36}" + "".join(f"{w:>24}" for w in results))
        for n in names:
            row = f"{n:36}"
            for w, r in results.items():
                v = r.get(n)
                if v is None:
                    row += f"{'n/a':>24}"
                    continue
                ratio = ""
                if n == "shifter fast path" and r.get("ch-run tree"):
                    ratio = f" ({v / r['ch-run tree']:.2f}x tree)"
                if n.startswith("shifter private") and r.get("ch-run squashfs"):
                    ratio = f" ({v / r['ch-run squashfs']:.2f}x sqfs)"
                row += f"{v:>10.1f}{ratio:>14}"
            print(row)
    finally:
        for c in (conf, os.path.join(base, "udiRoot2.conf"), os.path.join(base, "udiRoot3.conf")):
            if os.path.exists(c):
                udi.teardown(udiconfig.load(c))
                udi.remove_anchors(udiconfig.load(c))
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
