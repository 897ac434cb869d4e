"""`@step`: reading events and the context from the signature, and definition-time errors."""

from __future__ import annotations

from typing import Any

import pytest

import blazen_trio as bz


class Ping(bz.Event):
    n: int = 0


class Pong(bz.Event):
    n: int = 0


def problems_of(fn: Any, **options: Any) -> tuple[str, ...]:
    """The problems `@step(**options)` reports for `fn` (which must be refused)."""
    with pytest.raises(bz.ValidationError) as caught:
        bz.step(**options)(fn)
    return caught.value.problems


# -- what a valid signature declares ------------------------------------------------------


def test_bare_decorator_reads_accepts_and_emits() -> None:
    @bz.step
    async def relay(ev: Ping) -> Pong:
        return Pong(n=ev.n)

    assert isinstance(relay, bz.StepSpec)
    assert relay.name == "relay"
    assert relay.accepts == (Ping,)
    assert relay.emits == (Pong,)
    assert relay.emits_known


def test_called_decorator_with_no_options_is_the_same_as_bare() -> None:
    @bz.step()
    async def relay(ev: Ping) -> Pong:
        return Pong(n=ev.n)

    assert (relay.name, relay.accepts, relay.emits) == ("relay", (Ping,), (Pong,))
    assert (relay.max_concurrency, relay.timeout, relay.retry) == (None, None, None)


def test_options_are_kept_on_the_spec() -> None:
    policy = bz.RetryPolicy(max_attempts=5)

    @bz.step(name="renamed", max_concurrency=2, timeout=1.5, retry=policy)
    async def relay(ev: Ping) -> Pong:
        return Pong()

    assert relay.name == "renamed"
    assert relay.max_concurrency == 2
    assert relay.timeout == 1.5
    assert relay.retry is policy


def test_union_parameter_accepts_each_member() -> None:
    @bz.step
    async def either(ev: Ping | Pong) -> bz.StopEvent:
        return bz.StopEvent()

    assert either.accepts == (Ping, Pong)


@pytest.mark.parametrize(
    ("annotation", "emits", "known"),
    [
        (Pong, (Pong,), True),
        (Ping | Pong, (Ping, Pong), True),
        (Pong | None, (Pong,), True),
        (None, (), True),
        (list[Pong], (Pong,), True),
        (list[Ping | Pong], (Ping, Pong), True),
        (list[Ping] | bz.StopEvent, (Ping, bz.StopEvent), True),
        (bz.Event, (), False),
        (Any, (), False),
        (list[bz.Event], (), False),
    ],
)
def test_return_annotation_gives_emits(
    annotation: Any, emits: tuple[type[bz.Event], ...], known: bool
) -> None:
    async def fn(ev: Ping) -> Any:
        return None

    fn.__annotations__["return"] = annotation
    spec = bz.step(fn)
    assert spec.emits == emits
    assert spec.emits_known is known


def test_context_may_come_first() -> None:
    @bz.step
    async def with_ctx(ctx: bz.Context, ev: Ping) -> None:
        return None

    assert with_ctx.context_position == 0
    assert with_ctx.accepts == (Ping,)


def test_context_may_come_second() -> None:
    @bz.step
    async def with_ctx(ev: Ping, ctx: bz.Context) -> None:
        return None

    assert with_ctx.context_position == 1
    assert with_ctx.accepts == (Ping,)


def test_context_is_optional() -> None:
    @bz.step
    async def no_ctx(ev: Ping) -> None:
        return None

    assert no_ctx.context_position is None


def test_parameters_with_defaults_are_ignored() -> None:
    @bz.step
    async def tuned(ev: Ping, factor: int = 2) -> None:
        return None

    assert tuned.accepts == (Ping,)


def test_string_annotations_of_local_classes_resolve() -> None:
    # This module uses `from __future__ import annotations`: every annotation is a string.
    class LocalIn(bz.Event):
        pass

    class LocalOut(bz.Event):
        pass

    @bz.step
    async def local(ctx: bz.Context, ev: LocalIn) -> LocalOut:
        return LocalOut()

    assert local.accepts == (LocalIn,)
    assert local.emits == (LocalOut,)
    assert local.context_position == 0


def test_explicit_accepts_and_emits_override_annotations() -> None:
    @bz.step(accepts=[Ping, Pong], emits=[bz.StopEvent])
    async def explicit(ev: bz.Event) -> Any:
        return None

    assert explicit.accepts == (Ping, Pong)
    assert explicit.emits == (bz.StopEvent,)
    assert explicit.emits_known


def test_explicit_accepts_rescue_an_unresolvable_annotation() -> None:
    async def fn(ev: Any) -> bz.StopEvent:
        return bz.StopEvent()

    fn.__annotations__["ev"] = "NoSuchEvent"
    spec = bz.step(accepts=[Ping])(fn)
    assert spec.accepts == (Ping,)


