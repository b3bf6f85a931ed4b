"""The SpankHandle seam: what the plugin's Python code may ask of Slurm.

``CffiSpank`` is the real implementation over the embedded module's C helpers;
tests use ``helpers.fake_spank.FakeSpank``.  Everything above this module is plain Python.
"""

from __future__ import annotations

# spank_context_t values (spank.h)
CTX_ERROR, CTX_LOCAL, CTX_REMOTE, CTX_ALLOCATOR, CTX_SLURMD, CTX_JOB_SCRIPT = range(6)
CONTEXT_NAMES = {
    CTX_ERROR: "error",
    CTX_LOCAL: "local",
    CTX_REMOTE: "remote",
    CTX_ALLOCATOR: "allocator",
    CTX_SLURMD: "slurmd",
    CTX_JOB_SCRIPT: "job_script",
}


class SpankHandle:
    """The interface (for annotations and readers; ``typing.Protocol`` would cost every cold
    start ~8 ms of import).  ``CffiSpank`` and the tests' ``FakeSpank`` (tests/helpers) provide it."""

    context: int

    def job_id(self) -> int | None: ...
    def job_uid(self) -> int | None: ...
    def job_gid(self) -> int | None: ...
    def getenv(self, name: str) -> str | None: ...
    def setenv(self, name: str, value: str, overwrite: bool = True) -> bool: ...
    def job_control_setenv(self, name: str, value: str, overwrite: bool = True) -> bool: ...
    def error(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def verbose(self, msg: str) -> None: ...


class CffiSpank:
    """SpankHandle over the real spank_t of the running Slurm process."""

    def __init__(self, ffi, lib, sp, context: int):
        self._ffi, self._lib, self._sp = ffi, lib, sp
        self.context = context

    def _u32(self, getter, *args) -> int | None:
        out = self._ffi.new("uint32_t *")
        if getter(self._sp, *args, out) != self._lib.ESPANK_SUCCESS:
            return None
        return int(out[0])

    def job_id(self):
        return self._u32(self._lib.shifter_sp_get_u32, self._lib.S_JOB_ID)

    def job_uid(self):
        return self._u32(self._lib.shifter_sp_get_uid)

    def job_gid(self):
        return self._u32(self._lib.shifter_sp_get_gid)

    def getenv(self, name):
        buf = self._ffi.new("char[]", 65536)
        if self._lib.shifter_sp_getenv(self._sp, name.encode(), buf, len(buf)) != 0:
            return None
        return self._ffi.string(buf).decode(errors="surrogateescape")

    def setenv(self, name, value, overwrite=True):
        return self._lib.shifter_sp_setenv(self._sp, name.encode(), _b(value), int(overwrite)) == 0

    def job_control_setenv(self, name, value, overwrite=True):
        rc = self._lib.shifter_sp_job_control_setenv(self._sp, name.encode(), _b(value), int(overwrite))
        return rc == 0

    def error(self, msg):
        self._lib.shifter_log_error(_b(msg))

    def info(self, msg):
        self._lib.shifter_log_info(_b(msg))

    def verbose(self, msg):
        self._lib.shifter_log_verbose(_b(msg))


def _b(text: str) -> bytes:
    return text.encode(errors="surrogateescape")
