import pytest

from shifter.errors import ConfigError
from shifter.frozen import fields
from shifter.spank.plugstack import KNOWN_KEYS, PlugstackArgs


def test_empty_is_defaults():
    assert PlugstackArgs.parse([]) == PlugstackArgs()
    assert PlugstackArgs().hook_server is True  # the node's hook server unless a site says no


def test_every_key():
    args = PlugstackArgs.parse([
        "shifter_config=/etc/shifter/udiRoot.conf", "enable_sshd=1", "enable_ccm=1",
        "memory_cgroup=/sys/fs/cgroup/memory", "extern_cgroup=1", "extern_setup=/usr/sbin/x",
        "long_options=1", "hook_server=0",
    ])
    assert args == PlugstackArgs("/etc/shifter/udiRoot.conf", True, True, "/sys/fs/cgroup/memory",
                                 True, "/usr/sbin/x", True, False, False)
    assert set(KNOWN_KEYS) == set(fields(PlugstackArgs))


@pytest.mark.parametrize("arg, message", [
    ("bogus=1", "unknown argument 'bogus'"),
    ("enable_ccm", "not key=value"),
    ("long_options_x", "not key=value"),
    ("=1", "not key=value"),
    ("enable_ccm=yes", "must be 0 or 1"),
    ("shifter_config=", "needs a value"),
])
def test_strict(arg, message):
    with pytest.raises(ConfigError) as exc:
        PlugstackArgs.parse([arg])
    assert message in str(exc.value)


# ------------------------------------------------- one contract, C and Python (vectors)
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from helpers.prereq import require  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
VECTORS = json.load(open(os.path.join(DATA, "contracts", "plugstack_args.json")))["cases"]
SHIM = os.path.join(sys.prefix, "lib", "shifter", "shifter_slurm.so")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None or not os.path.exists("/usr/include/slurm/spank.h"):
        require(False, "needs a C compiler and slurm/spank.h")
    exe = str(tmp_path_factory.mktemp("harness") / "shim_harness")
    subprocess.run([cc, "-O2", "-Wall", "-Wno-unused-parameter", "-rdynamic", "-o", exe,
                    os.path.join(DATA, "shim_harness.c"), "-ldl"], check=True)
    return exe


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_python_follows_the_vectors(case):
    if "error" in case:
        with pytest.raises(ConfigError) as exc:
            PlugstackArgs.parse(case["args"])
        assert case["error"] in str(exc.value)
    else:
        assert list(PlugstackArgs.parse(case["args"]).option_names()) == case["registered"]


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_the_compiled_shim_follows_the_vectors(harness, case):
    """sbatch loading the plugin with these arguments: the options it registers, or the
    one line with which it refuses to initialise."""
    res = subprocess.run([harness, SHIM, "allocator", *case["args"], "--"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    if "error" in case:
        assert out["rc"] == -1 and len(out["errors"]) == 1, out
        assert out["errors"][0].startswith("shifter: plugstack.conf: ") and case["error"] in out["errors"][0]
    else:
        assert out["rc"] == 0 and out["errors"] == [], out
        assert out["registered"] == case["registered"]
        assert not out["python"]


def test_a_shifter_plugstack_line_with_the_bare_word_loads():
    """Shifter's documented form: `... shifter_config=... long_options` (no value)."""
    args = PlugstackArgs.parse(["shifter_config=/etc/shifter/udiRoot.conf", "long_options"])
    assert args.long_options and args.shifter_config == "/etc/shifter/udiRoot.conf"
