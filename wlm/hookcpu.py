"""The CPU a prolog or epilog costs the node, for their log lines (the lifecycle benchmark
reads them from the slurmd log).

The SPANK dispatcher (``shifter.spank.dispatch``) sets ``STARTED`` as a hook is called, and
the node's hook server (``shifter.spank.hookd``) sets ``IN_HOOK_SERVER`` in its workers.
"""

from __future__ import annotations

#: CPU seconds this process had used when the current hook was called: slurmstepd's own
#: start, the embedded interpreter's and the imports before the hook
STARTED = 0.0
#: True in a worker of the node's hook server, which runs the prolog and epilog in a fork
#: of a process that has Python and the runtime loaded
IN_HOOK_SERVER = False


def cpu_time() -> str:
    """This process's CPU time so far, its children's included, and where it went."""
    # start-up: the dispatcher imports this module for every hook (srun's too); only the
    # prolog and epilog ask for their CPU
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = f"cpu {own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime:.3f} s, "
    tools = f", {kids.ru_utime + kids.ru_stime:.3f} s of it in the tools it ran"  # scontrol, munge, ...
    if IN_HOOK_SERVER:  # a fork of the node's hook server: nothing before the hook
        return total + "in the node's hook server" + tools
    return total + f"{STARTED:.3f} s of it before the hook" + tools
