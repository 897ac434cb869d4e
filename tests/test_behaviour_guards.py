"""Guards for documented behaviours that the other tests only touch in passing.

Each test here was checked against a mutation of the engine that breaks the behaviour it pins
(see the docstrings): the test fails under the mutation and passes without it.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing

import blazen_trio as bz

GUARD = 3600  # virtual seconds after which a test fails instead of hanging
WORK_TIME = 10.0


class Item(bz.Event):
    index: int


class Done(bz.Event):
    index: int


class Hop(bz.Event):
    n: int


# -- a. cancelled invocations go back into their queue in commit order ----------------------


def limited_workflow(n: int, limit: int, starts: list[tuple[float, int]]) -> bz.Workflow:
    """start -> n Items -> `work` (max_concurrency=limit, WORK_TIME each) -> `join`.

    `starts` records (virtual time, index) each time `work` starts an invocation.
    """

    @bz.step
    async def split(ev: bz.StartEvent) -> list[Item]:
        return [Item(index=i) for i in range(n)]

    @bz.step(max_concurrency=limit)
    async def work(ev: Item) -> Done:
        starts.append((trio.current_time(), ev.index))
        await trio.sleep(WORK_TIME)
        return Done(index=ev.index)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [Done] * n)
        if got is None:
            return None
        return bz.StopEvent(result=sorted(d.index for d in got if isinstance(d, Done)))

    return bz.Workflow("limited", [split, work, join])


def waves(starts: Iterable[tuple[float, int]]) -> list[set[int]]:
    """The indices started together, one set per start time, earliest first."""
    by_time: dict[float, set[int]] = {}
    for time, index in starts:
        by_time.setdefault(time, set()).add(index)
    return [by_time[time] for time in sorted(by_time)]


@pytest.mark.parametrize("limit", [1, 3])
async def test_cancelled_invocations_are_requeued_in_commit_order(
    autojump_clock: trio.testing.MockClock, limit: int
) -> None:
    """`limit` invocations are in flight and the others queued when a cancelling pause puts
    the in-flight ones back; after the resume the step must take them first, in the order
    their events were emitted (then the ones that were queued all along).

    Mutation checked: `_requeue` appending at the end of the queue. Within one wave (the
    invocations started by one resume) trio randomizes start order, so the order among the
    requeued invocations themselves is not observable; see the report for why inserting them
    at the front instead is an equivalent mutant.
    """
    n = 7
    starts: list[tuple[float, int]] = []
    with trio.fail_after(GUARD):
        async with limited_workflow(n, limit, starts).start() as handler:
            await trio.sleep(1)
            assert waves(starts) == [set(range(limit))]
            await handler.pause(cancel_in_flight=True)
            starts.clear()
            await trio.sleep(1)
            await handler.resume()
            result = await handler.result()
    assert result.result == list(range(n))
    expected = [set(range(first, min(first + limit, n))) for first in range(0, n, limit)]
    assert waves(starts) == expected
    # One wave per WORK_TIME: nothing waited longer than the limit makes it wait.
    assert sorted({time for time, _ in starts}) == [2 + WORK_TIME * k for k in range(len(expected))]


# -- b. the fairness checkpoint between chained steps -----------------------------------------

HOPS = 40


def chain_workflow(name: str, on_hop: Any) -> bz.Workflow:
    """start -> HOPS x `hop` -> StopEvent; no step awaits anything, so one worker runs the
    whole chain and only the engine's checkpoint between steps can let others in."""

    @bz.step
    async def begin(ev: bz.StartEvent) -> Hop:
        return Hop(n=0)

    @bz.step
    async def hop(ev: Hop) -> Hop | bz.StopEvent:
        on_hop(ev.n)
        if ev.n + 1 == HOPS:
            return bz.StopEvent(result=ev.n + 1)
        return Hop(n=ev.n + 1)

    return bz.Workflow(name, [begin, hop])


