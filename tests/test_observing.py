"""Observing a run without reaching into it: commits, statistics, state, cancel reasons."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import blazen_trio as bz


class Item(bz.Event):
    n: int


class Done(bz.Event):
    n: int


def _fan(n: int, *, limit: int | None = None) -> bz.Workflow:
    @bz.step
    async def fan(ctx: bz.Context, ev: bz.StartEvent) -> list[Item]:
        ctx.set("fanned", n)
        return [Item(n=i) for i in range(n)]

    @bz.step(max_concurrency=limit)
    async def work(ctx: bz.Context, ev: Item) -> Done:
        await trio.sleep(1)
        ctx.set(f"item{ev.n}", ev.n * 10)
        return Done(n=ev.n)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        done = ctx.collect_events(ev, [Done] * n)
        return (
            None
            if done is None
            else bz.StopEvent(result=sorted(d.n for d in done if isinstance(d, Done)))
        )

    return bz.Workflow("fan", [fan, work, join])


async def test_on_commit_sees_every_commit_before_its_outputs_are_routed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    commits: list[bz.StepCommit] = []
    result = await _fan(3).run(on_commit=commits.append)
    assert result.result == [0, 1, 2]
    assert [c.step for c in commits[:1]] == ["fan"]
    assert commits[0].emitted == (Item(n=0), Item(n=1), Item(n=2))
    assert isinstance(commits[0].event, bz.StartEvent)
    work = {c.event: c.emitted for c in commits if c.step == "work"}
    assert work == {Item(n=i): (Done(n=i),) for i in range(3)}
    joins = [c for c in commits if c.step == "join"]
    assert len(joins) == 3
    assert isinstance(joins[-1].emitted[0], bz.StopEvent)
    assert {c.run_id for c in commits} == {result.run_id}
    assert all(c.attempt == 1 for c in commits)


async def test_an_observer_that_raises_crashes_the_run_with_its_error_as_cause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def observer(commit: bz.StepCommit) -> None:
        if commit.step == "work":
            raise LookupError("observer broke")

    with pytest.raises(bz.RunCrashed) as caught:
        await _fan(2).run(on_commit=observer)
    assert isinstance(caught.value.__cause__, LookupError)

    async with _fan(2).start(on_commit=observer) as handler:
        with pytest.raises(bz.RunCrashed):
            await handler.result()
        assert handler.status == bz.RunStatus.FAILED


async def test_on_commit_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_commit"):
        await _fan(1).run(on_commit=42)  # type: ignore[arg-type]


async def test_statistics_count_in_flight_queued_and_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _fan(5, limit=2).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        stats = handler.statistics()
        assert (stats.status, stats.steps_in_flight, stats.invocations_queued) == (
            bz.RunStatus.RUNNING,
            2,
            3,
        )
        assert (stats.commits, stats.input_requests_outstanding) == (1, 0)
        await trio.sleep(0.5)
        assert handler.statistics().active_time == pytest.approx(0.5)
        await handler.pause()  # the two running finish; their Done events wait for `join`
        assert handler.statistics().invocations_queued == 3 + 2
        assert handler.statistics().steps_in_flight == 0
        await handler.resume()
        await handler.result()
        final = handler.statistics()
    assert (final.status, final.commits, final.steps_in_flight) == (bz.RunStatus.COMPLETED, 11, 0)


async def test_the_state_view_is_live_and_read_only(autojump_clock: trio.testing.MockClock) -> None:
    async with _fan(2).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        view = handler.state
        assert dict(view) == {"fanned": 2}
        with pytest.raises(TypeError):
            view["fanned"] = 3  # type: ignore[index]
        await handler.result()
        assert dict(view) == {"fanned": 2, "item0": 0, "item1": 10}


async def test_a_subscribers_statistics_count_waiting_and_missed_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def chatty(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        for n in range(10):
            ctx.write_event_to_stream(Item(n=n))
        await trio.sleep(1)
        return bz.StopEvent()

    async with bz.Workflow("chatty", [chatty]).start() as handler:
        stream = handler.stream_events(buffer=4)
        await trio.sleep(0.5)
        stats = stream.statistics()
        assert (stats.buffer, stats.waiting, stats.missed, stats.last_sequence) == (4, 4, 0, 0)
        first = await stream.__anext__()
        assert first == bz.StreamLagged(missed=6)
        assert stream.statistics().missed == 6
        assert stream.statistics().waiting == 4
        await stream.aclose()
        assert stream.statistics().closed
        assert stream.statistics().waiting == 0


async def test_a_cancelled_step_is_told_why(autojump_clock: trio.testing.MockClock) -> None:
    reasons: list[str | None] = []

    @bz.step
    async def slow(ev: bz.StartEvent) -> bz.StopEvent:
        try:
            await trio.sleep(10)
        except trio.Cancelled as cancelled:
            reasons.append(cancelled.reason)
            raise
        return bz.StopEvent()

    async with bz.Workflow("slow", [slow]).start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        await handler.abort()
    assert reasons == ["pause(cancel_in_flight=True)"]
