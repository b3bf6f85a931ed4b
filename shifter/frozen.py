"""Frozen records: what ``@dataclass(frozen=True)`` gives this project, without its cost.

``dataclasses`` imports ``inspect`` (and through it ``ast``, ``dis``, ``tokenize``): about
12 ms of every cold start, and the prolog, the epilog and the launcher's Python path all
start cold.  ``frozen`` builds the same class from the annotations: an ``__init__`` taking
the fields in order (defaults from class attributes or ``field``), ``__repr__``, ``__eq__``,
``__hash__``, ``__match_args__``, and assignment refused after construction.

    @frozen
    class Point:
        x: int
        y: int = 0
        tags: tuple[str, ...] = field(default=())
        extra: dict = field(default_factory=dict)
"""

from __future__ import annotations

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class _Field:
    __slots__ = ("default", "default_factory", "compare", "repr")

    def __init__(self, default, default_factory, compare=True, repr=True):
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr


def field(*, default=_MISSING, default_factory=_MISSING, compare: bool = True, repr: bool = True):
    """A field's default (or default factory); ``compare=False`` leaves it out of
    ``==`` and ``hash``, ``repr=False`` out of ``repr``."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("field: give default or default_factory, not both")
    return _Field(default, default_factory, compare, repr)


def _frozen_setattr(self, name, value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self, name):
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def frozen(cls):
    """Turn the annotated class ``cls`` into a frozen record (see the module's text)."""
    names, defaults, factories, hidden, uncompared = _fields(cls)
    fields = tuple(names)
    compared = tuple(n for n in names if n not in uncompared)
    shown = tuple(n for n in names if n not in hidden)

    def _values(self):
        return tuple(getattr(self, n) for n in compared)

    def __repr__(self):
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in shown)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return _values(self) == _values(other)
        return NotImplemented

    def __hash__(self):
        return hash(_values(self))

    cls.__init__ = _init(cls, names, defaults, factories)
    cls.__repr__ = __repr__
    cls.__eq__ = __eq__
    cls.__hash__ = __hash__
    cls.__setattr__ = _frozen_setattr
    cls.__delattr__ = _frozen_delattr
    cls.__match_args__ = fields
    cls.__record_fields__ = fields
    cls.__record_defaults__ = defaults
    cls.__record_factories__ = factories
    cls.__record_hidden__ = frozenset(hidden)
    cls.__record_uncompared__ = frozenset(uncompared)
    return cls


def _fields(cls):
    """The record's fields, in order (the bases' first), with their defaults, default
    factories, and which ones stay out of repr and out of ==/hash.  Removes the class
    attributes that were ``field(...)`` markers."""
    names: list[str] = []
    defaults: dict[str, object] = {}
    factories: dict[str, object] = {}
    hidden: set[str] = set()  # out of repr
    uncompared: set[str] = set()  # out of == and hash
    for base in reversed(cls.__mro__[1:]):
        hidden.update(getattr(base, "__record_hidden__", ()))
        uncompared.update(getattr(base, "__record_uncompared__", ()))
        for name in getattr(base, "__record_fields__", ()):
            if name not in names:
                names.append(name)
        defaults.update(getattr(base, "__record_defaults__", {}))
        factories.update(getattr(base, "__record_factories__", {}))
    for name, kind in cls.__dict__.get("__annotations__", {}).items():
        if isinstance(kind, str) and kind.startswith("ClassVar"):
            continue
        if name not in names:
            names.append(name)
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, _Field):
            (hidden.add if not value.repr else hidden.discard)(name)
            (uncompared.add if not value.compare else uncompared.discard)(name)
            if value.default_factory is not _MISSING:
                factories[name] = value.default_factory
                defaults.pop(name, None)
            elif value.default is not _MISSING:
                defaults[name] = value.default
                factories.pop(name, None)
            delattr(cls, name)
        elif value is not _MISSING:
            defaults[name] = value
            factories.pop(name, None)
    return names, defaults, factories, hidden, uncompared


def _init(cls, names, defaults, factories):
    """``__init__`` for the fields, generated as source (keyword and positional arguments,
    defaults and factories, as a dataclass's)."""
    params, body, seen_default = [], [], False
    scope = {"_set": object.__setattr__, "_defaults": defaults, "_factories": factories,
             "_MISSING": _MISSING}
    for name in names:
        if name in factories:
            params.append(f"{name}=_MISSING")
            body.append(f" _set(self, {name!r}, _factories[{name!r}]() if {name} is _MISSING else {name})")
            seen_default = True
            continue
        if name in defaults:
            params.append(f"{name}=_defaults[{name!r}]")
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one with a default")
        else:
            params.append(name)
        body.append(f" _set(self, {name!r}, {name})")
    if not body:
        body.append(" pass")
    src = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    if not params:
        src = "def __init__(self):\n pass\n"
    exec(src, scope)  # noqa: S102 - generated from the class's own annotations
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def replace(obj, **changes):
    """A copy of the record ``obj`` with ``changes`` applied (like ``dataclasses.replace``)."""
    fields = type(obj).__record_fields__
    unknown = set(changes) - set(fields)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    return type(obj)(**{n: changes.get(n, getattr(obj, n)) for n in fields})


def fields(obj_or_cls) -> tuple[str, ...]:
    """The field names of a record, in order."""
    return obj_or_cls.__record_fields__
