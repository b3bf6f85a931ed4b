"""Test images of the site, built without internet from Debian packages and pushed to the registries.

Each image is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``) under
``site.cache/oci/<name>``, written by the small OCI writer ``tools.oci`` (gzip layers, canonical JSON).
A layout is rebuilt only when its recipe changed (recipe version, input files, the images it is
based on) or with ``force``; ``site.cache/oci/<name>.json`` records the recipe stamp and what was
pushed where.  Pushes use ``skopeo copy`` and are skipped when the registry already serves the tag
with the digest recorded for this build.

Images (registry 127.0.0.1:5000 unless noted):

``busybox`` -> ``test/busybox:latest`` (docker v2s2), ``test/busybox:oci`` (OCI), and
    ``test/busybox:latest`` on the htpasswd registry 5001.  One layer: Debian's busybox-static with
    an absolute symlink ``-> /bin/busybox`` for every applet at its ``--list-full`` path and also
    in /bin (so /bin/sh, /bin/cat, /bin/id, /bin/env, /bin/hostname, /bin/true ... exist),
    /etc/os-release (``ID=busybox``), minimal /etc/passwd and /etc/group, /tmp (1777), /root (0700).
    Env ``PATH=...``, ``SHIFTER_TEST_IMAGE=busybox``; Cmd ``["/bin/sh"]``; WorkingDir ``/``.
    Every mtime is ``EPOCH``, so rebuilding gives the same digests.

``debian`` -> ``test/debian:latest`` (v2s2), ``test/debian:oci`` (OCI).  One layer:
    ``debootstrap --variant=minbase --include=python3,mpich bookworm`` from the machine's own apt
    mirror, plus ``/app/mpi-hello`` (``tools/mpi_hello.c`` compiled with the host's mpicc:
    prints ``hello from rank R of N on HOST``) and compiled .pyc files; apt caches removed,
    device nodes left out.  Env ``SHIFTER_TEST_IMAGE=debian``; Cmd ``["/bin/bash"]``.

``layers`` -> ``test/layers:latest`` (v2s2).  Four layers exercising whiteouts:

    1. the busybox layer (same blob);
    2. adds /data/keep.txt, /data/remove-me.txt, /data/subdir-gone/{a.txt,nested/b.txt},
       /data/opaque/{old1.txt,olddir/old2.txt}, /etc/layers-stage ("2");
    3. file whiteout /data/.wh.remove-me.txt; directory whiteout /data/.wh.subdir-gone;
       opaque directory /data/opaque/.wh..wh..opq plus the new /data/opaque/new.txt;
       /etc/layers-stage rewritten ("3");
    4. directory whiteout of a busybox-layer dir (/usr/share/doc/.wh.busybox-static) and
       /data/subdir-gone/ created again holding only fresh.txt.

    After flattening, the tree must contain every path of ``LAYERS_EXPECT["present"]`` (with the
    contents in ``LAYERS_EXPECT["contents"]``) and none of ``LAYERS_EXPECT["absent"]``; no
    ``.wh.`` name may remain anywhere.

``multiarch`` -> ``test/busybox:multiarch`` (OCI image index, pushed with ``--all``): linux/amd64
    is exactly the busybox manifest (same digest as ``test/busybox:oci``); linux/arm64/v8 is the
    busybox layer plus a layer with /etc/arch ("arm64") and an arm64 config (it does not run).

API: ``ensure(site, names=None, force=False, log=print) -> {pushed reference: manifest digest}``.
CLI: ``tools/images [--force] [busybox|debian|layers|multiarch ...]``.
The registries must be running (``tools/run-module registry start``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from shifter import command
from shifter.errors import ShifterError, UsageError
from tools import registry
from tools.oci import (EPOCH, MANIFEST_ACCEPT, Descriptor, Entry, OciLayout, dir_entry, file_entry, image_config,
                       member_name, opaque_entry, tree_entries, whiteout_entry)
from tools.site import Site

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUITE = "bookworm"
MPI_HELLO_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_hello.c")

#: What the flattened test/layers:latest must (not) contain; paths inside the image's root.
LAYERS_EXPECT = {
    "present": [
        "/bin/sh",
        "/data/keep.txt",
        "/data/opaque/new.txt",
        "/data/subdir-gone/fresh.txt",
        "/etc/layers-stage",
        "/usr/share/doc",
    ],
    "absent": [
        "/data/remove-me.txt",
        "/data/.wh.remove-me.txt",
        "/data/.wh.subdir-gone",
        "/data/subdir-gone/a.txt",
        "/data/subdir-gone/nested",
        "/data/opaque/old1.txt",
        "/data/opaque/olddir",
        "/data/opaque/.wh..wh..opq",
        "/usr/share/doc/busybox-static",
        "/usr/share/doc/.wh.busybox-static",
    ],
    "contents": {
        "/data/keep.txt": "keep\n",
        "/data/opaque/new.txt": "new in layer 3\n",
        "/data/subdir-gone/fresh.txt": "fresh in layer 4\n",
        "/etc/layers-stage": "3\n",
    },
}




# -- host helpers ----------------------------------------------------------------------------------


def apt_mirror(suite: str = SUITE, apt_dir: str = "/etc/apt") -> tuple[str, str | None]:
    """The first apt source of this machine serving ``suite``: (URI, Signed-By keyring or None).

    Reads ``sources.list``, ``sources.list.d/*.list`` (one-line format) and
    ``sources.list.d/*.sources`` (deb822), so no mirror name is ever written in our code.
    """
    files = [os.path.join(apt_dir, "sources.list")]
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")))
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources")))
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        parse = _deb822_sources if path.endswith(".sources") else _one_line_sources
        for types, uris, suites, signed_by in parse(text):
            if "deb" in types and suite in suites and uris:
                return uris[0], signed_by
    raise ShifterError(f"can't find a Debian mirror: no apt source for {suite} in {apt_dir}",
                       f"add 'deb URI {suite} main' to {apt_dir}/sources.list")


def _one_line_sources(text: str):
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3:
            continue
        options: dict[str, str] = {}
        kind, rest = words[0], words[1:]
        if rest[0].startswith("["):
            opts = []
            while rest:
                word = rest.pop(0)
                opts.append(word.strip("[]"))
                if word.endswith("]"):
                    break
            options = dict(o.split("=", 1) for o in opts if "=" in o)
        if len(rest) >= 2:
            yield [kind], [rest[0]], [rest[1]], options.get("signed-by")


def _deb822_sources(text: str):
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in paragraph.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        if signed_by and ("\n" in signed_by or signed_by.startswith("-----")):
            signed_by = None  # an inline key, not a keyring file
        yield (fields.get("types", "").split(), fields.get("uris", "").split(),
               fields.get("suites", "").split(), signed_by)


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _busybox_deb(site: Site, log) -> str:
    """The cached busybox-static .deb, downloaded with ``apt-get download`` the first time."""
    debs = os.path.join(site.cache, "debs")
    os.makedirs(debs, mode=0o755, exist_ok=True)
    found = sorted(glob.glob(os.path.join(debs, "busybox-static_*.deb")))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory(dir=site.cache) as tmp:
        registry.run_tool(["apt-get", "download", "busybox-static"], "download busybox-static",
                          hint="apt-get update", cwd=tmp, timeout=300)
        (deb,) = glob.glob(os.path.join(tmp, "busybox-static_*.deb"))
        dst = os.path.join(debs, os.path.basename(deb))
        shutil.move(deb, dst)
    log(f"downloaded {os.path.basename(dst)}")
    return dst


def _mounts_under(path: str) -> list[str]:
    prefix = os.path.realpath(path) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


# -- recipes -------------------------------------------------------------------------------------


@dataclass
class BuildContext:
    site: Site
    layout: OciLayout  # the layout being written
    workdir: str  # scratch space, removed after the build
    base: dict[str, OciLayout]  # built layouts of the recipe's dependencies
    log: Callable[[str], None]


@dataclass(frozen=True)
class Push:
    ref: str  # ref inside the OCI layout
    repo_tag: str  # e.g. "test/busybox:latest"
    oci: bool  # push as OCI (else docker v2s2)
    auth: bool = False  # to the htpasswd registry
    all: bool = False  # an index: copy every manifest

    def dest(self, site: Site) -> str:
        return f"{site.registry_url(self.auth)}/{self.repo_tag}"


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int  # bump whenever the recipe's output changes
    build: Callable[[BuildContext], dict[str, Descriptor]]  # -> refs of the layout
    pushes: tuple[Push, ...]
    deps: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # host files whose content is part of the recipe


def _busybox_tree(ctx: BuildContext, root: str) -> None:
    deb = _busybox_deb(ctx.site, ctx.log)
    registry.run_tool(["dpkg-deb", "-x", deb, root], "unpack busybox-static")
    version = registry.run_tool(["dpkg-deb", "-f", deb, "Version"],
                                "read the busybox-static version").stdout.strip()
    busybox = os.path.join(root, "bin", "busybox")
    applets = registry.run_tool([busybox, "--list-full"], "list busybox applets").stdout.split()
    links = set(applets) | {"bin/" + os.path.basename(a) for a in applets}
    links.discard("bin/busybox")
    for link in sorted(links):
        path = os.path.join(root, member_name(link))
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.symlink("/bin/busybox", path)
    for d, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("run", 0o755),
                    ("home", 0o755), ("root", 0o700), ("tmp", 0o1777), ("var/tmp", 0o1777),
                    ("etc", 0o755)):
        os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(os.path.join(root, d), mode)
    files = {
        "etc/os-release": f'NAME="BusyBox"\nID=busybox\nVERSION_ID="{version}"\n'
                          f'PRETTY_NAME="Shifter test image: BusyBox {version}"\n',
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    }
    for name, text in files.items():
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(root, name), 0o644)


def build_busybox(ctx: BuildContext) -> dict[str, Descriptor]:
    root = os.path.join(ctx.workdir, "rootfs")
    os.mkdir(root)
    _busybox_tree(ctx, root)
    layer = ctx.layout.put_layer(tree_entries(root, mtime=EPOCH))
    config = image_config([layer], [PATH_ENV, "SHIFTER_TEST_IMAGE=busybox"], ["/bin/sh"],
                          "tools.images busybox")
    return {"latest": ctx.layout.put_image([layer], config)}


def build_debian(ctx: BuildContext) -> dict[str, Descriptor]:
    root = os.path.join(ctx.workdir, "rootfs")
    mirror, keyring = apt_mirror()
    debs = os.path.join(ctx.site.cache, "debootstrap-debs")
    os.makedirs(debs, mode=0o755, exist_ok=True)
    argv = ["debootstrap", "--variant=minbase", "--include=python3,mpich", f"--cache-dir={debs}"]
    if keyring:
        argv.append(f"--keyring={keyring}")
    t0 = time.monotonic()
    try:
        registry.run_tool(argv + [SUITE, root, mirror], f"debootstrap {SUITE}", timeout=1800)
    except ShifterError as e:  # keep debootstrap's own log: the scratch dir goes away
        saved = os.path.join(ctx.site.log, "debootstrap.log")
        with contextlib.suppress(OSError):
            shutil.copyfile(os.path.join(root, "debootstrap", "debootstrap.log"), saved)
            e.hint = f"see {saved}"
        raise
    finally:
        for point in _mounts_under(root):  # debootstrap mounts /proc and /sys while it works
            subprocess.run(["umount", "-l", point], capture_output=True)
    ctx.log(f"debian: debootstrap took {time.monotonic() - t0:.1f} s")
    app = os.path.join(root, "app")
    os.makedirs(app, mode=0o755, exist_ok=True)
    registry.run_tool(["mpicc", "-O2", "-Wall", "-o", os.path.join(app, "mpi-hello"),
                       MPI_HELLO_SRC], "compile mpi-hello", hint="apt-get install libmpich-dev")
    registry.run_tool(["chroot", root, "/usr/bin/python3", "-m", "compileall", "-q",
                       "/usr/lib/python3.11", "/usr/lib/python3/dist-packages"],
                      "compile the image's .pyc files")
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*"):
        for path in glob.glob(os.path.join(root, pattern)):
            os.unlink(path)
    for name in ("etc/hostname", "etc/resolv.conf"):  # debootstrap copied the host's
        with open(os.path.join(root, name), "w"):
            pass
    skipped: list[str] = []
    layer = ctx.layout.put_layer(tree_entries(root, skipped=skipped))
    if skipped:
        ctx.log(f"debian: left out of the layer: {', '.join(skipped)}")
    config = image_config([layer], [PATH_ENV, "SHIFTER_TEST_IMAGE=debian"], ["/bin/bash"],
                          "tools.images debian")
    return {"latest": ctx.layout.put_image([layer], config)}


def layers_entries() -> list[list[Entry]]:
    """Layers 2..4 of test/layers (see the module docstring and LAYERS_EXPECT)."""
    return [
        [
            dir_entry("data"),
            file_entry("data/keep.txt", b"keep\n"),
            file_entry("data/remove-me.txt", b"removed by layer 3\n"),
            dir_entry("data/subdir-gone"),
            file_entry("data/subdir-gone/a.txt", b"removed with its dir by layer 3\n"),
            dir_entry("data/subdir-gone/nested"),
            file_entry("data/subdir-gone/nested/b.txt", b"removed with its dir by layer 3\n"),
            dir_entry("data/opaque"),
            file_entry("data/opaque/old1.txt", b"hidden by the opaque dir of layer 3\n"),
            dir_entry("data/opaque/olddir"),
            file_entry("data/opaque/olddir/old2.txt", b"hidden by the opaque dir of layer 3\n"),
            dir_entry("etc"),
            file_entry("etc/layers-stage", b"2\n"),
        ],
        [
            dir_entry("data"),
            whiteout_entry("data/remove-me.txt"),
            whiteout_entry("data/subdir-gone"),
            dir_entry("data/opaque"),
            opaque_entry("data/opaque"),
            file_entry("data/opaque/new.txt", b"new in layer 3\n"),
            dir_entry("etc"),
            file_entry("etc/layers-stage", b"3\n"),
        ],
        [
            dir_entry("data"),
            dir_entry("data/subdir-gone"),
            file_entry("data/subdir-gone/fresh.txt", b"fresh in layer 4\n"),
            dir_entry("usr"),
            dir_entry("usr/share"),
            dir_entry("usr/share/doc"),
            whiteout_entry("usr/share/doc/busybox-static"),
        ],
    ]


def build_layers(ctx: BuildContext) -> dict[str, Descriptor]:
    busybox = ctx.base["busybox"]
    _, base_layers = busybox.image("latest")
    ctx.layout.copy_blobs(busybox, [layer.descriptor for layer in base_layers])
    layers = base_layers + [ctx.layout.put_layer(entries) for entries in layers_entries()]
    config = image_config(layers, [PATH_ENV, "SHIFTER_TEST_IMAGE=layers"], ["/bin/sh"],
                          "tools.images layers")
    return {"latest": ctx.layout.put_image(layers, config)}


def build_multiarch(ctx: BuildContext) -> dict[str, Descriptor]:
    busybox = ctx.base["busybox"]
    amd64, base_layers = busybox.image("latest")
    config_desc = Descriptor.from_json(busybox.read_json(amd64)["config"])
    ctx.layout.copy_blobs(busybox, [amd64, config_desc] + [lyr.descriptor for lyr in base_layers])
    arch_layer = ctx.layout.put_layer([dir_entry("etc"), file_entry("etc/arch", b"arm64\n")])
    layers = base_layers + [arch_layer]
    config = image_config(layers, [PATH_ENV, "SHIFTER_TEST_IMAGE=busybox-arm64"], ["/bin/sh"],
                          "tools.images multiarch", architecture="arm64", variant="v8")
    arm64 = ctx.layout.put_image(layers, config, platform={
        "architecture": "arm64", "os": "linux", "variant": "v8"})
    amd64 = Descriptor(amd64.media_type, amd64.digest, amd64.size,
                       platform={"architecture": "amd64", "os": "linux"})
    return {"multiarch": ctx.layout.put_index([amd64, arm64])}


RECIPES = {r.name: r for r in (
    Recipe("busybox", 1, build_busybox, (
        Push("latest", "test/busybox:latest", oci=False),
        Push("latest", "test/busybox:oci", oci=True),
        Push("latest", "test/busybox:latest", oci=False, auth=True),
    )),
    Recipe("debian", 1, build_debian, (
        Push("latest", "test/debian:latest", oci=False),
        Push("latest", "test/debian:oci", oci=True),
    ), inputs=(MPI_HELLO_SRC,)),
    Recipe("layers", 1, build_layers, (
        Push("latest", "test/layers:latest", oci=False),
    ), deps=("busybox",)),
    Recipe("multiarch", 1, build_multiarch, (
        Push("multiarch", "test/busybox:multiarch", oci=True, all=True),
    ), deps=("busybox",)),
)}


# -- build cache ---------------------------------------------------------------------------------


def _state_path(site: Site, name: str) -> str:
    return os.path.join(site.cache, "oci", f"{name}.json")


def _load_state(site: Site, name: str) -> dict:
    try:
        with open(_state_path(site, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_state(site: Site, name: str, state: dict) -> None:
    path = _state_path(site, name)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _stamp(recipe: Recipe, base: dict[str, OciLayout]) -> dict:
    """What a layout was built from: rebuilding is needed exactly when this changes."""
    return {
        "recipe": recipe.name,
        "version": recipe.version,
        "inputs": {os.path.basename(p): _file_sha256(p) for p in recipe.inputs},
        "base": {name: {ref: d.digest for ref, d in base[name].refs().items()}
                 for name in recipe.deps},
    }


def _layout_size(layout: OciLayout) -> int:
    return sum(e.stat().st_size for e in os.scandir(layout.blobs) if e.is_file())


def build(site: Site, recipe: Recipe, base: dict[str, OciLayout], force: bool = False,
          log=print) -> OciLayout:
    """The recipe's layout, (re)built unless the cached one has the same stamp."""
    path = os.path.join(site.cache, "oci", recipe.name)
    stamp = _stamp(recipe, base)
    state = _load_state(site, recipe.name)
    if not force and state.get("stamp") == stamp and os.path.exists(
            os.path.join(path, "index.json")):
        log(f"{recipe.name}: cached ({state.get('size', 0) / 1e6:.1f} MB, "
            f"built in {state.get('build_seconds', 0):.1f} s)")
        return OciLayout(path)
    t0 = time.monotonic()
    new = path + ".new"
    shutil.rmtree(new, ignore_errors=True)
    layout = OciLayout.create(new)
    with tempfile.TemporaryDirectory(prefix=f"build-{recipe.name}-", dir=site.cache) as work:
        refs = recipe.build(BuildContext(site, layout, work, base, log))
    layout.write_index(refs)
    shutil.rmtree(path, ignore_errors=True)
    os.rename(new, path)
    seconds = time.monotonic() - t0
    size = _layout_size(OciLayout(path))
    _save_state(site, recipe.name, {"stamp": stamp, "build_seconds": round(seconds, 2),
                                    "size": size, "refs": {r: d.digest for r, d in refs.items()},
                                    "pushed": state.get("pushed", {})})
    log(f"{recipe.name}: built in {seconds:.1f} s ({size / 1e6:.1f} MB compressed)")
    return OciLayout(path)


# -- pushing -------------------------------------------------------------------------------------


def remote_digest(site: Site, repo_tag: str, auth: bool = False) -> str | None:
    """The manifest digest the registry serves for ``repo:tag`` (None if it has none)."""
    import requests  # start-up: ~90 ms; the tests import this module for its constants (LAYERS_EXPECT)

    repo, _, tag = repo_tag.rpartition(":")
    url = f"http://{site.registry_url(auth)}/v2/{repo}/manifests/{tag}"
    try:
        resp = requests.head(url, headers={"Accept": MANIFEST_ACCEPT}, timeout=10,
                             auth=(site.registry_user, site.registry_password) if auth else None)
    except requests.RequestException as e:
        raise ShifterError(f"can't query registry: {url}: {e}",
                           "tools/run-module registry start") from None
    if resp.status_code != 200:
        return None
    return resp.headers.get("Docker-Content-Digest")


def push(site: Site, layout: OciLayout, target: Push, state: dict, log=print) -> str:
    """Push one ref of ``layout`` unless the registry already serves this build; return digest.

    ``state["pushed"][dest]`` records which layout manifest was pushed and the digest the
    registry gave it (a v2s2 conversion changes the digest; an OCI push keeps it).
    """
    dest = target.dest(site)
    source = layout.refs()[target.ref].digest
    record = state.setdefault("pushed", {}).get(dest, {})
    # Without a record of this build, an OCI push keeps the layout's digest; v2s2 converts it.
    expected = record.get("digest") if record.get("source") == source else (
        source if target.oci else None)
    remote = remote_digest(site, target.repo_tag, target.auth)
    if expected and remote == expected:
        log(f"{dest}: up to date ({remote[:19]})")
        return remote
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
            "--format", "oci" if target.oci else "v2s2"]
    if target.all:
        argv.append("--all")
    if target.auth:
        argv += ["--dest-creds", f"{site.registry_user}:{site.registry_password}"]
    t0 = time.monotonic()
    with tempfile.NamedTemporaryFile("r", prefix="digest-", dir=site.cache) as digestfile:
        registry.run_tool(argv + ["--digestfile", digestfile.name, f"oci:{layout.path}:{target.ref}",
                                  f"docker://{dest}"], f"push {dest}", secret=site.registry_password,
                          hint="tools/run-module registry status", timeout=900)
        digest = digestfile.read().strip()
    state["pushed"][dest] = {"source": source, "digest": digest}
    log(f"{dest}: pushed in {time.monotonic() - t0:.1f} s ({digest[:19]})")
    return digest


# -- public API ----------------------------------------------------------------------------------


def _closure(names: list[str]) -> list[Recipe]:
    """The recipes ``names`` need, dependencies first."""
    order: list[Recipe] = []

    def visit(name: str) -> None:
        recipe = RECIPES[name]
        for dep in recipe.deps:
            visit(dep)
        if recipe not in order:
            order.append(recipe)

    for name in names:
        visit(name)
    return order


def ensure(site: Site | None = None, names: Iterable[str] | None = None, force: bool = False,
           log: Callable[[str], None] = print) -> dict[str, str]:
    """Build (if needed) and push (if needed) the test images ``names`` (default: all).

    Returns ``{"127.0.0.1:5000/test/busybox:latest": "sha256:...", ...}``: every reference
    pushed for these images and the manifest digest the registry serves for it.
    """
    site = site or Site()
    wanted = list(names) if names else list(RECIPES)
    unknown = [n for n in wanted if n not in RECIPES]
    if unknown:
        raise UsageError(f"can't build image: {', '.join(unknown)}: no such test image",
                         f"choose from {', '.join(RECIPES)}")
    for auth in sorted({p.auth for n in wanted for p in RECIPES[n].pushes}):
        url = site.registry_url(auth)
        if registry.probe(url) not in (200, 401):
            raise ShifterError(f"can't push test images: registry {url} does not answer",
                               "tools/run-module registry start")
    for d in (os.path.join(site.cache, "oci"), site.log):
        os.makedirs(d, mode=0o755, exist_ok=True)
    pushed: dict[str, str] = {}
    with registry.file_lock(os.path.join(site.cache, "images.lock")):
        built: dict[str, OciLayout] = {}
        for recipe in _closure(wanted):
            built[recipe.name] = build(site, recipe, built, force and recipe.name in wanted, log)
        for name in wanted:
            state = _load_state(site, name)
            try:
                for target in RECIPES[name].pushes:
                    pushed[target.dest(site)] = push(site, built[name], target, state, log)
            finally:
                _save_state(site, name, state)
    return pushed


def main(argv: list[str] | None = None) -> int:
    return command.run("images", _main, argv)


def _main(argv: list[str]) -> int:
    parser = command.parser_class()(prog="tools/images",
                                     description="Build and push the site's test images.")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"images to build (default all): {', '.join(RECIPES)}")
    args = parser.parse_args(argv)
    for ref, digest in ensure(Site(), args.names, args.force).items():
        print(f"{ref} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
