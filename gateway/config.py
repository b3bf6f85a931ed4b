"""``imagemanager.json``: the gateway's configuration, Shifter's file format.

Shifter's keys (all optional unless noted)::

    DefaultImageLocation   registry location of an image name without a host (must be a
                           key of Locations)                       default "index.docker.io"
    DefaultImageFormat     only "squashfs"                          default "squashfs"
    PullUpdateTimeout      seconds a READY image is served without asking the registry
                           again when it is pulled                  default 300
    ImageExpirationTimeout D:HH:MM:SS an image may stay unused before autoexpire removes it
                                                                    default "90:00:00:00"
    CacheDirectory         layer cache (blobs by digest)            default /tmp/imagegw/
    ExpandDirectory        scratch space for flattening             default /tmp/imagegw/
    Locations              {name: {"remotetype": "dockerv2", "authentication": "http",
                           "url": "http://host:port" (optional: default https://<name>),
                           "sslcacert": "/path/ca.pem" (optional)}}
    Platforms (required)   {system: {"accesstype": "local", "admins": ["root"],
                           "local": {"imageDir": "/images"}, "mungeSocketPath": "..."}}
    ImportUsers            who may import a squashfs file: "all", "none" (default), a list
                           of user names or a comma-separated string of them
    WorkerThreads          concurrent pulls                         default 2
    Metrics                record lookups for /api/metrics          default false
    Authentication         only "munge"
    LogLevel               debug, info, warn, error, critical       default "info"

Keys of Shifter with no job here (``MongoDBURI``, ``MongoDB``, ``DefaultLustreReplication``,
``DefaultOstCount``, ``use_external``, ``Broker``, ``ConverterOptions``, ``examiner``, and
a platform's ``usergroupService``) are accepted with a one-line notice, so an existing file
loads.  Any other key is an error naming it.

Extensions (not in Shifter)::

    Listen                 "HOST:PORT" the API binds to             default "127.0.0.1:8000"
    CatalogFile            the SQLite catalog                       default <CacheDirectory>/catalog.sqlite
    SquashfsCompression    mksquashfs -comp codec                   default "lz4"
    ImagePlatform          OS/ARCH[/VARIANT] picked from an index   default "linux/amd64"
    ImageSizeLimit         bytes an image may expand to (a number, or a size such as
                           "64G"; 0 or null: no limit); also the largest file an import
                           may register                             default "64G"
    ImageLayerLimit        layers an image may have (0 or null: no limit) default 256
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType

from shifter.errors import ConfigError
from shifter.runtime import volumes

# Shifter's keys that configure things this gateway does not have (MongoDB, Lustre striping,
# Celery, external converters): accepted so that an existing file loads, with a notice.
IGNORED_KEYS = {
    "MongoDBURI": "the catalog is SQLite (CatalogFile)",
    "MongoDB": "the catalog is SQLite (CatalogFile)",
    "DefaultLustreReplication": "images are plain files in imageDir",
    "DefaultOstCount": "images are plain files in imageDir",
    "use_external": "layers are flattened by the gateway itself",
    "Broker": "work runs in the gateway's own threads",
    "ConverterOptions": "the converter is mksquashfs (SquashfsCompression)",
    "examiner": "images are not examined",
}
IGNORED_PLATFORM_KEYS = {"usergroupService": "users and groups come from this host's NSS"}
COMPRESSIONS = ("gzip", "lzo", "lz4", "xz", "zstd", "lzma")
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")
_DHMS = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})$")
_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")
_LOCATION = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$")
DEFAULT_IMAGE_SIZE_LIMIT = 64 * 1024**3
DEFAULT_IMAGE_LAYER_LIMIT = 256
MAX_LAYER_LIMIT = 100000


@dataclass(frozen=True)
class Location:
    """A registry the gateway pulls from."""

    name: str
    url: str  # base URL, no trailing slash
    remotetype: str = "dockerv2"
    authentication: str = "http"
    sslcacert: str | None = None

    @property
    def verify(self) -> bool | str:
        """``verify=`` for requests: the site CA file, else the system trust store."""
        return self.sslcacert or True


@dataclass(frozen=True)
class Platform:
    """A system the gateway serves (udiRoot.conf's ``system``)."""

    name: str
    image_dir: str
    munge_socket: str | None = None
    admins: tuple[str, ...] = ("root",)


@dataclass(frozen=True)
class GatewayConfig:
    path: str
    platforms: "MappingProxyType[str, Platform]"
    locations: "MappingProxyType[str, Location]"
    default_location: str
    cache_dir: str = "/tmp/imagegw"
    expand_dir: str = "/tmp/imagegw"
    catalog_file: str = "/tmp/imagegw/catalog.sqlite"
    default_format: str = "squashfs"
    pull_update_timeout: int = 300
    expiration_timeout: int = 90 * 86400
    import_users: tuple[str, ...] | str = "none"  # "all", "none" or user names
    worker_threads: int = 2
    metrics: bool = False
    log_level: str = "info"
    listen: tuple[str, int] = ("127.0.0.1", 8000)
    compression: str = "lz4"
    image_platform: tuple[str, str, str | None] = ("linux", "amd64", None)
    image_size_limit: int | None = DEFAULT_IMAGE_SIZE_LIMIT  # bytes; None: no limit
    image_layer_limit: int | None = DEFAULT_IMAGE_LAYER_LIMIT
    notices: tuple[str, ...] = field(default=())

    def may_import(self, user: str) -> bool:
        if self.import_users == "all":
            return True
        if self.import_users == "none":
            return False
        return user in self.import_users


class _Reader:
    """Typed access to one JSON object, every error naming ``file: key``."""

    def __init__(self, path: str, prefix: str, data):
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            raise self.error("", f"must be a JSON object, not {type(data).__name__}")
        self.data = data

    def error(self, key: str, why: str) -> ConfigError:
        where = f"{self.prefix}{key}" if key else (self.prefix.rstrip(".") or "the file")
        return ConfigError(f"{self.path}: {where} {why}")

    def get(self, key: str, kinds, default=None):
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            names = " or ".join(k.__name__ for k in _tuple(kinds))
            raise self.error(key, f"must be a {names}, not {json.dumps(value)[:60]}")
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.get(key, str, default)
        if value is not None and not value.strip():
            raise self.error(key, "is empty")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key, (int, str), default)
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise self.error(key, f"must be a whole number, not {value!r}") from None
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, not {value}")
        return value

    def abspath(self, key: str, default: str) -> str:
        value = self.string(key, default)
        if not os.path.isabs(value):
            raise self.error(key, f"must be an absolute path, not {value!r}")
        return os.path.normpath(value)

    def limit(self, key: str, default: int, high: int, sizes: bool = False) -> int | None:
        """A limit: a whole number (with ``sizes``, also a size text such as "64G"); 0 or
        null means none."""
        if key in self.data and self.data[key] is None:
            return None
        value = self.get(key, (int, str), default)
        if isinstance(value, str):
            text = value.strip()
            try:
                value = volumes.parse_size(text) if sizes and not text.isdigit() else int(text)
            except ValueError as e:
                what = "a number of bytes or a size such as \"64G\"" if sizes else "a whole number"
                detail = f": {e}" if sizes and not text.isdigit() else ""
                raise self.error(key, f"must be {what} (0: no limit), not {value!r}{detail}") from None
        if not 0 <= value <= high:
            raise self.error(key, f"must be between 0 (no limit) and {high}, not {value}")
        return value or None


