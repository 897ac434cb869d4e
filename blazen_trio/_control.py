"""Control commands: sent by the handler through the run's inbox, applied by the run in order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import trio

from ._errors import WorkflowError

if TYPE_CHECKING:
    from ._run import Invocation, Run

T = TypeVar("T")


@attrs.define(eq=False)
class Reply(Generic[T]):
    """The answer to one command: a value or a `WorkflowError`, once."""

    _done: trio.Event = attrs.Factory(trio.Event)
    _value: T | None = None
    _error: WorkflowError | None = None

    @property
    def answered(self) -> bool:
        return self._done.is_set()

    def set(self, value: T) -> None:
        if not self.answered:
            self._value = value
            self._done.set()

    def fail(self, error: WorkflowError) -> None:
        if not self.answered:
            self._error = error
            self._done.set()

    async def wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error.fresh()
        return self._value  # type: ignore[return-value]  # set() stored a T


@attrs.define(eq=False)
class Command(Generic[T]):
    """Base of the commands; `apply` runs inside the run's inbox task."""

    reply: Reply[T] = attrs.field(factory=Reply, init=False)

    def apply(self, run: Run) -> None:
        raise NotImplementedError

    def reject(self, error: WorkflowError) -> None:
        """The run ended before the command was applied."""
        self.reply.fail(error)


@attrs.define(eq=False)
class Pause(Command[None]):
    cancel_in_flight: bool = False

    def apply(self, run: Run) -> None:
        run.pause(self.cancel_in_flight, self.reply)


@attrs.define(eq=False)
class Resume(Command[None]):
    def apply(self, run: Run) -> None:
        run.resume()
        self.reply.set(None)


@attrs.define(eq=False)
class TakeSnapshot(Command[Any]):
    def apply(self, run: Run) -> None:
        from ._capture import capture

        try:
            self.reply.set(capture(run))
        except WorkflowError as error:
            self.reply.fail(error)


@attrs.define(eq=False)
class RespondToInput(Command[None]):
    request_id: str = ""
    response: Any = None

    def apply(self, run: Run) -> None:
        try:
            run.respond_to_input(self.request_id, self.response)
        except WorkflowError as error:
            self.reply.fail(error)
        else:
            self.reply.set(None)


@attrs.frozen
class QueuedCommit:
    """A completed step's outputs, waiting behind a command in the inbox to keep the order."""

    invocation: Invocation
    events: list[Any]

    def apply(self, run: Run) -> None:
        run.spawn(run.commit(self.invocation, self.events))

    def reject(self, error: WorkflowError) -> None:
        """The run ended first; a commit needs no answer."""


Message = Command[Any] | QueuedCommit
