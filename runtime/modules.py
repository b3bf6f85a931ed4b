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


def check_none(names) -> None:
    """``none`` means no module at all: it can't be combined with anything (not even a
    second ``none``), as in Shifter."""
    if "none" in names and len(names) > 1:
        raise UsageError(f"invalid module list {','.join(names)!r}: 'none' can't be combined with modules",
                         "use --module=none alone, or list the modules you want")


def normalize(text: str) -> str:
    """A module request in canonical form: the names sorted, each once; ``none`` -> "".
    What a prepared UDI's launch plan records and the compiled launcher compares
    (runtime/launcher/envrequest.c ``normal_modules``; tests/data/contracts/image_request.json)."""
    names = parse_list(text)
    check_none(names)
    return ",".join(sorted(set(n for n in names if n != "none")))


def select_modules(config, requested: tuple[str, ...] | None) -> tuple:
    names = config.defaultModules if requested is None else requested
    check_none(names)
    if "none" in names:
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