def _tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def parse_duration(text: str) -> int:
    """``D:HH:MM:SS`` -> seconds; ValueError when malformed."""
    m = _DHMS.match(text.strip())
    if not m:
        raise ValueError(text)
    days, hours, minutes, seconds = (int(x) for x in m.groups())
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(text)
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _location(path: str, name: str, data) -> Location:
    r = _Reader(path, f"Locations.{name}.", data)
    if not _LOCATION.match(name):
        raise ConfigError(f"{path}: Locations: {name!r} is not a registry host[:port]")
    for key in r.data:
        if key not in ("remotetype", "authentication", "url", "sslcacert"):
            raise r.error(key, "is not a known key (known: remotetype, authentication, url, sslcacert)")
    remotetype = r.string("remotetype")
    if remotetype is None:
        raise r.error("remotetype", "is missing (use \"dockerv2\")")
    if remotetype != "dockerv2":
        raise r.error("remotetype", f"{remotetype!r} is not supported (only \"dockerv2\")")
    auth = r.string("authentication", "http")
    if auth not in ("http", "none"):
        raise r.error("authentication", f"{auth!r} is not supported (\"http\": whatever the "
                                        "registry asks for, Basic or Bearer token; \"none\")")
    url = r.string("url", None)
    if url is None:
        url = "https://registry-1.docker.io" if name in ("index.docker.io", "docker.io",
                                                        "registry-1.docker.io") else f"https://{name}"
    elif not re.match(r"^https?://[A-Za-z0-9.\[\]:-]+/?$", url):
        raise r.error("url", f"must be http(s)://HOST[:PORT], not {url!r}")
    cacert = r.get("sslcacert", str)
    if cacert is not None and not os.path.isabs(cacert):
        raise r.error("sslcacert", f"must be an absolute path, not {cacert!r}")
    return Location(name, url.rstrip("/"), remotetype, auth, cacert)


