"""What workers and clients need from a store that distributes runs: the run queue protocol.

A store that is also a `RunQueue` (the PostgreSQL store) keeps, beside each run's journal, who
may write it: a lease (owner, epoch, expiry) taken by a worker that claims the run. Workers and
clients speak only this protocol, so they import no database driver.
"""

import builtins  # `list` is a method name of the stores
import os
import socket
import uuid
from collections.abc import Collection
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs

from ._codec import WorkflowSnapshot, encoded_event_from_builtins
from ._records import EncodedEvent
from ._stores import CheckpointStore

SUBMITTED_START_KEY: Final = "__blazen_submitted_start"
"""Base snapshot metadata of a submitted run: its start event (an `EncodedEvent` as builtins),
routed by the worker that first claims it."""


def submitted_start(snapshot: WorkflowSnapshot) -> EncodedEvent | None:
    """The start event a client submitted the run with, if it was submitted.

    Read with `encoded_event_from_builtins`: a run submitted before snapshot version 3 keeps
    the event as a map in its metadata (metadata is never migrated), today's as an array.
    """
    start = snapshot.metadata.get(SUBMITTED_START_KEY)
    return None if start is None else encoded_event_from_builtins(start)


DEFAULT_LEASE: Final = 30.0
"""Seconds a claim lasts without a heartbeat (workers renew every third of it)."""

ControlOp = Literal["pause", "resume", "abort", "respond"]


def new_owner(kind: str) -> str:
    """A lease owner's name, unique to this process and call: `kind:host:pid:random`."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@attrs.frozen
class Lease:
    """A worker's right to write one run (and its sub-workflows), until another claims it.

    `epoch` goes up with every claim; a write under an older epoch is refused (fencing).
    """

    run_id: str
    workflow_name: str
    owner: str
    epoch: int


@attrs.frozen
class Control:
    """A command for a run a worker holds, queued by a client for the holder to carry out."""

    id: int
    run_id: str
    op: ControlOp
    request_id: str | None = None
    answer: EncodedEvent | None = None


@runtime_checkable
class RunQueue(Protocol):
    """A checkpoint store that hands runs out to workers under fenced leases."""

    async def submit(self, snapshot: WorkflowSnapshot) -> None:
        """Store a new runnable run (its base) unless the same submission exists (idempotent).

        Raises `CheckpointStoreError` if the id is taken by a run of another workflow, by a run
        not submitted, or by a submission of another start event.
        """

    async def claim(
        self, owner: str, workflows: Collection[str], limit: int, lease: float
    ) -> builtins.list[Lease]:
        """Take up to `limit` runnable runs of these workflows whose lease is free or expired."""

    async def take(self, run_id: str, owner: str, lease: float) -> Lease | None:
        """Claim this one run, whatever its status, unless it is held under a live lease
        (None then); a recovery takes the runs it goes on with this way."""

    async def renew(self, leases: Collection[Lease], lease: float) -> set[str]:
        """Extend the leases still held; returns the run ids held (the others were lost)."""

    async def release(
        self, lease: Lease, *, requeue: bool = False, error: str | None = None
    ) -> None:
        """Let go of a run: carry out controls left queued for it; `requeue` makes a run paused
        for the hand-over runnable again; `error` fails a run that could not be opened."""

    def fenced(self, lease: Lease) -> CheckpointStore:
        """This store, refusing every write unless `lease` is still the run's current one."""

    async def control(
        self,
        run_id: str,
        op: ControlOp,
        request_id: str | None = None,
        answer: EncodedEvent | None = None,
    ) -> None:
        """Pause, resume, abort or answer a run: queued for its holder if a worker holds it,
        else carried out in the store at once."""

    async def controls(self, leases: Collection[Lease]) -> builtins.list[Control]:
        """The controls queued for runs held under these leases, oldest first."""

    async def forget_controls(self, ids: Collection[int]) -> None:
        """Drop controls once carried out."""

    async def wait_for_news(self, run_id: str | None = None) -> None:
        """Return when the store announces news for workers (a run became runnable or a slot
        came free), or with `run_id`, that this run finished. Callers bound the wait
        (`trio.move_on_after`) and look again: news can be missed."""

    async def wait_for_controls(self) -> None:
        """Return when the store announces that a control was queued for a held run. Bounded
        and looked again after, as `wait_for_news`."""


def is_run_queue(store: Any) -> bool:
    """Whether `store` can hand runs out to workers (the PostgreSQL store can)."""
    return isinstance(store, RunQueue) and isinstance(store, CheckpointStore)
