"""imagemanager.json parsing (shifter.gateway.config): Shifter's files load, mistakes are
one error naming the key."""

from __future__ import annotations

import json

import pytest

from shifter.errors import ConfigError
from shifter.gateway import config
from tools import gateway as gwtool

# Shifter's own imagemanager.json.example, unchanged
SHIFTER_EXAMPLE = {
    "WorkerThreads": 8,
    "DefaultLustreReplication": 1,
    "DefaultOstCount": 16,
    "DefaultImageLocation": "registry-1.docker.io",
    "DefaultImageFormat": "squashfs",
    "PullUpdateTimeout": 300,
    "ImageExpirationTimeout": "90:00:00:00",
    "MongoDBURI": "mongodb://localhost/",
    "MongoDB": "Shifter",
    "CacheDirectory": "/images/cache/",
    "ExpandDirectory": "/images/expand/",
    "Locations": {"registry-1.docker.io": {"remotetype": "dockerv2", "authentication": "http"}},
    "Platforms": {"mycluster": {"mungeSocketPath": "/var/run/munge/munge.socket.2",
                                "accesstype": "local", "admins": ["root"],
                                "usergroupService": "local", "local": {"imageDir": "/images"}}},
}


def parse(data) -> config.GatewayConfig:
    return config.parse(json.dumps(data), "/etc/imagemanager.json")


def with_(path: str, value, base=None):
    data = json.loads(json.dumps(base or SHIFTER_EXAMPLE))
    *parents, last = path.split("/")
    node = data
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


def test_shifters_example_loads_with_notices():
    c = parse(SHIFTER_EXAMPLE)
    assert c.default_location == "registry-1.docker.io"
    assert c.locations["registry-1.docker.io"].url == "https://registry-1.docker.io"
    assert c.platforms["mycluster"].image_dir == "/images"
    assert c.platforms["mycluster"].munge_socket == "/var/run/munge/munge.socket.2"
    assert c.platforms["mycluster"].admins == ("root",)
    assert c.worker_threads == 8 and c.pull_update_timeout == 300
    assert c.expiration_timeout == 90 * 86400
    assert c.cache_dir == "/images/cache" and c.catalog_file == "/images/cache/catalog.sqlite"
    assert c.import_users == "none" and not c.may_import("root")
    assert c.compression == "lz4" and c.listen == ("127.0.0.1", 8000)
    assert c.image_platform == ("linux", "amd64", None)
    notices = " ".join(c.notices)
    for key in ("MongoDBURI", "MongoDB", "DefaultLustreReplication", "DefaultOstCount",
                "usergroupService"):
        assert key in notices


def test_the_sites_template_renders_a_valid_config(tmp_path):
    path = tmp_path / "imagemanager.json"
    gwtool.render_config(str(path), system="local", image_dir="/images", munge_socket="/run/m.sock",
                         state_dir="/var/gw", listen="127.0.0.1:8123",
                         locations={"127.0.0.1:5000": "http://127.0.0.1:5000"},
                         default_location="127.0.0.1:5000", import_users=("alice",))
    c = config.load(str(path))
    assert c.listen == ("127.0.0.1", 8123) and c.may_import("alice") and not c.may_import("bob")
    assert c.locations["127.0.0.1:5000"].url == "http://127.0.0.1:5000"
    assert c.metrics is True and c.notices == ()


@pytest.mark.parametrize("path, value, message", [
    ("Bogus", 1, r"Bogus is not a known key"),
    ("Platforms", ..., r"Platforms is missing"),
    ("Platforms", {}, r"Platforms is missing or empty"),
    ("DefaultImageLocation", "quay.io", r"DefaultImageLocation 'quay.io' is not one of Locations"),
    ("DefaultImageFormat", "ext4", r"DefaultImageFormat 'ext4' is not supported"),
    ("ImageExpirationTimeout", "90 days", r"ImageExpirationTimeout must be D:HH:MM:SS"),
    ("ImageExpirationTimeout", "1:25:00:00", r"ImageExpirationTimeout must be D:HH:MM:SS"),
    ("PullUpdateTimeout", "soon", r"PullUpdateTimeout must be a whole number"),
    ("PullUpdateTimeout", -1, r"PullUpdateTimeout must be between"),
    ("WorkerThreads", 0, r"WorkerThreads must be between 1 and 64"),
    ("WorkerThreads", True, r"WorkerThreads must be a int or str"),
    ("CacheDirectory", "relative/dir", r"CacheDirectory must be an absolute path"),
    ("Metrics", "yes", r"Metrics must be a bool"),
    ("ImportUsers", ["ok", "bad user"], r"ImportUsers must be"),
    ("Authentication", "mock", r"Authentication 'mock' is not supported"),
    ("SquashfsCompression", "brotli", r"SquashfsCompression must be one of"),
    ("Listen", "8000", r"Listen must be HOST:PORT"),
    ("ImagePlatform", "amd64", r"ImagePlatform must be OS/ARCH"),
    ("LogLevel", "loud", r"LogLevel must be one of"),
    ("Locations/registry-1.docker.io/remotetype", "dockerhub", r"remotetype 'dockerhub' is not supported"),
    ("Locations/registry-1.docker.io/url", "ftp://x", r"url must be http\(s\)://HOST\[:PORT\]"),
    ("Locations/registry-1.docker.io/extra", 1, r"Locations.registry-1.docker.io.extra is not a known key"),
    ("Platforms/mycluster/accesstype", "remote", r"accesstype 'remote' is not supported"),
    ("Platforms/mycluster/local", {}, r"Platforms.mycluster.local.imageDir is missing"),
    ("Platforms/mycluster/local/imageDir", "images", r"imageDir must be an absolute path"),
    ("Platforms/mycluster/admins", ["root", 0], r"admins must list user names"),
    ("Platforms/mycluster/ssh", {}, r"Platforms.mycluster.ssh is not a known key"),
])
def test_mistakes_name_the_key(path, value, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse(with_(path, value))
    assert str(e.value).startswith("/etc/imagemanager.json: ")
    assert "\n" not in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"x.json: not valid JSON: Expecting"):
        config.parse("{", "x.json")
    with pytest.raises(ConfigError, match=r"x.json: the file must be a JSON object"):
        config.parse("[]", "x.json")
    with pytest.raises(ConfigError, match="no such file"):
        config.load(str(tmp_path / "missing.json"))


def test_import_users_forms():
    assert parse(with_("ImportUsers", "all")).may_import("anyone")
    assert not parse(with_("ImportUsers", "none")).may_import("root")
    c = parse(with_("ImportUsers", "alice, bob"))
    assert c.may_import("bob") and not c.may_import("carol")


def test_duration():
    assert config.parse_duration("0:00:00:01") == 1
    assert config.parse_duration("1:02:03:04") == 93784
    for bad in ("", "1:2:3", "a:00:00:00", "0:00:60:00"):
        with pytest.raises(ValueError):
            config.parse_duration(bad)
