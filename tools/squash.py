"""Squashfs images straight from the test images' OCI layouts, for the runtime's tests and
benchmarks (the gateway does this for real; these images have one layer and no
whiteouts, so extraction is trivial and trusted).

``make_image(site, "busybox", image_dir, extra=fn)`` writes ``<image_dir>/<id>.squashfs``
and ``<id>.meta`` (ENV/CMD/ENTRY/WORKDIR from the image config) and returns the id.  The
id is the sha256 of the squashfs, so images made with different ``extra`` differ.
With ``user_acl``/``group_acl`` the image is private and its files readable only by root
and those ids (``runtime.imagefiles``, the gateway's rule), set before they get their names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile

from shifter.runtime import imagefiles, meta, proc
from tools.oci import OciLayout
from tools.site import Site


def unpack(site: Site, name: str, dest: str, ref: str = "latest") -> dict:
    """Extract image ``name`` (ref ``ref``) from the site's OCI cache into ``dest``; returns
    the image config."""
    layout = OciLayout(os.path.join(site.cache, "oci", name))
    with open(os.path.join(layout.path, "index.json")) as f:
        index = json.load(f)
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)
    with open(layout.blob_path(desc["digest"])) as f:
        manifest = json.load(f)
    with open(layout.blob_path(manifest["config"]["digest"])) as f:
        config = json.load(f)
    for layer in manifest["layers"]:
        with tarfile.open(layout.blob_path(layer["digest"]), "r:*") as tar:
            tar.extractall(dest, numeric_owner=True)
    return config


def make_image(site: Site, name: str, image_dir: str, extra=None, comp: str = "lz4",
               user_acl=(), group_acl=()) -> str:
    os.makedirs(image_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"shifter-squash-{name}-")
    try:
        root = os.path.join(tmp, "root")
        os.mkdir(root)
        cfg = unpack(site, name, root).get("config", {})
        if extra is not None:
            extra(root)
        out = os.path.join(tmp, "image.squashfs")
        proc.run(["mksquashfs", root, out, "-no-xattrs", "-all-root", "-noappend", "-comp", comp, "-quiet",
                  "-no-progress"], f"make a squashfs of {name}", timeout=600)
        h = hashlib.sha256()
        with open(out, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        image_id = h.hexdigest()
        imagefiles.set_access(out, user_acl, group_acl)
        os.replace(out, os.path.join(image_dir, image_id + ".squashfs"))
        meta.write(os.path.join(image_dir, image_id + ".meta"), meta.ImageMeta(
            entry=tuple(cfg["Entrypoint"]) if cfg.get("Entrypoint") else None,
            cmd=tuple(cfg["Cmd"]) if cfg.get("Cmd") else None,
            workdir=cfg.get("WorkingDir") or None, env=tuple(cfg.get("Env") or ()),
            user_acl=tuple(user_acl), group_acl=tuple(group_acl)))
        return image_id
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
