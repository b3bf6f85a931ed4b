"""Layer flattening (shifter.gateway.flatten): whiteouts, opaque directories and hostile
members, on real tar streams in a scratch directory (no root, no network)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile

import pytest

from shifter.gateway import flatten
from shifter.gateway.flatten import LayerError


def _info(name: str, kind=tarfile.REGTYPE, mode: int = 0o644, linkname: str = "", size: int = 0,
          mtime: int = 1686355200) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size, info.mtime = kind, mode, linkname, size, mtime
    return info


def F(name, data=b"", mode=0o644):
    return (_info(name, size=len(data), mode=mode), data)


def D(name, mode=0o755):
    return (_info(name, tarfile.DIRTYPE, mode), None)


def L(name, target):
    return (_info(name, tarfile.SYMTYPE, 0o777, target), None)


def H(name, target, mode=0o644):
    return (_info(name, tarfile.LNKTYPE, mode, target), None)


def layer(path, entries, compress="gzip") -> str:
    """Write ``entries`` as a tar layer blob (gzip, zstd or plain)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if compress == "gzip":
        raw = gzip.compress(raw)
    elif compress == "zstd":
        raw = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    with open(path, "wb") as f:
        f.write(raw)
    return str(path)


def build(tmp_path, *layers_entries, compress="gzip"):
    root = tmp_path / "root"
    root.mkdir()
    blobs = [(f"layer {i}", layer(tmp_path / f"l{i}", entries, compress))
             for i, entries in enumerate(layers_entries, 1)]
    return root, flatten.flatten(blobs, str(root))


def read(root, rel: str) -> str:
    return (root / rel).read_text()


def exists(root, rel: str) -> bool:
    return os.path.lexists(root / rel)


