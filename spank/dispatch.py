"""Entry point of the embedded Python: route a SPANK hook to its context's module.

The C shim calls ``entry`` (through cffi) for every hook of a job that uses shifter.
Return value: 1 = success; -1 = failure (the shim returns -1 to Slurm).  Every
exception becomes one ``slurm_error`` line: a ``ShifterError`` the line every command
prints (``shifter.errors.line``: ``shifter: <what> (hint: ...)``); anything else
``shifter: internal error in <hook>: ...``, its traceback logged at verbose level.  This
is logging through the SPANK handle: nothing here prints or exits.
"""

from __future__ import annotations

import importlib
import time

from shifter import errors
from shifter.errors import ShifterError
from shifter.spank.handle import CONTEXT_NAMES, CffiSpank, SpankHandle
from shifter.spank.plugstack import PlugstackArgs
from shifter.wlm import hookcpu

#: context -> module implementing that context's hooks (functions named like the hook)
CONTEXT_MODULES = {
    "local": "shifter.spank.local",
    "remote": "shifter.spank.remote",
    "allocator": "shifter.spank.allocator",
    "job_script": "shifter.spank.job_script",
}


def _s(ffi, cstr) -> str:
    return ffi.string(cstr).decode(errors="surrogateescape")


def entry(ffi, lib, hook, sp, ctx, ac, av, nopt, names, values) -> int:
    hook_name = _s(ffi, hook)
    if hook_name == "ping":
        return 1
    handle = CffiSpank(ffi, lib, sp, int(ctx))
    args = [_s(ffi, av[i]) for i in range(ac)]
    options = {_s(ffi, names[i]): _s(ffi, values[i]) for i in range(nopt)}
    return run(handle, hook_name, args, options)


def run(sp: SpankHandle, hook: str, args: list[str], options: dict[str, str]) -> int:
    """Run ``hook`` for ``sp.context``; map every outcome to 1 (ok) or -1 (error)."""
    hookcpu.STARTED = time.process_time()
    try:
        plugstack = PlugstackArgs.parse(args)
        modname = CONTEXT_MODULES.get(CONTEXT_NAMES.get(sp.context, "error"))
        if modname is None:
            return 1
        func = getattr(importlib.import_module(modname), hook, None)
        if func is None:
            return 1
        func(sp, plugstack, options)
        return 1
    except ShifterError as e:
        sp.error(errors.line("shifter", e))
        return -1
    except BaseException as e:  # noqa: BLE001 - nothing may escape into Slurm as success
        sp.error(f"shifter: internal error in {hook}: {type(e).__name__}: {e}")
        import traceback  # start-up: 18 ms of import, paid only on an internal error

        for line in traceback.format_exc().splitlines():
            sp.verbose(f"shifter: {line}")
        return -1
