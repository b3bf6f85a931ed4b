"""Pull + convert of the Debian test image: shifter-gateway vs skopeo + umoci + mksquashfs.

  gateway   a private shifter-gateway (its own catalog, cold layer cache every run) pulls
            docker:test/debian:latest from the site's registry 127.0.0.1:5000 until READY:
            manifest, layer download (verified), safe flatten, mksquashfs, .meta
  pipeline  skopeo copy docker://... oci:DIR  +  umoci unpack  +  mksquashfs ROOTFS
            (-no-xattrs -all-root -noappend, the same codec)

Both unpack into the same scratch filesystem (``--scratch``, default /var/tmp: disk; try
/dev/shm).  Median of N runs each (default 3), interleaved.  Run by hand as root on a machine
where the site is up (tools/cluster up); installs umoci with apt-get if it is missing.
Usage: benchmarks/pull_convert [--runs N] [--comp lz4] [--image test/debian:latest] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

import requests

from shifter import munge
from shifter.gateway import squashfs
from shifter.runtime import proc
from tools import gateway as gwtool
from tools import images as test_images
from tools import registry
from tools.site import Site

NO_PROXY = {"http": None, "https": None, "all": None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_umoci() -> None:
    if shutil.which("umoci"):
        return
    print("pull_convert: installing umoci", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "umoci"], "install umoci",
             env=env, timeout=600)


def gateway_run(gw: gwtool.Instance, site: Site, tag: str) -> float:
    """One cold pull: expire the image, empty the layer cache, pull until READY."""
    def call(method: str, path: str):
        cred = munge.encode(None, site.munge_socket)
        resp = requests.request(method, gw.url + path, headers={"authentication": cred},
                                proxies=NO_PROXY, timeout=600)
        return resp.status_code, resp.json()

    call("GET", f"/api/expire/local/docker/{tag}/")
    shutil.rmtree(os.path.join(gw.state_dir, "cache", "blobs"), ignore_errors=True)
    os.makedirs(os.path.join(gw.state_dir, "cache", "blobs"))
    t0 = time.monotonic()
    while True:
        status, record = call("POST", f"/api/pull/local/docker/{tag}/")
        if status != 200 or record["status"] == "FAILURE":
            raise SystemExit(f"pull_convert: the gateway's pull failed: {json.dumps(record)}")
        if record["status"] == "READY":
            return time.monotonic() - t0
        time.sleep(0.05)


def pipeline_run(site: Site, tag: str, comp: str, work: str) -> dict[str, float]:
    d = tempfile.mkdtemp(dir=work)
    try:
        times = {}
        t0 = time.monotonic()
        proc.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                  f"docker://{site.registry_url()}/{tag}", f"oci:{d}/oci:latest"], "skopeo copy",
                 timeout=1800)
        t1 = time.monotonic()
        proc.run(["umoci", "unpack", "--image", f"{d}/oci:latest", f"{d}/bundle"], "umoci unpack",
                 timeout=1800)
        t2 = time.monotonic()
        proc.run(squashfs.argv(f"{d}/bundle/rootfs", f"{d}/image.squashfs", comp), "mksquashfs",
                 timeout=1800)
        t3 = time.monotonic()
        times.update(skopeo=t1 - t0, umoci=t2 - t1, mksquashfs=t3 - t2, total=t3 - t0,
                     size=os.path.getsize(f"{d}/image.squashfs"))
        return times
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--comp", default="lz4")
    parser.add_argument("--image", default="test/debian:latest")
    parser.add_argument("--scratch", default="/var/tmp", help="where both unpack (default /var/tmp)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pull_convert: run as root (umoci unpack keeps owners)", file=sys.stderr)
        return 2
    site = Site()
    if registry.probe(site.registry_url()) != 200 or not test_images.remote_digest(site, args.image):
        print(f"pull_convert: {args.image} is not on {site.registry_url()} (tools/cluster up)",
              file=sys.stderr)
        return 2
    ensure_umoci()
    work = tempfile.mkdtemp(prefix="shifter-bench-pull-")
    scratch = tempfile.mkdtemp(prefix="shifter-bench-scratch-", dir=args.scratch)
    gw = gwtool.Instance(work, site, free_port(), compression=args.comp, expand_dir=scratch).start()
    try:
        ours, theirs = [], []
        for _ in range(args.runs):
            ours.append(gateway_run(gw, site, args.image))
            theirs.append(pipeline_run(site, args.image, args.comp, scratch))
        image_id = test_images.remote_digest(site, args.image).split(":")[1]
        size = os.path.getsize(os.path.join(gw.image_dir, f"{image_id}.squashfs"))
        phases = [line.split("converted ", 1)[1] for line in gw.log_text().splitlines()
                  if "converted docker:" in line]
    finally:
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)

    med = statistics.median
    print(f"pull + convert of {args.image} ({args.comp} squashfs), median of {args.runs} runs, "
          f"cold layer cache, unpacked in {args.scratch}")
    print(f"{'':42} {'total':>8}   stages (last run)")
    print(f"{'shifter-gateway (pull, flatten, mksquashfs)':42} {med(ours):7.2f}s   "
          f"{phases[-1].split(': ', 1)[1] if phases else ''}")
    print(f"{'skopeo copy + umoci unpack + mksquashfs':42} {med([t['total'] for t in theirs]):7.2f}s   "
          f"skopeo {med([t['skopeo'] for t in theirs]):.2f} s, umoci {med([t['umoci'] for t in theirs]):.2f} s, "
          f"mksquashfs {med([t['mksquashfs'] for t in theirs]):.2f} s")
    runs_ours = ", ".join(f"{t:.2f}" for t in ours)
    runs_theirs = ", ".join(f"{t['total']:.2f}" for t in theirs)
    print(f"image size: gateway {size / 1e6:.1f} MB, pipeline {theirs[-1]['size'] / 1e6:.1f} MB; "
          f"all runs: gateway {runs_ours} s; pipeline {runs_theirs} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
