"""The plugstack.conf arguments of the shifter plugin, parsed strictly.

``required /opt/shifter/lib/shifter/shifter_slurm.so shifter_config=/path enable_ccm=1 ...``

The C shim validates the keys before Python is ever loaded; this module turns the same
arguments into a frozen object for the Python hooks (and is what the unit tests check).
"""

from __future__ import annotations

from shifter.frozen import frozen

from shifter.errors import ConfigError

KNOWN_KEYS = (
    "shifter_config",  # path of udiRoot.conf (default <prefix>/etc/udiRoot.conf)
    "enable_sshd",  # 0/1: start the per-node sshd in the prolog
    "enable_ccm",  # 0/1: register --ccm (cluster compatibility mode)
    "memory_cgroup",  # path of the memory cgroup hierarchy for the job's sshd
    "extern_cgroup",  # 0/1: put the sshd into the job's extern step cgroup
    "extern_setup",  # script run as root in the extern step
    "long_options",  # bare word (Shifter's form) or 0/1: --shifter.image, ... instead
    "cgroup_per_node",  # 0/1 (extension): the node's name as a last level of the job's cgroup
    "hook_server",  # 0/1 (extension, default 1): the prolog/epilog run in the node's hook server
)
BOOL_KEYS = ("enable_sshd", "enable_ccm", "extern_cgroup", "long_options", "cgroup_per_node", "hook_server")


@frozen
class PlugstackArgs:
    shifter_config: str | None = None
    enable_sshd: bool = False
    enable_ccm: bool = False
    memory_cgroup: str | None = None
    extern_cgroup: bool = False
    extern_setup: str | None = None
    long_options: bool = False
    cgroup_per_node: bool = False
    hook_server: bool = True

    @classmethod
    def parse(cls, args: list[str]) -> "PlugstackArgs":
        values: dict[str, object] = {}
        for arg in args:
            if arg == "long_options":  # Shifter's plugstack form: a bare word
                values["long_options"] = True
                continue
            key, sep, value = arg.partition("=")
            if not sep or not key:
                raise ConfigError(
                    f"plugstack.conf: argument {arg!r} is not key=value",
                    f"known keys: {', '.join(KNOWN_KEYS)}; long_options may stand alone",
                )
            if key not in KNOWN_KEYS:
                raise ConfigError(
                    f"plugstack.conf: unknown argument {key!r} in {arg!r}",
                    f"known keys: {', '.join(KNOWN_KEYS)}",
                )
            if key in BOOL_KEYS:
                if value not in ("0", "1"):
                    raise ConfigError(f"plugstack.conf: {key!r} must be 0 or 1, not {value!r}")
                values[key] = value == "1"
            else:
                if not value:
                    raise ConfigError(f"plugstack.conf: {key!r} needs a value")
                values[key] = value
        return cls(**values)

    def option_names(self) -> tuple[str, ...]:
        """The options the plugin registers in sbatch, salloc and srun (spank/shim_config.c):
        with ``long_options`` only ``--shifter.image``, ``--shifter.volume`` and
        ``--shifter.module`` (no ``--ccm``, as in Shifter); else ``--image``, ``--volume``,
        ``--module`` and, with ``enable_ccm=1``, ``--ccm``."""
        if self.long_options:
            return ("shifter.image", "shifter.volume", "shifter.module")
        return ("image", "volume", "module") + (("ccm",) if self.enable_ccm else ())
