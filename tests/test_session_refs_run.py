"""Session refs through a run: live objects passed by handle between steps, each pause policy
at snapshot time, restore under the original keys, and what each lifetime leaves behind."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sized
from typing import Any

import pytest
import trio
import trio.testing
from _ref_objects import Connection

import blazen_trio as bz

DROPPED = "__blazen_dropped_session_refs"


class Socket:
    """Neither picklable nor serializable."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


@dataclasses.dataclass
class Client:
    """Picklable."""

    name: str
    calls: int = 0


class Carry(bz.Event):
    ref: bz.SessionRef
    extra: Any = None


def ref_workflow(
    make: Callable[[], object],
    *,
    lifetime: bz.RefLifetime = bz.RefLifetime.UNTIL_RUN_END,
    seen: list[object] | None = None,
    registries: list[Sized] | None = None,
    **options: Any,
) -> bz.Workflow:
    """`open` inserts `make()` and sends its ref in an event (also inside an `Any` field);
    `use` (5 s) resolves both and ends the run with a description of the object."""

    @bz.step
    async def open(ctx: bz.Context, ev: bz.StartEvent) -> Carry:
        ref = ctx.refs.insert(make(), lifetime=lifetime)
        ctx.set("ref", ref)
        if registries is not None:
            registries.append(ctx.refs)
        return Carry(ref=ref, extra={"again": ref})

    @bz.step
    async def use(ctx: bz.Context, ev: Carry) -> bz.StopEvent:
        await trio.sleep(5)
        assert ev.extra == {"again": ev.ref}
        assert ctx.get("ref") == ev.ref
        try:
            obj = ctx.refs.get(ev.ref)
        except bz.SessionRefError as exc:
            return bz.StopEvent(result=("missing", ev.ref.key, str(exc)))
        if seen is not None:
            seen.append(obj)
        return bz.StopEvent(result=(type(obj).__name__, ev.ref.key, ctx.refs.keys()))

    return bz.Workflow("refs", [open, use], **options)


async def paused_snapshot(workflow: bz.Workflow, *, cancel: bool = True) -> bz.WorkflowSnapshot:
    """Run to 1 s (the ref made, `use` in flight), pause, snapshot, abort."""
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=cancel)
        snapshot = await handler.snapshot()
        await handler.abort()
    return snapshot


def only_ref_key(snapshot: bz.WorkflowSnapshot) -> str:
    [pending] = snapshot.pending_events
    key = pending.event.payload["ref"]["__blazen_session_ref__"]
    assert isinstance(key, str)
    return key


# -- inside one run ----------------------------------------------------------------------------


async def test_a_ref_travels_between_steps_to_the_same_object(
    autojump_clock: trio.testing.MockClock,
) -> None:
    made: list[Client] = []
    seen: list[object] = []

    def make() -> Client:
        made.append(Client("api"))
        return made[-1]

    result = await ref_workflow(make, seen=seen).run()
    assert seen[0] is made[0]
    name, key, keys = result.result
    assert name == "Client"
    assert keys == [key]


async def test_run_end_refs_are_released_when_the_run_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registries: list[Sized] = []
    for lifetime in (bz.RefLifetime.UNTIL_RUN_END, bz.RefLifetime.UNTIL_PARENT_FINISH):
        registries.clear()
        result = await ref_workflow(
            lambda: Client("c"), lifetime=lifetime, registries=registries
        ).run()
        assert result.session_refs == {}
        assert len(registries[0]) == 0


