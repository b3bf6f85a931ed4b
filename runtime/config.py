"""udiRoot.conf: Shifter's site configuration file, parsed once into a frozen object.

Format: ``key=value`` lines, ``#`` comments, a trailing ``\\`` continues a line.  Every
key of Shifter's is understood (see docs/configuration.md); the keys that have no job
in this design are accepted and listed in ``UdiRootConfig.ignored`` (tools print one
notice line), so Shifter's example config loads unchanged.  An unknown key, a bad value
or a key set twice is an error naming ``file:line`` and the key.

Extensions (not in Shifter): ``mungeSocketPath`` — the munged socket clients use;
``sshdPort`` — the port of the job's sshd (Shifter's fixed 1204 by default).
"""

from __future__ import annotations

import os
import re
from shifter.frozen import field, frozen
from types import MappingProxyType

from shifter import paths
from shifter.errors import ConfigError, ShifterError
from shifter.runtime import confsyntax, volumes

IMAGE_TYPES = ("docker", "id", "custom", "local")

#: Shifter keys with no job here: accepted, reported once, otherwise ignored.
IGNORED_KEYS = (
    "autoLoadKernelModule", "modprobePath", "insmodPath", "cpPath", "mvPath", "chmodPath",
    "batchType", "kmodBasePath", "kmodCacheFile", "populateEtcDynamically", "allowLibcPwdCalls",
    "nodeContextPrefix", "optionalSshdAsRoot", "usersToImport",
)

#: keys whose values accumulate when the key is repeated (space-joined)
MULTI_KEYS = ("siteFs", "siteEnv", "siteEnvAppend", "siteEnvPrepend", "siteEnvUnset")

MODULE_ATTRS = ("siteEnvPrepend", "siteEnvAppend", "siteEnvUnset", "siteEnv", "conflict", "siteFs",
                "copyPath", "enabled", "roothook", "userhook", "gpuDevices")
