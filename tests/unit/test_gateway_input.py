"""The gateway's input handling, piece by piece: log lines a request cannot forge, a JSON body
nested too deeply, the image limits (ImageSizeLimit, ImageLayerLimit) in the config, in
flattening (a zstd bomb is stopped early) and in the pull, and the import file opened with the
requesting user's rights (root tier: it changes uid).  The same attacks over HTTP against a
real gateway are in test_gateway_api.py and tests/slurm/test_gateway.py."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import require

from shifter.errors import ConfigError
from shifter.gateway import config, flatten, logs, server, userfile, worker
from shifter.gateway.catalog import Requester
from shifter.gateway.errors import BadRequest, ImportRefused, PullError
from shifter.gateway.flatten import LayerError
from shifter.tools import gateway as gwtool
from shifter.tools.site import TEST_SHARED_GROUP, TEST_USERS

# -- log lines -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expect", [
    ("y\nforged line\n", "y\\x0aforged line\\x0a"),
    ("a\rb\0c\x1b[31md\x7fe", "a\\x0db\\x00c\\x1b[31md\\x7fe"),
    ("nel\x85ls\u2028ps\u2029", "nel\\x85ls\\u2028ps\\u2029"),
    ("bidi\u202eevil\u2066", "bidi\\u202eevil\\u2066"),
    ("lone \udcff surrogate", "lone \\udcff surrogate"),
    ("tab\there", "tab\\x09here"),
    ("already \\x0a escaped, caf\u00e9, \u65e5\u672c", "already \\x0a escaped, caf\u00e9, \u65e5\u672c"),
])
def test_escape(text, expect):
    assert logs.escape(text) == expect
    assert logs.escape(expect) == expect  # escaping twice changes nothing


@pytest.fixture
def captured():
    """A logger with the filter installed (as create_app does), writing to a buffer."""
    name = f"shifter.test.logs.{time.monotonic_ns()}"
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logs.install(name)
    yield logger, buf
    logger.removeHandler(handler)


def test_a_request_cannot_forge_log_lines(captured):
    logger, buf = captured
    path = "/api/lookup/local/docker/y\nINFO GET /api/list/local/ -> 200\n\0/"
    logger.info("%s %s -> %d: %s", "GET", path, 404, "image not found")
    try:
        raise KeyError("tag\nERROR forged from an exception message")
    except KeyError:
        logger.exception("internal error serving %s %s", "GET", path)
    lines = buf.getvalue().splitlines()
    assert "\0" not in buf.getvalue()
    records = [line for line in lines if not line.startswith(logs.TRACEBACK_INDENT)]
    assert len(records) == 2, lines  # one line per record; tracebacks indented below theirs
    assert records[0] == ("INFO GET /api/lookup/local/docker/y\\x0aINFO GET /api/list/local/ -> 200"
                          "\\x0a\\x00/ -> 404: image not found")
    assert records[1].startswith("ERROR internal error serving GET /api/lookup/local/docker/y\\x0a")
    assert any("KeyError" in line for line in lines if line.startswith(logs.TRACEBACK_INDENT))


def test_the_gateway_installs_the_filter_on_its_loggers():
    server.create_app(manager=None)
    for name in ("shifter.gateway", "werkzeug"):
        assert any(isinstance(f, logs.EscapeControls) for f in logging.getLogger(name).filters)


# -- request bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["[" * 20000, '{"a":' * 12000, "[" * 20000 + "]" * 20000])
def test_a_deeply_nested_body_is_a_bad_request(body):
    app = server.create_app(manager=None)
    with app.test_request_context("/api/pull/local/docker/x/", method="POST", data=body):
        with pytest.raises(BadRequest) as e:
            server._body()
    assert "nested too deeply" in e.value.message or "not valid JSON" in e.value.message


# -- ImageSizeLimit / ImageLayerLimit in imagemanager.json --------------------------------------

BASE = {"DefaultImageLocation": "r:5000", "Locations": {"r:5000": {"remotetype": "dockerv2"}},
        "Platforms": {"local": {"local": {"imageDir": "/images"}}}}


def parse(**keys) -> config.GatewayConfig:
    return config.parse(json.dumps({**BASE, **keys}), "/etc/imagemanager.json")


def test_limits_default_to_64g_and_256_layers():
    c = parse()
    assert c.image_size_limit == 64 * 1024**3 and c.image_layer_limit == 256


@pytest.mark.parametrize("value, expect", [
    ("10G", 10 * 1024**3), ("1.5M", 1536 * 1024), (1000, 1000), ("1000", 1000), (0, None), (None, None),
])
def test_image_size_limit_values(value, expect):
    assert parse(ImageSizeLimit=value).image_size_limit == expect


@pytest.mark.parametrize("value, expect", [(1, 1), ("40", 40), (0, None), (None, None)])
def test_image_layer_limit_values(value, expect):
    assert parse(ImageLayerLimit=value).image_layer_limit == expect


@pytest.mark.parametrize("key, value, words", [
    ("ImageSizeLimit", "lots", "ImageSizeLimit must be a number of bytes or a size such as \"64G\""),
    ("ImageSizeLimit", -5, "ImageSizeLimit must be between 0 (no limit)"),
    ("ImageSizeLimit", True, "ImageSizeLimit must be a int or str"),
    ("ImageSizeLimit", "10X", "ImageSizeLimit must be a number of bytes"),
    ("ImageLayerLimit", "10G", "ImageLayerLimit must be a whole number (0: no limit), not '10G'"),
    ("ImageLayerLimit", 10**9, "ImageLayerLimit must be between 0 (no limit) and 100000"),
])
def test_bad_limits_name_the_file_and_key(key, value, words):
    with pytest.raises(ConfigError) as e:
        parse(**{key: value})
    assert e.value.message.startswith("/etc/imagemanager.json: ") and words in e.value.message, e.value.message


def test_the_template_writes_the_limits(tmp_path):
    path = str(tmp_path / "imagemanager.json")
    kw = dict(system="local", image_dir="/images", munge_socket="/run/munge.sock", state_dir=str(tmp_path),
              listen="127.0.0.1:1", locations={"r:5000": "http://r:5000"}, default_location="r:5000")
    gwtool.render_config(path, **kw, image_size_limit="2M", image_layer_limit=3)
    c = config.load(path)
    assert (c.image_size_limit, c.image_layer_limit) == (2 * 1024**2, 3)
    gwtool.render_config(path, **kw, image_size_limit=None, image_layer_limit=None)
    c = config.load(path)
    assert (c.image_size_limit, c.image_layer_limit) == (None, None)


# -- the limits while flattening and pulling ----------------------------------------------------


class _Zeros:
    def read(self, size: int = -1) -> bytes:
        return b"\0" * max(size, 0)


def _layer(path, files: dict[str, int], compress: str = "gzip") -> str:
    """A layer of files of zeros of the given sizes (a compression bomb in miniature),
    streamed into the compressor."""
    if compress == "zstd":
        with open(path, "wb") as out:
            z = subprocess.Popen(["zstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=out)
            sink = z.stdin
    elif compress == "gzip":
        z, sink = None, gzip.open(path, "wb")
    else:
        z, sink = None, open(path, "wb")
    with tarfile.open(fileobj=sink, mode="w|") as tar:
        for name, size in files.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, _Zeros())
    sink.close()
    if z is not None:
        assert z.wait() == 0
    return str(path)


def _tree_bytes(root) -> int:
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(root) for n in names)


def _scratch_bytes(tmp_path) -> int:
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(tmp_path) for n in names
               if not n.startswith("l"))  # not the layer blobs


@pytest.mark.parametrize("compress", ["gzip", "zstd", "none"])
def test_flattening_stops_at_the_size_limit(tmp_path, compress):
    limit = 3 * 1024 * 1024
    blobs = [("layer 1", _layer(tmp_path / "l1", {"a": 2 * 1024 * 1024}, compress)),
             ("layer 2", _layer(tmp_path / "l2", {"b": 1024 * 1024, "c": 1}, compress))]
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(LayerError) as e:
        flatten.flatten(blobs, str(root), size_limit=limit)
    assert e.value.message.startswith("layer 2: the image expands to more than 3145728 bytes "
                                      "(this gateway's ImageSizeLimit; 3145728 bytes before 'c' of 1 bytes)")
    assert "ImageSizeLimit" in e.value.hint
    assert _tree_bytes(root) <= limit
    # exactly at the limit is fine
    shutil.rmtree(root)
    root.mkdir()
    blobs[1] = ("layer 2", _layer(tmp_path / "l2", {"b": 1024 * 1024}, compress))
    assert flatten.flatten(blobs, str(root), size_limit=limit).bytes == limit



def test_a_zstd_bomb_is_never_expanded_in_full(tmp_path):
    """256 MB of zeros in a few KB of zstd: refused after ~1 MB, with nothing else written
    (before, the layer was decompressed into a file in the scratch directory first)."""
    blob = _layer(tmp_path / "l1", {f"f{i}": 64 * 1024 * 1024 for i in range(4)}, "zstd")
    assert os.path.getsize(blob) < 1024 * 1024
    root = tmp_path / "root"
    root.mkdir()
    t0 = time.monotonic()
    with pytest.raises(LayerError) as e:
        flatten.flatten([("layer 1", blob)], str(root), size_limit=1024 * 1024)
    assert "more than 1048576 bytes" in e.value.message
    assert time.monotonic() - t0 < 10
    assert _scratch_bytes(tmp_path) <= 1024 * 1024


def test_a_corrupt_zstd_layer_says_so(tmp_path):
    blob = _layer(tmp_path / "l1", {"a": 4 * 1024 * 1024}, "zstd")
    with open(blob, "r+b") as f:
        f.truncate(os.path.getsize(blob) // 2)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(LayerError) as e:
        flatten.flatten([("layer 1", blob)], str(root))
    assert e.value.message.startswith("layer 1: not a valid (compressed) tar stream: ")


def test_too_many_layers_are_refused_before_any_download():
    c = parse(ImageLayerLimit=2)
    record = type("R", (), {"itype": "docker", "pulltag": "test/layers:latest"})()
    worker.check_layer_count(c, record, 2)
    with pytest.raises(PullError) as e:
        worker.check_layer_count(c, record, 3)
    assert e.value.message == ("can't pull docker:test/layers:latest: the image has 3 layers, more than "
                               "this gateway's ImageLayerLimit of 2")
    worker.check_layer_count(parse(ImageLayerLimit=0), record, 10**6)


# -- the import file, opened as the user (root tier) -------------------------------------------

USER, UID, _ = TEST_USERS[0]
GROUP = TEST_SHARED_GROUP[1]


def _requester() -> Requester:
    return Requester(USER, UID, frozenset({UID, GROUP}))


@pytest.fixture
def layout():
    """As root: a directory of the user's, a 0700 root directory beside it holding a squashfs
    file the user owns, and in the user's directory a symlink to the root directory."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        require(False, f"needs the test user {USER} (tools/users)")
    base = tempfile.mkdtemp(prefix="shifter-userfile-")
    os.chmod(base, 0o755)
    mine = os.path.join(base, "mine")
    secret = os.path.join(base, "secret")
    os.mkdir(mine)
    os.chown(mine, UID, UID)
    os.mkdir(secret, 0o700)
    tree = os.path.join(base, "tree")
    os.mkdir(tree)
    image = os.path.join(secret, "image.squashfs")
    subprocess.run(["mksquashfs", tree, image, "-all-root", "-no-xattrs", "-quiet"], check=True,
                   capture_output=True)
    os.chown(image, UID, UID)
    os.symlink(secret, os.path.join(mine, "link"))
    yield base, mine, secret, image
    shutil.rmtree(base)


