"""pcipassd.value: frozen value classes behave as frozen dataclasses with the same fields do
(equality, hash, ordering, repr, defaults, argument errors, replace), and compile nothing."""

from __future__ import annotations

import dataclasses
import pickle
from functools import cached_property
from typing import Any, ClassVar

import pytest

from pcipassd.value import FrozenInstanceError, asdict, fields, frozen, replace


@frozen(order=True)
class Point:
    x: int
    y: int
    label: str = "p"


@dataclasses.dataclass(frozen=True, order=True)
class DataPoint:
    x: int
    y: int
    label: str = "p"


@frozen
class Named:
    """Keeps its own __str__, has a ClassVar and a cached property."""

    name: str
    tags: tuple[str, ...] = ()
    KIND: ClassVar[str] = "named"
    calls: ClassVar[list[int]] = []

    def __str__(self) -> str:
        return f"<{self.name}>"

    @cached_property
    def upper(self) -> str:
        Named.calls.append(1)
        return self.name.upper()


@frozen
class Plain:
    a: int


@frozen
class Empty:
    pass


@frozen
class OwnEq:  # noqa: PLW1641 - the point: frozen gives it the fields' hash
    """Defines __eq__ (so Python sets its __hash__ to None): the fields' hash still applies.
    Its own __repr__ is kept."""

    a: int
    b: int

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OwnEq) and self.a == other.a

    def __repr__(self) -> str:
        return f"OwnEq {self.a}"


def _pairs() -> list[tuple[Point, DataPoint]]:
    values = [(1, 2, "p"), (1, 2, "q"), (2, 1, "p"), (0, 5, "z"), (1, 3, "a")]
    return [(Point(*v), DataPoint(*v)) for v in values]


def test_the_fields_in_order_without_the_classvars() -> None:
    assert fields(Point) == fields(Point(1, 2)) == ("x", "y", "label")
    assert fields(Named) == ("name", "tags")
    assert fields(Empty) == ()
    assert [f.name for f in dataclasses.fields(DataPoint)] == list(fields(Point))
    with pytest.raises(TypeError):
        fields(DataPoint)


def test_init_positional_keyword_and_defaults() -> None:
    assert Point(1, 2) == Point(x=1, y=2) == Point(1, y=2, label="p") == Point(y=2, x=1)
    assert Point(1, 2).label == "p"
    assert Point(1, 2, "q").label == Point(1, 2, label="q").label == "q"
    assert Named("n").tags == ()
    assert Empty() == Empty()


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((), {}, "missing 2 required arguments: 'x' and 'y'"),
    ((1,), {}, "missing 1 required argument: 'y'"),
    ((1, 2, "a", 4), {}, "takes 4 positional arguments but 5 were given"),
    ((1, 2), {"z": 3}, "got an unexpected keyword argument 'z'"),
    ((1, 2, "a"), {"z": 3}, "got an unexpected keyword argument 'z'"),
    ((1,), {"x": 3}, "got multiple values for argument 'x'"),
    ((1, 2, "a"), {"x": 3}, "got multiple values for argument 'x'"),
])
def test_wrong_arguments_are_a_type_error_as_in_dataclasses(
        args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=rf"^Point\.__init__\(\) {message}$"):
        Point(*args, **kwargs)
    with pytest.raises(TypeError):
        DataPoint(*args, **kwargs)


def test_frozen_assignment_and_deletion_raise_an_attribute_error() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'x'"):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.other = 3  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del p.y
    assert issubclass(FrozenInstanceError, AttributeError)
    assert (p.x, p.y) == (1, 2)


def test_equality_hash_and_repr_as_dataclasses() -> None:
    for (p, d), (q, e) in ((a, b) for a in _pairs() for b in _pairs()):
        assert (p == q) == (d == e)
        assert (p != q) == (d != e)
        assert hash(p) == hash(d)
        assert repr(p) == repr(d).replace("DataPoint", "Point")
    assert repr(Point(1, 2, "it's")) == "Point(x=1, y=2, label=\"it's\")"
    assert repr(Empty()) == "Empty()"
    assert repr(Plain(1)) == "Plain(a=1)"
    assert hash(Plain(1)) == hash((1,))
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2


def test_equal_only_to_the_same_class() -> None:
    others: list[object] = [DataPoint(1, 2), (1, 2, "p"), 1]
    assert [Point(1, 2) == other for other in others] == [False, False, False]
    assert [Point(1, 2) != other for other in others] == [True, True, True]
    assert Point.__eq__(Point(1, 2), (1, 2, "p")) is NotImplemented