def _platform(path: str, name: str, data, notices: list[str]) -> Platform:
    r = _Reader(path, f"Platforms.{name}.", data)
    known = ("accesstype", "admins", "local", "mungeSocketPath", *IGNORED_PLATFORM_KEYS)
    for key in r.data:
        if key not in known:
            raise r.error(key, f"is not a known key (known: {', '.join(known)})")
        if key in IGNORED_PLATFORM_KEYS:
            notices.append(f"Platforms.{name}.{key} has no effect here: {IGNORED_PLATFORM_KEYS[key]}")
    access = r.string("accesstype", "local")
    if access != "local":
        raise r.error("accesstype", f"{access!r} is not supported (only \"local\": imageDir is a "
                                    "filesystem the gateway writes)")
    local = _Reader(path, f"Platforms.{name}.local.", r.get("local", dict, {}))
    for key in local.data:
        if key != "imageDir":
            raise local.error(key, "is not a known key (known: imageDir)")
    if "imageDir" not in local.data:
        raise local.error("imageDir", "is missing")
    image_dir = local.abspath("imageDir", "/images")
    admins = r.get("admins", (list, str), ["root"])
    admins = [admins] if isinstance(admins, str) else admins
    for admin in admins:
        if not isinstance(admin, str) or not _USER.match(admin):
            raise r.error("admins", f"must list user names, not {json.dumps(admin)}")
    socket = r.get("mungeSocketPath", str)
    if socket is not None and not os.path.isabs(socket):
        raise r.error("mungeSocketPath", f"must be an absolute path, not {socket!r}")
    return Platform(name, image_dir, socket, tuple(admins))


def _import_users(r: _Reader) -> tuple[str, ...] | str:
    value = r.get("ImportUsers", (str, list), None)
    if value is None:
        return "none"
    if isinstance(value, str):
        if value.strip().lower() in ("all", "none", ""):
            return value.strip().lower() or "none"
        value = [v.strip() for v in value.split(",") if v.strip()]
    for user in value:
        if not isinstance(user, str) or not _USER.match(user):
            raise r.error("ImportUsers", f"must be \"all\", \"none\" or user names, not {json.dumps(user)}")
    return tuple(value)


