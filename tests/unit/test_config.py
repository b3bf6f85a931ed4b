import pytest

from shifter import paths
from shifter.errors import ConfigError
from shifter.runtime import config, plan


def test_syntax_comments_and_continuations():
    cfg = config.parse(
        "# comment\n"
        "system=edison  # trailing comment\n"
        "imageGateway=http://a:8000 \\\n"
        "   http://b:8000\n"
        "\n"
        "mungeSocketPath=/run/m/socket\n"
        "siteFs=/a:/a\n"
        "siteFs=/b:/b\n",
        "/x/udiRoot.conf",
    )
    assert cfg.system == "edison"
    assert cfg.imageGateway == ("http://a:8000", "http://b:8000")
    assert cfg.mungeSocketPath == "/run/m/socket"
    assert cfg.raw["siteFs"] == "/a:/a /b:/b"


@pytest.mark.parametrize("text, message", [
    ("system\n", "/x/u.conf:1: expected key=value"),
    ("system=a\n\nimagePath=relative\n", "/x/u.conf:3: imagePath must be an absolute path"),
    ("system=a\nsystem=b\n", "/x/u.conf:2: system is set twice (first at line 1)"),
    ("defaultImageType=rkt\n", "/x/u.conf:1: defaultImageType must be one of"),
    ("gatewayTimeout=soon\n", "/x/u.conf:1: gatewayTimeout must be a whole number"),
])
def test_errors_name_file_line_and_key(text, message):
    with pytest.raises(ConfigError) as exc:
        config.parse(text, "/x/u.conf")
    assert message in str(exc.value)


def test_location_precedence(monkeypatch):
    monkeypatch.delenv("SHIFTER_CONFIG", raising=False)
    assert paths.config_path() == paths.DEFAULT_CONFIG
    assert paths.DEFAULT_CONFIG.endswith("/etc/udiRoot.conf")
    monkeypatch.setenv("SHIFTER_CONFIG", "/env/udiRoot.conf")
    assert paths.config_path() == "/env/udiRoot.conf"
    assert paths.config_path("/plugstack/udiRoot.conf") == "/plugstack/udiRoot.conf"


def test_load_missing_file_names_it():
    with pytest.raises(ConfigError) as exc:
        config.load("/does/not/exist.conf")
    assert "/does/not/exist.conf" in str(exc.value) and exc.value.hint


FULL = """\
# every key Shifter documents, in Shifter's style
udiMount=/var/udiMount
loopMount=/var/udiLoopMount
imagePath=/images
udiRootPath=/opt/shifter/udiRoot
sitePreMountHook=/etc/shifter/premount.sh
sitePostMountHook=/etc/shifter/postmount.sh
optUdiImage=/opt/shifter/udiRoot/deps
etcPath=/etc/shifter/shifter_etc_files
allowLocalChroot=1
mountUdiRootWritable=0
maxGroupCount=31
mkfsXfsPath=/sbin/mkfs.xfs
rootfsType=tmpfs
gatewayTimeout=60
siteFs=/home:/home;/scratch:/scratch:rec \\
  /global:/global
siteFs=/opt/cray:/opt/cray:ro
siteEnv=SHIFTER_RUNTIME=1 SITE=x
siteEnvAppend=PATH=/opt/udiImage/bin
siteEnvPrepend=LD_LIBRARY_PATH=/opt/udiImage/lib
siteEnvUnset=LOADEDMODULES MODULEPATH
imageGateway=http://gw1:5000 https://gw2:5000
system=cori
defaultImageType=docker
defaultModules=mpich
perNodeCacheSizeLimit=200G
perNodeCacheAllowedFsType=xfs
perNodeCachePath=/var/cache/shifter
mountPropagationStyle=slave
ddPath=/bin/dd
mungeSocketPath=/run/munge/munge.socket.2
module_mpich_siteFs=/opt/mpich:/opt/udiImage/modules/mpich/lib:ro
module_mpich_siteEnvPrepend=LD_LIBRARY_PATH=/opt/udiImage/modules/mpich/lib
module_mpich_copyPath=/opt/shifter/modules/mpich
module_mpich_roothook=/opt/shifter/modules/mpich/root.sh
module_mpich_userhook=/opt/udiImage/modules/mpich/user.sh
module_cvmfs_enabled=0
module_cvmfs_conflict=mpich
module_my_mod_siteEnv=A=1
autoLoadKernelModule=0
modprobePath=/sbin/modprobe
insmodPath=/sbin/insmod
cpPath=/bin/cp
mvPath=/bin/mv
chmodPath=/bin/chmod
batchType=slurm
kmodBasePath=/lib/modules
kmodCacheFile=/tmp/x
populateEtcDynamically=0
allowLibcPwdCalls=0
nodeContextPrefix=/x
optionalSshdAsRoot=0
usersToImport=
"""