async def test_calling_the_spec_calls_the_function() -> None:
    @bz.step
    async def double(ev: Ping) -> Pong:
        return Pong(n=ev.n * 2)

    assert await double(Ping(n=21)) == Pong(n=42)


# -- definition-time errors ----------------------------------------------------------------


def test_a_sync_function_is_refused() -> None:
    def sync(ev: Ping) -> Pong:
        return Pong()

    (problem,) = problems_of(sync)
    assert "'sync'" in problem
    assert "async def" in problem


def test_a_non_callable_is_refused() -> None:
    (problem,) = problems_of(42)
    assert "is not a function" in problem


def test_no_event_parameter_is_refused() -> None:
    async def bare(ctx: bz.Context) -> None:
        return None

    problems = problems_of(bare)
    assert any("has no event parameter" in p for p in problems), problems


def test_event_parameter_must_be_an_event_subclass() -> None:
    async def takes_int(ev: int) -> None:
        return None

    (problem,) = problems_of(takes_int)
    assert "not an Event subclass" in problem


def test_the_event_base_class_is_not_an_accepted_type() -> None:
    async def takes_any_event(ev: bz.Event) -> None:
        return None

    (problem,) = problems_of(takes_any_event)
    assert "not an Event subclass" in problem


def test_optional_event_parameter_is_refused() -> None:
    async def maybe(ev: Ping | None) -> None:
        return None

    (problem,) = problems_of(maybe)
    assert "not an Event subclass" in problem


def test_unresolvable_annotation_is_reported() -> None:
    async def fn(ev: Any) -> bz.StopEvent:
        return bz.StopEvent()

    fn.__annotations__["ev"] = "NoSuchEvent"
    (problem,) = problems_of(fn)
    assert "NoSuchEvent" in problem


def test_keyword_only_parameter_is_refused() -> None:
    async def kw(*, ev: Ping) -> None:
        return None

    problems = problems_of(kw)
    assert any("'ev' must not be keyword-only" in p for p in problems)


def test_an_extra_parameter_is_refused() -> None:
    async def extra(ctx: bz.Context, ev: Ping, other: Pong) -> None:
        return None

    problems = problems_of(extra)
    assert any("'other' is neither the event nor a Context" in p for p in problems)


def test_missing_return_annotation_is_refused() -> None:
    async def unannotated(ev: Ping):  # type: ignore[no-untyped-def]  # the missing annotation is the case under test
        return None

    (problem,) = problems_of(unannotated)
    assert "has no return annotation" in problem


def test_non_event_return_annotation_is_refused() -> None:
    async def returns_int(ev: Ping) -> int:
        return 1

    (problem,) = problems_of(returns_int)
    assert "return annotation" in problem


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"name": ""}, "name must be a non-empty str"),
        ({"max_concurrency": 0}, "max_concurrency must be an int >= 1"),
        ({"max_concurrency": True}, "max_concurrency must be an int >= 1"),
        ({"max_concurrency": 1.5}, "max_concurrency must be an int >= 1"),
        ({"timeout": 0}, "timeout must be a number > 0"),
        ({"timeout": -1.0}, "timeout must be a number > 0"),
        ({"timeout": "1"}, "timeout must be a number > 0"),
        ({"retry": 3}, "retry must be a RetryPolicy"),
        ({"accepts": []}, "accepts= must name at least one event type"),
        ({"accepts": [int]}, "accepts= must list Event subclasses"),
        ({"accepts": [bz.Event]}, "accepts= must list Event subclasses"),
        ({"emits": [str]}, "emits= must list Event subclasses"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], fragment: str) -> None:
    async def fine(ev: Ping) -> Pong:
        return Pong()

    problems = problems_of(fine, **options)
    assert any(fragment in p for p in problems), problems


def test_every_problem_is_listed_at_once() -> None:
    async def bad(ev: int, extra: int):  # type: ignore[no-untyped-def]  # the missing annotation is one of the problems
        return None

    problems = problems_of(bad, max_concurrency=0, timeout=-1)
    assert len(problems) >= 5
    assert all(p.startswith("step 'bad': ") for p in problems)
    joined = "\n".join(problems)
    for fragment in (
        "max_concurrency",
        "timeout",
        "neither the event nor a Context",
        "not an Event subclass",
        "no return annotation",
    ):
        assert fragment in joined


def test_the_error_message_lists_the_problems() -> None:
    async def kw(*, ev: Ping) -> int:
        return 1

    with pytest.raises(bz.ValidationError) as caught:
        bz.step(kw)
    message = str(caught.value)
    assert message.startswith(f"{len(caught.value.problems)} problem(s):")
    for problem in caught.value.problems:
        assert f"  - {problem}" in message