def outside_snapshot(tmp_path) -> set[str]:
    """Everything under tmp_path except the tree and the layer blobs."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        if dirpath.startswith(str(tmp_path / "root")):
            continue
        out |= {os.path.join(dirpath, n) for n in dirnames + filenames}
    return out


# -- whiteouts -----------------------------------------------------------------------------------


def test_layers_apply_in_order_with_file_dir_and_opaque_whiteouts(tmp_path):
    root, report = build(
        tmp_path,
        [D("data"), F("data/keep.txt", b"keep\n"), F("data/remove-me.txt", b"x"),
         D("data/gone"), F("data/gone/a.txt", b"a"), D("data/gone/nested"), F("data/gone/nested/b", b"b"),
         D("data/opaque"), F("data/opaque/old1.txt", b"o"), D("data/opaque/olddir"),
         F("data/opaque/olddir/old2.txt", b"o"), F("etc/stage", b"1\n")],
        [F("data/.wh.remove-me.txt"), F("data/.wh.gone"), D("data/opaque"),
         F("data/opaque/.wh..wh..opq"), F("data/opaque/new.txt", b"new\n"), F("etc/stage", b"2\n")],
        [D("data/gone"), F("data/gone/fresh.txt", b"fresh\n")],
    )
    assert read(root, "data/keep.txt") == "keep\n"
    assert read(root, "etc/stage") == "2\n"
    assert read(root, "data/opaque/new.txt") == "new\n"
    assert read(root, "data/gone/fresh.txt") == "fresh\n"
    for gone in ("data/remove-me.txt", "data/gone/a.txt", "data/gone/nested", "data/opaque/old1.txt",
                 "data/opaque/olddir"):
        assert not exists(root, gone), gone
    names = [n for _, dirs, files in os.walk(root) for n in dirs + files]
    assert not [n for n in names if n.startswith(".wh.")]
    assert report.files == 10  # whiteout markers are not files


def test_whiteouts_apply_to_lower_layers_only_whatever_the_member_order(tmp_path):
    # the same layer adds x/new.txt BEFORE declaring x opaque, and re-adds y after whiting it out
    root, _ = build(
        tmp_path,
        [D("x"), F("x/old.txt", b"old"), F("y", b"lower y")],
        [F("x/new.txt", b"new"), F("x/.wh..wh..opq"), F("y", b"upper y"), F(".wh.y")],
    )
    assert os.listdir(root / "x") == ["new.txt"]
    assert read(root, "y") == "upper y"


def test_opaque_directory_at_the_root(tmp_path):
    root, _ = build(tmp_path, [F("a", b"a"), D("b")], [F(".wh..wh..opq"), F("c", b"c")])
    assert sorted(os.listdir(root)) == ["c"]


def test_type_changes_between_layers(tmp_path):
    root, _ = build(
        tmp_path,
        [D("d"), F("d/inner", b"i"), F("f", b"file"), L("l", "f")],
        [F("d", b"now a file"), D("f"), F("f/inside", b"in"), D("l")],
    )
    assert read(root, "d") == "now a file"
    assert read(root, "f/inside") == "in"
    assert stat.S_ISDIR(os.lstat(root / "l").st_mode)


def test_directory_modes_apply_last_so_read_only_dirs_still_fill(tmp_path):
    root, _ = build(tmp_path, [D("ro", 0o555)], [F("ro/later.txt", b"ok")])
    assert read(root, "ro/later.txt") == "ok"
    assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755


def test_modes_times_symlinks_fifos_and_setid_bits_survive(tmp_path):
    root, _ = build(tmp_path, [F("bin/su", b"#!", 0o4755), F("tool", b"t", 0o2711), L("sh", "/bin/su"),
                               (_info("pipe", tarfile.FIFOTYPE, 0o640), None)])
    assert stat.S_IMODE(os.lstat(root / "bin/su").st_mode) == 0o4755
    assert os.lstat(root / "bin/su").st_mtime == 1686355200
    assert os.readlink(root / "sh") == "/bin/su"
    assert stat.S_ISFIFO(os.lstat(root / "pipe").st_mode)
    if os.geteuid() == 0:  # a non-root owner may not keep setgid of a group it is not in
        assert stat.S_IMODE(os.lstat(root / "tool").st_mode) == 0o2711


def test_hard_link_keeps_the_shared_inode_mode(tmp_path):
    # tarfile applies the link entry's mode to the shared inode: that dropped a setuid bit
    root, _ = build(tmp_path, [F("bin/prog", b"x", 0o4755), H("bin/prog-alias", "bin/prog", 0o755)])
    a, b = os.lstat(root / "bin/prog"), os.lstat(root / "bin/prog-alias")
    assert a.st_ino == b.st_ino
    assert stat.S_IMODE(a.st_mode) == 0o4755


def test_rewriting_a_hard_linked_file_does_not_change_its_other_name(tmp_path):
    root, _ = build(tmp_path, [F("a", b"old"), H("b", "a")], [F("a", b"new")])
    assert read(root, "a") == "new"
    assert read(root, "b") == "old"


@pytest.mark.parametrize("compress", ["gzip", "zstd", "none"])
def test_compressions(tmp_path, compress):
    root, _ = build(tmp_path, [F("hello", b"hi")], compress=compress)
    assert read(root, "hello") == "hi"


# -- hostile members -----------------------------------------------------------------------------


def test_absolute_and_dot_names_are_kept_inside(tmp_path):
    root, _ = build(tmp_path, [F("/etc/abs", b"abs"), F("./rel", b"rel"), F("a//b/./c", b"c")])
    assert read(root, "etc/abs") == "abs"
    assert read(root, "rel") == "rel"
    assert read(root, "a/b/c") == "c"


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "a/b/../../../escape"])
def test_dotdot_members_fail_the_layer(tmp_path, name):
    before = outside_snapshot(tmp_path)
    with pytest.raises(LayerError, match="'..' component"):
        build(tmp_path, [F(name, b"evil")])
    assert outside_snapshot(tmp_path) - before <= {str(tmp_path / "l1"), str(tmp_path / "root")}
    assert not (tmp_path / "escape").exists()


def test_symlinked_parents_resolve_inside_the_tree(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root, _ = build(tmp_path, [
        L("abs", str(outside)), F("abs/a.txt", b"1"),          # absolute target: under the root
        L("up", "../../../.."), F("up/b.txt", b"2"),          # .. stops at the root
        L("etc", "/"), F("etc/passwd", b"3"),                 # etc -> / ; etc/passwd is /passwd
    ])
    assert os.listdir(outside) == []
    assert read(root, str(outside).lstrip("/") + "/a.txt") == "1"
    assert read(root, "b.txt") == "2"
    assert read(root, "passwd") == "3"


def test_symlink_loops_are_refused(tmp_path):
    with pytest.raises(LayerError, match="too many levels of symlinks"):
        build(tmp_path, [D("d"), L("d/loop", "loop2"), L("d/loop2", "loop"), F("d/loop/x", b"")])


def test_a_symlink_is_replaced_never_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    root, _ = build(tmp_path, [L("f", str(victim)), L("g", "../../victim")],
                    [F("f", b"overwritten?"), F("g", b"overwritten?")])
    assert victim.read_text() == "precious"
    assert read(root, "f") == "overwritten?"
    assert not os.path.islink(root / "f")


def test_whiteouts_cannot_delete_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    build(tmp_path, [L("o", str(outside)), L("p", "../../outside")], [F("o/.wh.keep"), F("p/.wh.keep"),
                                                                     F(".wh.o")])
    assert (outside / "keep").read_text() == "k"


@pytest.mark.parametrize("target", ["SECRET", "../secret", "../../secret", "nonexistent", "dir"])
def test_hard_links_out_of_the_tree_are_refused(tmp_path, target):
    secret = tmp_path / "secret"
    secret.write_text("s")
    target = str(secret) if target == "SECRET" else target
    with pytest.raises(LayerError, match="not a regular file of the image|'..' component"):
        build(tmp_path, [D("dir"), H("link", target)])
    assert secret.read_text() == "s"
    assert os.stat(secret).st_nlink == 1


def test_hard_link_through_a_symlink_stays_inside(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s")
    root, _ = build(tmp_path, [L("s", str(tmp_path)), F(str(tmp_path).lstrip("/") + "/secret", b"in"),
                               H("link", "s/secret")])
    assert read(root, "link") == "in"
    assert os.stat(secret).st_nlink == 1


def test_device_nodes_are_skipped_and_reported(tmp_path):
    root, report = build(tmp_path, [(_info("dev/null", tarfile.CHRTYPE, 0o666), None),
                                    (_info("dev/sda", tarfile.BLKTYPE, 0o660), None), F("ok", b"")])
    assert not exists(root, "dev/null") and not exists(root, "dev/sda")
    assert len([s for s in report.skipped if "device node" in s]) == 2


def test_garbage_is_a_clear_layer_error(tmp_path):
    blob = tmp_path / "garbage"
    blob.write_bytes(b"\x1f\x8b" + os.urandom(4096))
    (tmp_path / "root").mkdir()
    with pytest.raises(LayerError, match="layer x: not a valid"):
        flatten.flatten([("layer x", str(blob))], str(tmp_path / "root"))


def test_a_file_where_a_directory_is_needed_is_an_error(tmp_path):
    with pytest.raises(LayerError, match="is not a directory"):
        build(tmp_path, [F("a", b"file")], [F("a/b", b"x")])
