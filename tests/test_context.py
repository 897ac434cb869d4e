"""The step's context: shared state, live objects, run identity, emission rules, usage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import blazen_trio as bz


class Next(bz.Event):
    pass


class Other(bz.Event):
    pass


def two_steps(
    first: Callable[[bz.Context], object], second: Callable[[bz.Context], object]
) -> bz.Workflow:
    """start -> `first(ctx)` -> Next -> `second(ctx)` -> StopEvent(result=second's return)."""

    @bz.step
    async def one(ctx: bz.Context, ev: bz.StartEvent) -> Next:
        first(ctx)
        return Next()

    @bz.step
    async def two(ctx: bz.Context, ev: Next) -> bz.StopEvent:
        return bz.StopEvent(result=second(ctx))

    return bz.Workflow("ctx", [one, two])


# -- state ---------------------------------------------------------------------------------


async def test_set_values_are_seen_by_later_steps() -> None:
    def write(ctx: bz.Context) -> None:
        ctx.set("answer", 42)
        ctx.set("names", ["ada", "grace"])

    def read(ctx: bz.Context) -> Any:
        return (ctx.get("answer"), ctx.get("names"))

    assert (await two_steps(write, read).run()).result == (42, ["ada", "grace"])


async def test_get_returns_the_default_for_a_missing_key() -> None:
    def read(ctx: bz.Context) -> Any:
        return (ctx.get("missing", "fallback"), ctx.get("missing", None))

    assert (await two_steps(lambda ctx: None, read).run()).result == ("fallback", None)


async def test_get_without_default_raises_key_error() -> None:
    def read(ctx: bz.Context) -> Any:
        return ctx.get("missing")

    with pytest.raises(bz.StepFailed) as caught:
        await two_steps(lambda ctx: None, read).run()
    assert caught.value.step_name == "two"
    assert isinstance(caught.value.__cause__, KeyError)


async def test_set_overwrites() -> None:
    def write(ctx: bz.Context) -> None:
        ctx.set("k", 1)
        ctx.set("k", 2)

    assert (await two_steps(write, lambda ctx: ctx.get("k")).run()).result == 2


async def test_delete_removes_a_key() -> None:
    def write(ctx: bz.Context) -> None:
        ctx.set("gone", 1)
        ctx.set("kept", 2)
        ctx.delete("gone")

    def read(ctx: bz.Context) -> Any:
        return (ctx.keys(), ctx.get("gone", "absent"))

    assert (await two_steps(write, read).run()).result == (["kept"], "absent")


async def test_delete_of_a_missing_key_raises_key_error() -> None:
    def delete(ctx: bz.Context) -> None:
        ctx.delete("missing")

    with pytest.raises(bz.StepFailed) as caught:
        await two_steps(delete, lambda ctx: None).run()
    assert caught.value.step_name == "one"
    assert isinstance(caught.value.__cause__, KeyError)


async def test_keys_lists_the_keys_in_insertion_order() -> None:
    def write(ctx: bz.Context) -> None:
        for key in ("b", "a", "c"):
            ctx.set(key, key.upper())

    assert (await two_steps(write, lambda ctx: ctx.keys()).run()).result == ["b", "a", "c"]


async def test_keys_is_a_copy() -> None:
    def write(ctx: bz.Context) -> None:
        ctx.set("a", 1)
        ctx.keys().append("b")

    assert (await two_steps(write, lambda ctx: ctx.keys()).run()).result == ["a"]


async def test_state_keys_must_be_strings() -> None:
    def write(ctx: bz.Context) -> None:
        key: Any = 1  # not a str, which only an untyped caller can pass
        ctx.set(key, "value")

    with pytest.raises(bz.StepFailed) as caught:
        await two_steps(write, lambda ctx: None).run()
    assert isinstance(caught.value.__cause__, TypeError)


async def test_each_run_has_its_own_state() -> None:
    both_wrote = trio.Event()
    writes = 0

    @bz.step
    async def write_then_read(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        nonlocal writes
        ctx.set("mine", ev.data)
        writes += 1
        if writes == 2:
            both_wrote.set()
        await both_wrote.wait()
        return bz.StopEvent(result=(ctx.get("mine"), ctx.keys()))

    wf = bz.Workflow("isolated", [write_then_read])
    results: dict[str, Any] = {}

    async def run_one(data: str) -> None:
        results[data] = (await wf.run(data)).result

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_one, "a")
        nursery.start_soon(run_one, "b")
    assert results == {"a": ("a", ["mine"]), "b": ("b", ["mine"])}


async def test_live_objects_are_shared_by_identity() -> None:
    client = object()

    def store(ctx: bz.Context) -> None:
        ctx.set_object("client", client)

    def fetch(ctx: bz.Context) -> Any:
        return (ctx.get_object("client"), ctx.keys())

    result = (await two_steps(store, fetch).run()).result
    assert result[0] is client
    assert result[1] == []  # objects are not state values


async def test_get_object_default_and_key_error() -> None:
    def fetch(ctx: bz.Context) -> Any:
        fallback = ctx.get_object("missing", "fallback")
        try:
            ctx.get_object("missing")
        except KeyError:
            return fallback
        return "no KeyError"

    assert (await two_steps(lambda ctx: None, fetch).run()).result == "fallback"


# -- identity ------------------------------------------------------------------------------


async def test_identity_of_run_workflow_and_step() -> None:
    seen: list[tuple[str, str, str, int]] = []

    @bz.step(name="renamed")
    async def step_fn(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        seen.append((ctx.run_id, ctx.workflow_name, ctx.step_name, ctx.attempt))
        return bz.StopEvent()

    async with bz.Workflow("identity", [step_fn]).start() as handler:
        result = await handler.result()
    assert seen == [(handler.run_id, "identity", "renamed", 1)]
    assert result.run_id == handler.run_id


async def test_step_name_differs_per_step() -> None:
    def name(ctx: bz.Context) -> str:
        return ctx.step_name

    names: list[str] = []

    def first(ctx: bz.Context) -> None:
        names.append(ctx.step_name)

    result = await two_steps(first, name).run()
    assert (names, result.result) == (["one"], "two")


# -- emission rules ------------------------------------------------------------------------


async def test_send_event_after_the_step_completed_raises() -> None:
    kept: list[bz.Context] = []

    @bz.step
    async def leak(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        kept.append(ctx)
        return bz.StopEvent()

    await bz.Workflow("leak", [leak]).run()
    with pytest.raises(RuntimeError, match="send_event called after step 'leak' completed"):
        kept[0].send_event(Next())


async def test_send_event_from_an_earlier_step_raises_in_a_later_one() -> None:
    kept: list[bz.Context] = []

    @bz.step
    async def first(ctx: bz.Context, ev: bz.StartEvent) -> Next:
        kept.append(ctx)
        return Next()

    @bz.step
    async def second(ev: Next) -> bz.StopEvent:
        kept[0].send_event(Other())
        return bz.StopEvent()

    with pytest.raises(bz.StepFailed) as caught:
        await bz.Workflow("stale", [first, second], validate=False).run()
    assert caught.value.step_name == "second"
    assert isinstance(caught.value.__cause__, RuntimeError)


async def test_send_event_refuses_a_non_event() -> None:
    @bz.step
    async def send_junk(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        junk: Any = {"not": "an event"}
        ctx.send_event(junk)
        return bz.StopEvent()

    with pytest.raises(bz.StepFailed) as caught:
        await bz.Workflow("junk", [send_junk]).run()
    assert isinstance(caught.value.__cause__, TypeError)
    assert "send_event takes an Event, got dict" in str(caught.value.__cause__)


@pytest.mark.parametrize("method", ["write_event_to_stream", "emit_usage"])
async def test_stream_and_usage_refuse_the_wrong_type(method: str) -> None:
    @bz.step
    async def send_junk(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        getattr(ctx, method)(Next() if method == "emit_usage" else 42)
        return bz.StopEvent()

    with pytest.raises(bz.StepFailed) as caught:
        await bz.Workflow("junk", [send_junk]).run()
    assert isinstance(caught.value.__cause__, TypeError)


# -- collect_events ------------------------------------------------------------------------


async def test_collect_events_with_nothing_expected_returns_an_empty_list() -> None:
    @bz.step
    async def gather(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        return bz.StopEvent(result=(ctx.collect_events(ev, []), ctx.collect_events(ev, ())))

    result = await bz.Workflow("none", [gather]).run()
    assert result.result == ([], [])


async def test_collecting_an_unexpected_type_fails_the_step_naming_it() -> None:
    @bz.step(retry=bz.RetryPolicy(max_attempts=1))
    async def gather(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent | None:
        return None if ctx.collect_events(ev, [Next, Other]) is None else bz.StopEvent()

    with pytest.raises(bz.StepFailed) as caught:
        await bz.Workflow("unexpected", [gather]).run()
    assert caught.value.step_name == "gather"
    assert str(caught.value) == (
        "step 'gather' failed: ValueError: collect_events: StartEvent is not among the "
        "expected types ['Next', 'Other']"
    )


# -- usage ---------------------------------------------------------------------------------


async def test_usage_is_summed_into_the_result() -> None:
    @bz.step
    async def call_models(ctx: bz.Context, ev: bz.StartEvent) -> Next:
        ctx.emit_usage(
            bz.UsageEvent(prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=0.25)
        )
        return Next()

    @bz.step
    async def call_again(ctx: bz.Context, ev: Next) -> bz.StopEvent:
        ctx.emit_usage(
            bz.UsageEvent(prompt_tokens=1, completion_tokens=2, total_tokens=3, cost_usd=0.5)
        )
        return bz.StopEvent()

    result = await bz.Workflow("usage", [call_models, call_again]).run()
    assert result.usage == bz.Usage(prompt_tokens=11, completion_tokens=7, total_tokens=18)
    assert result.cost_usd == pytest.approx(0.75)


async def test_usage_is_live_on_the_handler() -> None:
    gate = trio.Event()

    @bz.step
    async def call_model(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        ctx.emit_usage(bz.UsageEvent(total_tokens=7, cost_usd=1.5))
        await gate.wait()
        return bz.StopEvent()

    async with bz.Workflow("live", [call_model]).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        assert handler.usage.total_tokens == 7
        assert handler.cost_usd == pytest.approx(1.5)
        gate.set()
        await handler.result()
