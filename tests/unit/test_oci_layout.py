"""The OCI layout writer of tools.images: blobs, manifests, layers, whiteouts (no root)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import tarfile

import pytest

from tools import images
from tools import oci
from tools.images import LAYERS_EXPECT
from tools.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, OciLayout, dir_entry, file_entry, symlink_entry


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(layout: OciLayout, digest: str) -> bytes:
    with open(layout.blob_path(digest), "rb") as f:
        return f.read()


def members(layout: OciLayout, layer: oci.Layer) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob(layout, layer.descriptor.digest)), mode="r:gz") as t:
        return t.getmembers()


def small_image(path) -> tuple[OciLayout, oci.Descriptor, list[oci.Layer]]:
    layout = OciLayout.create(str(path))
    layers = [
        layout.put_layer([dir_entry("bin"), file_entry("bin/tool", b"#!/bin/sh\n", mode=0o755),
                          symlink_entry("bin/sh", "/bin/tool")]),
        layout.put_layer([dir_entry("etc"), file_entry("etc/motd", b"hi\n")]),
    ]
    config = oci.image_config(layers, ["PATH=/bin"], ["/bin/sh"], "test")
    manifest = layout.put_image(layers, config)
    layout.write_index({"latest": manifest})
    return layout, manifest, layers


def test_every_blob_is_named_by_its_sha256(tmp_path):
    layout, _, _ = small_image(tmp_path / "img")
    names = os.listdir(layout.blobs)
    assert len(names) == 4  # 2 layers, config, manifest
    for name in names:
        with open(os.path.join(layout.blobs, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == name


def test_layout_index_manifest_and_config_are_valid(tmp_path):
    layout, manifest_desc, layers = small_image(tmp_path / "img")
    with open(tmp_path / "img" / "oci-layout") as f:
        assert json.load(f) == {"imageLayoutVersion": "1.0.0"}
    with open(tmp_path / "img" / "index.json") as f:
        index = json.load(f)
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    (entry,) = index["manifests"]
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "latest"}
    assert entry["digest"] == manifest_desc.digest and entry["mediaType"] == OCI_MANIFEST

    raw = blob(layout, entry["digest"])
    assert len(raw) == entry["size"]
    manifest = json.loads(raw)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    assert [d["mediaType"] for d in manifest["layers"]] == [OCI_LAYER_GZIP] * 2
    for desc in [manifest["config"]] + manifest["layers"]:
        data = blob(layout, desc["digest"])
        assert len(data) == desc["size"] and sha256(data) == desc["digest"]

    config = json.loads(blob(layout, manifest["config"]["digest"]))
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["config"] == {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}
    assert config["rootfs"]["type"] == "layers"
    diff_ids = [sha256(gzip.decompress(blob(layout, d["digest"]))) for d in manifest["layers"]]
    assert config["rootfs"]["diff_ids"] == diff_ids == [layer.diff_id for layer in layers]
    assert len(config["history"]) == 2

    desc, read_layers = layout.image("latest")
    assert desc.digest == manifest_desc.digest
    assert [(lyr.descriptor.digest, lyr.diff_id) for lyr in read_layers] == \
        [(lyr.descriptor.digest, lyr.diff_id) for lyr in layers]


def test_layer_members_are_relative_numeric_and_stamped(tmp_path):
    layout, _, layers = small_image(tmp_path / "img")
    infos = members(layout, layers[0])
    assert [(m.name, m.type) for m in infos] == [
        ("bin", tarfile.DIRTYPE), ("bin/tool", tarfile.REGTYPE), ("bin/sh", tarfile.SYMTYPE)]
    for m in infos:
        assert not m.name.startswith("/") and ".." not in m.name.split("/")
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        assert m.mtime == oci.EPOCH
    assert infos[1].mode == 0o755 and infos[2].linkname == "/bin/tool"


def test_rebuilding_gives_identical_digests(tmp_path):
    a, manifest_a, _ = small_image(tmp_path / "a")
    b, manifest_b, _ = small_image(tmp_path / "b")
    assert manifest_a.digest == manifest_b.digest
    assert sorted(os.listdir(a.blobs)) == sorted(os.listdir(b.blobs))


@pytest.mark.parametrize("bad", ["", "/", "..", "../etc/passwd", "a/../../b", "a//b", "./a",
                                 "a/."])
def test_unsafe_member_names_are_refused(bad):
    with pytest.raises(ValueError):
        oci.member_name(bad)


def test_absolute_image_paths_become_relative_members():
    assert oci.member_name("/etc/passwd") == "etc/passwd"
    assert oci.whiteout_entry("/data/x").info.name == "data/.wh.x"
    assert oci.whiteout_entry("top").info.name == ".wh.top"
    assert oci.opaque_entry("/data/d").info.name == "data/d/.wh..wh..opq"


def test_a_crafted_entry_is_refused_and_leaves_no_partial_blob(tmp_path):
    layout = OciLayout.create(str(tmp_path / "img"))
    for bad in ("../escape", "/abs/file", "a/./b"):
        with pytest.raises(ValueError):
            layout.put_layer([file_entry("ok", b"x"), oci.Entry(tarfile.TarInfo(bad), b"")])
    link = tarfile.TarInfo("ok-link")
    link.type, link.linkname = tarfile.LNKTYPE, "/etc/shadow"
    with pytest.raises(ValueError):
        layout.put_layer([oci.Entry(link)])
    assert os.listdir(layout.blobs) == []


def test_tree_entries_keep_owners_hardlinks_and_skip_special_files(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"data")
    if os.geteuid() == 0:
        os.chown(root / "d" / "f", 1234, 5678)
    os.chmod(root / "d" / "f", 0o4755)  # after chown, which clears setuid
    os.link(root / "d" / "f", root / "d" / "g")
    os.symlink("/abs/target", root / "link")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    skipped: list[str] = []
    try:
        entries = list(oci.tree_entries(str(root), mtime=42, skipped=skipped))
    finally:
        sock.close()
    by_name = {e.info.name: e for e in entries}
    assert list(by_name) == ["d", "d/f", "d/g", "link"]
    assert sorted(skipped) == ["fifo", "sock"]
    f, g = by_name["d/f"].info, by_name["d/g"].info
    st = os.lstat(root / "d" / "f")
    assert (f.type, f.mode, f.uid, f.gid, f.size) == (tarfile.REGTYPE, 0o4755, st.st_uid,
                                                      st.st_gid, 4)
    assert (g.type, g.linkname) == (tarfile.LNKTYPE, "d/f")
    assert by_name["link"].info.linkname == "/abs/target"
    assert {e.info.mtime for e in entries} == {42}

    layout = OciLayout.create(str(tmp_path / "img"))
    layer = layout.put_layer(iter(entries))
    infos = {m.name: m for m in members(layout, layer)}
    assert infos["d/f"].mode == 0o4755 and (infos["d/f"].uid, infos["d/f"].gid) == (f.uid, f.gid)
    assert infos["d/g"].islnk() and infos["d/g"].linkname == "d/f"


def test_layers_image_puts_each_whiteout_in_its_layer(tmp_path):
    layout = OciLayout.create(str(tmp_path / "img"))
    names = [[m.name for m in members(layout, layout.put_layer(entries))]
             for entries in images.layers_entries()]
    assert not any(".wh." in n for n in names[0])
    assert {"data/.wh.remove-me.txt", "data/.wh.subdir-gone",
            "data/opaque/.wh..wh..opq"} <= set(names[1])
    # The opaque marker comes right after its directory and before the new content.
    i = names[1].index("data/opaque/.wh..wh..opq")
    assert names[1][i - 1] == "data/opaque" and names[1][i + 1] == "data/opaque/new.txt"
    assert "usr/share/doc/.wh.busybox-static" in names[2]


def flatten(layers: list[list[oci.Entry]]) -> dict[str, bytes | None]:
    """A reference model of OCI layer application: path -> content (None for non-files)."""
    tree: dict[str, bytes | None] = {}
    for entries in layers:
        for e in entries:
            name = e.info.name
            parent, _, base = name.rpartition("/")
            if base == ".wh..wh..opq":
                for path in [p for p in tree if p.startswith(parent + "/")]:
                    del tree[path]
            elif base.startswith(".wh."):
                gone = (parent + "/" if parent else "") + base[len(".wh."):]
                for path in [p for p in tree if p == gone or p.startswith(gone + "/")]:
                    del tree[path]
            else:
                tree[name] = e.source if e.info.isreg() else None
    return {"/" + path: data for path, data in tree.items()}


def test_layers_expectation_matches_the_layers():
    base = [dir_entry("bin"), symlink_entry("bin/sh", "/bin/busybox"), dir_entry("usr"),
            dir_entry("usr/share"), dir_entry("usr/share/doc"),
            dir_entry("usr/share/doc/busybox-static"),
            file_entry("usr/share/doc/busybox-static/copyright", b"c\n")]
    tree = flatten([base] + images.layers_entries())
    assert set(LAYERS_EXPECT["present"]) <= set(tree)
    assert not set(LAYERS_EXPECT["absent"]) & set(tree)
    assert not [p for p in tree if ".wh." in p]
    for path, text in LAYERS_EXPECT["contents"].items():
        assert tree[path] == text.encode()
    assert sorted(p for p in tree if p.startswith("/data/")) == [
        "/data/keep.txt", "/data/opaque", "/data/opaque/new.txt", "/data/subdir-gone",
        "/data/subdir-gone/fresh.txt"]


def test_image_index_and_blob_copies(tmp_path):
    src, manifest, layers = small_image(tmp_path / "src")
    dst = OciLayout.create(str(tmp_path / "dst"))
    config = oci.Descriptor.from_json(src.read_json(manifest)["config"])
    dst.copy_blobs(src, [manifest, config] + [lyr.descriptor for lyr in layers])
    arm = dst.put_image(layers, oci.image_config(layers, [], ["/bin/sh"], "t", "arm64", "v8"),
                        platform={"architecture": "arm64", "os": "linux", "variant": "v8"})
    amd = oci.Descriptor(manifest.media_type, manifest.digest, manifest.size,
                            platform={"architecture": "amd64", "os": "linux"})
    index_desc = dst.put_index([amd, arm])
    dst.write_index({"multi": index_desc})
    assert dst.refs()["multi"].media_type == OCI_INDEX
    index = dst.read_json(index_desc)
    assert index["mediaType"] == OCI_INDEX
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    for m in index["manifests"]:
        assert os.path.exists(dst.blob_path(m["digest"]))
        assert dst.read_json(oci.Descriptor.from_json(m))["mediaType"] == OCI_MANIFEST
    assert os.path.samefile(dst.blob_path(layers[0].descriptor.digest),
                            src.blob_path(layers[0].descriptor.digest))


def test_apt_mirror_reads_one_line_and_deb822_sources(tmp_path):
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(
        "# deb file:///srv/commented bookworm main\n"
        "deb file:///srv/old bullseye main\n"
        "deb-src file:///srv/src bookworm main\n")
    (apt / "sources.list.d" / "b.sources").write_text(
        "Types: deb\nURIs: file:///srv/updates\nSuites: bookworm-updates\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: file:///srv/disabled\nSuites: bookworm\n\n"
        "Types: deb deb-src\n# a comment\nURIs: file:///srv/main file:///srv/second\n"
        "Suites: bookworm bookworm-updates\nSigned-By: /usr/share/keyrings/k.gpg\n")
    assert images.apt_mirror("bookworm", str(apt)) == ("file:///srv/main",
                                                       "/usr/share/keyrings/k.gpg")
    (apt / "sources.list.d" / "a.list").write_text(
        "deb [arch=amd64 signed-by=/etc/k.gpg] file:///srv/list bookworm main\n")
    assert images.apt_mirror("bookworm", str(apt)) == ("file:///srv/list", "/etc/k.gpg")
    with pytest.raises(images.ShifterError, match="no apt source for trixie"):
        images.apt_mirror("trixie", str(apt))
