"""The step's view of its run: shared state, event emission, fan-in, run identity."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol, final

import trio

from ._checks import is_count
from ._errors import WorkflowError
from ._events import Event, UsageEvent
from ._records import WorkflowResult
from ._refs import SessionRefRegistry, StepRefs
from ._state import RunState, UndoLog
from ._util import NoPublicConstructor

_NO_DEFAULT: Final = object()


class StepHost(Protocol):
    """What a step sees of its run (the run loop implements it)."""

    @property
    def run_id(self) -> str: ...
    @property
    def workflow_name(self) -> str: ...
    @property
    def state(self) -> RunState: ...
    @property
    def refs(self) -> SessionRefRegistry: ...
    def publish(self, event: Event) -> None: ...
    def record_usage(self, usage: UsageEvent) -> None: ...
    async def run_child(
        self, workflow: object, input: Any, invocation: Any, index: int
    ) -> WorkflowResult: ...


class StepAttempt(Protocol):
    """One attempt of one step invocation, as its Context sees it."""

    @property
    def step_name(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def delivery(self) -> int: ...
    @property
    def undo(self) -> UndoLog: ...
    def send(self, event: Event) -> None: ...
    def check_open(self, what: str) -> None: ...
    def reserve_calls(self, count: int) -> int: ...


@final
class Context(metaclass=NoPublicConstructor):
    """Handed to each step attempt. Its API is sync: all steps of a run share one thread.

    Events sent with `send_event` are committed with the step's return value when the step
    completes; state writes apply at once and are taken back if the attempt does not complete.
    """

    __slots__ = ("_invocation", "_run")

    def __init__(self, run: StepHost, invocation: StepAttempt) -> None:
        self._run = run
        self._invocation = invocation

    # -- identity ------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def workflow_name(self) -> str:
        return self._run.workflow_name

    @property
    def step_name(self) -> str:
        return self._invocation.step_name

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt and re-run of this step invocation (after a pause, a
        snapshot or a crash): key side effects by it to make them happen once."""
        return f"{self._run.run_id}/{self._invocation.step_name}/{self._invocation.delivery}"

    @property
    def attempt(self) -> int:
        """1 for the first attempt, 2 for the first retry, ..."""
        return self._invocation.attempt

    # -- state ---------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Store a value; it must survive the snapshot codec (checked at snapshot time)."""
        self._invocation.check_open("set")
        self._run.state.set(key, value, self._invocation.undo)

    def get(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """The value for `key`; `KeyError` if it is missing and no default is given."""
        if default is _NO_DEFAULT:
            return self._run.state.values[key]
        return self._run.state.values.get(key, default)

    def delete(self, key: str) -> None:
        """Remove `key`; `KeyError` if it is missing."""
        self._invocation.check_open("delete")
        self._run.state.delete(key, self._invocation.undo)

    def keys(self) -> list[str]:
        return list(self._run.state.values)

    def set_object(self, key: str, value: Any) -> None:
        """Keep a live object (a client, a connection) for the run; never snapshotted."""
        self._run.state.objects[key] = value

    def get_object(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        if default is _NO_DEFAULT:
            return self._run.state.objects[key]
        return self._run.state.objects.get(key, default)

    @property
    def refs(self) -> StepRefs:
        """The run's registry of live objects that events refer to by `SessionRef`."""
        return StepRefs._create(self._run.refs, self._invocation.undo)

    # -- events --------------------------------------------------------------------------

    def send_event(self, event: Event) -> None:
        """Emit an event besides the return value; routed when this step completes.

        Its type must be one the step declares (or a subclass), else `StepFailed`.
        """
        if not isinstance(event, Event):
            raise TypeError(f"send_event takes an Event, got {type(event).__name__}")
        self._invocation.check_open("send_event")
        self._invocation.send(event)

    def write_event_to_stream(self, event: Event) -> None:
        """Publish an event to the run's stream subscribers; never blocks, never routed."""
        if not isinstance(event, Event):
            raise TypeError(f"write_event_to_stream takes an Event, got {type(event).__name__}")
        self._run.publish(event)

    def emit_usage(self, usage: UsageEvent) -> None:
        """Add a model call's usage to the run's totals and publish it on the stream."""
        if not isinstance(usage, UsageEvent):
            raise TypeError(f"emit_usage takes a UsageEvent, got {type(usage).__name__}")
        self._run.record_usage(usage)

    def collect_events(self, event: Event, expected: Sequence[type[Event]]) -> list[Event] | None:
        """Fan-in: buffer `event`; once one event per `expected` type is here, return them.

        The list comes back in `expected` order; until then this returns None. Buffers are per
        step and are part of snapshots.
        """
        self._invocation.check_open("collect_events")
        return self._run.state.collect(
            self._invocation.step_name, event, expected, self._invocation.undo
        )

    # -- sub-workflows -------------------------------------------------------------------

    async def run_workflow(self, workflow: Any, input: Any = None) -> WorkflowResult:
        """Run `workflow` as a child of this step, in this step's cancel scope; its result.

        The child shares this run's session refs; its usage counts in this run's totals and
        its stream events reach this run's subscribers as `SubWorkflowEvent`s. Pausing,
        aborting or timing out this run does the same to the child. If the child fails, its
        `WorkflowError` is raised here (so the step fails with it as the cause, after the
        step's retries, each of which runs the child again). A child this step already
        finished before a pause, a snapshot or a crash is not run again.
        """
        self._invocation.check_open("run_workflow")
        index = self._invocation.reserve_calls(1)
        return await self._run.run_child(workflow, input, self._invocation, index)

    async def run_workflows(
        self, runs: Iterable[tuple[Any, Any]], *, max_concurrency: int | None = None
    ) -> list[WorkflowResult]:
        """Run `(workflow, input)` pairs as children at once (at most `max_concurrency` at a
        time); their results in order. The first failure cancels the rest and is raised."""
        self._invocation.check_open("run_workflows")
        pairs = list(runs)
        if max_concurrency is not None and not is_count(max_concurrency, 1):
            raise ValueError(
                f"max_concurrency must be an int >= 1 or None, got {max_concurrency!r}"
            )
        first = self._invocation.reserve_calls(len(pairs))
        limiter = trio.CapacityLimiter(max_concurrency or max(len(pairs), 1))
        results: list[WorkflowResult | None] = [None] * len(pairs)
        failures: list[WorkflowError] = []

        async def one(offset: int, workflow: Any, input: Any, nursery: trio.Nursery) -> None:
            try:
                results[offset] = await self._run.run_child(
                    workflow, input, self._invocation, first + offset
                )
            except WorkflowError as error:
                failures.append(error)
                nursery.cancel_scope.cancel(reason="a sibling sub-workflow failed")
            finally:
                limiter.release_on_behalf_of(offset)

        async with trio.open_nursery() as nursery:
            for offset, (workflow, input) in enumerate(pairs):
                # Taken here, in list order: children start in order as places free up.
                await limiter.acquire_on_behalf_of(offset)
                nursery.start_soon(one, offset, workflow, input, nursery)
        if failures:
            raise failures[0]
        return [result for result in results if result is not None]