async def test_run_end_refs_are_released_when_the_run_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registries: list[Sized] = []

    @bz.step
    async def open(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        ctx.refs.insert(Client("x"))
        registries.append(ctx.refs)
        raise RuntimeError("after insert")

    with pytest.raises(bz.StepFailed):
        await bz.Workflow("fails", [open]).run()
    assert len(registries[0]) == 0


async def test_explicit_drop_refs_are_handed_to_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    made: list[Client] = []

    def make() -> Client:
        made.append(Client("kept"))
        return made[-1]

    result = await ref_workflow(make, lifetime=bz.RefLifetime.UNTIL_EXPLICIT_DROP).run()
    _, key, _ = result.result
    assert list(result.session_refs) == [key]
    assert result.session_refs[key] is made[0]


async def test_a_ref_dropped_by_a_step_is_not_snapshotted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def open(ctx: bz.Context, ev: bz.StartEvent) -> Carry:
        ref = ctx.refs.insert(Socket(), lifetime=bz.RefLifetime.UNTIL_EXPLICIT_DROP)
        ctx.refs.drop(ref)
        return Carry(ref=ref)

    @bz.step
    async def use(ctx: bz.Context, ev: Carry) -> bz.StopEvent:
        await trio.sleep(5)
        return bz.StopEvent(result=ev.ref in ctx.refs)

    workflow = bz.Workflow("dropping", [open, use])
    snapshot = await paused_snapshot(workflow)  # the Socket would fail to pickle
    assert snapshot.session_refs == {}
    result = await workflow.run(resume=snapshot)
    assert result.result is False
    assert result.session_refs == {}


# -- PICKLE_OR_ERROR (the default) -------------------------------------------------------------


async def test_pickled_refs_are_restored_under_their_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[object] = []
    workflow = ref_workflow(lambda: Client("pickled", calls=3), seen=seen)
    snapshot = await paused_snapshot(workflow)
    key = only_ref_key(snapshot)
    assert list(snapshot.session_refs) == [key]
    assert snapshot.session_refs[key].codec == "pickle"
    assert snapshot.session_refs[key].lifetime == "until_run_end"
    seen.clear()
    decoded = bz.WorkflowSnapshot.from_json(snapshot.to_json())
    result = await workflow.run(resume=decoded)
    assert result.result == ("Client", key, [key])
    assert seen == [Client("pickled", calls=3)]
    assert result.session_refs == {}  # an UNTIL_RUN_END ref, released at the end


async def test_explicit_drop_refs_survive_a_resume_and_reach_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = ref_workflow(lambda: Client("long"), lifetime=bz.RefLifetime.UNTIL_EXPLICIT_DROP)
    snapshot = await paused_snapshot(workflow)
    key = only_ref_key(snapshot)
    result = await workflow.run(resume=bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes()))
    assert result.session_refs == {key: Client("long")}


async def test_an_unpicklable_ref_fails_the_snapshot_under_pickle_or_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = ref_workflow(Socket)
    assert workflow.session_pause_policy is bz.SessionPausePolicy.PICKLE_OR_ERROR
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        with pytest.raises(bz.SessionRefsNotSerializable) as caught:
            await handler.snapshot()
        [key] = caught.value.keys
        assert key in str(caught.value)
        assert any("Socket" in note for note in caught.value.__notes__)
        # The run is untouched: it resumes and the ref still resolves.
        await handler.resume()
        result = await handler.result()
    assert result.result == ("Socket", key, [key])


# -- the other policies ------------------------------------------------------------------------


async def test_hard_error_refuses_to_snapshot_with_live_refs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = ref_workflow(
        lambda: Client("c"), session_pause_policy=bz.SessionPausePolicy.HARD_ERROR
    )
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        with pytest.raises(bz.SessionRefsNotSerializable, match="HARD_ERROR") as caught:
            await handler.snapshot()
        await handler.resume()
        name, key, _ = (await handler.result()).result
    assert name == "Client"
    assert caught.value.keys == (key,)


async def test_hard_error_ignores_refs_that_end_at_the_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = ref_workflow(
        Socket,
        lifetime=bz.RefLifetime.UNTIL_SNAPSHOT,
        session_pause_policy=bz.SessionPausePolicy.HARD_ERROR,
    )
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        assert snapshot.session_refs == {}
        await handler.resume()
        outcome, key, message = (await handler.result()).result
    # The ref ended at the snapshot, in this run too.
    assert outcome == "missing"
    assert key in message
    resumed = await workflow.run(resume=snapshot)
    assert resumed.result[0] == "missing"


async def test_warn_drop_drops_every_ref_with_a_warning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = ref_workflow(
        lambda: Client("dropped"), session_pause_policy=bz.SessionPausePolicy.WARN_DROP
    )
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        with pytest.warns(RuntimeWarning, match="WARN_DROP") as warned:
            snapshot = await handler.snapshot()
        await handler.abort()
    key = only_ref_key(snapshot)
    assert len(warned) == 1
    assert key in str(warned[0].message)
    assert snapshot.session_refs == {}
    assert snapshot.metadata[DROPPED] == [key]
    # After resume the ref says why it is gone.
    result = await workflow.run(resume=bz.WorkflowSnapshot.from_json(snapshot.to_json()))
    outcome, missing_key, message = result.result
    assert (outcome, missing_key) == ("missing", key)
    assert "dropped when the run was snapshotted" in message


