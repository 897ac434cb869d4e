"""Workers: processes that claim runs from a shared store and drive them under fenced leases.

A worker claims runnable runs (the store picks them with `FOR UPDATE SKIP LOCKED`), drives each
as a durable run whose store is fenced by the claim's lease, renews its leases by heartbeat and
lets go of a run once it ends, suspends waiting for input or is paused. It wakes on the store's
news (LISTEN/NOTIFY) and polls as the fallback. A run whose lease runs out (its worker was
killed, stopped or cut off) is claimed by any worker and goes on from its last committed record;
the old holder's writes are refused from then on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, final

import attrs
import trio

from ._codec import decode_event, known_event_types
from ._errors import CheckpointStoreError, RunFinished, UnknownInputRequest, WorkflowError
from ._events import InputResponseEvent
from ._handler import WorkflowHandler
from ._queue import DEFAULT_LEASE, Control, Lease, RunQueue, is_run_queue, new_owner
from ._workflow import Workflow

DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_DRAIN_TIMEOUT = 30.0


@final
@attrs.frozen
class WorkerStatistics:
    """A worker's numbers at one moment (`Worker.statistics()`)."""

    name: str
    runs_held: int
    """Runs this worker drives now."""
    claimed: int
    """Claims made since the worker started."""
    let_go: int
    """Runs it let go of: ended, suspended waiting for input, or paused."""
    leases_lost: int
    """Runs it stopped driving because another worker (or a client) took them over."""


@attrs.define(eq=False)
class _Held:
    """One run this worker drives."""

    lease: Lease
    renewed_at: float  # trio time the lease was last known to be extended
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)  # cancelled if the lease is lost
    waiting: trio.CancelScope = attrs.Factory(trio.CancelScope)  # cancelled to let go (paused)
    handler: WorkflowHandler | None = None
    lost: bool = False
    pausing: bool = False
    requeue: bool = False  # paused for a hand-over: runnable again once let go