_MODULE_RE = re.compile(rf"^module_(?P<name>[A-Za-z0-9_.-]+?)_(?P<attr>{'|'.join(MODULE_ATTRS)})$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

KNOWN_KEYS = (
    "udiMount", "loopMount", "imagePath", "udiRootPath", "sitePreMountHook", "sitePostMountHook",
    "optUdiImage", "etcPath", "allowLocalChroot", "mountUdiRootWritable", "maxGroupCount",
    "mkfsXfsPath", "rootfsType", "gatewayTimeout", "siteFs", "siteEnv", "siteEnvAppend",
    "siteEnvPrepend", "siteEnvUnset", "imageGateway", "system", "defaultImageType",
    "defaultModules", "perNodeCacheSizeLimit", "perNodeCacheAllowedFsType", "perNodeCachePath",
    "mountPropagationStyle", "ddPath", "mungeSocketPath", "sshdPort",
)


@frozen
class EnvRules:
    """siteEnv*-style rules, applied in the order set, prepend, append, unset
    (see ``shifter.runtime.plan.env_ops``/``apply_env``)."""

    set: tuple[tuple[str, str], ...] = ()
    prepend: tuple[tuple[str, str], ...] = ()
    append: tuple[tuple[str, str], ...] = ()
    unset: tuple[str, ...] = ()


@frozen
class Module:
    """A site module (``module_<name>_*`` keys): files, mounts, env and hooks for a job."""

    name: str
    env: EnvRules = EnvRules()
    conflict: tuple[str, ...] = ()
    site_fs: tuple = ()  # tuple[VolumeMap, ...]
    copy_path: str | None = None
    enabled: bool = True
    roothook: str | None = None
    userhook: str | None = None
    #: extension: per-GPU device files (container paths, each ending in its GPU number);
    #: a step opens only those of its own GPUs (``shifter.runtime.devices``)
    gpu_devices: tuple[str, ...] = ()


@frozen
class UdiRootConfig:
    path: str
    udiMount: str = confsyntax.DEFAULTS["udiMount"]
    loopMount: str = confsyntax.DEFAULTS["loopMount"]
    imagePath: str = "/images"
    udiRootPath: str = paths.PREFIX
    sitePreMountHook: str | None = None
    sitePostMountHook: str | None = None
    optUdiImage: str | None = None
    etcPath: str | None = None
    allowLocalChroot: bool = False
    mountUdiRootWritable: bool = False
    maxGroupCount: int = 31
    mkfsXfsPath: str = "/sbin/mkfs.xfs"
    rootfsType: str = "tmpfs"
    gatewayTimeout: int = 30
    siteFs: tuple = ()  # tuple[VolumeMap, ...]
    siteEnv: EnvRules = EnvRules()
    imageGateway: tuple[str, ...] = ()
    system: str = "default"
    defaultImageType: str = "docker"
    defaultModules: tuple[str, ...] = ()
    perNodeCacheSizeLimit: int | None = None
    perNodeCacheAllowedFsType: tuple[str, ...] = ("xfs",)
    perNodeCachePath: str = confsyntax.DEFAULTS["perNodeCachePath"]
    mountPropagationStyle: str = "slave"
    ddPath: str = "/bin/dd"
    mungeSocketPath: str | None = None
    sshdPort: int = 1204
    modules: "MappingProxyType[str, Module]" = field(default_factory=lambda: MappingProxyType({}))
    ignored: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # siteFs maps accepted as Shifter reads them (volumes.py)
    raw: "MappingProxyType[str, str]" = field(default_factory=lambda: MappingProxyType({}))

    def notice(self) -> str | None:
        """One line naming the ignored Shifter keys, or None."""
        if not self.ignored:
            return None
        return f"{self.path}: ignoring Shifter keys with no effect here: {', '.join(self.ignored)}"


class _Reader:
    """Typed accessors that report errors as ``file:line: key ...``."""

    def __init__(self, path: str, raw: dict[str, str], where: dict[str, int]):
        self.path, self.raw, self.where = path, raw, where
        self.warnings: list[str] = []

    def error(self, key: str, why: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{self.path}:{self.where.get(key, 0)}: {key} {why}", hint)

    def abspath(self, key: str) -> str:
        value = self.raw[key]
        if not value.startswith("/"):
            raise self.error(key, f"must be an absolute path, not {value!r}")
        if "\0" in value or "\n" in value:
            raise self.error(key, "contains a control character")
        return value

    def boolean(self, key: str) -> bool:
        value = self.raw[key].lower()
        if value in ("1", "true", "yes"):
            return True
        if value in ("0", "false", "no"):
            return False
        raise self.error(key, f"must be 0 or 1, not {self.raw[key]!r}")

    def integer(self, key: str, minimum: int = 0) -> int:
        try:
            value = int(self.raw[key])
        except ValueError:
            raise self.error(key, f"must be a whole number, not {self.raw[key]!r}") from None
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        return value

    def size(self, key: str) -> int:
        try:
            return volumes.parse_size(self.raw[key])
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.raw[key]
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def words(self, key: str, sep: str = r"[\s,]+") -> tuple[str, ...]:
        return tuple(w for w in re.split(sep, self.raw[key]) if w)

    def env_pairs(self, key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for word in self.raw[key].split():
            name, eq, value = word.partition("=")
            if not eq or not _ENV_NAME_RE.match(name):
                raise self.error(key, f"entry {word!r} is not NAME=value")
            out.append((name, value))
        return tuple(out)

    def env_names(self, key: str) -> tuple[str, ...]:
        names = tuple(self.raw[key].split())
        for name in names:
            if not _ENV_NAME_RE.match(name):
                raise self.error(key, f"{name!r} is not an environment variable name")
        return names

    def gpu_devices(self, key: str) -> tuple[str, ...]:
        # start-up: devices compiles its patterns at import (~0.5 ms); only a site with per-GPU
        # module files pays it, not every submission's lookup that reads the config
        from shifter.runtime.devices import gpu_id

        paths, ids = self.words(key, r"\s+"), {}
        for path in paths:
            n = gpu_id(path)
            if n is None or "\0" in path:
                raise self.error(key, f"entry {path!r} is not a GPU device file (an absolute path ending in "
                                      "its GPU number)", "e.g. /dev/nvidia0, as gres.conf File= names them")
            if n in ids:
                raise self.error(key, f"names GPU {n} twice ({ids[n]} and {path})")
            ids[n] = path
        return paths

    def volumes(self, key: str) -> tuple:
        # Shifter separates siteFs maps with ';' or with whitespace (older configs)
        spec = ";".join(part for part in re.split(r"[\s;]+", self.raw[key]) if part)
        where = f"{self.path}:{self.where.get(key, 0)}: {key}"
        try:
            return tuple(volumes.parse_volumes(
                spec, site=True, warn=lambda line: self.warnings.append(f"{where}: {line}")))
        except ShifterError as e:
            raise self.error(key, f"is invalid: {e.what}", e.hint) from None

    def env_rules(self, prefix: str) -> EnvRules:
        def get(suffix, fn):
            key = prefix + suffix
            return fn(key) if key in self.raw else ()

        return EnvRules(
            set=get("siteEnv", self.env_pairs),
            prepend=get("siteEnvPrepend", self.env_pairs),
            append=get("siteEnvAppend", self.env_pairs),
            unset=get("siteEnvUnset", self.env_names),
        )


def parse(text: str, path: str = "<udiRoot.conf>") -> UdiRootConfig:
    raw, where, ignored, module_keys = _entries(text, path)
    r = _Reader(path, raw, where)
    kw = _site_keys(r, raw)
    modules = _modules(r, raw, module_keys, kw.get("defaultModules", ()))
    return UdiRootConfig(path=path, modules=MappingProxyType(modules), ignored=tuple(ignored),
                         warnings=tuple(r.warnings),
                         raw=MappingProxyType(raw), **kw)


def _entries(text: str, path: str):
    """The file's keys: ``raw`` (key -> value, repeatable keys joined), the line of each,
    the ignored keys, and the attributes set for each ``module_<name>_*``."""
    raw: dict[str, str] = {}
    where: dict[str, int] = {}
    ignored: list[str] = []
    module_keys: dict[str, set[str]] = {}
    for lineno, key, value in confsyntax.entries(text, path):
        if key in IGNORED_KEYS:
            ignored.append(key)
            continue
        m = _MODULE_RE.match(key)
        if m:
            module_keys.setdefault(m.group("name"), set()).add(m.group("attr"))
        elif key not in KNOWN_KEYS:
            import difflib  # start-up: ~1 ms (heapq), paid only for an unknown key

            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            raise ConfigError(f"{path}:{lineno}: unknown key {key!r}",
                              f"did you mean {close[0]!r}?" if close else "see docs/configuration.md")
        if key in raw:
            if key in MULTI_KEYS or key.endswith(("_siteFs", "_siteEnv", "_siteEnvAppend",
                                                   "_siteEnvPrepend", "_siteEnvUnset")):
                raw[key] = f"{raw[key]} {value}".strip()
                continue
            raise ConfigError(f"{path}:{lineno}: {key} is set twice (first at line {where[key]})")
        raw[key] = value
        where[key] = lineno

    return raw, where, ignored, module_keys


def _site_keys(r: "_Reader", raw: dict[str, str]) -> dict[str, object]:
    """The site-wide keys, checked and converted: UdiRootConfig's keyword arguments."""
    kw: dict[str, object] = {}
    for key in ("udiMount", "loopMount", "imagePath", "udiRootPath", "perNodeCachePath", "mkfsXfsPath", "ddPath"):
        if raw.get(key):
            kw[key] = r.abspath(key)
    for key in ("sitePreMountHook", "sitePostMountHook", "optUdiImage", "etcPath", "mungeSocketPath"):
        if raw.get(key):
            kw[key] = r.abspath(key)
    for key in ("allowLocalChroot", "mountUdiRootWritable"):
        if key in raw:
            kw[key] = r.boolean(key)
    if "maxGroupCount" in raw:
        kw["maxGroupCount"] = r.integer("maxGroupCount")
    if "sshdPort" in raw:
        kw["sshdPort"] = r.integer("sshdPort", minimum=1)
        if kw["sshdPort"] > 65535:
            raise r.error("sshdPort", f"must be a TCP port (1-65535), not {kw['sshdPort']}")
    if "gatewayTimeout" in raw:
        kw["gatewayTimeout"] = r.integer("gatewayTimeout", minimum=1)
    if "rootfsType" in raw:
        kw["rootfsType"] = r.choice("rootfsType", ("tmpfs", "ramfs"))
    if "defaultImageType" in raw:
        kw["defaultImageType"] = r.choice("defaultImageType", IMAGE_TYPES)
    if "mountPropagationStyle" in raw:
        kw["mountPropagationStyle"] = r.choice("mountPropagationStyle", ("slave", "private"))
    if raw.get("system"):
        if not re.match(r"^[A-Za-z0-9_.-]+$", raw["system"]):
            raise r.error("system", f"must be a simple name, not {raw['system']!r}")
        kw["system"] = raw["system"]
    if raw.get("imageGateway"):
        kw["imageGateway"] = r.words("imageGateway", r"\s+")
        for url in kw["imageGateway"]:
            if not re.match(r"^https?://", url):
                raise r.error("imageGateway", f"entry {url!r} is not an http(s) URL")
    if raw.get("defaultModules"):
        kw["defaultModules"] = r.words("defaultModules")
    if raw.get("perNodeCacheSizeLimit"):
        kw["perNodeCacheSizeLimit"] = r.size("perNodeCacheSizeLimit")
    if raw.get("perNodeCacheAllowedFsType"):
        kw["perNodeCacheAllowedFsType"] = r.words("perNodeCacheAllowedFsType")
    if raw.get("siteFs"):
        kw["siteFs"] = r.volumes("siteFs")
    kw["siteEnv"] = r.env_rules("")

    return kw


def _modules(r: "_Reader", raw: dict[str, str], module_keys: dict[str, set[str]], defaults) -> dict:
    """The site modules (``module_<name>_*``), checked against each other and defaultModules."""
    modules = {}
    for name, attrs in module_keys.items():
        prefix = f"module_{name}_"
        if not _MODULE_NAME_RE.match(name) or name == "none":
            raise r.error(prefix + sorted(attrs)[0], f"names an invalid module {name!r}")
        modules[name] = Module(
            name=name,
            env=r.env_rules(prefix),
            conflict=r.words(prefix + "conflict") if prefix + "conflict" in raw else (),
            site_fs=r.volumes(prefix + "siteFs") if raw.get(prefix + "siteFs") else (),
            copy_path=r.abspath(prefix + "copyPath") if raw.get(prefix + "copyPath") else None,
            enabled=r.boolean(prefix + "enabled") if prefix + "enabled" in raw else True,
            roothook=r.abspath(prefix + "roothook") if raw.get(prefix + "roothook") else None,
            userhook=r.abspath(prefix + "userhook") if raw.get(prefix + "userhook") else None,
            gpu_devices=r.gpu_devices(prefix + "gpuDevices") if raw.get(prefix + "gpuDevices") else (),
        )
    for name in defaults:
        if name not in modules:
            raise r.error("defaultModules", f"names module {name!r}, which is not defined",
                          f"define it with module_{name}_* keys")
    for module in modules.values():
        for other in module.conflict:
            if other not in modules:
                raise r.error(f"module_{module.name}_conflict", f"names unknown module {other!r}")
    return modules


def load(path: str | None = None) -> UdiRootConfig:
    """Read udiRoot.conf from ``path`` or the default location (see ``shifter.paths``)."""
    path = path or paths.config_path()
    return parse(confsyntax.read(path), os.path.abspath(path))
