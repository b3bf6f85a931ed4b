"""setupRoot / unsetupRoot as commands (what a prolog/epilog script pays) and the
in-process setup/teardown (what our own prolog/epilog pay), on busybox and Debian
images (lz4 squashfs), with one user volume.  Medians of interleaved runs.

``--before PREFIX`` times the shifter installed at PREFIX too (another version, e.g.
``SHIFTER_PREFIX=/opt/shifter-before tools/install`` in an older checkout), in the same
interleaved runs, with a configuration of its own; its rows are marked (before).  The
in-process columns run in each version's own interpreter: a warm-up setup and teardown,
then the timed ones."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import versions
from tools import squash
from tools.site import Site

#: run by a version's own python: one warm-up, then one timed in-process setup and teardown
IN_PROCESS = versions.IMPORT_UDI + """
import json, time
from shifter.runtime import volumes
from shifter.runtime.image import ImageRef
conf, image_id, vol = sys.argv[1:4]
c = config.load(conf)
request = udi.Request(image=ImageRef("id", image_id), uid=0, gid=0, username="root",
                      volumes=volumes.parse_volumes(vol + ":/data"))
udi.setup_root(c, request)
udi.teardown(c)
t0 = time.perf_counter()
udi.setup_root(c, request)
t1 = time.perf_counter()
udi.teardown(c)
t2 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t1]))
"""
COLUMNS = ("setupRoot", "unsetupRoot", "setup (in-proc)", "teardown (in-proc)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--before", metavar="PREFIX", help="also time the shifter installed at PREFIX")
    args = parser.parse_args()
    site = Site()
    base = tempfile.mkdtemp(prefix="shifter-bench-setup-")
    prefixes = {"": sys.prefix, **({" (before)": args.before} if args.before else {})}
    confs = {}
    try:
        images = os.path.join(base, "images")
        ids = {name: squash.make_image(site, name, images) for name in ("busybox", "debian")}
        vol = os.path.join(base, "vol")
        os.mkdir(vol)
        for i, mark in enumerate(prefixes):
            confs[mark] = os.path.join(base, f"udiRoot{i}.conf")
            with open(confs[mark], "w") as f:
                f.write(f"udiMount={base}/udi{i}\nloopMount={base}/loop{i}\nimagePath={images}\n")
        rows = {}
        for name, image_id in ids.items():
            times = {mark: [[], [], [], []] for mark in prefixes}
            for i in range(args.runs + 2):
                for mark, prefix in prefixes.items():
                    sample = _one_run(prefix, confs[mark], image_id, vol)
                    if i >= 2:
                        for column, value in zip(times[mark], sample):
                            column.append(value)
            for mark in prefixes:
                rows[name + mark] = [statistics.median(v) * 1000 for v in times[mark]]
        size = {n: os.path.getsize(os.path.join(images, i + ".squashfs")) >> 20 for n, i in ids.items()}
        print(f"median of {args.runs} interleaved runs (ms); one user volume; lz4 squashfs")
        print(f"{'image':28}" + "".join(f"{c:>20}" for c in COLUMNS))
        for name, values in rows.items():
            image = name.split(" ")[0]
            label = f"{image} ({size[image]} MB){name[len(image):]}"
            print(f"{label:28}" + "".join(f"{v:20.1f}" for v in values))
        print("Shifter's C setupRoot here: 17 ms (busybox), 117 ms (Debian); unsetupRoot 2-5 ms")
    finally:
        for mark, conf in confs.items():
            if os.path.exists(conf):
                versions.teardown(prefixes[mark], conf)
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _one_run(prefix: str, conf: str, image_id: str, vol: str) -> list[float]:
    """setupRoot and unsetupRoot as commands, then in-process in that version's python: seconds."""
    env = {"SHIFTER_CONFIG": conf, "PATH": "/usr/bin:/bin"}
    bindir = os.path.join(prefix, "bin")
    t0 = time.perf_counter()
    subprocess.run([os.path.join(bindir, "setupRoot"), "-U", "0", "-v", f"{vol}:/data", "id", image_id],
                   env=env, check=True)
    t1 = time.perf_counter()
    subprocess.run([os.path.join(bindir, "unsetupRoot")], env=env, check=True)
    t2 = time.perf_counter()
    out = versions.python(prefix, IN_PROCESS, conf, image_id, vol, env=env, check=True, capture_output=True,
                          text=True).stdout
    setup, teardown = json.loads(out)
    return [t1 - t0, t2 - t1, setup, teardown]


if __name__ == "__main__":
    sys.exit(main())