def _refusal(path: str, limit=None) -> tuple:
    with pytest.raises(ImportRefused) as e:
        os.close(userfile.open_import_file(path, _requester(), limit))
    return e.value.http_status, e.value.message, e.value.hint


@pytest.mark.root
def test_a_file_behind_a_symlink_into_a_root_directory_looks_missing(layout):
    base, mine, secret, image = layout
    via_link = os.path.join(mine, "link", "image.squashfs")
    os.close(userfile.open_import_file(via_link, Requester("root", 0, frozenset({0}))))  # root may
    refused = _refusal(via_link)
    os.unlink(image)
    assert _refusal(via_link) == refused  # exactly what a missing file gets
    assert refused[0] == 400 and "not a regular file that sftest1 can open" in refused[1]


@pytest.mark.root
def test_every_refusal_of_the_open_is_the_same(layout):
    base, mine, secret, image = layout
    cases = {}
    own = os.path.join(mine, "own.squashfs")
    shutil.copy(image, own)
    os.chown(own, UID, UID)
    cases["symlink"] = os.path.join(mine, "sym.squashfs")
    os.symlink(own, cases["symlink"])
    cases["fifo"] = os.path.join(mine, "fifo")
    os.mkfifo(cases["fifo"])
    os.chown(cases["fifo"], UID, UID)
    cases["directory"] = os.path.join(mine, "dir")
    os.mkdir(cases["directory"])
    os.chown(cases["directory"], UID, UID)
    cases["unreadable"] = os.path.join(mine, "unreadable")
    shutil.copy(image, cases["unreadable"])
    os.chmod(cases["unreadable"], 0o600)  # root's
    cases["missing"] = os.path.join(mine, "missing")
    cases["below a file"] = os.path.join(own, "x")
    cases["secret dir"] = os.path.join(secret, "image.squashfs")
    answers = {name: _refusal(path) for name, path in cases.items()}
    shown = {name: (status, message.replace(cases[name], "PATH"), hint)
             for name, (status, message, hint) in answers.items()}
    assert len(set(shown.values())) == 1, shown
    # the user's own regular squashfs file opens, and reading the fd gives its bytes
    fd = userfile.open_import_file(own, _requester())
    with os.fdopen(fd, "rb") as f, open(own, "rb") as g:
        assert f.read() == g.read()


