"""Events: frozen keyword-only structs, equal by value, with stable and unique type ids."""

from __future__ import annotations

import gc
from typing import Any

import pytest

import blazen_trio as bz


class Ping(bz.Event):
    n: int
    label: str = ""


class Pinned(bz.Event, type_id="tests.events.pinned"):
    n: int = 0


def _define_redefined() -> type[bz.Event]:
    """Runs the same class statement each call, like a re-run notebook cell."""

    class Redefined(bz.Event, type_id="tests.events.redefined"):
        n: int = 0

    return Redefined


def test_fields_are_set_by_keyword() -> None:
    ev = Ping(n=1, label="a")
    assert (ev.n, ev.label) == (1, "a")


def test_positional_arguments_are_refused() -> None:
    factory: Any = Ping  # called positionally on purpose, which the type checker forbids
    with pytest.raises(TypeError):
        factory(1)


def test_a_subclass_may_add_required_fields_after_inherited_defaults() -> None:
    class CustomStart(bz.StartEvent):
        user: str

    assert CustomStart(user="ada").user == "ada"
    assert CustomStart(user="ada").data is None


def test_events_are_frozen() -> None:
    ev: Any = Ping(n=1)
    with pytest.raises(AttributeError):
        ev.n = 2
    assert ev.n == 1


def test_events_compare_and_hash_by_value() -> None:
    assert Ping(n=1, label="a") == Ping(n=1, label="a")
    assert Ping(n=1) != Ping(n=2)
    assert hash(Ping(n=1)) == hash(Ping(n=1))
    assert len({Ping(n=1), Ping(n=1), Ping(n=2)}) == 2


def test_events_of_different_classes_are_not_equal() -> None:
    other_class: object = Ping(n=1)
    assert Pinned(n=1) != other_class


def test_default_type_id_is_module_and_qualname() -> None:
    assert bz.event_type_id(Ping) == f"{Ping.__module__}.Ping"


def test_default_type_id_of_a_local_class_includes_its_qualname() -> None:
    class Local(bz.Event):
        pass

    assert bz.event_type_id(Local) == f"{__name__}.{Local.__qualname__}"
    assert "<locals>" in bz.event_type_id(Local)


def test_explicit_type_id_is_used() -> None:
    assert bz.event_type_id(Pinned) == "tests.events.pinned"


def test_event_type_id_accepts_an_instance() -> None:
    assert bz.event_type_id(Pinned(n=3)) == "tests.events.pinned"
    assert bz.event_type_id(Ping(n=3)) == bz.event_type_id(Ping)


def test_subclass_has_its_own_type_id() -> None:
    class Child(Ping):
        pass

    assert bz.event_type_id(Child) != bz.event_type_id(Ping)
    assert bz.event_type_id(Child).endswith(".Child")


def test_builtin_events_have_stable_ids() -> None:
    assert bz.event_type_id(bz.StartEvent) == "blazen.StartEvent"
    assert bz.event_type_id(bz.StopEvent) == "blazen.StopEvent"
    assert bz.event_type_id(bz.InputRequestEvent) == "blazen.InputRequestEvent"


def test_two_classes_claiming_one_id_is_a_validation_error() -> None:
    with pytest.raises(bz.ValidationError) as caught:

        class Impostor(bz.Event, type_id="tests.events.pinned"):
            pass

    (problem,) = caught.value.problems
    assert "tests.events.pinned" in problem
    assert "Impostor" in problem
    assert "Pinned" in problem
    # The first claimant keeps its id.
    assert bz.event_type_id(Pinned) == "tests.events.pinned"


def test_a_default_id_cannot_be_claimed_explicitly_by_another_class() -> None:
    with pytest.raises(bz.ValidationError, match="reuses type id"):

        class Thief(bz.Event, type_id=f"{Ping.__module__}.Ping"):
            pass


def test_redefining_the_same_class_replaces_it() -> None:
    first = _define_redefined()
    second = _define_redefined()
    assert first is not second
    assert bz.event_type_id(first) == bz.event_type_id(second) == "tests.events.redefined"


def test_redefined_id_still_clashes_with_another_class() -> None:
    keep = _define_redefined()
    with pytest.raises(bz.ValidationError):

        class Other(bz.Event, type_id="tests.events.redefined"):
            pass

    assert bz.event_type_id(keep) == "tests.events.redefined"


def test_an_id_is_free_again_once_its_class_is_gone() -> None:
    def make() -> None:
        class Transient(bz.Event, type_id="tests.events.transient"):
            pass

    make()
    gc.collect()

    class Successor(bz.Event, type_id="tests.events.transient"):
        pass

    assert bz.event_type_id(Successor) == "tests.events.transient"


@pytest.mark.parametrize("bad", ["", 3])
def test_type_id_must_be_a_non_empty_string(bad: Any) -> None:
    with pytest.raises(bz.ValidationError, match="type_id must be a non-empty str"):

        class Bad(bz.Event, type_id=bad):
            pass


def test_start_and_stop_events_default_to_none() -> None:
    assert bz.StartEvent().data is None
    assert bz.StopEvent().result is None
    assert bz.StopEvent(result={"a": 1}).result == {"a": 1}


def test_input_requests_get_distinct_ids_by_default() -> None:
    first = bz.InputRequestEvent(prompt="name?")
    second = bz.InputRequestEvent(prompt="name?")
    assert first.request_id != second.request_id
    assert first.metadata == {}
    assert first.metadata is not second.metadata