async def test_a_chain_of_steps_that_never_await_lets_other_tasks_run() -> None:
    """Mutation checked: removing `await trio.lowlevel.checkpoint()` from `Run._work`; the
    whole chain then runs in one scheduler turn and the ticker never moves during it."""
    ticks = 0
    seen: list[int] = []

    async def ticker() -> NoReturn:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        result = await chain_workflow("chain", lambda n: seen.append(ticks)).run()
        nursery.cancel_scope.cancel()
    assert result.result == HOPS
    assert len(seen) == HOPS
    # Between two consecutive hops each scheduler batch runs the ticker once, so it must
    # have moved about once per hop (at least half as often, whatever the batch order).
    assert seen[-1] - seen[0] >= HOPS // 2


async def test_two_chains_run_concurrently_interleave() -> None:
    """Two runs of the chain in one nursery take turns; without the checkpoint each chain
    would run to its end in one go (the same mutation as above)."""
    log: list[str] = []

    async def run(name: str) -> None:
        result = await chain_workflow(name, lambda n: log.append(name)).run()
        assert result.result == HOPS

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "a")
        nursery.start_soon(run, "b")
    assert sorted(log) == ["a"] * HOPS + ["b"] * HOPS
    switches = sum(1 for x, y in itertools.pairwise(log) if x != y)
    assert switches >= HOPS // 2


# -- c. sets are encoded in sorted order ------------------------------------------------------

# Small ints hash to themselves, so these all collide in a set's table: iteration order then
# follows insertion order, independently of PYTHONHASHSEED.
COLLIDING = [0, 8, 16, 24]
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def built_in_order(order: list[int]) -> set[int]:
    out: set[int] = set()
    for item in order:
        out.add(item)
    return out


def set_workflow() -> bz.Workflow:
    """Stores sets built from the input's order, then waits for input (a stable point)."""

    @bz.step
    async def store(ctx: bz.Context, ev: bz.StartEvent) -> bz.InputRequestEvent:
        items = built_in_order(ev.data)
        ctx.set("set", items)
        ctx.set("frozen", frozenset(items))
        ctx.set("nested", {"inner": [items], "pair": (frozenset(items), 1)})
        return bz.InputRequestEvent(prompt="go on?", request_id="go-on")

    @bz.step
    async def finish(ctx: bz.Context, ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ctx.get("set"))

    return bz.Workflow("sets", [store, finish])


async def until_waiting(handler: bz.WorkflowHandler) -> None:
    """Let the run go until it stops on its input request."""
    for _ in range(100):
        if handler.status != "running":
            break
        await trio.lowlevel.checkpoint()
    assert handler.status == "waiting_for_input"


async def snapshot_waiting(order: list[int]) -> bz.WorkflowSnapshot:
    async with set_workflow().start(order) as handler:
        await until_waiting(handler)
        snapshot = await handler.snapshot()
        await handler.abort()
    return snapshot


def normalized(snapshot: bz.WorkflowSnapshot) -> bz.WorkflowSnapshot:
    """The snapshot with the fields that differ between any two runs made equal."""
    return msgspec.structs.replace(snapshot, run_id="run", created_at=EPOCH)


async def test_equal_sets_give_equal_snapshot_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Mutation checked: `_canonical` in `_codec.py` returning the items unsorted."""
    forward, backward = COLLIDING, COLLIDING[::-1]
    # The premise: the two sets are equal but iterate in different orders.
    assert built_in_order(forward) == built_in_order(backward)
    assert list(built_in_order(forward)) != list(built_in_order(backward))

    first = await snapshot_waiting(forward)
    second = await snapshot_waiting(backward)
    assert first.state == second.state
    a, b = normalized(first), normalized(second)
    assert a.to_bytes() == b.to_bytes()
    assert a.to_json() == b.to_json()
    # And the sets come back as sets.
    decoded = bz.WorkflowSnapshot.from_bytes(second.to_bytes())
    async with set_workflow().start(resume=decoded) as handler:
        await handler.respond_to_input("go-on", None)
        result = await handler.result()
    assert result.result == set(COLLIDING)


# -- d. the codec proves a pickle loads before accepting it -------------------------------------


def explode_on_load() -> NoReturn:
    raise RuntimeError("this value cannot be unpickled")


class PicklesButWontLoad:
    """Pickling records a call to `explode_on_load`; loading makes that call."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return explode_on_load, ()


