"""Frozen value classes: what pcipassd used of `dataclasses`, without its start-up cost.

The pipeline's data (a device, a config entry, a plan's step, a state record...) are immutable
values: fields set once by ``__init__``, compared and hashed by their fields, shown as
``Name(a=1, b='x')``. `dataclasses` gives that, but on the boot path it cost about as much as
the rest of a converged `apply`'s own work: importing it imports inspect, ast and dis (~9 ms
here), and it writes each class's methods as source text and compiles them with ``exec``
(~10 ms for the 23 classes a converged `apply` creates; bench/noop_apply.py, bench/README.md).
`@frozen` builds the same methods from a few generic functions closed over the class's field
names, compiling nothing, and this module imports nothing costly at run time.

For mypy, `frozen` is a `dataclass_transform` (PEP 681) that freezes by default: a value class
is type-checked as a frozen dataclass is (its ``__init__``'s parameters, its fields read-only,
``order=True``'s comparisons). The name is not ``value``, which pcipassd.hostfiles and many a
parameter already use.

``@frozen`` does what ``@dataclass(frozen=True)`` does (and ``@frozen(order=True)`` what
``@dataclass(frozen=True, order=True)`` does):

- the fields are the class's own annotations, in order, after those of a value base class;
  a ``ClassVar`` annotation is not a field;
- a field's default is the class attribute of its name; an unhashable one (a list, a dict, a
  set) is a ValueError, as in dataclasses, and there is no ``default_factory``: use an
  immutable default (``()``, ``frozenset()``);
- ``__init__`` takes the fields positionally or by name; a missing, unexpected or repeated
  argument is a TypeError;
- assigning or deleting an attribute raises `FrozenInstanceError` (an AttributeError);
  ``functools.cached_property`` still works (it writes the instance's ``__dict__``);
- ``__eq__`` (the same class, equal fields), ``__hash__`` (of the fields), ``__repr__``, and
  with ``order=True`` ``__lt__``, ``__le__``, ``__gt__``, ``__ge__`` on the fields' tuples (the
  same class only, else NotImplemented); a method the class defines itself is kept.

`replace`, `fields` (the field names, not Field objects) and `asdict` (shallow: see there)
stand for their dataclasses namesakes. Not supported: ``__post_init__``, ``InitVar``,
``field()``, ``kw_only``, ``slots``, non-frozen classes.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, overload

    from typing_extensions import dataclass_transform

    _T = TypeVar("_T")

__all__ = ["FrozenInstanceError", "asdict", "fields", "frozen", "replace"]

_FIELDS = "__value_fields__"  # the class's field names, in order
_CLASSVAR = ("ClassVar", "typing.ClassVar", "t.ClassVar")


class FrozenInstanceError(AttributeError):
    """Assigning to or deleting an attribute of a value (as dataclasses.FrozenInstanceError)."""


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.partition("[")[0].strip() in _CLASSVAR


def _names(cls: type) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The fields of `cls` (a value base's first) and their defaults."""
    names: list[str] = []
    defaults: dict[str, Any] = {}
    for base in reversed(cls.__mro__[1:]):
        for name in base.__dict__.get(_FIELDS, ()):
            if name not in names:
                names.append(name)
            if hasattr(base, name):
                defaults[name] = getattr(base, name)
            else:
                defaults.pop(name, None)
    own = cls.__dict__
    for name, annotation in own.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        if name not in names:
            names.append(name)
        if name in own:
            default = own[name]
            if type(default).__hash__ is None:
                raise ValueError(f"mutable default {type(default)} for field {name} is not "
                                 "allowed: use an immutable one (a tuple, a frozenset)")
            defaults[name] = default
        else:
            defaults.pop(name, None)
    for i, name in enumerate(names):
        if name not in defaults and any(n in defaults for n in names[:i]):
            raise TypeError(f"non-default argument {name!r} follows default argument")
    return tuple(names), defaults