def test_ordering_as_dataclasses() -> None:
    pairs = _pairs()
    for (p, d), (q, e) in ((a, b) for a in pairs for b in pairs):
        assert (p < q, p <= q, p > q, p >= q) == (d < e, d <= e, d > e, d >= e)
    by_value = [p for p, _ in sorted(pairs, key=lambda pair: pair[0])]
    by_data = [p for p, d in sorted(pairs, key=lambda pair: pair[1])]
    assert by_value == by_data


def test_no_ordering_unless_asked_nor_across_classes() -> None:
    with pytest.raises(TypeError):
        Plain(1) < Plain(2)  # type: ignore[operator]  # noqa: B015
    with pytest.raises(TypeError):
        Point(1, 2) < DataPoint(1, 2)  # type: ignore[operator]  # noqa: B015
    assert Point.__lt__(Point(1, 2), (0, 0, "")) is NotImplemented


def test_a_class_keeps_its_own_methods() -> None:
    n = Named("eth0", ("a",))
    assert str(n) == "<eth0>"
    assert repr(n) == "Named(name='eth0', tags=('a',))"
    assert str(Point(1, 2)) == repr(Point(1, 2))  # no __str__ of its own: the repr


def test_an_own_eq_and_repr_are_kept_and_the_fields_hash_applies() -> None:
    assert OwnEq(1, 2) == OwnEq(1, 3)
    assert repr(OwnEq(1, 2)) == "OwnEq 1"
    assert hash(OwnEq(1, 2)) == hash((1, 2))


def test_a_cached_property_still_works() -> None:
    n = Named("eth0")
    Named.calls.clear()
    assert n.upper == n.upper == "ETH0"
    assert Named.calls == [1]
    assert n == Named("eth0")
    assert hash(n) == hash(Named("eth0"))
    assert repr(n) == "Named(name='eth0', tags=())"


def test_replace() -> None:
    p = Point(1, 2)
    q = replace(p, y=5)
    assert (q, p) == (Point(1, 5), Point(1, 2))
    assert type(q) is Point
    assert replace(p) == p
    assert replace(p, x=0, label="z") == Point(0, 2, "z")
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        replace(p, z=1)
    with pytest.raises(FrozenInstanceError):
        q.y = 3  # type: ignore[misc]
    n = Named("eth0")
    assert n.upper == "ETH0"
    assert replace(n, name="eth1").upper == "ETH1"  # a cached value is not copied


def test_asdict_is_shallow() -> None:
    inner = Plain(1)
    assert asdict(Point(1, 2)) == dataclasses.asdict(DataPoint(1, 2)) == \
        {"x": 1, "y": 2, "label": "p"}
    d = asdict(Named("n", ("a",)))
    assert d == {"name": "n", "tags": ("a",)}
    assert asdict(Point(inner, 2))["x"] is inner  # type: ignore[arg-type]


def test_pickle_and_copy() -> None:
    p = Point(1, 2, "q")
    assert pickle.loads(pickle.dumps(p)) == p


def test_a_mutable_default_or_a_field_without_default_after_one_is_refused() -> None:
    with pytest.raises(ValueError, match="mutable default"):
        @frozen
        class Bad:
            items: list[int] = []  # noqa: RUF012

    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
        @frozen
        class Late:
            a: int = 1
            b: int  # type: ignore[misc]


def test_a_value_base_class_gives_its_fields_first() -> None:
    @frozen
    class Base:
        a: int
        b: int = 2

    @frozen
    class Derived(Base):
        c: int = 3

    assert fields(Derived) == ("a", "b", "c")
    assert Derived(1) == Derived(1, 2, 3)
    assert repr(Derived(1, c=4)).endswith(".<locals>.Derived(a=1, b=2, c=4)")  # __qualname__
    assert Derived(1) != Base(1)


def test_nothing_is_compiled() -> None:
    """The point of the module: no exec or compile per class (dataclasses' start-up cost)."""
    import builtins  # noqa: PLC0415

    real_exec, real_compile = builtins.exec, builtins.compile
    calls: list[str] = []

    def spy_exec(*args: Any, **kwargs: Any) -> Any:
        calls.append("exec")
        return real_exec(*args, **kwargs)

    def spy_compile(*args: Any, **kwargs: Any) -> Any:
        calls.append("compile")
        return real_compile(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "exec", spy_exec)
        patch.setattr(builtins, "compile", spy_compile)

        @frozen(order=True)
        class Made:
            a: int
            b: str = ""

        Made(1) < Made(2, "x")  # noqa: B015
        replace(Made(1), b="y")
        assert calls == [], "frozen compiled something"

        @dataclasses.dataclass(frozen=True)
        class Compiled:
            a: int

    assert "exec" in calls  # the spies see what dataclasses does