@final
class Worker:
    """Claims runs of `workflows` from `store` and drives up to `concurrency` at once.

    `store` must hand runs out (`blazen_trio.postgres.PostgresCheckpointStore`). Serve with
    `await worker.serve()` in a nursery (`nursery.start(worker.serve)`), or use
    `open_worker`. `lease` is how long a claim lasts without a heartbeat (renewed every third
    of it): a worker that stops for longer loses its runs to the others. `poll_interval`
    bounds how long news can go unnoticed if a notification is lost.

    `await worker.shutdown()` (what `blazen-trio worker` does on SIGTERM): stop claiming,
    pause the runs held at their next commit (running steps finish), let go of them, runnable
    for any other worker; `serve` then returns. Steps still running `drain_timeout` seconds
    after the shutdown began are cancelled (`pause(cancel_in_flight=True)`: their effects undone,
    to run again wherever the run goes on), so a step that never ends cannot hold the exit.
    """

    def __init__(
        self,
        store: Any,
        workflows: Iterable[Workflow],
        *,
        concurrency: int = 10,
        lease: float = DEFAULT_LEASE,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        name: str | None = None,
    ) -> None:
        if not is_run_queue(store):
            raise TypeError(
                "a Worker needs a store that hands runs out (PostgresCheckpointStore), "
                f"got {store!r}"
            )
        self._queue: RunQueue = store
        self._workflows: dict[str, Workflow] = {}
        for workflow in workflows:
            if not isinstance(workflow, Workflow):
                raise TypeError(f"expected a Workflow, got {workflow!r}")
            if workflow.name in self._workflows:
                raise ValueError(f"two workflows named {workflow.name!r}")
            self._workflows[workflow.name] = workflow
        if not self._workflows:
            raise ValueError("a Worker needs at least one workflow")
        if type(concurrency) is not int or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not lease > 0 or not poll_interval > 0:
            raise ValueError("lease and poll_interval must be > 0 seconds")
        if not drain_timeout >= 0:
            raise ValueError(f"drain_timeout must be >= 0 seconds, got {drain_timeout!r}")
        self.name: str = name or new_owner("worker")
        self._concurrency = concurrency
        self._lease = float(lease)
        self._poll_interval = float(poll_interval)
        self._drain_timeout = float(drain_timeout)
        self._held: dict[str, _Held] = {}
        self._claim_wake = trio.Event()
        self._control_wake = trio.Event()
        self._stopping = trio.Event()
        self._stopped = trio.Event()
        self._drain_over = False  # past drain_timeout: runs opened from now on pause cancelling
        self._serving = False
        self._runs_nursery: trio.Nursery | None = None
        self._claimed = self._let_go = self._lost = 0
        known: dict[str, Any] = {}
        for workflow in self._workflows.values():
            known.update(workflow._known())
        self._known = known or known_event_types(())

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} holding {len(self._held)} of {self._concurrency}>"

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(self.name, len(self._held), self._claimed, self._let_go, self._lost)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and drive runs until `shutdown()` (or cancellation: the runs held are then
        left as their journals have them and let go of, for any worker to go on with)."""
        if self._serving:
            raise RuntimeError(f"worker {self.name!r} is already serving")
        self._serving = True
        try:
            async with trio.open_nursery() as background:
                # News of runnable runs and free slots wakes the claims; news of controls (not
                # every submit and release) wakes the control loop.
                background.start_soon(self._wake_on, self._queue.wait_for_news, self._wake_claims)
                background.start_soon(
                    self._wake_on, self._queue.wait_for_controls, self._wake_controls
                )
                background.start_soon(self._heartbeat)
                async with trio.open_nursery() as runs:
                    self._runs_nursery = runs
                    background.start_soon(self._carry_out_controls)
                    task_status.started()
                    await self._claim_until_stopped(runs)
                    for held in list(self._held.values()):
                        self._start_pause(held, requeue=True)
                    background.start_soon(self._end_the_drain)
                background.cancel_scope.cancel(reason="the worker stopped")
        finally:
            self._stopped.set()

    async def shutdown(self) -> None:
        """Stop claiming, pause the runs held at their next commit (steps still running after
        `drain_timeout` are cancelled), let go of them (runnable for any worker) and return
        once `serve` has returned."""
        self._stopping.set()
        self._poke()
        await self._stopped.wait()

    # -- claiming ----------------------------------------------------------------------------

    def _poke(self) -> None:
        self._wake_claims()
        self._wake_controls()

    async def _wake_on(self, news: Callable[[], Awaitable[None]], wake: Callable[[], None]) -> None:
        """`wake()` at each announcement `news()` waits for (polling covers missed ones)."""
        while True:
            try:
                await news()
            except CheckpointStoreError:  # closed: polling goes on until the worker stops
                await trio.sleep_forever()
            wake()

    def _wake_claims(self) -> None:
        self._claim_wake.set()

    def _wake_controls(self) -> None:
        self._control_wake.set()

    async def _claim_until_stopped(self, runs: trio.Nursery) -> None:
        names = list(self._workflows)
        while not self._stopping.is_set():
            wake = self._claim_wake = trio.Event()  # news from now on wakes the wait below
            free = self._concurrency - len(self._held)
            claimed: list[Lease] = []
            if free > 0:
                try:
                    claimed = await self._queue.claim(self.name, names, free, self._lease)
                except CheckpointStoreError:
                    claimed = []  # the server is away: try again at the next poll
            for lease in claimed:
                self._claimed += 1
                stale = self._held.get(lease.run_id)
                if stale is not None:  # its lease ran out (the server was away): claimed anew
                    self._lose(stale)
                held = self._held[lease.run_id] = _Held(lease, trio.current_time())
                runs.start_soon(self._drive, held)
            if free > 0 and len(claimed) == free and not self._stopping.is_set():
                await trio.lowlevel.checkpoint()
                continue  # all slots filled: more may be waiting
            with trio.move_on_after(self._poll_interval):
                await wake.wait()

    async def _heartbeat(self) -> None:
        """Renew the leases held; stop driving the runs whose lease was lost (or not renewed
        for a whole lease: then another worker may have them already)."""
        while True:
            await trio.sleep(self._lease / 3)
            started = trio.current_time()
            held = list(self._held.values())
            try:
                kept = await self._queue.renew([h.lease for h in held], self._lease)
            except CheckpointStoreError:
                kept = None
            for item in held:
                if kept is not None and item.lease.run_id in kept:
                    item.renewed_at = started
                elif kept is not None or trio.current_time() - item.renewed_at >= self._lease:
                    self._lose(item)

    def _lose(self, held: _Held) -> None:
        if not held.lost:
            held.lost = True
            self._lost += 1
            held.scope.cancel(reason="the worker lost the run's lease")

    # -- driving one run ---------------------------------------------------------------------

    async def _drive(self, held: _Held) -> None:
        lease = held.lease
        release = True
        try:
            with held.scope:
                fenced = self._queue.fenced(lease)
                workflow = self._workflows[lease.workflow_name].with_checkpoint_store(fenced)
                try:
                    async with workflow._claimed(fenced, lease.run_id) as handler:
                        held.handler = handler
                        if handler is not None:
                            if held.pausing or self._stopping.is_set():
                                held.pausing = False
                                cancelling = self._drain_over  # opened past drain_timeout
                                self._start_pause(held, requeue=True, cancel_in_flight=cancelling)
                            with held.waiting, contextlib.suppress(WorkflowError):
                                await handler.result()
                except CheckpointStoreError:
                    pass  # the store failed or fenced us out: let go, a claim goes on with it
                except WorkflowError:
                    # The run does not fit this worker's definition (SnapshotError): keep the
                    # lease until it runs out, so a worker that can go on with it gets a turn.
                    release = False
        finally:
            if self._held.get(lease.run_id) is held:
                del self._held[lease.run_id]
            self._let_go += 1
            self._claim_wake.set()  # a slot is free
            if release and not held.lost:
                with trio.CancelScope(shield=True), contextlib.suppress(CheckpointStoreError):
                    await self._queue.release(lease, requeue=held.requeue)

    def _start_pause(self, held: _Held, requeue: bool, cancel_in_flight: bool = False) -> None:
        assert self._runs_nursery is not None  # set before any run is claimed
        self._runs_nursery.start_soon(self._pause, held, requeue, cancel_in_flight)

    async def _pause(self, held: _Held, requeue: bool, cancel_in_flight: bool) -> None:
        """Pause at the next commit (running steps finish, or with `cancel_in_flight` are
        cancelled), then let go of the run."""
        held.requeue = held.requeue or requeue
        if held.handler is None:  # not opened yet: paused as soon as it is
            held.pausing = True
            await trio.lowlevel.checkpoint()
            return
        with contextlib.suppress(WorkflowError):  # ended (or was resumed) meanwhile
            await held.handler.pause(cancel_in_flight=cancel_in_flight)
        held.waiting.cancel(reason="paused: the worker lets go of the run")

    async def _end_the_drain(self) -> None:
        """Past `drain_timeout`, cancel the steps of the runs still draining (a second pause,
        in cancel mode, of a run already pausing), so the worker lets go of them and exits."""
        await trio.sleep(self._drain_timeout)
        self._drain_over = True
        for held in list(self._held.values()):
            self._start_pause(held, requeue=True, cancel_in_flight=True)

    # -- controls from clients ---------------------------------------------------------------

    async def _carry_out_controls(self) -> None:
        while True:
            wake = self._control_wake = trio.Event()
            held = [h.lease for h in self._held.values() if h.handler is not None]
            try:
                controls = await self._queue.controls(held)
                done = [c.id for c in controls if await self._carry_out(c)]
                if done:
                    await self._queue.forget_controls(done)
            except CheckpointStoreError:
                pass  # the server is away: the controls wait for the next look
            with trio.move_on_after(self._poll_interval):
                await wake.wait()

    async def _carry_out(self, control: Control) -> bool:
        """Apply one control to its run; False leaves it queued (the run ended meanwhile: the
        store carries it out when the run is let go of)."""
        held = self._held.get(control.run_id)
        if held is None or held.handler is None or held.lost:
            return False
        try:
            if control.op == "respond":
                assert control.answer is not None
                answer = decode_event(control.answer, self._known)
                response = answer.response if isinstance(answer, InputResponseEvent) else None
                with contextlib.suppress(UnknownInputRequest):  # answered already: done
                    await held.handler.respond_to_input(control.request_id or "", response)
            elif control.op == "pause":
                self._start_pause(held, requeue=False)
            elif control.op == "abort":
                await held.handler.abort()
        except RunFinished:
            return False
        return True


@asynccontextmanager
async def open_worker(
    store: Any,
    workflows: Iterable[Workflow],
    *,
    concurrency: int = 10,
    lease: float = DEFAULT_LEASE,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    name: str | None = None,
) -> AsyncIterator[Worker]:
    """A `Worker` serving for the block. Leaving it normally shuts the worker down (its runs
    paused at their next commit, steps still running after `drain_timeout` cancelled, and let
    go of); leaving with an error cancels it (its runs left at their last commit and let go
    of)."""
    worker = Worker(
        store,
        workflows,
        concurrency=concurrency,
        lease=lease,
        poll_interval=poll_interval,
        drain_timeout=drain_timeout,
        name=name,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        try:
            yield worker
        except BaseException:
            nursery.cancel_scope.cancel(reason="open_worker's block raised")
            raise
        await worker.shutdown()