def test_every_shifter_key():
    cfg = config.parse(FULL, "/etc/udiRoot.conf")
    assert cfg.allowLocalChroot is True and cfg.mountUdiRootWritable is False
    assert cfg.gatewayTimeout == 60 and cfg.maxGroupCount == 31
    assert [v.destination for v in cfg.siteFs] == ["/home", "/scratch", "/global", "/opt/cray"]
    assert cfg.siteFs[1].recursive and cfg.siteFs[3].read_only
    assert cfg.siteEnv.set == (("SHIFTER_RUNTIME", "1"), ("SITE", "x"))
    assert cfg.siteEnv.unset == ("LOADEDMODULES", "MODULEPATH")
    assert cfg.perNodeCacheSizeLimit == 200 << 30
    assert cfg.defaultModules == ("mpich",)
    mpich = cfg.modules["mpich"]
    assert mpich.copy_path == "/opt/shifter/modules/mpich" and mpich.site_fs[0].read_only
    assert mpich.env.prepend == (("LD_LIBRARY_PATH", "/opt/udiImage/modules/mpich/lib"),)
    assert cfg.modules["cvmfs"].enabled is False and cfg.modules["cvmfs"].conflict == ("mpich",)
    assert cfg.modules["my_mod"].env.set == (("A", "1"),)
    assert "autoLoadKernelModule" in cfg.ignored and "usersToImport" in cfg.ignored
    assert cfg.notice().startswith("/etc/udiRoot.conf: ignoring Shifter keys")


def test_env_rules_apply_in_order():
    cfg = config.parse("siteEnv=A=1\nsiteEnvPrepend=PATH=/pre\nsiteEnvAppend=PATH=/post X=new\n"
                       "siteEnvUnset=GONE\n")
    env = plan.apply_env(plan.env_ops([cfg.siteEnv]), {"PATH": "/usr/bin", "GONE": "1", "KEEP": "k"})
    assert env == {"PATH": "/pre:/usr/bin:/post", "A": "1", "X": "new", "KEEP": "k"}


@pytest.mark.parametrize("text, message", [
    ("udiMont=/x\n", "unknown key 'udiMont' (hint: did you mean 'udiMount'?)"),
    ("allowLocalChroot=maybe\n", ":1: allowLocalChroot must be 0 or 1"),
    ("siteFs=/a:/etc\n", ":1: siteFs is invalid"),
    ("siteEnv=NOEQUALS\n", "siteEnv entry 'NOEQUALS' is not NAME=value"),
    ("perNodeCacheSizeLimit=lots\n", "perNodeCacheSizeLimit"),
    ("defaultModules=nope\n", "names module 'nope', which is not defined"),
    ("module_a_conflict=b\n", "module_a_conflict names unknown module 'b'"),
    ("module_a_copyPath=relative\n", "module_a_copyPath must be an absolute path"),
    ("imageGateway=gw:5000\n", "imageGateway entry 'gw:5000' is not an http(s) URL"),
    ("rootfsType=ext4\n", "rootfsType must be one of tmpfs, ramfs"),
])
def test_more_errors(text, message):
    with pytest.raises(ConfigError) as exc:
        config.parse(text, "/x/u.conf")
    assert message in str(exc.value)


def test_site_fs_that_shifter_accepts_loads_with_a_warning():
    """A siteFs map Shifter accepts must not stop the config from loading; what Shifter
    ignores is reported in cfg.warnings (setupRoot prints them)."""
    text = "siteFs=/global/;/none:/tmp:perNodeCache=size=100M:ro;/a:/b:rec::\n"
    cfg = config.parse(text, "/etc/udiRoot.conf")
    assert [v.spec() for v in cfg.siteFs] == ["/global:/global", "/none:/tmp:perNodeCache=size=100M", "/a:/b:rec"]
    assert cfg.warnings == (
        "/etc/udiRoot.conf:1: siteFs: warning: site volume map 2 '/none:/tmp:perNodeCache=size=100M:ro': 'ro' "
        "ignored: a per-node cache is a new, writable filesystem of its own, not a bind mount "
        "(Shifter ignores it too)",)
    assert config.parse(FULL).warnings == ()