def _key(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving an instance's fields as a tuple."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


# Each field is set as a plain attribute, one by one and in the fields' order: CPython then
# keeps the instance's attributes in its compact form, shared by the class's instances, where
# reading one is fast. Filling ``self.__dict__`` at once (update) made every read of a field
# about 4 times slower (bench/scale_plan.py: config.load_config's loop over pairs of entries).
_set = object.__setattr__


def _make_init(cls: type, names: tuple[str, ...], defaults: dict[str, Any]) -> Any:
    count = len(names)
    known = frozenset(names)
    where = f"{cls.__qualname__}.__init__()"
    set_ = _set

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        given = len(args)
        if given == count and not kwargs:  # every field positionally: the usual call
            for name, arg in zip(names, args):
                set_(self, name, arg)
            return
        if given > count:
            raise TypeError(f"{where} takes {count + 1} positional arguments but "
                            f"{given + 1} were given")
        if kwargs and not known.issuperset(kwargs):
            name = next(n for n in kwargs if n not in known)
            raise TypeError(f"{where} got an unexpected keyword argument {name!r}")
        for name, arg in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{where} got multiple values for argument {name!r}")
            set_(self, name, arg)
        try:
            for name in names[given:]:
                set_(self, name, kwargs[name] if name in kwargs else defaults[name])
        except KeyError:
            missing = [n for n in names[given:] if n not in kwargs and n not in defaults]
            listed = " and ".join(", ".join(repr(n) for n in missing).rsplit(", ", 1))
            raise TypeError(f"{where} missing {len(missing)} required argument"
                            f"{'s' if len(missing) > 1 else ''}: {listed}") from None

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _frozen_setattr(self: object, name: str, _: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _methods(cls: type, names: tuple[str, ...], defaults: dict[str, Any],
             order: bool) -> dict[str, Any]:
    key = _key(names)

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, key(self)))
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(key(self))

    methods = {"__init__": _make_init(cls, names, defaults), "__repr__": __repr__,
               "__eq__": __eq__, "__hash__": __hash__,
               "__setattr__": _frozen_setattr, "__delattr__": _frozen_delattr}
    if order:
        def __lt__(self: Any, other: object) -> bool:
            if other.__class__ is self.__class__:
                return key(self) < key(other)
            return NotImplemented

        def __le__(self: Any, other: object) -> bool:
            if other.__class__ is self.__class__:
                return key(self) <= key(other)
            return NotImplemented

        def __gt__(self: Any, other: object) -> bool:
            if other.__class__ is self.__class__:
                return key(self) > key(other)
            return NotImplemented

        def __ge__(self: Any, other: object) -> bool:
            if other.__class__ is self.__class__:
                return key(self) >= key(other)
            return NotImplemented

        methods.update(__lt__=__lt__, __le__=__le__, __gt__=__gt__, __ge__=__ge__)
    return methods


def _build(cls: type, order: bool) -> type:
    names, defaults = _names(cls)
    own = cls.__dict__
    # A class that defines __eq__ but not __hash__ has __hash__ None: the fields' hash still
    # applies, as in a frozen dataclass; one that defines __hash__ keeps it.
    explicit_hash = own.get("__hash__") is not None or ("__hash__" in own and "__eq__" not in own)
    for name, method in _methods(cls, names, defaults, order).items():
        if name == "__hash__" and explicit_hash:
            continue
        if name in own and name != "__hash__":
            continue
        method.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, method)
    setattr(cls, _FIELDS, names)
    if "__match_args__" not in own:
        setattr(cls, "__match_args__", names)  # noqa: B010 - as dataclasses sets it
    return cls


if TYPE_CHECKING:  # what mypy checks (a conditional overload); the implementation is below
    @overload
    @dataclass_transform(frozen_default=True)
    def frozen(cls: type[_T], /) -> type[_T]: ...
    @overload
    def frozen(*, order: bool = False) -> Callable[[type[_T]], type[_T]]: ...


def frozen(cls: Any = None, /, *, order: bool = False) -> Any:
    """Make `cls` a frozen value class (see the module's docstring): ``@frozen`` or
    ``@frozen(order=True)``."""
    if cls is None:
        return lambda c: _build(c, order)
    return _build(cls, order)


def fields(obj: Any) -> tuple[str, ...]:
    """The field names of a value class or instance, in order (dataclasses.fields gives Field
    objects; pcipassd needs only their names)."""
    try:
        return tuple(getattr(obj, _FIELDS))
    except AttributeError:
        raise TypeError(f"{obj!r} is not a value class or instance") from None


def asdict(obj: Any) -> dict[str, Any]:
    """The fields of the value `obj` by name. Shallow, unlike dataclasses.asdict: a field that
    is itself a value, a list or a dict is the same object, not a converted copy (what pcipassd
    converts, a state Record, has only strings and None)."""
    return dict(zip(fields(obj), _key(fields(obj))(obj)))


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the value `obj` with `changes` (fields by name); an unknown name is a
    TypeError. As dataclasses.replace, but without calling ``__init__`` again (a value's
    ``__init__`` only sets the fields): nothing else is copied (a cached_property's value)."""
    names = fields(obj)
    if not changes.keys() <= set(names):
        name = next(n for n in changes if n not in names)
        raise TypeError(f"{type(obj).__qualname__}.__init__() got an unexpected keyword "
                        f"argument {name!r}")
    new = object.__new__(type(obj))
    for name in names:
        _set(new, name, changes[name] if name in changes else getattr(obj, name))
    return new