@pytest.mark.root
def test_what_the_user_can_see_is_told_plainly(layout):
    base, mine, secret, image = layout
    theirs = os.path.join(mine, "theirs.squashfs")
    shutil.copy(image, theirs)  # root's, world-readable
    os.chmod(theirs, 0o644)
    assert _refusal(theirs)[:2] == (403, f"can't import {theirs}: the file is not owned by {USER}")
    text = os.path.join(mine, "text")
    with open(text, "w") as f:
        f.write("hello")
    os.chown(text, UID, UID)
    assert _refusal(text)[:2] == (400, f"can't import {text}: not a squashfs image")
    own = os.path.join(mine, "own.squashfs")
    shutil.copy(image, own)
    os.chown(own, UID, UID)
    status, message, hint = _refusal(own, limit=100)
    assert status == 400 and message.endswith("more than this gateway's ImageSizeLimit of 100 bytes")


@pytest.mark.root
def test_the_open_runs_with_the_users_ids(layout):
    """The child takes uid, gid and groups: a 0750 directory of the shared group is reachable."""
    base, mine, secret, image = layout
    shared = os.path.join(base, "shared")
    os.mkdir(shared, 0o750)
    os.chown(shared, 0, GROUP)
    own = os.path.join(shared, "own.squashfs")
    shutil.copy(image, own)
    os.chown(own, UID, UID)
    os.close(userfile.open_import_file(own, _requester()))
    without_group = Requester(USER, UID, frozenset({UID}))
    with pytest.raises(ImportRefused):
        userfile.open_import_file(own, without_group)


@pytest.mark.root
def test_an_open_that_hangs_is_cut_short(layout):
    base, mine, secret, image = layout
    fifo = os.path.join(mine, "fifo")
    os.mkfifo(fifo, 0o666)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        userfile.open_as_user(fifo, UID, UID, [UID], flags=os.O_RDONLY, timeout=0.5)  # blocks
    assert time.monotonic() - t0 < 3
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