class PicklesAndLoads:
    """The control: the same shape of `__reduce__`, with a callable that works."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return PicklesAndLoads, ()

    def __eq__(self, other: object) -> bool:
        return type(other) is PicklesAndLoads

    def __hash__(self) -> int:
        return 0


def holding_workflow(value: Any) -> bz.Workflow:
    """Stores `value` under "held", then waits for input."""

    @bz.step
    async def hold(ctx: bz.Context, ev: bz.StartEvent) -> bz.InputRequestEvent:
        ctx.set("plain", 1)
        ctx.set("held", value)
        return bz.InputRequestEvent(prompt="go on?", request_id="go-on")

    @bz.step
    async def finish(ctx: bz.Context, ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ctx.get("held"))

    return bz.Workflow("holding", [hold, finish])


async def test_a_value_that_pickles_but_cannot_load_fails_the_snapshot() -> None:
    """Mutation checked: removing the `pickle.loads(data)` check from `_pickle` in
    `_codec.py`; the snapshot is then accepted and would only fail at resume."""
    async with holding_workflow(PicklesButWontLoad()).start() as handler:
        await until_waiting(handler)
        with pytest.raises(bz.SnapshotError) as caught:
            await handler.snapshot()
        message = str(caught.value)
        assert "'held'" in message
        assert "this value cannot be unpickled" in message
        assert "'plain'" not in message
        # A failed snapshot changes nothing: the run goes on and can finish.
        assert handler.status == "waiting_for_input"
        await handler.respond_to_input("go-on", None)
        result = await handler.result()
    assert isinstance(result.result, PicklesButWontLoad)


async def test_the_control_value_that_pickles_and_loads_snapshots_and_resumes() -> None:
    """Shows the test above fails for the load, not because such values never snapshot."""
    async with holding_workflow(PicklesAndLoads()).start() as handler:
        await until_waiting(handler)
        snapshot = await handler.snapshot()
        await handler.abort()
    decoded = bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes())
    async with holding_workflow(PicklesAndLoads()).start(resume=decoded) as handler:
        await handler.respond_to_input("go-on", None)
        result = await handler.result()
    assert result.result == PicklesAndLoads()


# -- replacement for test_handler's test of the same name ----------------------------------------


class StepBroke(Exception):
    pass


def failing_workflow() -> bz.Workflow:
    @bz.step
    async def explode(ev: bz.StartEvent) -> bz.StopEvent:
        raise StepBroke("the step's own failure")

    return bz.Workflow("failing", [explode])


def chained(error: BaseException) -> Iterator[BaseException]:
    """Every exception reachable from `error` through `__cause__` and `__context__`."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


async def test_an_awaiters_handled_exception_does_not_leak_to_other_awaiters() -> None:
    """Mutation checked: `WorkflowError.fresh()` returning `self` instead of a copy."""
    async with failing_workflow().start() as handler:
        own = KeyError("the first awaiter's own business")
        try:
            raise own
        except KeyError:
            with pytest.raises(bz.StepFailed) as first:
                await handler.result()
        with pytest.raises(bz.StepFailed) as second:
            await handler.result()
    # The premise: raised while handling `own`, the first awaiter's error does carry it.
    assert first.value.__context__ is own
    # The second awaiter's error carries nothing of the first awaiter's...
    assert all(e is not own for e in chained(second.value))
    assert not any(isinstance(e, KeyError) for e in chained(second.value))
    assert second.value is not first.value
    # ...but keeps the step's exception as its cause.
    cause = second.value.__cause__
    assert isinstance(cause, StepBroke)
    assert cause is first.value.__cause__
    assert str(cause) == "the step's own failure"
    assert second.value.step_name == "explode"
