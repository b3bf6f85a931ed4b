"""Site modules (udiRoot.conf ``module_<name>_*``): which ones a job gets.

``--module=a,b`` (or ``-m`` of setupRoot/shifter) picks modules; without it a job gets
the site's ``defaultModules``; ``none`` means no module at all.  Unknown and disabled
modules, and modules that conflict with each other, are refused.
"""

from __future__ import annotations

from shifter.errors import UsageError


def parse_list(text: str) -> tuple[str, ...]:
    """``a,b`` or ``a b`` -> ("a", "b")."""
    return tuple(m for m in text.replace(" ", ",").split(",") if m)


def select_modules(config, requested: tuple[str, ...] | None) -> tuple:
    names = config.defaultModules if requested is None else requested
    if "none" in names:
        if len(names) > 1:
            raise UsageError(f"invalid module list {','.join(names)!r}: 'none' can't be combined with modules")
        return ()
    chosen = []
    for name in dict.fromkeys(names):
        module = config.modules.get(name)
        if module is None:
            known = ", ".join(sorted(config.modules)) or "none defined"
            raise UsageError(f"unknown module {name!r}", f"modules on this system: {known}")
        if not module.enabled:
            raise UsageError(f"module {name!r} is disabled on this system")
        chosen.append(module)
    for module in chosen:
        for other in module.conflict:
            if other in names:
                raise UsageError(f"modules {module.name!r} and {other!r} conflict", "load only one of them")
    return tuple(chosen)