def _listen(r: _Reader) -> tuple[str, int]:
    value = r.string("Listen", "127.0.0.1:8000")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise r.error("Listen", f"must be HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


KNOWN_KEYS = (
    "DefaultImageLocation", "DefaultImageFormat", "PullUpdateTimeout", "ImageExpirationTimeout",
    "CacheDirectory", "ExpandDirectory", "Locations", "Platforms", "ImportUsers", "WorkerThreads",
    "Metrics", "Authentication", "LogLevel", "Listen", "CatalogFile", "SquashfsCompression",
    "ImagePlatform", "ImageSizeLimit", "ImageLayerLimit",
)


def parse(text: str, path: str = "<imagemanager.json>") -> GatewayConfig:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    r = _Reader(path, "", data)
    notices: list[str] = []
    for key in r.data:
        if key in IGNORED_KEYS:
            notices.append(f"{key} has no effect here: {IGNORED_KEYS[key]}")
        elif key not in KNOWN_KEYS:
            raise r.error(key, "is not a known key (see docs/gateway.md)")

    auth = r.string("Authentication", "munge")
    if auth != "munge":
        raise r.error("Authentication", f"{auth!r} is not supported (only \"munge\")")
    fmt = r.string("DefaultImageFormat", "squashfs")
    if fmt != "squashfs":
        raise r.error("DefaultImageFormat", f"{fmt!r} is not supported (only \"squashfs\")")
    expiration = r.string("ImageExpirationTimeout", "90:00:00:00")
    try:
        expiration_s = parse_duration(expiration)
    except ValueError:
        raise r.error("ImageExpirationTimeout", f"must be D:HH:MM:SS, not {expiration!r}") from None
    compression = r.string("SquashfsCompression", "lz4")
    if compression not in COMPRESSIONS:
        raise r.error("SquashfsCompression", f"must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    level = r.string("LogLevel", "info").lower()
    if level not in LOG_LEVELS:
        raise r.error("LogLevel", f"must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    plat = r.string("ImagePlatform", "linux/amd64")
    if not _PLATFORM.match(plat):
        raise r.error("ImagePlatform", f"must be OS/ARCH[/VARIANT] (e.g. linux/amd64), not {plat!r}")
    os_name, arch, *variant = plat.split("/")

    locations_raw = r.get("Locations", dict, {})
    locations = {name: _location(path, name, value) for name, value in locations_raw.items()}
    default_location = r.string("DefaultImageLocation", "index.docker.io")
    if default_location not in locations:
        raise r.error("DefaultImageLocation", f"{default_location!r} is not one of Locations "
                                              f"({', '.join(locations) or 'none defined'})")
    platforms_raw = r.get("Platforms", dict, None)
    if not platforms_raw:
        raise r.error("Platforms", "is missing or empty: define at least one system")
    platforms = {name: _platform(path, name, value, notices) for name, value in platforms_raw.items()}

    cache_dir = r.abspath("CacheDirectory", "/tmp/imagegw")
    metrics = r.get("Metrics", bool, False)
    return GatewayConfig(
        path=path,
        platforms=MappingProxyType(platforms),
        locations=MappingProxyType(locations),
        default_location=default_location,
        cache_dir=cache_dir,
        expand_dir=r.abspath("ExpandDirectory", "/tmp/imagegw"),
        catalog_file=r.abspath("CatalogFile", os.path.join(cache_dir, "catalog.sqlite")),
        default_format=fmt,
        pull_update_timeout=r.integer("PullUpdateTimeout", 300, 0, 10 * 365 * 86400),
        expiration_timeout=expiration_s,
        import_users=_import_users(r),
        worker_threads=r.integer("WorkerThreads", 2, 1, 64),
        metrics=metrics,
        log_level="warning" if level == "warn" else level,
        listen=_listen(r),
        compression=compression,
        image_platform=(os_name, arch, variant[0] if variant else None),
        image_size_limit=r.limit("ImageSizeLimit", DEFAULT_IMAGE_SIZE_LIMIT, volumes.MAX_SIZE, sizes=True),
        image_layer_limit=r.limit("ImageLayerLimit", DEFAULT_IMAGE_LAYER_LIMIT, MAX_LAYER_LIMIT),
        notices=tuple(notices),
    )


def load(path: str) -> GatewayConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"can't read the gateway configuration: {path}: no such file",
                          "pass --config PATH or set GWCONFIG") from None
    except OSError as e:
        raise ConfigError(f"can't read the gateway configuration: {path}: {e.strerror}") from None
    return parse(text, os.path.abspath(path))
