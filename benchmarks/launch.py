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

``--before PREFIX`` adds every shifter row for the shifter installed at PREFIX (another
version, e.g. ``SHIFTER_PREFIX=/opt/shifter-before tools/install`` in an older checkout),
timed in the same interleaved runs, each version with configurations of its own.
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

from shifter.runtime import plandir, privplan
from benchmarks import versions
from tools import squash
from tools.site import TEST_USERS, Site

SHIFTER = os.path.join(sys.prefix, "bin", "shifter")
SHIFTER_CASES = ("shifter fast path", "shifter private", "shifter private, image not mounted",
                 "shifter private, first launch")
OTHER_CASES = ("chroot", "ch-run tree", "ch-run squashfs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--image", default="debian")
    parser.add_argument("--before", metavar="PREFIX",
                        help="also time the shifter installed at PREFIX (another version), interleaved: "
                             "its rows are marked (before)")
    args = parser.parse_args()
    site = Site()
    base = tempfile.mkdtemp(prefix="shifter-bench-launch-", dir="/var/tmp")
    os.chmod(base, 0o755)
    prefixes = {"": sys.prefix, **({" (before)": args.before} if args.before else {})}
    confs = {}
    try:
        image_id, tree, sqfs, confs = _prepare(site, args.image, base, prefixes)
        results = {}
        for who in ("root", TEST_USERS[0][0]):
            results[who] = _measure(who, args.runs, image_id, tree, sqfs, confs, prefixes)
        _print(results, args, sqfs, prefixes)
    finally:
        for prefix, c in (confs.values() if confs else ()):
            if os.path.exists(c):
                versions.teardown(prefix, c)
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _write_conf(path: str, udi: str, loop: str, images: str) -> None:
    with open(path, "w") as f:
        f.write(f"udiMount={udi}\nloopMount={loop}\nimagePath={images}\n")
    os.chmod(path, 0o644)


def _prepare(site, image: str, base: str, prefixes: dict):
    """The image as a squashfs (two imagePaths: one hard link, mounted nowhere) and an
    unpacked tree; per version, three configurations (the prepared UDI's, the unmounted
    image's, the first launches': removing their plan leaves the others')."""
    images = os.path.join(base, "images")
    image_id = squash.make_image(site, image, images)
    tree = os.path.join(base, "tree")
    os.mkdir(tree)
    squash.unpack(site, image, tree)
    sqfs = os.path.join(images, image_id + ".squashfs")
    for path in (images, sqfs, sqfs[:-9] + ".meta"):
        os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
    images2 = os.path.join(base, "images2")
    os.mkdir(images2, 0o755)
    for ext in (".squashfs", ".meta"):
        os.link(sqfs[:-9] + ext, os.path.join(images2, image_id + ext))
    confs = {}
    for i, (mark, prefix) in enumerate(prefixes.items()):
        for n, imgs in (("", images), ("2", images2), ("3", images)):
            name = f"{n}{i}"
            conf = os.path.join(base, f"udiRoot{name}.conf")
            _write_conf(conf, f"{base}/udi{name}", f"{base}/loop{name}", imgs)
            confs[(mark, n)] = (prefix, conf)
    return image_id, tree, sqfs, confs


