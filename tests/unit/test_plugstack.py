import pytest

from shifter.errors import ConfigError
from shifter.frozen import fields
from shifter.spank.plugstack import KNOWN_KEYS, PlugstackArgs


def test_empty_is_defaults():
    assert PlugstackArgs.parse([]) == PlugstackArgs()


def test_every_key():
    args = PlugstackArgs.parse([
        "shifter_config=/etc/shifter/udiRoot.conf", "enable_sshd=1", "enable_ccm=1",
        "memory_cgroup=/sys/fs/cgroup/memory", "extern_cgroup=1", "extern_setup=/usr/sbin/x",
        "long_options=1",
    ])
    assert args == PlugstackArgs("/etc/shifter/udiRoot.conf", True, True, "/sys/fs/cgroup/memory",
                                 True, "/usr/sbin/x", True)
    assert set(KNOWN_KEYS) == set(fields(PlugstackArgs))


@pytest.mark.parametrize("arg, message", [
    ("bogus=1", "unknown argument 'bogus'"),
    ("enable_ccm", "not key=value"),
    ("=1", "not key=value"),
    ("enable_ccm=yes", "must be 0 or 1"),
    ("shifter_config=", "needs a value"),
])
def test_strict(arg, message):
    with pytest.raises(ConfigError) as exc:
        PlugstackArgs.parse([arg])
    assert message in str(exc.value)
