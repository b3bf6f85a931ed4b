"""The gateway's input handling, piece by piece: log lines a request cannot forge, a JSON body
nested too deeply, the image limits (ImageSizeLimit, ImageLayerLimit) in the config, in
flattening (a zstd bomb is stopped early) and in the pull.  The import file opened with the
requesting user's rights is tests/root/test_gateway_userfile.py (it changes uid); the same
attacks over HTTP against a real gateway are tests/root/test_gateway_api.py and
tests/slurm/test_gateway.py."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time

import pytest

from shifter.errors import ConfigError
from shifter.gateway import config, flatten, logs, server, worker
from shifter.gateway.errors import BadRequest, PullError
from shifter.gateway.flatten import LayerError
from tools import gateway as gwtool

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