async def test_pickle_or_serialize_uses_the_protocol(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[object] = []
    workflow = ref_workflow(
        lambda: Connection("db://x"),
        seen=seen,
        session_pause_policy=bz.SessionPausePolicy.PICKLE_OR_SERIALIZE,
    )
    snapshot = await paused_snapshot(workflow)
    key = only_ref_key(snapshot)
    assert snapshot.session_refs[key].codec == "protocol"
    assert snapshot.session_refs[key].type_path == "_ref_objects:Connection"
    seen.clear()
    result = await workflow.run(resume=bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes()))
    assert result.result == ("Connection", key, [key])
    [restored] = seen
    assert isinstance(restored, Connection)
    assert restored.restored
    assert restored.dsn == "db://x"


async def test_pickle_or_serialize_pickles_others_and_drops_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def open(ctx: bz.Context, ev: bz.StartEvent) -> Carry:
        plain = ctx.refs.insert(Client("plain"))
        socket = ctx.refs.insert(Socket())
        return Carry(ref=plain, extra=socket)

    @bz.step
    async def use(ctx: bz.Context, ev: Carry) -> bz.StopEvent:
        await trio.sleep(5)
        assert isinstance(ev.extra, bz.SessionRef)
        try:
            ctx.refs.get(ev.extra)
        except bz.SessionRefError:
            socket = "dropped"
        else:
            socket = "kept"
        return bz.StopEvent(result=(ctx.refs.get(ev.ref), socket))

    workflow = bz.Workflow(
        "mixed", [open, use], session_pause_policy=bz.SessionPausePolicy.PICKLE_OR_SERIALIZE
    )
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        with pytest.warns(RuntimeWarning, match="Socket"):
            snapshot = await handler.snapshot()
        await handler.abort()
    payload = snapshot.pending_events[0].event.payload
    plain_key = payload["ref"]["__blazen_session_ref__"]
    socket_key = payload["extra"]["__blazen_session_ref__"]
    assert list(snapshot.session_refs) == [plain_key]
    assert snapshot.metadata[DROPPED] == [socket_key]
    result = await workflow.run(resume=snapshot)
    assert result.result == (Client("plain"), "dropped")


# -- refs of attempts that did not complete ----------------------------------------------------


def inserting_workflow(*, fail_first: bool) -> bz.Workflow:
    """`open` inserts a ref (kept until dropped), then takes 5 s, or fails its first attempt."""
    policy = bz.RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0)

    @bz.step(retry=policy)
    async def open(ctx: bz.Context, ev: bz.StartEvent) -> Carry:
        ref = ctx.refs.insert(
            Client(f"attempt {ctx.attempt}"), lifetime=bz.RefLifetime.UNTIL_EXPLICIT_DROP
        )
        await trio.sleep(5)
        if fail_first and ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return Carry(ref=ref)

    @bz.step
    async def use(ctx: bz.Context, ev: Carry) -> bz.StopEvent:
        return bz.StopEvent(result=ctx.refs.get(ev.ref).name)

    return bz.Workflow("inserting", [open, use])


async def test_refs_inserted_by_a_cancelled_attempt_are_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Like its state writes, the refs of an attempt cancelled by pause are taken back: no
    committed event can refer to them, and keeping them would leak live objects (and make a
    PICKLE_OR_ERROR / HARD_ERROR snapshot fail on an object nothing uses)."""
    async with inserting_workflow(fail_first=False).start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        assert snapshot.session_refs == {}
        await handler.resume()
        result = await handler.result()
    assert result.result == "attempt 1"
    assert [type(obj).__name__ for obj in result.session_refs.values()] == ["Client"]


async def test_refs_inserted_by_a_failed_attempt_are_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    result = await inserting_workflow(fail_first=True).run()
    assert result.result == "attempt 2"
    assert list(result.session_refs.values()) == [Client("attempt 2")]