def _cases(who: str, pw, tree: str, sqfs: str, image_id: str, confs: dict, prefixes: dict) -> dict:
    """name -> (argv, environment) of each timed launch."""
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": pw.pw_dir, "USER": who,
           "SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": image_id}
    chroot = ["/usr/sbin/chroot", tree, "/bin/true"] if who == "root" else [
        "unshare", "-r", "/usr/sbin/chroot", tree, "/bin/true"]
    cases = {"chroot": (chroot, env),
             "ch-run tree": (["ch-run", tree, "--", "/bin/true"], env),
             "ch-run squashfs": (["ch-run", sqfs, "--", "/bin/true"], env)}
    for mark, prefix in prefixes.items():
        shifter = [os.path.join(prefix, "bin", "shifter"), "/bin/true"]
        conf, conf2, conf3 = (confs[(mark, n)][1] for n in ("", "2", "3"))
        private = dict(env, SLURM_JOB_ID="other")
        cases["shifter fast path" + mark] = (shifter, dict(env, SHIFTER_CONFIG=conf))
        cases["shifter private" + mark] = (shifter, dict(private, SHIFTER_CONFIG=conf))
        cases["shifter private, image not mounted" + mark] = (shifter, dict(private, SHIFTER_CONFIG=conf2))
        cases["shifter private, first launch" + mark] = (shifter, dict(private, SHIFTER_CONFIG=conf3))
    return cases


def _forget_plan(who: str, pw, env: dict) -> None:
    """Remove the private plan of this launch, so that it is a first launch again."""
    groups = os.getgrouplist(who, pw.pw_gid) if who != "root" else os.getgroups()
    key = privplan.request_key(env, env["SHIFTER_CONFIG"], pw.pw_uid, pw.pw_gid, groups)
    try:
        os.unlink(os.path.join(plandir.path(pw.pw_uid), privplan.plan_name(key)))
    except FileNotFoundError:
        pass


def _measure(who: str, runs: int, image_id: str, tree: str, sqfs: str, confs: dict, prefixes: dict) -> dict:
    """Median ms of each case, interleaved runs (the first two are not counted)."""
    pw = pwd.getpwnam(who)
    as_user = [] if who == "root" else [
        "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    cases = _cases(who, pw, tree, sqfs, image_id, confs, prefixes)
    for mark, prefix in prefixes.items():
        conf = confs[(mark, "")][1]
        versions.teardown(prefix, conf)
        subprocess.run([os.path.join(prefix, "bin", "setupRoot"), "-U", str(pw.pw_uid), "id", image_id],
                       env={"SHIFTER_CONFIG": conf, "PATH": "/usr/bin:/bin"}, check=True)
    times = {name: [] for name in cases}
    for i in range(runs + 2):
        for name, (argv, e) in cases.items():
            if times[name] is None:
                continue
            if name.startswith("shifter private, first launch"):
                _forget_plan(who, pw, e)
            t0 = time.perf_counter()
            res = subprocess.run(as_user + argv, env=e, cwd="/", capture_output=True, text=True)
            elapsed = (time.perf_counter() - t0) * 1000
            if res.returncode != 0:
                times[name] = None
                print(f"launch: {who}: {name} failed: {res.stderr.strip()[:200]}", file=sys.stderr)
            elif i >= 2:
                times[name].append(elapsed)
    for mark, prefix in prefixes.items():
        versions.teardown(prefix, confs[(mark, "")][1])
    return {n: (statistics.median(v) if v else None) for n, v in times.items()}


def _print(results: dict, args, sqfs: str, prefixes: dict) -> None:
    names = list(OTHER_CASES) + [n + mark for n in SHIFTER_CASES for mark in prefixes]
    print(f"/bin/true in test/{args.image} (lz4 squashfs {os.path.getsize(sqfs) >> 20} MB), "
          f"median of {args.runs} interleaved runs, ms")
    print(f"{'':45}" + "".join(f"{w:>24}" for w in results))
    for n in names:
        row = f"{n:45}"
        for r in results.values():
            v = r.get(n)
            if v is None:
                row += f"{'n/a':>24}"
                continue
            ratio = ""
            if n.startswith("shifter fast path") and r.get("ch-run tree"):
                ratio = f" ({v / r['ch-run tree']:.2f}x tree)"
            if n.startswith("shifter private") and r.get("ch-run squashfs"):
                ratio = f" ({v / r['ch-run squashfs']:.2f}x sqfs)"
            row += f"{v:>10.1f}{ratio:>14}"
        print(row)


if __name__ == "__main__":
    sys.exit(main())
